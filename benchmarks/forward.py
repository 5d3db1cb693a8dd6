"""Tokens/s of the jitted Flax forward (capturing every mlp.hook_post) vs transformers' eager
PyTorch forward: same random GPT-2-small weights, float32, CPU, batch 8 x 512.

  .venv/bin/python benchmarks/forward.py [--batch=8] [--seq=512] [--reps=3]

Both are timed in the same process, interleaved, so machine noise hits both; the ratio is the
result. Target: >= 1.2x.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=512)
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args()

  import jax
  import numpy as np
  import torch
  from converters.convert import convert
  from tests import hf_fixtures
  from ucore import load_model

  cfg = hf_fixtures.hf_config(n_layer=12, n_embd=768, n_head=12, n_inner=None,
                              n_positions=1024, vocab_size=50257,
                              scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=0)
  with tempfile.TemporaryDirectory() as tmp:
    src = hf_fixtures.write_checkpoint(os.path.join(tmp, "hf"), hf_model)
    convert(src, os.path.join(tmp, "out"))
    model = load_model(os.path.join(tmp, "out"))
  tokens = np.random.default_rng(0).integers(0, 50257, (args.batch, args.seq), dtype=np.int32)
  names = [f"blocks.{l}.mlp.hook_post" for l in range(12)]
  torch_tokens = torch.tensor(tokens, dtype=torch.long)

  def flax_step():
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    jax.block_until_ready((logits, cache))

  def torch_step():
    with torch.no_grad():
      hf_model(torch_tokens)

  flax_step()  # compile
  torch_step()
  flax_t, torch_t = [], []
  for _ in range(args.reps):
    t = time.perf_counter(); flax_step(); flax_t.append(time.perf_counter() - t)
    t = time.perf_counter(); torch_step(); torch_t.append(time.perf_counter() - t)
  n = args.batch * args.seq
  f, p = n / min(flax_t), n / min(torch_t)
  print(f"torch threads {torch.get_num_threads()}, jax devices {jax.devices()[0].platform}")
  print(f"flax (jit, {len(names)} mlp.hook_post captured): {f:,.0f} tokens/s "
        f"(best of {args.reps}: {min(flax_t):.2f}s)")
  print(f"transformers eager forward:                 {p:,.0f} tokens/s "
        f"(best of {args.reps}: {min(torch_t):.2f}s)")
  print(f"ratio flax/transformers: {f / p:.2f}x (target >= 1.2x)")


if __name__ == "__main__":
  main()
