"""Tokens/s of the jitted Flax forward capturing every mlp.hook_post vs transformers' eager
PyTorch forward: same random GPT-2-small weights, float32, batch 8 x 512, on JAX's device (torch on
the GPU too when JAX has one; TF32 off in both).

  .venv/bin/python benchmarks/forward.py [--batch=8] [--seq=512] [--reps=3]

Two comparisons, each like for like:
  full:    run_with_cache (logits + 12 mlp.hook_post)  vs  GPT2LMHeadModel(tokens) (logits)
  capture: neuron_activations (what the correlation engine runs: stops after the last MLP,
           no unembedding)  vs  GPT2Model body with torch hooks capturing the 12 MLP outputs.
  capture (explicit attention): the same capture with an identity intervention on every
           attn.hook_pattern, which keeps attention's explicit scores/softmax (the path used
           before jax.nn.dot_product_attention): the fused path's own gain.
  capture (host weights): the capture without model.place(), i.e. with the loaded numpy
           weights copied to the device on every call: place()'s own gain.
All variants are timed in the same process, interleaved, so machine noise hits each alike;
the ratios are the result. Target: >= 1.2x.
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
    host_model = load_model(os.path.join(tmp, "out"))   # weights left as numpy
  model.place()
  tokens = np.random.default_rng(0).integers(0, 50257, (args.batch, args.seq), dtype=np.int32)
  names = [f"blocks.{l}.mlp.hook_post" for l in range(12)]
  # torch runs where JAX runs: the GPU when there is one (TF32 off: fp32 against fp32)
  tdev = "cuda" if torch.cuda.is_available() and jax.devices()[0].platform == "gpu" else "cpu"
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  hf_model.to(tdev)
  torch_tokens = torch.tensor(tokens, dtype=torch.long, device=tdev)
  sync = torch.cuda.synchronize if tdev == "cuda" else (lambda: None)

  def flax_step():
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    jax.block_until_ready((logits, cache))

  def torch_step():
    with torch.no_grad():
      hf_model(torch_tokens)
    sync()

  def flax_capture():
    jax.block_until_ready(model.neuron_activations(tokens))

  keep_pattern = {f"blocks.{l}.attn.hook_pattern": (lambda x: x) for l in range(12)}

  def flax_capture_explicit():
    jax.block_until_ready(model.neuron_activations(tokens, interventions=keep_pattern))

  def flax_capture_host():
    jax.block_until_ready(host_model.neuron_activations(tokens))

  captured = []
  for block in hf_model.transformer.h:
    block.mlp.act.register_forward_hook(lambda m, i, o: captured.append(o))

  def torch_capture():
    captured.clear()
    with torch.no_grad():
      hf_model.transformer(torch_tokens)
    sync()
    assert len(captured) == 12

  variants = {"flax full": flax_step, "torch full": torch_step,
              "flax capture": flax_capture, "torch capture": torch_capture,
              "flax explicit": flax_capture_explicit, "flax host w": flax_capture_host}
  for fn in variants.values():   # compile / warm up
    fn()
  times = {k: [] for k in variants}
  for _ in range(args.reps):
    for k, fn in variants.items():
      t = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t)
  n = args.batch * args.seq
  tps = {k: n / min(v) for k, v in times.items()}
  print(f"torch on {tdev} ({torch.get_num_threads()} threads), jax devices {jax.devices()[0].platform}, "
        f"batch {args.batch}x{args.seq}, best of {args.reps}")
  for k in variants:
    print(f"  {k:14s} {tps[k]:9,.0f} tokens/s ({min(times[k]):.2f}s)")
  # Matmul FLOPs of the capture forward (12 blocks; attention scores and values unmasked, as
  # both implementations compute them): how close both run to the CPU's GEMM peak.
  d, f, p, h = 768, 3072, args.seq, 12
  per_token = 12 * (2 * d * 3 * d + 2 * d * d + 2 * 2 * d * f + 2 * 2 * p * d)
  for k in ("flax capture", "torch capture", "flax explicit", "flax host w"):
    print(f"  {k:14s} {per_token * tps[k] / 1e9:6.0f} GFLOP/s (matmuls)")
  print(f"ratio full (logits + 12 hook_post vs transformers forward): "
        f"{tps['flax full'] / tps['torch full']:.2f}x")
  print(f"ratio capture (12 hook_post, no unembedding, both):         "
        f"{tps['flax capture'] / tps['torch capture']:.2f}x  (target >= 1.2x)")
  print(f"ratio capture, fused vs explicit attention (Flax):             "
        f"{tps['flax capture'] / tps['flax explicit']:.2f}x")
  print(f"ratio capture, placed vs host (numpy) weights (Flax):          "
        f"{tps['flax capture'] / tps['flax host w']:.2f}x")


if __name__ == "__main__":
  main()
