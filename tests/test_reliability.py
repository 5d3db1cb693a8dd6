"""The reliability harness (benchmarks/reliability.py) on its cheapest command: kill -9 at
seeded random moments, resume, and the tables are bit-identical to an uninterrupted run; and
the harness's comparison does see a changed output."""
import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import reliability  # noqa: E402


@pytest.mark.slow("SIGKILLed correlate subprocesses and their resumes")
def test_killed_correlate_runs_resume_bit_identical(tmp_path):
  lines = []
  r = reliability.check(["correlate_synthetic"], trials=1, seed=3, root=str(tmp_path),
                        log=lines.append)["correlate_synthetic"]
  assert r["identical"] == r["trials"] == 1, (r, lines)
  assert "bit-identical" in lines[0]
  # the comparison is exact: one changed value in one table is a difference
  ref = tmp_path / "correlate_synthetic" / "ref" / "tables"
  want = reliability.tables_digest(str(ref))
  assert "neurons_synth0.parquet" in want and any(k.startswith("pairs") for k in want)
  changed = tmp_path / "changed"
  shutil.copytree(ref, changed)
  df = pd.read_parquet(changed / "neurons_synth0.parquet")
  col = [c for c in df.columns if df[c].dtype.kind == "f" and df[c].notna().any()][0]
  row = df[col].notna().to_numpy().argmax()
  v = df[col].to_numpy().copy()
  v[row] = np.nextafter(v[row], np.inf)   # the smallest possible change
  df[col] = v
  df.to_parquet(changed / "neurons_synth0.parquet")
  assert reliability.differences(want, reliability.tables_digest(str(changed))) == \
      ["neurons_synth0.parquet"]
