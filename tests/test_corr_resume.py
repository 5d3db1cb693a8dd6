"""SIGKILL a correlate run at random points (between steps, while writing shards, between
manifest and commit marker, after the commit), resume with `main.py correlate`, and compare
with an uninterrupted run (≤ 1e-6). Also: a changed input is refused; uncommitted state is
never used."""
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests import job_runs
from ucore.corr import state as ST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--config=configs/correlate_tiny.py", "--config.checkpoint.every_steps=1",
        "--config.mesh.tok=1", "--config.mesh.neu=2"]


# The same job as `main.py correlate` with BASE, in a process that SIGKILLs itself (no
# cleanup runs) the n-th time the driver reaches `phase` (ucore.corr.driver.run's _hook).
_KILLED = """
import os, signal, sys
from ucore.jobs import config_files
from ucore.corr import driver
phase, n, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = config_files.load("correlate_tiny")
c.checkpoint.every_steps, c.mesh.tok, c.mesh.neu = 1, 1, 2
seen = []
def hook(p):
  seen.append(p)
  if seen.count(phase) == n:
    os.kill(os.getpid(), signal.SIGKILL)
driver.run(c, workdir, _hook=hook)
"""


# The same job as `main.py correlate` with BASE and the given overrides, several times in one
# process (tests/job_runs.several_in_one_process; jobs: [[workdir, {field: value}], ...]); per
# job job_runs.MARK, then "ok" or the UserError's one line, on stderr.
_SEVERAL = """
import json, sys
from ucore.jobs import config_files
from ucore.jobs.errors import UserError
from ucore.corr import driver
for workdir, over in json.loads(sys.argv[1]):
  c = config_files.load("correlate_tiny")
  c.checkpoint.every_steps, c.mesh.tok, c.mesh.neu = 1, 1, 2
  for k, v in over.items():
    setattr(c.synthetic, k, v)
  print(MARK, file=sys.stderr, flush=True)
  try:
    driver.run(c, workdir)
    print("ok", file=sys.stderr, flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
"""


def _run_several(*runs):
  """Each (workdir, {synthetic field: value}) run in turn in one process: each's stderr."""
  r, logs = job_runs.several_in_one_process(_SEVERAL, [[str(w), o] for w, o in runs], _env(),
                                            timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return [log.strip() for log in logs]


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
              PYTHONPATH=ROOT)


def _run(workdir, *extra):
  return subprocess.run([sys.executable, "main.py", "correlate", f"--workdir={workdir}",
                         *BASE, *extra], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=300)


def _run_killed(workdir, fault):
  phase, _, n = fault.partition(":")
  return subprocess.run([sys.executable, "-c", _KILLED, phase, n, str(workdir)], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=300)


def _tables(workdir):
  t = os.path.join(workdir, "tables")
  out = {"neurons": pd.read_parquet(os.path.join(t, "neurons_synth0.parquet"))}
  for f in sorted(os.listdir(os.path.join(t, "pairs"))):
    out[f] = pd.read_parquet(os.path.join(t, "pairs", f))
  return out


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    x, y = a[k], b[k]
    assert list(x.columns) == list(y.columns) and x.index.equals(y.index)
    for c in x.columns:
      u, v = x[c].to_numpy(), y[c].to_numpy()
      if u.dtype.kind == "f":
        np.testing.assert_allclose(v, u, rtol=0, atol=1e-6, equal_nan=True, err_msg=f"{k}:{c}")
      elif not c.startswith("top") and not c.startswith("max_sim"):
        np.testing.assert_array_equal(v, u, err_msg=f"{k}:{c}")


def _assert_committed_is_consistent(state_dir):
  man, path = ST.latest(state_dir)
  if man is None:
    return None
  assert os.path.exists(os.path.join(path, "COMMIT"))
  assert man["cursor"]["row"] == 8 * man["cursor"]["step"]   # 8 rows per step, 64 rows
  return man["cursor"]["step"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  """The uninterrupted run both tests compare against (run once: the same command)."""
  ref = tmp_path_factory.mktemp("uninterrupted") / "ref"
  r = _run(ref)
  assert r.returncode == 0, r.stderr[-2000:]
  return ref


@pytest.mark.slow("SIGKILLed correlate subprocesses at four points and their resume")
def test_killed_and_resumed_equals_uninterrupted(ref, tmp_path):
  want = _tables(ref)
  assert int(want["neurons"]["universal"].sum()) == 4

  rng = random.Random(20240117)   # fixed: reproducible "random" kill points
  work = tmp_path / "killed"
  steps = []
  for fault in (f"step:{rng.randint(1, 4)}", f"arrays:{rng.randint(1, 2)}",
                f"manifest:{rng.randint(1, 2)}", "commit:1"):
    r = _run_killed(work, fault)
    assert r.returncode == -signal.SIGKILL, (fault, r.returncode, r.stderr[-2000:])
    assert not (work / "tables").exists()
    steps.append(_assert_committed_is_consistent(str(work / "state")))
    if fault.startswith("manifest"):
      # the killed checkpoint has a manifest but no COMMIT: present, and ignored
      names = sorted(os.listdir(work / "state"))
      assert any(not (work / "state" / n / "COMMIT").exists() for n in names)
  assert steps[0] is not None and all(b >= a for a, b in zip(steps, steps[1:]))
  # a changed input is refused with a one-line error, and leaves the state untouched
  r = _run(work, "--config.synthetic.seed=5")
  assert r.returncode == 2 and "cannot resume" in r.stderr and "token_store" in r.stderr
  # the resume (a new process), then in that process: running again after completion is a
  # no-op; with another input it is refused (the CLI's exit status for it: just above)
  resumed, again, other = _run_several((work, {}), (work, {}), (work, {"offset": 3.0}))
  assert resumed.endswith("ok"), resumed[-2000:]
  _same(want, _tables(work))
  assert again.endswith("ok"), again[-2000:]
  assert "error:" in other and "cannot resume" in other, other[-2000:]


def test_moved_workdir_resumes(ref, tmp_path):
  """Issue 10 item 9: a killed correlate workdir moved to another path resumes there (the
  run is identified by the store's id and the models' fingerprints, not by paths)."""
  import shutil
  r = _run_killed(tmp_path / "a", "step:5")
  assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
  shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
  assert _assert_committed_is_consistent(str(tmp_path / "b" / "state")) is not None
  r = _run(tmp_path / "b")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "resum" in r.stderr.lower(), r.stderr[-2000:]
  _same(_tables(ref), _tables(tmp_path / "b"))
