"""The interval pass's cost against the main pass, in one fresh correlate run (same process,
same load): the default family's models and token store from a finished run's config, on
the first --tokens held-out tokens, 1 baseline draw, intervals.blocks = 20.

  .venv/bin/python benchmarks/interval_cost.py --src runs/default/corr --tokens 49152

Main pass = summary seconds − finalize_seconds − the interval pass's seconds (accumulate,
forwards, self-check and commits included); the interval pass = forwards again plus the
selected pairs' per-block moments. Prints both and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--src", required=True)
  ap.add_argument("--tokens", type=int, default=49152)
  ap.add_argument("--blocks", type=int, default=20)
  a = ap.parse_args(argv)
  import ml_collections
  from absl import logging
  from benchmarks.baseline_draws import load_config
  from ucore.corr import driver
  logging.set_verbosity(logging.WARNING)
  c = load_config(a.src)
  c.max_tokens = a.tokens
  c.baseline.draws = 1
  c.intervals = ml_collections.ConfigDict({"blocks": a.blocks})
  wd = tempfile.mkdtemp(prefix="ucore-ivcost-")
  try:
    driver.run(c, wd)
    s = json.load(open(os.path.join(wd, "tables", "summary.json")))
  finally:
    shutil.rmtree(wd, ignore_errors=True)
  iv = s["intervals"]["seconds"]
  main_s = s["seconds"] - s["finalize_seconds"] - iv
  out = {"tokens": s["tokens_counted"], "main_pass_s": main_s, "finalize_s": s["finalize_seconds"],
         "interval_pass_s": iv, "interval_vs_main": iv / main_s}
  print(json.dumps(out, indent=1))
  return out


if __name__ == "__main__":
  main()
