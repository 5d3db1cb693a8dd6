"""Training throughput: one vmapped step for the whole seed family vs the seeds one by one.

  .venv/bin/python benchmarks/train.py                       # configs/train_default.py sizes
  .venv/bin/python benchmarks/train.py --config=configs/train_tiny.py --vocab=512 --ctx=64

Both variants run the same update (ucore.train.core.single_update: loss, grad, global-norm
clip, AdamW) on the same random token batches, in the same process; rounds alternate between
the two so that load from other users of the machine hits both alike. Reports the median over
rounds of tokens/s (tokens = seeds x batch_rows x (ctx - 1) per family step) and their ratio.
Also checks that the two variants produce the same losses (to float32 rounding).
"""
import os
import sys

# Run as a script: import the toolkit from the repository root.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402


def _load_config(path):
  from ucore.jobs import config_files
  return config_files.load(path)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/train_default.py")
  ap.add_argument("--vocab", type=int, default=4096, help="vocab when the config says 0")
  ap.add_argument("--ctx", type=int, default=128, help="row length when the config says 0")
  ap.add_argument("--steps", type=int, default=4, help="family steps per round")
  ap.add_argument("--rounds", type=int, default=3)
  args = ap.parse_args()

  from ucore.train import core, loop
  config = _load_config(args.config)
  ctx = int(config.model.n_positions) or args.ctx
  mcfg = loop.model_config(config, args.vocab, ctx)
  seeds = [int(s) for s in config.seeds]
  k, b = len(seeds), int(config.batch_rows)
  tx = core.make_optimizer(config.optim, int(config.num_steps))
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, mcfg.vocab_size, (k, b, ctx), dtype=np.int32)
             for _ in range(args.steps)]
  init = [core.gpt2_init(mcfg, s, float(config.init_std)) for s in seeds]

  fam_step = core.make_family_step(mcfg, tx)
  one_step = core.make_single_step(mcfg, tx)
  fam_p = core.stack_params(init)
  fam_o = core.init_family_opt_state(tx, fam_p)
  seq_p = [jax.tree_util.tree_map(np.array, p) for p in init]
  seq_o = [tx.init(p) for p in seq_p]

  # Compile both and check they agree on the first batch.
  fam_p, fam_o, st = fam_step(fam_p, fam_o, batches[0])
  seq_losses = []
  for i in range(k):
    seq_p[i], seq_o[i], s1 = one_step(seq_p[i], seq_o[i], batches[0][i])
    seq_losses.append(float(s1["loss"]))
  jax.block_until_ready((fam_p, seq_p))
  np.testing.assert_allclose(np.asarray(st["loss"]), seq_losses, rtol=1e-5)

  tokens = args.steps * k * b * (ctx - 1)
  fam_t, seq_t = [], []
  for _ in range(args.rounds):
    t0 = time.perf_counter()
    for x in batches:
      fam_p, fam_o, st = fam_step(fam_p, fam_o, x)
    jax.block_until_ready(fam_p)
    fam_t.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(k):
      for x in batches:
        seq_p[i], seq_o[i], s1 = one_step(seq_p[i], seq_o[i], x[i])
    jax.block_until_ready(seq_p)
    seq_t.append(time.perf_counter() - t0)
  fam = tokens / statistics.median(fam_t)
  seq = tokens / statistics.median(seq_t)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(init[0]))
  print(f"config {args.config}: {k} seeds, {mcfg.n_layer} layers, d_model {mcfg.n_embd}, "
        f"d_mlp {mcfg.d_mlp}, vocab {mcfg.vocab_size}, ctx {ctx}, batch {b} rows/seed, "
        f"{n_params / 1e6:.2f}M params/seed; devices {jax.devices()[0].platform} "
        f"x{jax.local_device_count()}")
  print(f"vmapped family step : {fam:10.0f} tokens/s  (median of {args.rounds} rounds x "
        f"{args.steps} steps: {statistics.median(fam_t):.2f} s)")
  print(f"seeds one by one    : {seq:10.0f} tokens/s  ({statistics.median(seq_t):.2f} s)")
  print(f"ratio vmapped / sequential: {fam / seq:.2f}x")


if __name__ == "__main__":
  main()
