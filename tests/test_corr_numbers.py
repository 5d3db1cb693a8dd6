"""Numbers are validated before anything is written (issue 10 item 5, correlate part)."""
import os

import pytest

from ucore.jobs import config_files
from ucore.corr import driver
from ucore.jobs.errors import UserError


@pytest.mark.parametrize("key,value", [("batch_rows", -8), ("batch_rows", 0), ("top_k", 0),
                                       ("start_row", -1), ("baseline.draws", 0)])
def test_bad_number_refused_before_writing(tmp_path, key, value):
  c = config_files.load("correlate_tiny")
  node, _, leaf = key.rpartition(".")
  setattr(c[node] if node else c, leaf, value)
  wd = tmp_path / "run"
  with pytest.raises(UserError, match=f"config.{key}={value} must be >="):
    driver.run(c, str(wd))
  assert not wd.exists() or os.listdir(wd) == []


@pytest.mark.parametrize("override,message", [
    # (the schema names each stage's field with its prefix: ucore/jobs/schema.py)
    ("--config.correlate.top_k=0", "config.correlate.top_k=0 must be >= 1"),
    ("--config.train.batch_rows=0", "config.train.batch_rows=0 must be >= 1"),
    ("--config.train.checkpoint_steps=(0,100000)",
     "config.train.checkpoint_steps [100000] lie past num_steps")])
def test_pipeline_checks_numbers_before_its_first_stage(tmp_path, override, message):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  wd = tmp_path / "run"
  r = subprocess.run([sys.executable, "main.py", "pipeline",
                      "--config=configs/pipeline_default.py:quick", f"--workdir={wd}", override],
                     cwd=root, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  assert message in r.stderr.strip().splitlines()[-1]
  assert not wd.exists()
