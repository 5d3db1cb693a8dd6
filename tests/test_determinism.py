"""Determinism as a guarantee (issue 20 item 3): the quick pipeline run twice on the same
machine and device count — the second time beside another pipeline that keeps the cores busy
(tests/conftest.py's `concurrent_pipelines`: the larger `:gpu,quick` study, started at the same
moment), so thread scheduling differs — writes byte-identical tables (sha256 of every parquet
file)."""
import hashlib
import os

import pytest


def _table_digests(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      if f.endswith(".parquet"):
        path = os.path.join(root, f)
        out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


@pytest.mark.slow("two more quick-scale pipelines (this rerun and, as its CPU load, the "
                  "`:gpu,quick` study of test_pipeline_variants)")
def test_quick_pipeline_tables_are_byte_identical_under_cpu_load(pipeline_run,
                                                                  concurrent_pipelines):
  first, _ = pipeline_run
  second, r = concurrent_pipelines["quick"]
  assert r.returncode == 0, r.stderr[-3000:]
  want, got = _table_digests(first), _table_digests(second)
  # every stage's tables: correlations (final and over training), analyses, the browser's export
  assert any(k.startswith(os.path.join("corr", "tables")) for k in want)
  assert any(k.startswith("corr_steps") for k in want) and any(k.startswith("analyses") for k in want)
  assert sorted(got) == sorted(want)
  assert [k for k in want if want[k] != got[k]] == []
