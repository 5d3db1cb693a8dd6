"""One-line errors, exit 2, for the OS and the configuration (issue 10 item 6): a workdir
that is a file, a missing or broken config file, an unknown --config.x, a
malformed override value, an unknown :variant."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/correlate_tiny.py"


def _main(*args):
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture
def paths(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  afile = tmp_path / "afile"
  afile.write_text("x")
  # (A read-only workdir is not tested: the tests run as root, which writes anyway.)
  yield dict(broken=broken, afile=afile, missing=tmp_path / "missing.py", wd=tmp_path / "wd")


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
