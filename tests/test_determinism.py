"""Determinism as a guarantee (issue 20 item 3): the quick pipeline run twice on the same
machine and device count — the second time beside processes that burn every core, so thread
scheduling differs — writes byte-identical tables (sha256 of every parquet file)."""
import hashlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BURN = "import time\nend = time.time() + 900\nwhile time.time() < end:\n  sum(range(10000))\n"


def _table_digests(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      if f.endswith(".parquet"):
        path = os.path.join(root, f)
        out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


@pytest.mark.slow("a second quick pipeline beside processes that burn every core "
                  "(the load is the point)")
def test_quick_pipeline_tables_are_byte_identical_under_cpu_load(pipeline_run, tmp_path):
  first, _ = pipeline_run
  burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(os.cpu_count() or 2)]
  try:
    r = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "pipeline",
                        f"--config={os.path.join(ROOT, 'configs', 'pipeline_default.py')}:quick",
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=1200)
  finally:
    for b in burners:
      b.kill()
      b.wait()
  assert r.returncode == 0, r.stderr[-3000:]
  want, got = _table_digests(first), _table_digests(str(tmp_path / "run"))
  # every stage's tables: correlations (final and over training), analyses, the browser's export
  assert any(k.startswith(os.path.join("corr", "tables")) for k in want)
  assert any(k.startswith("corr_steps") for k in want) and any(k.startswith("analyses") for k in want)
  assert sorted(got) == sorted(want)
  assert [k for k in want if want[k] != got[k]] == []
