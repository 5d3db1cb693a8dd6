"""The default pipeline end to end (its `quick` variant), its caching, and its report as a
person sees it: rendered by headless Chromium with every figure loaded."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests import job_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "pipeline_default.py") + ":quick"


def _main(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)


def _rerun(*args):
  """`main.py ARGS` in this process (job_runs.main_in_process): the reruns below are about
  what a rerun reuses and rewrites, not about a fresh process; the refused config keeps a real
  one (its exit status and stderr are the claim)."""
  status, out, err = job_runs.main_in_process(*args)
  return subprocess.CompletedProcess(["main.py", *args], status, out, err)


# pipeline_run: the session's quick pipeline run (tests/conftest.py).


def test_pipeline_writes_every_stage(pipeline_run):
  workdir, r = pipeline_run
  summary = json.load(open(os.path.join(workdir, "pipeline.json")))
  assert set(summary["stage_seconds"]) == {"tokenize", "train", "correlate", "persistence",
                                           "analyze", "examples", "report"}
  neurons = pd.read_parquet(os.path.join(workdir, "corr", "tables", "neurons_seed0.parquet"))
  assert len(neurons) == summary["n_neurons"] == 2 * 64
  assert summary["n_universal"] == int(neurons["universal"].sum())
  # excess = mean_corr - mean_baseline, and the printed summary says so.
  diff = (neurons["mean_corr"] - neurons["mean_baseline"] - neurons["excess_corr"]).abs()
  assert diff.max() < 1e-6
  assert f"{summary['n_universal']} of {summary['n_neurons']}" in r.stdout
  # with its 95% interval (issue 20): the same line in the printout and the report
  iv = summary["universal_interval"]
  assert iv["count"] == summary["n_universal"] and iv["draws"] == 8 and iv["blocks"] == 20
  lo, hi = iv["count_ci95"]
  assert lo <= iv["count"] <= hi
  from ucore.report.headline import universal_line
  assert universal_line(iv) in r.stdout and "95% interval" in universal_line(iv)
  html = open(os.path.join(workdir, "report", "index.html")).read()
  assert universal_line(iv) in html
  assert "near_threshold" in neurons.columns and "excess_se" in neurons.columns
  # the real models' correlations verified themselves against float64 (issue 13)
  chk = summary["selfcheck"]
  assert chk["status"] == "ok" and chk["entries_checked"] > 0 and chk["max_abs_corr"] < 1e-5
  for step in (10,):
    assert os.path.isfile(os.path.join(workdir, "corr_steps", f"step{step}", "tables",
                                       "summary.json"))
  assert [p["step"] for p in summary["persistence"]] == [10, 20]
  by_step = {row["step"]: row for row in summary["excess_by_step"]}
  assert by_step[20]["median_excess"] == pytest.approx(float(neurons["excess_corr"].median()))
  # the persistence stage runs through ucore.sweep: its tables hold the same numbers
  over = os.path.join(workdir, "over_training")
  pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(over, "excess_by_step.parquet")),
                                pd.DataFrame(summary["excess_by_step"]).set_index("step"),
                                check_like=True, check_dtype=False)
  assert json.load(open(os.path.join(over, "summary.json")))["final_step"] == 20
  assert os.path.isfile(os.path.join(workdir, "corr_steps", "step10", "checkpoint.json"))
  assert os.path.isfile(os.path.join(workdir, "analyses", "sections.json"))
  # The correlations mask the trained BPE's own BOS/EOS and newline ids, not GPT-2's.
  from ucore.data.store import open_store
  ident = json.load(open(os.path.join(workdir, "corr", "tables", "summary.json")))["identity"]
  store = open_store(os.path.join(workdir, "tokens"))
  assert ident["exclude_ids"] == list(store.mask_exclude_ids) != [50256, 198]


UNIVERSALITY_SECTIONS = (   # (title start, section must hold a table / cards)
    ("Universal vs other neurons: the paper's properties", "<table"),
    ("Excess correlation without a threshold", "<table"),
    ("Excess correlation of sparse neurons", "<table"),
    ("Families and roles of the ", "<table"),
    ("Ablating ", None),
    ("Neuron cards (", 'class="card"'),
    ("The final ", "<table"),
    ("Attention deactivation scores", None),
    ("Fixed-activation sweep", None),
    ("Neuron families per layer", None))


def test_report_has_every_universality_section_populated(pipeline_run):
  """Every section of issue 11 is in the report with a figure (and its table / cards); in a
  run without universal neurons the captions say that the top-k stand in."""
  workdir, _ = pipeline_run
  summary = json.load(open(os.path.join(workdir, "pipeline.json")))
  html = open(os.path.join(workdir, "report", "index.html"), encoding="utf-8").read()
  parts = re.split(r"<h2>", html)
  for title, needs in UNIVERSALITY_SECTIONS:
    t = title.replace("'", "&#x27;")
    body = [p for p in parts if p.startswith(t)]
    assert len(body) == 1, (title, [p[:60] for p in parts])
    assert '<img src="figures/' in body[0], title
    if needs:
      assert needs in body[0], title
    if summary["n_universal"] == 0 and title != "Excess correlation without a threshold" \
        and title.startswith(("Universal vs", "Families", "Ablating", "Neuron cards", "The final")):
      assert "No neuron is universal in this run" in body[0], title
  assert summary["focus"]["n"] > 0 and summary["focus"]["by_step"]
  assert summary["focus"]["fallback"] == (summary["n_universal"] == 0)
  meta = json.load(open(os.path.join(workdir, "analyses", "sections.json")))
  assert "ablation" in meta["analyses"] and "cards" in meta["analyses"]


def test_pipeline_rerun_skips_finished_stages(pipeline_run):
  workdir, _ = pipeline_run
  kept = [os.path.join("family", "family.json"), os.path.join("report", "index.html"),
          "pipeline.json"]
  kept += [os.path.join("report", f) for f in os.listdir(os.path.join(workdir, "report"))
           if f.endswith(".png")]
  before = {f: os.stat(os.path.join(workdir, f)).st_mtime_ns for f in kept}
  r = _rerun("pipeline", f"--config={CONFIG}", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  # nothing rewritten: not the family, not the report (issue 21: reruns rewrote the report)
  assert {f: os.stat(os.path.join(workdir, f)).st_mtime_ns for f in kept} == before
  summary = json.load(open(os.path.join(workdir, "pipeline.json")))
  assert "[pipeline] report" not in r.stdout and "[pipeline] examples" not in r.stdout
  took = dict(re.findall(r"\[pipeline\] (\w+) done in ([0-9.]+)s", r.stdout))
  assert float(took["train"]) < 5 and float(took["analyze"]) < 5, took
  assert summary["report"] == os.path.join(workdir, "report", "index.html")


def test_pipeline_rerun_with_another_report_field_rewrites_the_report(pipeline_run, tmp_path):
  workdir, _ = pipeline_run
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy, symlinks=True)
  html = os.path.join(copy, "report", "index.html")
  before = os.stat(html).st_mtime_ns
  r = _rerun("pipeline", f"--config={CONFIG}", f"--workdir={copy}", "--config.report_top_k=3")
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(os.path.join(copy, "pipeline.json")))
  assert os.stat(html).st_mtime_ns != before and "report" in summary["stage_seconds"]
  assert summary["report_inputs"]["config"]["report_top_k"] == 3
  assert summary["stage_seconds"]["train"] < 5 and summary["stage_seconds"]["analyze"] < 5


def test_report_renders_in_headless_chromium(pipeline_run, tmp_path):
  workdir, _ = pipeline_run
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  assert chromium, "headless Chromium is required (apt-get install chromium; .ci/run does)"
  report_dir = os.path.join(workdir, "report")
  html = open(os.path.join(report_dir, "index.html"), encoding="utf-8").read()
  srcs = re.findall(r'<img src="([^"]+)"', html)
  assert len(srcs) >= 8   # Fig. 2a/2b/2c, per layer, persistence, analyses...
  # Probe page beside the report: after load, record how many images really decoded.
  probe = html.replace("</body>", "<script>window.addEventListener('load',()=>{"
                       "const ok=[...document.images].filter(i=>i.complete&&i.naturalWidth>0);"
                       "document.body.setAttribute('data-images-ok',ok.length);"
                       "document.body.setAttribute('data-images',document.images.length);});"
                       "</script></body>")
  probe_path = os.path.join(report_dir, "_probe.html")
  open(probe_path, "w", encoding="utf-8").write(probe)
  try:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files",
             "--virtual-time-budget=10000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", "file://" + probe_path],
                         capture_output=True, text=True, timeout=120).stdout
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,3000",
                    "file://" + probe_path], capture_output=True, timeout=120)
  finally:
    os.unlink(probe_path)
  m = re.search(r'data-images-ok="(\d+)"', dom)
  n = re.search(r'data-images="(\d+)"', dom)
  assert m and n, "the report did not finish loading in Chromium"
  assert int(n.group(1)) == len(srcs) and int(m.group(1)) == len(srcs)
  assert "Universal neurons" in dom or "universal" in dom.lower()
  assert shot.exists() and shot.stat().st_size > 20_000   # a real rendered page, not blank


def test_bad_pipeline_config_refused_before_any_work(tmp_path):
  workdir = str(tmp_path / "run")
  r = _main("pipeline", f"--config={CONFIG}", f"--workdir={workdir}",
            "--config.persistence_steps=(7,)")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("error: config.persistence_steps [7]")
  assert not os.path.exists(workdir)


def test_moved_workdir_resumes_without_redoing_stages(pipeline_run, tmp_path):
  """Issue 10 item 9: a finished pipeline workdir copied elsewhere (the original out of
  reach) is accepted there: no stage is redone and the results are the same."""
  workdir, _ = pipeline_run
  moved = str(tmp_path / "moved")
  shutil.copytree(workdir, moved, symlinks=True)
  away = workdir + ".away"
  os.rename(workdir, away)   # nothing may still read the old place
  try:
    r = _rerun("pipeline", f"--config={CONFIG}", f"--workdir={moved}")
  finally:
    os.rename(away, workdir)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(os.path.join(moved, "pipeline.json")))
  assert summary["family"] == os.path.join(moved, "family")
  assert summary["stage_seconds"]["train"] < 5 and summary["stage_seconds"]["analyze"] < 5
  for f in ("corr/tables/neurons_seed0.parquet", "corr_steps/step10/tables/summary.json"):
    assert os.path.getmtime(os.path.join(moved, f)) == os.path.getmtime(os.path.join(workdir, f))
  pd.testing.assert_frame_equal(
      pd.read_parquet(os.path.join(moved, "corr", "tables", "neurons_seed0.parquet")),
      pd.read_parquet(os.path.join(workdir, "corr", "tables", "neurons_seed0.parquet")))
  assert os.path.isfile(os.path.join(moved, "report", "index.html"))


def test_neuron_browser_finds_every_neuron_in_chromium(pipeline_run, tmp_path):
  """The browser beside the report holds every neuron of the reference seed, the report links
  it, and a neuron typed into its search box opens with its card."""
  from tests.test_browser import search_and_render
  workdir, _ = pipeline_run
  summary = json.load(open(os.path.join(workdir, "pipeline.json")))
  report = os.path.join(workdir, "report")
  assert 'href="neurons/index.html"' in open(os.path.join(report, "index.html")).read()
  neurons = pd.read_parquet(os.path.join(workdir, "corr", "tables", "neurons_seed0.parquet"))
  exported = pd.concat([pd.read_parquet(os.path.join(report, "neurons", "export", f))
                        for f in sorted(os.listdir(os.path.join(report, "neurons", "export")))
                        if f.endswith(".parquet")])
  assert len(exported) == summary["n_neurons"] == len(neurons)
  np.testing.assert_array_equal(exported.set_index(["layer", "neuron"]).excess_corr
                                .reindex(neurons.index), neurons.excess_corr)
  last = exported[exported.contexts.map(len) > 0].iloc[-1]   # the last neuron that fires
  dom = search_and_render(os.path.join(report, "neurons", "index.html"), tmp_path, last["id"])
  assert f'data-card="{last["id"]}"' in dom, dom[-2000:]
  assert f'<h2 id="card-title">{last["id"]}</h2>' in dom and "<mark>" in dom
