"""Kill `main.py correlate` at random points (between steps, while writing shards, between
manifest and commit marker, after the commit), resume with the same command, and compare with
an uninterrupted run (≤ 1e-6). Also: a changed input is refused; uncommitted state is never
used."""
import os
import random
import subprocess
import sys

import numpy as np
import pandas as pd

from ucore.corr import state as ST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--config=configs/correlate_tiny.py", "--config.checkpoint.every_steps=1",
        "--config.mesh.tok=1", "--config.mesh.neu=2"]


def _run(workdir, *extra, fault=None):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=ROOT)
  env.pop("UCORE_CORR_FAULT", None)
  if fault:
    env["UCORE_CORR_FAULT"] = fault
  return subprocess.run([sys.executable, "main.py", "correlate", f"--workdir={workdir}",
                         *BASE, *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


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


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
  ref = tmp_path / "ref"
  r = _run(ref)
  assert r.returncode == 0, r.stderr[-2000:]
  want = _tables(ref)
  assert int(want["neurons"]["universal"].sum()) == 4

  rng = random.Random(20240117)   # fixed: reproducible "random" kill points
  work = tmp_path / "killed"
  steps = []
  for fault in (f"step:{rng.randint(1, 4)}", f"arrays:{rng.randint(1, 2)}",
                f"manifest:{rng.randint(1, 2)}", "commit:1"):
    r = _run(work, fault=fault)
    assert r.returncode == 137, (fault, r.returncode, r.stderr[-2000:])
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
  r = _run(work)
  assert r.returncode == 0, r.stderr[-2000:]
  _same(want, _tables(work))
  # running again after completion is a no-op; with another input it is refused
  assert _run(work).returncode == 0
  r = _run(work, "--config.synthetic.offset=3.0")
  assert r.returncode == 2 and "cannot resume" in r.stderr
