"""Parity of the Flax forward per compute dtype against transformers' float32 eager forward
(issue 23 item 2): max |Δ| of the logits and of every mlp.hook_post (what correlate captures),
relative to each tensor's max |value|, on random GPT-2 and GPT-NeoX weights.

  .venv/bin/python benchmarks/forward_precision.py [--n_layer=4] [--n_embd=256] [--seq=128]

Modes: float32 (the default; parity 1e-5 is a test, tests/test_convert_parity.py) and bfloat16
(weights and activations in bf16; LayerNorm, attention scores and softmax in float32). Beside
them, the float32 forward's activations as a capture precision mode sees them (ucore.corr.
precision: "bf16" rounds them to bfloat16, "tf32_fp16" to float16), and the bfloat16 forward's
under a bf16 capture (a no-op: they are bf16 numbers already). Logits are not captured.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _reference(hf_model, tokens, n_layer):
  """transformers' float32 logits and MLP activations (torch hooks on the MLP act)."""
  import torch
  acts = {}
  body = hf_model.transformer if hasattr(hf_model, "transformer") else hf_model.gpt_neox
  layers = body.h if hasattr(body, "h") else body.layers
  handles = [layers[l].mlp.act.register_forward_hook(
      lambda m, i, o, l=l: acts.__setitem__(l, o.detach().numpy())) for l in range(n_layer)]
  with torch.no_grad():
    logits = hf_model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  for h in handles:
    h.remove()
  return logits, acts


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n_layer", type=int, default=4)
  ap.add_argument("--n_embd", type=int, default=256)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--batch", type=int, default=4)
  args = ap.parse_args()
  import jax.numpy as jnp
  import numpy as np
  from converters.convert import convert
  from tests import hf_fixtures
  from ucore.corr import precision
  from ucore.models.hooked import load_model

  L, D = args.n_layer, args.n_embd
  archs = {
      "gpt2": hf_fixtures.hf_config(n_layer=L, n_embd=D, n_head=D // 64, n_inner=4 * D,
                                    n_positions=args.seq, vocab_size=4096),
      "gpt_neox": hf_fixtures.neox_config(num_hidden_layers=L, hidden_size=D,
                                          num_attention_heads=D // 64,
                                          intermediate_size=4 * D,
                                          max_position_embeddings=args.seq, vocab_size=4096),
  }
  print(f"{'arch':9s} {'dtype (+capture)':20s} {'logits max|Δ|/max':>18s} "
        f"{'mlp.hook_post max|Δ|/max':>26s}")
  for arch, cfg in archs.items():
    hf_model = hf_fixtures.random_hf_model(cfg, seed=0)
    tokens = np.random.default_rng(0).integers(0, 4096, (args.batch, args.seq), dtype=np.int32)
    ref_logits, ref_acts = _reference(hf_model, tokens, L)
    with tempfile.TemporaryDirectory() as tmp:
      src = hf_fixtures.write_checkpoint(os.path.join(tmp, "hf"), hf_model)
      convert(src, os.path.join(tmp, "out"))
      for dtype in (jnp.float32, jnp.bfloat16):
        model = load_model(os.path.join(tmp, "out"), dtype=dtype)
        names = [f"blocks.{l}.mlp.hook_post" for l in range(L)]
        logits, cache = model.run_with_cache(tokens, names_filter=names)
        dl = np.abs(np.asarray(logits, np.float32) - ref_logits).max() / np.abs(ref_logits).max()
        captures = ("highest", "bf16", "tf32_fp16") if dtype == jnp.float32 else ("highest", "bf16")
        for mode in captures:
          acts = {n: np.asarray(precision.capture(np.asarray(cache[n], np.float32), mode))
                  for n in names}
          da = max(np.abs(acts[n] - ref_acts[l]).max() / np.abs(ref_acts[l]).max()
                   for l, n in enumerate(names))
          label = jnp.dtype(dtype).name + ("" if mode == "highest" else f" +{mode}")
          logit = f"{dl:18.2e}" if mode == "highest" else f"{'—':>18s}"
          print(f"{arch:9s} {label:20s} {logit} {da:26.2e}")


if __name__ == "__main__":
  main()
