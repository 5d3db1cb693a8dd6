"""Analyze reruns are idempotent (issue 21 item 4): a finished analyze says so and writes
nothing; its report figures keep stable names; a redone run (other inputs) leaves no orphan
of the earlier one. Through the CLI entry, as a user reruns `python main.py analyze ...`."""
import hashlib
import os

from benchmarks.config_sweep import run_argv
from tests.test_analyses_cli import inputs  # noqa: F401  (the module-scoped fixture)


def _files(root):
  """{relative path: sha256} of every file under root (the lock file aside)."""
  out = {}
  for d, _, names in os.walk(root):
    for n in names:
      p = os.path.join(d, n)
      if n != ".lock":
        out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


def _analyze(inputs, wd, analysis, *extra):
  import io
  args = ["analyze", "--config=configs/analyze_default.py:quick",
          f"--config.model_dir={inputs['model_dir']}",
          f"--config.token_store={inputs['store'].path}", f"--config.corr_table={inputs['corr']}",
          "--config.max_rows=8", f"--analysis={analysis}", f"--workdir={wd}", *extra]
  out = io.StringIO()
  status, stderr, exc = run_argv(args, stdout=out)
  assert exc is None and status == 0, stderr[-2000:]
  return out.getvalue()


def test_reruns_write_nothing_and_a_redone_run_leaves_no_orphans(inputs, tmp_path):  # noqa: F811
  wd = str(tmp_path / "an")
  assert "analyses written" in _analyze(inputs, wd, "stats,properties,views")
  first = _files(wd)
  assert "report/index.html" in first and "sections.json" in first
  assert [f for f in first if f.startswith("properties/")]
  for _ in range(2):
    assert "already complete" in _analyze(inputs, wd, "stats,properties,views")
    assert _files(wd) == first   # same set of files, byte for byte
  assert not [f for f in first if f.rsplit(".", 1)[0].endswith(("-1", "-2"))]
  _analyze(inputs, wd, "stats,views")   # other inputs: redone, the earlier outputs removed
  after = _files(wd)
  assert not [f for f in after if f.startswith("properties/")]
  assert set(after) < set(first)
  assert not [f for f in after if f.rsplit(".", 1)[0].endswith(("-1", "-2"))]
