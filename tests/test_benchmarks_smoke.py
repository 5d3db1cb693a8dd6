"""Smoke runs of the benchmark scripts at tiny shapes (no timings are asserted: the figures
only have to be there and be finite; the numbers that matter are in BENCHMARKS.md)."""
import json
import math
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="")
  p = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stdout + p.stderr
  return p.stdout


def test_gpu_correlate_small_prints_the_table_with_finite_numbers():
  out = _run("benchmarks.gpu_correlate", "--small")
  rows = [l for l in out.splitlines() if l.startswith("| ") and not l.startswith("| section")]
  by_section = {}
  for line in rows:
    section, what, figs = [c.strip() for c in line.strip("|").split("|")]
    by_section.setdefault(section, []).append((what, figs))
    if figs.startswith("note "):      # a preset the platform lacks, or no precision= yet
      assert "unsupported" in figs or "precision=" in figs, line
      continue
    nums = re.findall(r"([a-z_]+) (\S+?)(?:,|$)", figs)
    assert nums, line
    for key, val in nums:
      assert math.isfinite(float(val)) and float(val) >= 0, line
  assert set(by_section) == {"1 ceiling", "2 step", "3 precision", "4 original"}
  numeric = lambda sec: [w for w, f in by_section[sec] if not f.startswith("note ")]
  assert any("highest" in w for w in numeric("1 ceiling"))
  assert any("highest" in w for w in numeric("2 step"))
  assert any("highest" in w for w in numeric("3 precision"))
  assert len(numeric("4 original")) == 4
  err = re.search(r"highest, \S+ \| tflops \S+, max_abs_corr_err (\S+) \|", out)
  assert err and float(err.group(1)) < 1e-5, out


def test_corr_bench_original_small_agrees_with_float64():
  out = _run("benchmarks.corr_bench", "original", "--neurons=128", "--tokens=512",
             "--batch=128", "--reps=1", "--legacy=1")
  row = json.loads(out.strip().splitlines()[-1])
  for k, v in row.items():
    if isinstance(v, float):
      assert math.isfinite(v), (k, row)
  # float16 capture bounds the original's error; the engine is float32-exact
  for k in ("original_maxcorr_err", "original_baseline_err", "legacy_maxcorr_err",
            "legacy_baseline_err"):
    assert row[k] < 1e-3, (k, row)
  assert row["ours_maxcorr_err"] < 1e-5 and row["ours_baseline_err"] < 1e-5, row
  assert abs(row["original_maxcorr_err"] - row["legacy_maxcorr_err"]) < 1e-5, row


def test_gpu_correlate_end_to_end_row_shells_out_to_correlate(tmp_path):
  # no checkpoints here: correlate refuses with its one-line error, the row records rc 2
  # (the generated config loaded and carried --models through)
  out = _run("benchmarks.gpu_correlate", "--small", "--sections=5", "--models",
             str(tmp_path / "m0"), str(tmp_path / "m1"), "--token_store", str(tmp_path / "tok"),
             "--e2e_tokens", "1000")
  assert "e2e> error: model m0: path" in out, out
  assert re.search(r"\| 5 end to end \| main.py correlate, 2 models, 1000 tokens .*\| rc 2,", out)


def test_progress_rate_reads_a_real_correlate_log(tmp_path):
  """benchmarks/progress_rate.py (the GPU session's steady-state figure) parses what
  `main.py correlate` logs: every progress line, the steady rates after the first, and the
  commit, self-check and finalize lines."""
  from benchmarks.progress_rate import summarize
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="")
  p = subprocess.run([sys.executable, "main.py", "correlate", "--config=configs/correlate_tiny.py",
                      f"--workdir={tmp_path / 'w'}", "--config.log_every=1"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-2000:]
  n_lines = p.stderr.count("correlate: step ")
  s = summarize(p.stderr.splitlines())
  assert n_lines >= 3 and s["progress_lines"] == n_lines
  assert len(s["steady_tokens_per_s"]) == n_lines - 1
  assert all(v > 0 for v in s["steady_tokens_per_s"]) and s["rows"] > 0
  for what in ("committed step", "self-check", "tables computed", "wrote "):
    assert any(what in n for n in s["notes"]), (what, s["notes"])
  with open(tmp_path / "w" / "tables" / "summary.json") as f:
    assert json.load(f)["finalize_seconds"] > 0
