"""Two processes on localhost (jax.distributed, gloo CPU collectives, 2 devices each) give the
same tables as one process."""
import os
import socket
import subprocess
import sys

import pytest

from tests.test_corr_resume import _same, _tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["main.py", "correlate", "--config=configs/correlate_tiny.py"]


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
              PYTHONPATH=ROOT)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow("two JAX processes (jax.distributed) against one")
def test_two_processes_equal_one(tmp_path):
  one = subprocess.run([sys.executable, *ARGS, f"--workdir={tmp_path / 'one'}",
                        "--config.mesh.tok=1", "--config.mesh.neu=2"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-2000:]
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, *ARGS, f"--workdir={tmp_path / 'two'}",
                             "--config.mesh.tok=2", "--config.mesh.neu=2",
                             f"--coordinator_address=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}"], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  _same(_tables(tmp_path / "one"), _tables(tmp_path / "two"))
  # both processes took part: the summary reports the whole store's tokens
  import json
  s1 = json.load(open(tmp_path / "one" / "tables" / "summary.json"))
  s2 = json.load(open(tmp_path / "two" / "tables" / "summary.json"))
  assert s1["tokens_counted"] == s2["tokens_counted"] > 0
  assert s2["identity"]["process_count"] == 2
