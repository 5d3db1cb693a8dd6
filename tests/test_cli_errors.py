"""One-line errors, exit 2, for the OS and the configuration (issue 10 item 6): a workdir
that is a file, a missing or broken config file, an unknown --config.x, a
malformed override value, an unknown :variant."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import job_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/correlate_tiny.py"


def _main(*args):
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture
def paths(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  bad_ids = tmp_path / "bad_ids.py"   # token ids as names, in a config file (not the CLI)
  bad_ids.write_text("from ucore.jobs import config_files\n\ndef get_config():\n"
                     "  c = config_files.load('correlate_tiny')\n"
                     "  c.exclude_ids = ('eos', 198)\n  return c\n")
  afile = tmp_path / "afile"
  afile.write_text("x")
  # (A read-only workdir is not tested: the tests run as root, which writes anyway.)
  yield dict(broken=broken, bad_ids=bad_ids, afile=afile, missing=tmp_path / "missing.py", wd=tmp_path / "wd")


CASES = {
    "broken_config": (["correlate", "--config={broken}", "--workdir={wd}"], "SyntaxError"),
    "missing_config": (["pipeline", "--config={missing}", "--workdir={wd}"],
                       "No such file or directory"),
    "unknown_field": (["correlate", TINY, "--config.nosuch=1", "--workdir={wd}"],
                      "unknown config field"),
    "malformed_value": (["correlate", TINY, "--config.batch_rows=abc", "--workdir={wd}"],
                        "--config.batch_rows=abc"),
    "bad_variant": (["pipeline", "--config=configs/pipeline_default.py:bogus",
                     "--workdir={wd}"], "unknown variant"),
    "list_element_type": (["train", "--config=configs/train_default.py", "--config.seeds=4,x",
                           "--workdir={wd}"], "every element must be an int"),
    "list_token_ids": (["correlate", TINY, "--config.exclude_ids=x,2", "--workdir={wd}"],
                       "every element must be an int"),
    "config_file_token_ids": (["correlate", "--config={bad_ids}", "--workdir={wd}"],
                              "config.exclude_ids=('eos', 198) holds 'eos', which must be"),
    "list_empty_element": (["correlate", TINY, "--config.models=a,,b", "--workdir={wd}"],
                           "empty element"),
    "list_literal": (["correlate", TINY, "--config.exclude_ids=(1,", "--workdir={wd}"],
                     "not a Python list/tuple literal"),
    "workdir_is_file": (["correlate", TINY, "--workdir={afile}"], "is a file"),
    "unknown_flag": (["correlate", TINY, "--nosuchflag=1", "--workdir={wd}"],
                     "Unknown command line flag"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_line_error(paths, case):
  args, message = CASES[case]
  r = _main(*[a.format(**paths) for a in args])
  assert r.returncode == 2, r.stderr[-2000:]
  assert "Traceback" not in r.stderr and "FATAL" not in r.stderr, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, r.stderr[-2000:]
  assert not paths["wd"].exists()


def failing_writes(when: str, code: str):
  """ucore.jobs.atomic.write_bytes whose n-th call (`when` all digits), or first call whose
  path holds `when`, raises OSError(errno `code`), as a full disk (or an unwritable workdir)
  makes it fail."""
  import errno
  from ucore.jobs import atomic
  write_bytes, calls, done = atomic.write_bytes, [], []

  def failing(path, data):
    calls.append(path)
    if not done and ((len(calls) == int(when)) if when.isdigit() else (when in path)):
      done.append(path)
      err = getattr(errno, code)
      raise OSError(err, os.strerror(err), path)
    return write_bytes(path, data)
  return failing


# `main.py ...` in a process whose writes fail as above; the rest of the run is the real
# command
_FAILING = """
import sys
from ucore.jobs import atomic
from tests.test_cli_errors import failing_writes
atomic.write_bytes = failing_writes(sys.argv[1], sys.argv[2])
sys.argv = ["main.py", *sys.argv[3:]]
import main
from absl import app
app.run(main.main, flags_parser=main._parse_flags)
"""
# The first 200 documents of the embedded corpus, 50 per encoded batch: five shards (four
# batches and the final one) and 19 atomic writes, as the whole corpus in batches of 1000 gives,
# at a tenth of the tokenizing.
TOK = ["tokenize", "--config=configs/tokenize_default.py:tiny", "--config.num_tokens=6000",
       "--config.shard_rows=16", "--config.max_documents=200", "--config.encode_batch_docs=50"]


def _main_failing(n, code, *args, real=True, monkeypatch=None):
  """(exit status, stderr) of `main.py *args` whose writes fail as failing_writes(n, code)
  says: a real process, or (real=False) this process through main.py's parser and dispatch,
  for the cases beside a kind's real one."""
  if not real:
    from ucore.jobs import atomic
    monkeypatch.setattr(atomic, "write_bytes", failing_writes(str(n), code))
    status, _, stderr = job_runs.main_in_process(*args)
    monkeypatch.undo()
    return status, stderr
  r = subprocess.run([sys.executable, "-c", _FAILING, str(n), code, *args], cwd=ROOT,
                     capture_output=True, text=True, timeout=600,
                     env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
  return r.returncode, r.stderr


def _main_in_process(*args):
  """`main.py *args` in this process (the reference store and the reruns after "freeing
  space": their process boundary is not the claim; the failing runs above are real
  processes). Asserts exit status 0."""
  status, _, stderr = job_runs.main_in_process(*args)
  assert status == 0, stderr[-2000:]


def _one_error_line(r, message):
  status, stderr = r
  assert status == 2, stderr[-2000:]
  assert "Traceback" not in stderr and "FATAL" not in stderr, stderr[-2000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, stderr[-2000:]
  return last


@pytest.fixture(scope="module")
def ref_store(tmp_path_factory):
  ref = tmp_path_factory.mktemp("ref") / "tok"
  _main_in_process(*TOK, f"--workdir={ref}")
  return str(ref)


@pytest.mark.parametrize("n,code", [(5, "ENOSPC"), (19, "EFBIG")])
def test_disk_full_is_one_line_and_resumes_identically(tmp_path, ref_store, n, code,
                                                       monkeypatch):
  """Issue 10 item 6: a write failing for a full disk (5th write: a shard after the first
  committed one; 19th: the final manifest) exits 2 with one line; nothing looks complete;
  the same command after "freeing space" finishes the identical store. (ENOSPC in a real
  process; EFBIG, the same kind of error, in this one.)"""
  from ucore.data import build
  from ucore.data.store import open_store
  from ucore.jobs.errors import UserError
  wd = tmp_path / "tok"
  last = _one_error_line(_main_failing(n, code, *TOK, f"--workdir={wd}", real=code == "ENOSPC",
                                       monkeypatch=monkeypatch), "the disk is full")
  assert "rerun the same command" in last and os.strerror(getattr(__import__("errno"), code)) \
      in last
  assert (wd / build.BUILD_DIR / build.JOB).exists()   # the started job is kept, resumable
  with pytest.raises(UserError):
    open_store(str(wd))                                  # ... and not mistaken for a store
  assert not [p for p in os.listdir(wd / build.BUILD_DIR) if p.startswith(".tmp-")]
  _main_in_process(*TOK, f"--workdir={wd}")
  got, want = open_store(str(wd)), open_store(ref_store)
  assert got.store_id == want.store_id and got.manifest == want.manifest
  np.testing.assert_array_equal(got.read_rows(0, got.num_rows), want.read_rows(0, want.num_rows))


@pytest.fixture(scope="module")
def bpe_store(tmp_path_factory):
  from tests.bpe_store import build_bpe_store
  return build_bpe_store(str(tmp_path_factory.mktemp("bpe"))).path


@pytest.mark.slow("a real OS write error in a training subprocess, then the rerun to completion")
@pytest.mark.parametrize("code,message", [("ENOSPC", "the disk is full"),
                                          ("EPERM", "Operation not permitted")])
def test_disk_full_in_training_is_one_line_and_resumes(tmp_path, bpe_store, code, message):
  """The same for `main.py train`: the write of a kept checkpoint fails (its staging folder
  is removed, so no half checkpoint is left); the rerun completes the run from its committed
  state, each loss line once. (That a resumed run equals an uninterrupted one is
  test_train_family's kill tests.) EPERM: the workdir turned immutable (chattr +i) or
  forbidden while the job ran (issue 21 item 3); nothing of orbax's follows the line."""
  import json
  from ucore.models.hooked import load_model
  # configs/train_tiny.py on test_train_cli's 300-token BPE store: its programs (model, batch,
  # schedule), so the training step compiles once per session (a GPT-2-vocabulary store made
  # every step costly); state and held-out loss every 10 steps only (not compiled in), so
  # checkpoint-10 fails after the committed state of step 0
  train = ["train", "--config=configs/train_tiny.py", f"--config.data.store={bpe_store}",
           "--config.state_every=10", "--config.eval_every=10"]
  wd = tmp_path / "fam"
  _one_error_line(_main_failing("checkpoint-10", code, *train, f"--workdir={wd}"), message)
  assert not (wd / "family.json").exists()
  assert not (wd / "seed0" / "checkpoint-10").exists()
  assert not list(wd.glob("seed*/checkpoint-*.partial-*"))
  _main_in_process(*train, f"--workdir={wd}")
  for seed in (0, 1):
    for ck in ("checkpoint-0", "checkpoint-10", "final"):
      load_model(str(wd / f"seed{seed}" / ck))
  rows = [json.loads(line) for line in (wd / "losses.jsonl").read_text().splitlines()]
  keys = [(r["step"], r["seed"], r["split"]) for r in rows]
  assert len(keys) == len(set(keys)) and {k[0] for k in keys} == set(range(21))


def test_unwritable_workdir_is_one_line(tmp_path, monkeypatch):
  """EROFS / EACCES (a read-only or forbidden workdir; injected, the tests run as root).
  EROFS in a real process; the others, the same kind of error, in this one."""
  for code, text in (("EROFS", "Read-only file system"), ("EACCES", "Permission denied"),
                     ("EPERM", "Operation not permitted")):   # EPERM: an immutable directory
    wd = tmp_path / code
    last = _one_error_line(_main_failing(1, code, *TOK, f"--workdir={wd}",
                                         real=code == "EROFS", monkeypatch=monkeypatch), text)
    assert "--workdir" in last


def test_environment_error_looks_through_causes_and_library_messages():
  import errno
  from ucore.jobs.errors import environment_error
  try:
    try:
      raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/w/x")
    except OSError as e:
      raise RuntimeError("checkpoint save failed") from e
  except RuntimeError as e:
    assert "the disk is full" in environment_error(e) and "/w/x" in environment_error(e)
  # tensorstore reports the OS error only in its message
  ts = ValueError("Error writing local file \"/w/tokens/c/0\": [OS error: No space left on "
                  "device]")
  assert "No space left on device" in environment_error(ts)
  ts = ValueError("Error writing local file \"/w/tokens/c/0\": [OS error: Operation not "
                  "permitted]")   # a workdir made immutable while tensorstore writes
  assert "Operation not permitted" in environment_error(ts)
  assert environment_error(ValueError("bad shape")) is None
  assert environment_error(OSError(errno.ENOENT, "No such file")) is None
