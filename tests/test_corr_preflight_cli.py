"""`main.py correlate` refuses a step that cannot fit before any step runs (issue 13 item 4)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_correlate_refuses_a_step_that_cannot_fit_before_any_step(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")

  def run(*a):
    return subprocess.run([sys.executable, "main.py", "correlate",
                           "--config=configs/correlate_tiny.py",
                           f"--workdir={tmp_path / 'w'}", *a], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)

  r = run("--config.memory.device_gib=0.0001")
  assert r.returncode == 2, r.stderr[-2000:]
  err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "one correlate step" in err[0] and "batch_rows" in err[0]
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "w" / "state")   # refused before any step or commit
  r = run()                                            # the device's own figure: it fits
  assert r.returncode == 0, r.stderr[-2000:]
  assert os.path.exists(tmp_path / "w" / "tables" / "summary.json")
  assert "one step needs" in r.stderr                  # the preflight's figure is logged
