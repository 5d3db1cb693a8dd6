"""One run per workdir (issue 10 item 4): a second process on a held workdir exits 2 with
"workdir X is in use by process N"; a kill -9 leaves no stale lock; nested workdirs (the
pipeline and its stages) and re-entry in one process do not deadlock."""
import os
import signal
import subprocess
import sys

import pytest

from ucore.jobs import workdir_lock
from ucore.jobs.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys, time; from ucore.jobs import workdir_lock\n"
        "with workdir_lock.hold(sys.argv[1]):\n"
        "  print('held', flush=True); time.sleep(600)\n")


@pytest.fixture
def holder(tmp_path):
  wd = tmp_path / "wd"
  p = subprocess.Popen([sys.executable, "-c", HOLD, str(wd)], cwd=ROOT, stdout=subprocess.PIPE,
                       text=True)
  assert p.stdout.readline().strip() == "held"
  yield wd, p
  p.kill()
  p.wait()


COMMANDS = {
    "tokenize": ["--config=configs/tokenize_default.py"],
    "train": ["--config=configs/train_tiny.py"],
    "correlate": ["--config=configs/correlate_tiny.py"],
    "analyze": ["--config=configs/analyze_default.py"],
    "pipeline": ["--config=configs/pipeline_default.py"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_second_run_is_refused(holder, command):
  wd, p = holder
  before = sorted(os.listdir(wd))
  r = subprocess.run([sys.executable, "main.py", command, *COMMANDS[command],
                      f"--workdir={wd}"], cwd=ROOT, capture_output=True, text=True,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == (
      f"error: workdir {wd} is in use by process {p.pid}; wait for it to finish (or stop it) "
      "and run again")
  assert sorted(os.listdir(wd)) == before   # nothing written


def test_kill_9_leaves_no_stale_lock(holder):
  wd, p = holder
  with pytest.raises(UserError, match=f"in use by process {p.pid}"):
    with workdir_lock.hold(str(wd)):
      pass
  p.send_signal(signal.SIGKILL)
  p.wait()
  with workdir_lock.hold(str(wd)):
    pass


def test_reentrant_and_nested(tmp_path):
  outer, inner = tmp_path / "run", tmp_path / "run" / "corr"
  with workdir_lock.hold(str(outer)):
    with workdir_lock.hold(str(inner)), workdir_lock.hold(str(outer)):
      pass
    with workdir_lock.hold(str(inner)):   # released and taken again
      pass
  # released: another process can take it
  r = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"), str(outer)],
                     cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0 and r.stdout.strip() == "held"


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "f"
  f.write_text("x")
  with pytest.raises(UserError, match="is a file"):
    with workdir_lock.hold(str(f)):
      pass
