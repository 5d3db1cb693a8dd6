"""Coverage of the universal count's 95% interval on a planted synthetic family (issue 20).

  XLA_FLAGS=--xla_force_host_platform_device_count=1 .venv/bin/python benchmarks/interval_coverage.py \
      --reps 50 --out benchmarks/results/interval_coverage.json

The family (ucore.corr.synthetic, 3 models × 2 layers × 128 neurons) has 4 strongly planted
universal neurons and `n_graded` graded shared neurons whose excess runs from well below to
well above the 0.5 threshold, so some sit near it. Repetition i correlates its own rows
[i·R, (i+1)·R) of the generator (data independent across repetitions) with its own
baseline.seed = i (draws independent too). The truth: the count of neurons whose expected
excess at this many tokens exceeds the threshold, the expectation taken as the mean of the
repetitions' excess (reps·R rows and reps·draws draws in all). The rotation baseline is a
max over units, biased upward at few tokens, so the universal set itself depends on the token
count: the count of one very long run (`truth_factor`·R rows, `truth_draws` draws) is
reported too, with the coverage against it (what the interval does not claim to cover). Prints and
writes the coverage rate (repetitions whose 95% interval holds the true count), the
intervals' mean width, and the interval pass's cost relative to the main pass.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(rows_total, start_row, rows, draws, seed, blocks, n_graded):
  from ucore.jobs import config_files
  c = config_files.load("correlate_default")
  c.synthetic.enabled = True
  c.synthetic.n_graded = n_graded
  c.synthetic.rows = rows_total
  c.start_row = start_row
  c.max_tokens = rows * c.synthetic.ctx
  c.batch_rows = 64
  c.top_k = 1
  c.baseline.kinds = ("haar",)
  c.baseline.draws = draws
  c.baseline.seed = seed
  c.intervals.blocks = blocks
  c.selfcheck.sample = 0
  c.log_every = 1000
  return c


def one(c):
  from ucore.corr import driver
  from ucore.jobs import atomic
  wd = tempfile.mkdtemp(prefix="ucore-cov-")
  try:
    t = time.time()
    driver.run(c, wd)
    wall = time.time() - t
    s = atomic.read_json(os.path.join(wd, "tables", "summary.json"))
    from ucore.corr import tables as TB
    excess = TB.read_neurons(os.path.join(wd, "tables"), "synth0")["excess_corr"].to_numpy()
    return s, wall, excess
  finally:
    shutil.rmtree(wd, ignore_errors=True)


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--reps", type=int, default=50)
  ap.add_argument("--rows", type=int, default=256, help="rows (16 tokens) per repetition")
  ap.add_argument("--draws", type=int, default=8)
  ap.add_argument("--blocks", type=int, default=20)
  ap.add_argument("--n_graded", type=int, default=16)
  ap.add_argument("--truth_factor", type=int, default=20)
  ap.add_argument("--truth_draws", type=int, default=64)
  ap.add_argument("--out", default="")
  a = ap.parse_args(argv)
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  total = a.rows * (a.reps + a.truth_factor)
  long_truth = None
  if a.truth_factor > 0:   # 0: no long run (the tests)
    truth_s, truth_wall, _ = one(config(total, a.reps * a.rows, a.rows * a.truth_factor,
                                        a.truth_draws, 10_000, a.blocks, a.n_graded))
    long_truth = truth_s["universal"]["synth0"]
    print(f"long run: {long_truth} universal ({a.truth_factor}x rows, {a.truth_draws} draws; "
          f"{truth_wall:.0f}s)", flush=True)
  rows, excess = [], []
  for i in range(a.reps):
    s, wall, ex = one(config(total, i * a.rows, a.rows, a.draws, i, a.blocks, a.n_graded))
    excess.append(ex)
    e = s["intervals"]["models"]["synth0"]
    lo, hi = e["count_ci95"]
    rows.append({"rep": i, "count": e["count"], "lo": lo, "hi": hi,
                 "half_width": e["half_width"], "wall_s": wall,
                 "interval_s": s["intervals"]["seconds"], "seconds": s["seconds"]})
    print(f"rep {i}: {e['count']} [{lo}, {hi}] half width {e['half_width']:.2f} ({wall:.1f}s, "
          f"interval pass {s['intervals']['seconds']:.1f}s)", flush=True)
  stack = np.stack(excess)
  mean_excess = np.full(stack.shape[1], np.nan)
  live = np.isfinite(stack).any(0)   # the dead neuron is NaN in every repetition
  mean_excess[live] = np.nanmean(stack[:, live], axis=0)
  truth = int(np.sum(np.nan_to_num(mean_excess, nan=-np.inf) > 0.5))
  for r in rows:
    r["covered"] = bool(r["lo"] <= truth <= r["hi"])
    r["covered_long_run"] = (None if long_truth is None
                             else bool(r["lo"] <= long_truth <= r["hi"]))
  cov = sum(r["covered"] for r in rows) / len(rows)
  cov_long = (None if long_truth is None
              else sum(r["covered_long_run"] for r in rows) / len(rows))
  width = sum(r["hi"] - r["lo"] for r in rows) / len(rows)
  near = np.sort(np.abs(mean_excess[np.isfinite(mean_excess)] - 0.5))[:3]
  res = {"truth": truth, "coverage": cov, "long_run_truth": long_truth,
         "coverage_of_long_run": cov_long, "mean_width": width, "reps": a.reps,
         "closest_mean_excess_to_threshold": near.tolist(),
         "mean_interval_pass_share": float(np.mean([r["interval_s"] / r["seconds"]
                                                     for r in rows])),
         "settings": vars(a), "rows": rows}
  print(f"coverage {cov:.2f} of {a.reps} repetitions (truth {truth} at this token count; "
        f"long-run count {long_truth}, covered {cov_long}); mean interval width "
        f"{width:.2f} neurons; closest mean excess to the threshold ±{near[0]:.4f}")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(res, f, indent=1)
  return res


if __name__ == "__main__":
  main()
