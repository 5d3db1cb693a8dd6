"""How much a finished correlate run's tables change with the device count (issue 20 item 3).

  python -m benchmarks.device_counts --workdir=runs/default/corr --devices=8 --out=/tmp/dev8

Re-runs the same correlate config (read from the run's last committed manifest, so the same
models, tokens and settings) in a fresh process with `--devices` virtual CPU devices (mesh
1 × devices: the forwards data-parallel over them, the co-moment columns sharded), then
compares every neurons table with the original's: max |Δ| of the correlations, baselines and
excess, and the universal sets (sizes, symmetric difference, Jaccard). The original run's
device count is read from its manifest's mesh. Prints one JSON line.
"""
import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_RUN = """
import json, sys
import ml_collections
from ucore.corr import driver
config = ml_collections.ConfigDict(json.load(open(sys.argv[1])))
driver.run(config, sys.argv[2])
"""


def _manifest(workdir):
  paths = sorted(glob.glob(os.path.join(workdir, "state", "**", "manifest.json"), recursive=True))
  if not paths:
    sys.exit(f"error: {workdir}/state has no committed manifest (a finished correlate workdir "
             "with its state/ is needed)")
  with open(paths[-1]) as f:
    return json.load(f)


def compare(a_dir, b_dir) -> dict:
  from ucore.corr import tables as TB
  out = {}
  for name in TB.neuron_models(a_dir):
    a, b = TB.read_neurons(a_dir, name), TB.read_neurons(b_dir, name)
    cols = [c for c in a.columns if a[c].dtype.kind == "f"]
    diff = {c: float(np.nanmax(np.abs(a[c].to_numpy() - b[c].to_numpy()))) for c in cols}
    ua, ub = set(a.index[a["universal"]]), set(b.index[b["universal"]])
    out[name] = {"max_abs": {k: diff[k] for k in ("max_corr", "mean_corr", "mean_baseline",
                                                   "excess_corr") if k in diff},
                 "max_abs_any_float_column": max(diff.values()),
                 "universal": [len(ua), len(ub)], "symmetric_difference": len(ua ^ ub),
                 "jaccard": len(ua & ub) / max(len(ua | ub), 1),
                 "same_best_partner": float(np.mean(
                     [(a[c].to_numpy() == b[c].to_numpy()).mean()
                      for c in a.columns if c.startswith("max_sim_neuron__")]))}
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True, help="a finished correlate workdir")
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--out", required=True, help="a new workdir for the re-run")
  args = ap.parse_args()
  man = _manifest(args.workdir)
  config = man["config"]
  config["mesh"] = {"tok": 1, "neu": -1}
  os.makedirs(args.out, exist_ok=True)
  cfg_path = os.path.join(args.out, "config.json")
  with open(cfg_path, "w") as f:
    json.dump(config, f)
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
  r = subprocess.run([sys.executable, "-c", _RUN, cfg_path, os.path.join(args.out, "run")],
                     cwd=ROOT, env=env, capture_output=True, text=True)
  if r.returncode:
    sys.exit(f"error: the {args.devices}-device run failed:\n{r.stderr[-3000:]}")
  print(json.dumps({"original": args.workdir, "original_mesh": man["identity"].get("mesh"),
                    "devices": args.devices,
                    "tables": compare(os.path.join(args.workdir, "tables"),
                                      os.path.join(args.out, "run", "tables"))}))


if __name__ == "__main__":
  main()
