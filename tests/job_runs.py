"""Two ways the tests run the product's jobs outside a plain `main.py` subprocess.

  main_in_process(*args)        `main.py ARGS` in the test process, through main.py's flag
                                parser and dispatch (benchmarks.config_sweep.run_argv): for CLI
                                calls whose process boundary is not the claim
  several_in_one_process(script, jobs, env)
                                one fresh `python -c` process running `script` over `jobs`
                                (argv[1], JSON) one after another: for a resume or a re-run that
                                must happen in a new process, followed by runs that need not
"""
import io
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a `several_in_one_process` script prints to stderr before each job: the jobs' logs are
# told apart by it.
MARK = "=== next job ==="


def main_in_process(*args):
  """(exit status, stdout, stderr) of `main.py *args`; a traceback (a bug, not a user error)
  fails the test."""
  from benchmarks.config_sweep import run_argv
  out = io.StringIO()
  status, stderr, exc = run_argv(list(args), stdout=out)
  assert exc is None, stderr[-3000:]
  return status, out.getvalue(), stderr


def several_in_one_process(script: str, jobs: list, env: dict, timeout: int = 600):
  """(the CompletedProcess, each job's stderr): `script` sees MARK defined and the jobs as
  json.loads(sys.argv[1]); it must print MARK to stderr before each job."""
  r = subprocess.run([sys.executable, "-c", f"MARK = {MARK!r}\n" + script, json.dumps(jobs)],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  return r, r.stderr.split(MARK)[1:]
