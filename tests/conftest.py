"""Test setup: 8 virtual CPU devices (multi-device code is tested on them), offline hubs, and
one persistent XLA compilation cache for the whole run.

The cache: many tests compile the same jitted functions (the forward, the correlate step,
the training step), in this process and in the `main.py` subprocesses they start. A fresh
cache directory per test session (inherited by subprocesses through the environment) lets
each distinct program compile once per run; a cached executable is the same program, so
results are unchanged. The directory is removed when the session ends.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="ucore-tests-xla-cache-")
  atexit.register(shutil.rmtree, _cache, True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def model():
  """The planted tiny GPT-2 of tests/planted.py (one per test module: tests may not
  share a mutated model across modules)."""
  from tests import planted
  return planted.planted_model()


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
  """The quick pipeline (configs/pipeline_default.py:quick) run once per session, shared by
  every test that reads a finished study (test_pipeline, test_notebook): (workdir, the
  finished CompletedProcess)."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = str(tmp_path_factory.mktemp("pipeline") / "run")
  r = subprocess.run([sys.executable, os.path.join(root, "main.py"), "pipeline",
                      f"--config={os.path.join(root, 'configs', 'pipeline_default.py')}:quick",
                      f"--workdir={workdir}"], cwd=root, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir, r
