"""`main.py correlate` refuses a step that cannot fit before any step runs (issue 13 item 4)."""
import logging
import os
import subprocess
import sys

from tests import job_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_correlate_refuses_a_step_that_cannot_fit_before_any_step(tmp_path, caplog):
  """The refusal through the real CLI (its exit status and stderr are the claim); the run
  that fits through main.py's dispatch in this process (its outcome is the claim)."""
  args = ["correlate", "--config=configs/correlate_tiny.py", f"--workdir={tmp_path / 'w'}"]
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  r = subprocess.run([sys.executable, "main.py", *args, "--config.memory.device_gib=0.0001"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "one correlate step" in err[0] and "batch_rows" in err[0]
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "w" / "state")   # refused before any step or commit
  with caplog.at_level(logging.INFO):   # the device's own figure: it fits
    status, _, stderr = job_runs.main_in_process(*args, "--verbosity=0")   # INFO logs
  assert status == 0, stderr[-2000:]
  assert os.path.exists(tmp_path / "w" / "tables" / "summary.json")
  assert "one step needs" in caplog.text               # the preflight's figure is logged
