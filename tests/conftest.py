"""Test setup: 8 virtual CPU devices (multi-device code is tested on them), offline hubs, and
one persistent XLA compilation cache for the whole run.

The cache: many tests compile the same jitted functions (the forward, the correlate step,
the training step), in this process and in the `main.py` subprocesses they start. A fresh
cache directory per test session (inherited by subprocesses through the environment) lets
each distinct program compile once per run; a cached executable is the same program, so
results are unchanged. The directory is removed when the session ends. Under pytest-xdist
(the README's `-n 2`) the controller imports this file first, so its workers and their
subprocesses inherit the one directory. Two processes may compile the same program at once
(as test_corr_multiprocess's two processes always did): each writes the same entry, and a read
that meets a half-written entry fails to deserialize, which JAX treats as a miss (a warning,
then it compiles).

Two workers (`-n 2`): the suite is mostly single-threaded Python, compiles and subprocess
start-ups, so one process keeps only ~1.35 of the 2 cores busy. The scheduler below hands out
whole test files (module-scoped fixtures are built once), keeps every user of the session's
quick pipeline on one worker (it runs once), and starts the files that hold `slow` tests
first so that no long file starts last. Each file's compiled programs are released when it
ends (`jax.clear_caches`), which bounds each worker's memory.
"""
import atexit
import gc
import os
import shutil
import subprocess
import sys
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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pipeline_argv(variant: str, workdir: str) -> list:
  return [sys.executable, os.path.join(ROOT, "main.py"), "pipeline",
          f"--config={os.path.join(ROOT, 'configs', 'pipeline_default.py')}:{variant}",
          f"--workdir={workdir}"]


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
  """The quick pipeline (configs/pipeline_default.py:quick) run once per session, shared by
  every test that reads a finished study (test_pipeline, test_notebook): (workdir, the
  finished CompletedProcess)."""
  workdir = str(tmp_path_factory.mktemp("pipeline") / "run")
  r = subprocess.run(_pipeline_argv("quick", workdir), cwd=ROOT, capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir, r


@pytest.fixture(scope="session")
def concurrent_pipelines(pipeline_run, tmp_path_factory):
  """Two more pipelines started at the same moment, after `pipeline_run`, each the other's CPU
  load: the quick pipeline again (test_determinism compares its tables with pipeline_run's:
  it runs beside a busy process, so its threads are scheduled differently) and the larger
  `:gpu,quick` variant (test_pipeline_variants; six layers, it outlasts the quick rerun).
  {"quick": (workdir, CompletedProcess), "gpu,quick": ...}; both must have succeeded."""
  base = tmp_path_factory.mktemp("concurrent")
  procs = {}
  for variant in ("gpu,quick", "quick"):
    name = variant.replace(",", "_")
    # files, not pipes: neither process can block on a full pipe while the other is awaited
    out, err = open(base / f"{name}.out", "w+"), open(base / f"{name}.err", "w+")
    p = subprocess.Popen(_pipeline_argv(variant, str(base / name)), cwd=ROOT, stdout=out,
                         stderr=err, text=True)
    procs[variant] = (str(base / name), out, err, p)
  runs = {}
  for variant, (wd, out, err, p) in procs.items():
    code = p.wait(timeout=1200)
    texts = []
    for f in (out, err):
      f.seek(0)
      texts.append(f.read())
      f.close()
    runs[variant] = (wd, subprocess.CompletedProcess(p.args, code, *texts))
  for variant, (_, r) in runs.items():
    assert r.returncode == 0, f"{variant}: {r.stderr[-3000:]}"
  return runs


# The session's pipelines (`pipeline_run`, `concurrent_pipelines`) are built once: every file
# that uses them runs on the same xdist worker.
PIPELINE_RUN_FILES = ("test_pipeline.py", "test_notebook.py", "test_export_hf.py",
                      "test_determinism.py", "test_pipeline_variants.py")


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow(reason): a test that stays slow for the stated reason (it still runs in "
      "the README command; its file is scheduled first)")


def pytest_collection_modifyitems(items):
  """Files holding a `slow` test first (whole files keep their order and stay contiguous):
  with two workers, the long files start early instead of leaving one worker idle at the
  end. The same deterministic order in every worker, as xdist requires."""
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  from xdist.scheduler import LoadScopeScheduling

  class FileScheduling(LoadScopeScheduling):
    """Whole files as work units (module fixtures built once), the pipeline_run users as one
    unit, in collection order (slow files first)."""

    def _split_scope(self, nodeid):
      path = nodeid.split("::", 1)[0]
      return "pipeline_run" if os.path.basename(path) in PIPELINE_RUN_FILES else path

  config.option.loadscopereorder = False   # keep the collection's slow-first order
  return FileScheduling(config, log)


def _collect_and_freeze():
  """Collects the garbage, then moves every surviving object (the imported libraries: ~500k
  objects once jax, flax, torch and transformers are in) out of the cyclic collector's reach
  (gc.freeze). Each full collection otherwise rescans them all (~0.2 s, a dozen times a
  file); reference counting still frees frozen objects, only frozen cycles are kept."""
  gc.collect()
  gc.freeze()


def pytest_collection_finish(session):
  """Every test file, and what it imports, is loaded by now (in each xdist worker)."""
  _collect_and_freeze()


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
  """After each file: drop JAX's in-memory compiled programs and traces (the next file
  recompiles from the persistent cache) so one process's memory does not grow file by file,
  and freeze what survives (the file's lazily imported libraries)."""
  yield
  if "jax" in sys.modules:
    sys.modules["jax"].clear_caches()
  _collect_and_freeze()
