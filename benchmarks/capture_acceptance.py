"""Acceptance of a capture precision mode (issue 23): a finished correlate run's own config,
rerun at --precision into --workdir, and its universal set compared with the finished run's.

  .venv/bin/python benchmarks/capture_acceptance.py --run=/work/main/runs/default/corr \
      --workdir=/tmp/i23/corr_bf16 --precision=bf16

The config is the one the finished run committed (its state/ manifest), with only `precision`
changed; the finished run is read, never written. Reported: both runs' universal counts, the
neurons universal in one run only, and for each the finished run's margin |excess_corr −
threshold| beside the new run's self-check bound on |Δexcess| (max |Δcorr| + max |Δrotated
corr|: excess = mean corr − mean rotation baseline, the max over units 1-Lipschitz); the largest
|Δ| over all neurons of the per-partner max correlations and of excess_corr; wall seconds.
"""
import argparse
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def committed_config(run: str):
  """The finished run's correlate config (latest checkpoint manifest) as a ConfigDict."""
  from ucore.jobs import config_files
  paths = sorted(glob.glob(os.path.join(run, "state", "ckpt-*", "manifest.json")))
  if not paths:
    sys.exit(f"error: no committed checkpoint under {run}/state")
  with open(paths[-1]) as f:
    saved = json.load(f)["config"]
  c = config_files.load("correlate_default")

  def put(node, d):
    for k, v in d.items():
      if isinstance(v, dict):
        put(node[k], v)
      else:
        node[k] = tuple(v) if isinstance(node[k], tuple) else v
  put(c, saved)
  return c


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--run", required=True, help="finished correlate workdir (read only)")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--precision", default="bf16")
  ap.add_argument("--wait", type=float, default=0, help="seconds to wait for --run's tables")
  args = ap.parse_args()
  import numpy as np
  import pandas as pd
  from ucore.corr import driver, selfcheck as SC

  c = committed_config(args.run)
  c.precision = args.precision
  t = time.time()
  driver.run(c, args.workdir)
  secs = time.time() - t
  ref_dir = os.path.join(args.run, "tables")
  deadline = time.time() + args.wait
  while not os.path.exists(os.path.join(ref_dir, "summary.json")) and time.time() < deadline:
    time.sleep(10)
  with open(os.path.join(ref_dir, "summary.json")) as f:
    ref_s = json.load(f)
  with open(os.path.join(args.workdir, "tables", "summary.json")) as f:
    new_s = json.load(f)
  own = c.model_names[0]
  a = pd.read_parquet(os.path.join(ref_dir, f"neurons_{own}.parquet"))
  b = pd.read_parquet(os.path.join(args.workdir, "tables", f"neurons_{own}.parquet"))
  assert a.index.equals(b.index)
  chk = new_s["selfcheck"]
  bound = chk["max_abs_corr"] + chk["max_abs_rotated"]
  ua, ub = a["universal"].to_numpy(), b["universal"].to_numpy()
  only = np.flatnonzero(ua != ub)
  thr = float(c.threshold)
  margin = np.abs(a["excess_corr"].to_numpy() - thr)
  corr_cols = [k for k in a.columns if k.startswith("corr__")]
  d_corr = np.nanmax(np.abs(a[corr_cols].to_numpy() - b[corr_cols].to_numpy()))
  d_exc = np.nanmax(np.abs(a["excess_corr"].to_numpy() - b["excess_corr"].to_numpy()))
  print(f"run {args.run} (precision {ref_s['precision']}) vs {args.workdir} (precision "
        f"{new_s['precision']}), {new_s['tokens_counted']:,} tokens, {len(a):,} neurons of {own}")
  print(f"universal: {int(ua.sum())} vs {int(ub.sum())}; in one run only: {len(only)}")
  for i in only:
    print(f"  {a.index[i]}: excess {a['excess_corr'].iloc[i]:.6f} → "
          f"{b['excess_corr'].iloc[i]:.6f}; |excess − threshold| {margin[i]:.2e} "
          f"{'≤' if margin[i] <= bound else '>'} self-check bound {bound:.2e}")
  print(f"max |Δ| over neurons: per-partner max corr {d_corr:.2e}, excess_corr {d_exc:.2e}")
  print(f"neurons within the bound of the threshold (either side): "
        f"{int((margin <= bound).sum())}; within the largest |Δexcess| {d_exc:.2e}: "
        f"{int((margin <= d_exc).sum())}; the closest |excess − threshold| of the finished "
        f"run: {np.nanmin(margin):.2e}; universal_strict equal: "
        f"{bool((a['universal_strict'] == b['universal_strict']).all())}")
  print(f"median |Δ|: per-partner max corr "
        f"{np.nanmedian(np.abs(a[corr_cols].to_numpy() - b[corr_cols].to_numpy())):.1e}, "
        f"excess_corr {np.nanmedian(np.abs(a['excess_corr'] - b['excess_corr'])):.1e}")
  print(f"self-check ({new_s['precision']}): {SC.describe(chk)}")
  print(f"self-check ({ref_s['precision']}): {SC.describe(ref_s['selfcheck'])}")
  print(f"wall {secs:.0f} s for the {new_s['precision']} run (its summary: "
        f"{new_s['seconds']:.0f} s; the finished run's: {ref_s['seconds']:.0f} s)")
  ok = all(margin[i] <= bound for i in only)
  print("ACCEPTED" if ok else "NOT ACCEPTED: a difference lies outside the self-check's bound")


if __name__ == "__main__":
  main()
