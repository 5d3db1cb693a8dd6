"""all_pairs vs one reference run per model, and one pass vs passes (issue 18; results in
BENCHMARKS.md, section "Correlation", (8) and (9)).

  python -m benchmarks.corr_all_pairs_bench symmetry [--models=5] [--neurons=1024] [--tokens=2048]
  python -m benchmarks.corr_all_pairs_bench passes [--models=5] [--neurons=1024] [--tokens=2048] [--passes=4]

symmetry: the seed × seed matrix of M models either as one all_pairs run (each of the
M(M-1)/2 co-moment blocks serves both directions, each model's within-layer block once) or
as M reference runs (model i against the others: M(M-1) blocks, M(M-1) within-layer blocks).
Both accumulate the same tokens; the ratio is of their accumulate step times, measured in
the same process (the machine is shared), plus their state sizes.
passes: the same reference-mode state accumulated as one pass or as tiles (one partner group
per pass) over the same tokens: the accumulate time of the passes against the single pass
(the forwards, recomputed per pass, are not part of this CPU measurement; plan prints their
share of the FLOPs for real models).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _acts(T, L, d, K, seed=0):
  rng = np.random.default_rng(seed)
  lat = rng.standard_normal((T, 32)).astype(np.float32)
  return [(lat @ rng.standard_normal((32, L * d)).astype(np.float32) / 6
           + rng.standard_normal((T, L * d)).astype(np.float32)) for _ in range(K)]


def _time_steps(spec, mesh, acts, mask, reps):
  from ucore.corr import moments as M
  import jax
  acc = M.Accumulator(spec, mesh)
  acc.update(acts, mask)            # compile
  jax.block_until_ready(acc.state)
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    acc.update(acts, mask)
    jax.block_until_ready(acc.state)
    ts.append(time.perf_counter() - t)
  return min(ts), M.state_bytes(spec)


def symmetry(args):
  from ucore.corr import moments as M
  mesh = M.make_mesh(1, -1)
  K, L, d, T = args.models, args.layers, args.neurons // args.layers, args.tokens
  acts = _acts(T, L, d, K)
  mask = np.ones(T, bool)
  names = [f"m{i}" for i in range(K)]
  spec = M.make_spec(names, [range(L)] * K, d, mesh, mode="all_pairs")
  t_all, b_all = _time_steps(spec, mesh, acts, mask, args.reps)
  t_ref, b_ref = 0.0, 0
  for i in range(K):   # model i as the reference: the others follow it
    order = [i] + [j for j in range(K) if j != i]
    s = M.make_spec([names[j] for j in order], [range(L)] * K, d, mesh)
    t, b = _time_steps(s, mesh, [acts[j] for j in order], mask, args.reps)
    t_ref, b_ref = t_ref + t, b_ref + b
  print(json.dumps({"bench": "symmetry", "models": K, "neurons_per_model": L * d, "tokens": T,
                    "all_pairs_step_s": round(t_all, 4), "per_reference_steps_s": round(t_ref, 4),
                    "time_ratio": round(t_ref / t_all, 2),
                    "all_pairs_state_mib": round(b_all / 2 ** 20, 1),
                    "per_reference_state_mib": round(b_ref / 2 ** 20, 1)}))


def passes(args):
  from ucore.corr import moments as M, passes as PS
  mesh = M.make_mesh(1, -1)
  K, L, d, T = args.models, args.layers, args.neurons // args.layers, args.tokens
  acts = _acts(T, L, d, K)
  mask = np.ones(T, bool)
  spec = M.make_spec([f"m{i}" for i in range(K)], [range(L)] * K, d, mesh)
  t_one, b_one = _time_steps(spec, mesh, acts, mask, args.reps)
  tiles = next(t for n, _, t in PS.tilings(spec) if n == args.passes)
  t_many = sum(_time_steps(t, mesh, acts, mask, args.reps)[0] for t in tiles)
  print(json.dumps({"bench": "passes", "models": K, "neurons_per_model": L * d, "tokens": T,
                    "passes": len(tiles), "one_pass_step_s": round(t_one, 4),
                    "passes_steps_s": round(t_many, 4), "ratio": round(t_many / t_one, 2),
                    "state_mib": round(b_one / 2 ** 20, 1),
                    "largest_tile_mib": round(max(M.state_bytes(t) for t in tiles) / 2 ** 20,
                                              1)}))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("what", choices=["symmetry", "passes"])
  p.add_argument("--models", type=int, default=5)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--neurons", type=int, default=1024)
  p.add_argument("--tokens", type=int, default=2048)
  p.add_argument("--passes", type=int, default=4)
  p.add_argument("--reps", type=int, default=3)
  args = p.parse_args()
  {"symmetry": symmetry, "passes": passes}[args.what](args)


if __name__ == "__main__":
  main()
