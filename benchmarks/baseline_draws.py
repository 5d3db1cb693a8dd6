"""Baseline draws on the default family (issue 20 item 1): how many rotation draws make each
neuron's baseline standard error ≤ 0.005, what a draw costs at finalize, how stable the
universal set is to baseline.seed, and what the interval pass costs against the main pass.

  .venv/bin/python benchmarks/baseline_draws.py --src runs/default/corr --draws 8 \
      --out benchmarks/results/baseline_draws.json

--src: a finished correlate workdir of `python main.py` (state/ and tables/; read only: its
state is copied). Runs, all in this process, on copies of its committed moments:
  1. re-finalize with 1 draw, baseline.seed 0 (the reference: the old default)
  2. re-finalize with --draws draws (seed 0) and the interval pass (intervals.blocks = 20):
     per-neuron SE over draws (mean_baseline_se, and per kind from the pair tables) ->
     draws needed for SE ≤ --target, per quantile; the interval pass's seconds against the
     main pass's (accumulate) seconds recorded in --src's summary (its own run's load)
  3. re-finalize with --draws draws at seed 1, and 1 draw at seed 1: Jaccard of the
     universal sets between seeds 0 and 1 at 1 and at --draws draws
Finalize seconds are summary.json's finalize_seconds (the tables from the moments).
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


def load_config(src):
  """The correlate config of the run in `src` (its last commit's manifest)."""
  import ml_collections
  from ucore.corr import state as ST
  manifest, _ = ST.latest(os.path.join(src, "state"))
  if manifest is None:
    raise SystemExit(f"{src}: no committed state")
  return ml_collections.ConfigDict(manifest["config"])


def copy_run(src, dst):
  shutil.copytree(os.path.join(src, "state"), os.path.join(dst, "state"))
  shutil.copytree(os.path.join(src, "tables"), os.path.join(dst, "tables"))


def finalize(c, wd):
  from ucore.corr import driver, tables as TB
  from ucore.jobs import atomic
  t = time.time()
  driver.run(c, wd)
  wall = time.time() - t
  s = atomic.read_json(os.path.join(wd, "tables", "summary.json"))
  return s, wall


def universal_set(wd, name):
  from ucore.corr import tables as TB
  df = TB.read_neurons(os.path.join(wd, "tables"), name)
  return set(df.index[df["universal"]]), df


def jaccard(a, b):
  return len(a & b) / max(len(a | b), 1)


def kind_se(wd, own, partners, kind):
  """Neuron-level SE over draws of `kind`'s mean baseline over the partners [N]."""
  from ucore.corr import tables as TB
  se = [TB.read_neuron_table(os.path.join(wd, "tables", TB.PAIRS_DIR, TB.PAIR.format(own, p)))
        [f"baseline_{kind}_se"].to_numpy() for p in partners]
  return np.sqrt(np.sum(np.square(se), 0)) / len(se)


def needed(se, draws, target):
  """Draws needed for SE ≤ target, from SEs measured with `draws` draws (SE ∝ 1/√draws)."""
  se = se[np.isfinite(se)]
  n = np.ceil(draws * (se / target) ** 2)
  q = lambda v: float(np.quantile(n, v))   # noqa: E731
  return {"median": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": float(n.max()),
          "se_median": float(np.median(se)), "se_p95": float(np.quantile(se, 0.95)),
          "se_max": float(se.max())}


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--src", required=True)
  ap.add_argument("--draws", type=int, default=16)
  ap.add_argument("--target", type=float, default=0.005)
  ap.add_argument("--out", default="")
  a = ap.parse_args(argv)
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  base = load_config(a.src)
  src_summary = json.load(open(os.path.join(a.src, "tables", "summary.json")))
  ref = src_summary["models"][0]["name"]
  partners = [m["name"] for m in src_summary["models"][1:]]
  out = {"src": a.src, "reference": ref, "tokens": src_summary["tokens_counted"]}
  tmp = tempfile.mkdtemp(prefix="ucore-draws-")
  try:
    wd = os.path.join(tmp, "run")
    copy_run(a.src, wd)

    def refinal(draws, seed, blocks=0):
      c = load_config(a.src)
      c.baseline.draws, c.baseline.seed = draws, seed
      if "intervals" not in c:
        import ml_collections
        c.intervals = ml_collections.ConfigDict({"blocks": 0})
      c.intervals.blocks = blocks
      s, wall = finalize(c, wd)
      u, df = universal_set(wd, ref)
      return s, wall, u, df

    runs = {}
    # (draws, seed, interval blocks): the --draws run also carries the interval pass (its
    # seconds are summary.json's intervals.seconds, apart from finalize_seconds)
    plan = [(1, 0, 0), (a.draws, 0, 20), (a.draws, 1, 0), (1, 1, 0)]
    for draws, seed, blocks in plan:
      s, wall, u, df = refinal(draws, seed, blocks)
      runs[(draws, seed)] = (s, u, df)
      print(f"draws={draws} seed={seed}: {len(u)} universal, finalize {s['finalize_seconds']:.1f}s"
            f" (wall {wall:.1f}s), near threshold {s.get('near_threshold')}", flush=True)
      out[f"finalize_s_draws{draws}_seed{seed}"] = s["finalize_seconds"]
      out[f"universal_draws{draws}_seed{seed}"] = len(u)
      if draws == a.draws and seed == 0:
        out["needed_draws"] = {
            "mean_baseline (primary)": needed(df["mean_baseline_se"].to_numpy(), draws, a.target),
            **{kind: needed(kind_se(wd, ref, partners, kind), draws, a.target)
               for kind in base.baseline.kinds}}
        out["near_threshold"] = s.get("near_threshold")
        iv = s["intervals"]
        out["interval_pass_s"] = iv["seconds"]
        out["interval"] = iv["models"][ref]
        print(json.dumps(out, indent=1), flush=True)
    f1, fD = out["finalize_s_draws1_seed0"], out[f"finalize_s_draws{a.draws}_seed0"]
    out["finalize_s_per_draw"] = (fD - f1) / (a.draws - 1)
    out["finalize_ratio_draws_vs_1"] = fD / f1
    out["jaccard_seed0_vs_1"] = {
        "draws1": jaccard(runs[(1, 0)][1], runs[(1, 1)][1]),
        f"draws{a.draws}": jaccard(runs[(a.draws, 0)][1], runs[(a.draws, 1)][1])}
    main_s = src_summary["seconds"] - src_summary.get("finalize_seconds", 0.0)
    out["src_main_pass_s (its own run, other load)"] = main_s
    out["interval_vs_src_main_pass"] = out["interval_pass_s"] / main_s
    print(json.dumps(out, indent=1))
    if a.out:
      with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


if __name__ == "__main__":
  main()
