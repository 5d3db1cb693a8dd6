"""Issue 18 item 1: correlations in passes. A synthetic family whose accumulator state is
3× a set device-memory cap runs in ≥ 3 passes (partner groups × reference-layer chunks), and
its tables and self-check are bit-identical to a single-pass run; SIGKILLed in pass 2 and
rerun, it resumes in pass 2 and is identical again. The tiling itself: every pair and
reference row is covered exactly once, and a cap below the smallest tile is refused in one
line."""
import json
import os
import signal

import pandas as pd
import pytest

from tests import job_runs
from ucore.corr import moments as M, passes as PS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Correlate runs in one fresh process (2 CPU devices, mesh 1 × 2), one after another. argv:
# a JSON list of runs, each {"wd": workdir, "frac": the cap as a fraction of the per-device
# state (0 = none), "kill_at": the global step at which the process SIGKILLs itself (0 =
# never), "threshold": a finalize-only field (optional), "keep": where to copy the finished
# tables (optional: a later run's re-finalize replaces them)}. Before each run job_runs.MARK
# goes to stderr; after each, its figures to stdout.
_RUN = """
import json, os, shutil, signal, sys
from absl import logging
from ucore.jobs import config_files
from ucore.corr import driver, moments as M
logging.set_verbosity(logging.INFO)
for job in json.loads(sys.argv[1]):
  workdir, frac, kill_at = job["wd"], job["frac"], job["kill_at"]
  c = config_files.load("correlate_tiny")
  if job.get("threshold") is not None:
    c.threshold = job["threshold"]
  c.synthetic.n_models, c.synthetic.n_layers, c.synthetic.d_mlp, c.synthetic.rows = 5, 2, 256, 8
  c.synthetic.ctx, c.batch_rows, c.checkpoint.every_steps, c.selfcheck.sample = 8, 4, 1, 48
  c.mesh.tok, c.mesh.neu = 1, 2
  state = M.state_bytes(driver.prepare(c, workdir).spec) / 2   # per device
  if frac:
    c.memory.device_gib = frac * state / 2 ** 30
  seen = []
  def hook(p):
    seen.append(p)
    if kill_at and seen.count("step") == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
  print(MARK, file=sys.stderr, flush=True)
  driver.run(c, workdir, _hook=hook)
  if job.get("keep"):
    shutil.copytree(os.path.join(workdir, "tables"), job["keep"])
  print(json.dumps({"state_per_device": state, "cap": c.memory.device_gib * 2 ** 30}),
        flush=True)
"""
# 5 models × 2 layers × 256 neurons, 32 tokens a step: at a third of the state a pass holds
# one partner and one reference layer (8 passes, all of one tile shape, so one compiled step;
# 4 layers × 128 neurons made 16 passes, 64 tokens a step here would not fit the cap at all)
ROWS, STEPS_PER_PASS = 8, 2   # 8 rows of 8 tokens, 4 rows a step, a commit after every step


def _run(*runs):
  """One process running `runs` in order, each (workdir, frac, kill_at, threshold[, keep]):
  the process and each run's stderr."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONPATH=ROOT)
  jobs = [{"wd": str(wd), "frac": frac, "kill_at": kill_at, "threshold": threshold,
           "keep": str(keep[0]) if keep else None}
          for wd, frac, kill_at, threshold, *keep in runs]
  return job_runs.several_in_one_process(_RUN, jobs, env)


def _tables_dir(wd):
  """A run's tables/, or a copy of them (a run's `keep`)."""
  t = os.path.join(wd, "tables")
  return t if os.path.exists(t) else str(wd)


def _tables(wd):
  t = _tables_dir(wd)
  return {os.path.relpath(os.path.join(d, n), t): pd.read_parquet(os.path.join(d, n))
          for d, _, names in os.walk(t) for n in names if n.endswith(".parquet")}


def _identical(a, b):
  assert a.keys() == b.keys() and len(a) >= 4
  for k in a:
    pd.testing.assert_frame_equal(a[k], b[k], check_exact=True, obj=k)


def _summary(wd):
  with open(os.path.join(_tables_dir(wd), "summary.json")) as f:
    s = json.load(f)
  return {k: v for k, v in s.items() if k not in ("seconds", "finalize_seconds", "passes")}, s


@pytest.mark.slow("a real SIGKILL in pass two of a three-pass correlate subprocess, "
                  "then its resume")
def test_three_times_the_cap_in_passes_killed_in_pass_two_is_identical_to_one(tmp_path):
  """One multi-pass run, SIGKILLed in pass 2 and rerun (an uninterrupted multi-pass run is
  the same code without the kill; one run keeps the suite short). The rerun's process then
  runs the single-pass reference (the same 2-device mesh) and both re-finalizes, each run
  on its own workdir as a fresh process would."""
  wd, single = tmp_path / "passes", tmp_path / "single"
  r, _ = _run((wd, 1 / 3, STEPS_PER_PASS + 2, None))   # pass 2's 2nd step (commit at 1)
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert not (wd / "tables").exists()
  _, tiles = PS.recorded(str(wd / "state"))
  assert len(tiles) >= 3
  where = PS.where(str(wd / "state"), stop_row=ROWS)
  assert where.startswith("in pass 2 of") and "at row 4 " in where, where
  # the rerun (a new process: the resume is the claim), then in the same process the
  # single-pass reference, and a finalize-only change of both
  r, logs = _run((wd, 1 / 3, 0, None, tmp_path / "passes_first"),
                 (single, 0.0, 0, None, tmp_path / "single_first"),
                 (wd, 1 / 3, 0, 0.05), (single, 0.0, 0, 0.05))
  assert r.returncode == 0 and len(logs) == 4, r.stderr[-3000:]
  resumed, one_run, *refinalized = logs
  figures = json.loads(r.stdout.strip().splitlines()[0])
  assert figures["state_per_device"] >= 3 * figures["cap"]
  assert "resuming" in resumed and "(pass 2 of" in resumed
  assert "starting pass 1 " not in resumed and "starting pass 3 " in resumed
  assert "starting pass" not in one_run and "resuming" not in one_run
  assert not os.path.exists(os.path.join(single, "state", PS.RECORD))   # today's layout
  assert PS.where(str(wd / "state"), stop_row=ROWS) == f"all {len(tiles)} pass(es) complete"
  _identical(_tables(tmp_path / "single_first"), _tables(tmp_path / "passes_first"))
  one, s1 = _summary(tmp_path / "single_first")
  many, s2 = _summary(tmp_path / "passes_first")
  assert one == many and s2["passes"] == len(tiles) and "passes" not in s1
  assert s2["selfcheck"]["status"] == "ok" and s2["selfcheck"]["entries_checked"] > 0
  # a finalize-only change re-finalizes every pass's committed moments (no re-accumulation)
  # to the tables a single-pass run re-finalizes to
  for log in refinalized:
    assert "re-finalizing" in log and "starting pass" not in log, log[-2000:]
  _identical(_tables(single), _tables(wd))
  one_low, _ = _summary(single)
  many_low, s3 = _summary(wd)
  assert one_low == many_low and s3["threshold"] == 0.05 and s3["passes"] == len(tiles)
  assert one_low["universal"] != one["universal"]   # the lower threshold changed the tables


def test_tiles_cover_every_pair_and_reference_row_once():
  mesh = M.make_mesh(1, 1, M.jax.devices()[:1])
  for mode, n_models, L in (("reference", 5, 3), ("all_pairs", 4, 2)):
    spec = M.make_spec([f"m{i}" for i in range(n_models)], [range(L)] * n_models, 32, mesh,
                       mode=mode)
    for passes, _, tiles in PS.tilings(spec):
      assert len(tiles) == passes
      covered = [(x, y, l) for t in tiles for x, y in t.pairs for l in t.layer_ids[x]]
      assert sorted(covered) == sorted((x, y, l) for x, y in spec.pairs
                                       for l in spec.layer_ids[x])
      for t in tiles:   # each pair's partner(s) keep their within-layer co-moments
        assert {m for p in t.pairs for m in p[1:]} <= set(t.rotated)
        assert PS.spec_from_json(json.loads(json.dumps(t.to_json()))) == t


def test_choose_takes_the_fewest_passes_that_fit():
  mesh = M.make_mesh(1, 1, M.jax.devices()[:1])
  spec = M.make_spec([f"m{i}" for i in range(5)], [range(4)] * 5, 32, mesh)
  size = lambda t: M.state_bytes(t)
  one_partner = size(PS.tile(spec, [(0, 1)], [1]))
  tiles = PS.choose(spec, lambda t: size(t) <= one_partner)
  assert len(tiles) == 4 and all(len(t.pairs) == 1 for t in tiles)
  tiles = PS.choose(spec, lambda t: size(t) <= one_partner // 2 + 1)   # half a partner: chunks
  assert len(tiles) > 4 and all(t.n_layers[0] < 4 for t in tiles)
  assert PS.choose(spec, lambda t: size(t) < 0) is None
  assert PS.choose(spec, lambda t: True) == [spec]


def test_tile_estimate_is_plans_calibrated_estimate_on_the_whole_run():
  """A tile's analytic figure uses the terms plan calibrated against the compiled H100/H200
  steps (test_corr_memory: within 5%): on the whole spec both agree exactly."""
  from ucore.corr import plan as P
  for n, key, mode, prec in ((5, "gpt2-small", "reference", "highest"),
                             (5, "gpt2-medium", "reference", "bf16_3x"),
                             (4, "pythia-160m", "all_pairs", "bf16_3x")):
    arch = P.ARCHS[key]
    p = P.plan("x", n, arch, devices=1, device="h200", mode=mode, precision=prec)
    spec = P.run_spec(n, arch, devices=1, tok=1, mode=mode, precision=prec)
    b = P.tile_bytes(spec, arch, devices=1, tok=1, tokens_per_step=4096, precision=prec)
    means = 4 * n * arch.n_layer * spec.d_pad * 4 + 4   # mean, m2, their compensations; n
    assert b["step"] / 2 ** 30 == pytest.approx(p.analytic_step_gib + means / 2 ** 30,
                                                rel=1e-12)
    assert b["captured"] / 2 ** 30 == pytest.approx(p.captured_gib_per_device, rel=1e-9)


@pytest.mark.parametrize("config,models,pairs", [("correlate_gpt2_medium", 5, 4),
                                                 ("correlate_polypythia160m", 10, 45)])
def test_plan_on_one_h100_prints_passes_that_fit(config, models, pairs, capsys):
  """Issue 18's acceptance: GPT-2-medium (5 seeds, 1e8 tokens) and PolyPythias-160m all
  pairs (10 models) on one H100: a passes plan that fits, its memory and time."""
  from ucore.corr import plan as P
  from ucore.jobs import config_files
  c = config_files.load(config)
  arch = P.arch_of(c)
  p = P.plan("x", len(c.models), arch, devices=1, device="h100", mode=c.mode,
             precision=c.precision, tokens=c.max_tokens)
  assert p.models == models and p.pairs == pairs and not p.fits and p.passes > 1
  assert p.pass_peak_gib <= 0.9 * 80 and p.pass_hours > p.est_hours
  spec = P.run_spec(models, arch, devices=1, tok=1, mode=c.mode, precision=c.precision)
  tiles, peak, hours, share = P.plan_passes(spec, arch, devices=1, tok=1, device="h100",
                                            tokens_per_step=4096, tokens=1e8,
                                            precision=c.precision)
  assert len(tiles) == p.passes and 0 < share < 0.5
  # fewer passes would not fit: the largest tile of every tiling with fewer passes is over
  weights = models * arch.n_params() * 4
  for n, _, cand in PS.tilings(spec):
    if n < p.passes:
      worst = 0
      for t in cand:
        b = P.tile_bytes(t, arch, devices=1, tok=1, tokens_per_step=4096,
                         precision=c.precision)
        worst = max(worst, b["step"] + b["captured"], b["state"] + b["fin"])
      assert weights + worst > 0.9 * 80 * 2 ** 30
  text = P.format_plan(p)
  assert f"in {p.passes} passes" in text and "GiB/device per pass" in text and " h" in text


def test_plan_uses_the_compiled_tiles_where_the_device_is_at_hand():
  """Planned for this host's kind (cpu), a pass's memory is XLA's figure for the compiled
  tile, and every chosen tile fits the budget with it."""
  import jax
  from ucore.corr import memory, plan as P
  arch = P.Arch(4, 256, 64, vocab_size=1000, n_positions=64)
  mesh = M.make_mesh(1, 1, jax.devices()[:1])
  compiled = lambda t: memory.step_memory(t, mesh, 256).need
  spec = P.run_spec(5, arch, devices=1, tok=1, mesh=mesh)
  whole = P.plan_passes(spec, arch, devices=1, tok=1, device="cpu", tokens_per_step=256,
                        tokens=1e6, compiled=compiled)
  assert len(whole[0]) == 1   # 128 GB of cpu: one pass
  # a device with room for 40% of the whole step: passes, each tile's compiled need within
  weights = 5 * arch.n_params() * 4
  usable = weights + compiled(spec) / 2.5
  P.DEVICES["test-small"] = (0.15, usable / 0.9 / 2 ** 30, "test")
  P.FAST_TFLOPS["test-small"] = P.FAST_TFLOPS["cpu"]
  try:
    tiles, peak, _, _ = P.plan_passes(spec, arch, devices=1, tok=1, device="test-small",
                                      tokens_per_step=256, tokens=1e6, compiled=compiled)
  finally:
    del P.DEVICES["test-small"], P.FAST_TFLOPS["test-small"]
  assert len(tiles) >= 2 and peak <= usable * (1 + 1e-12)
  for t in tiles:
    assert weights + compiled(t) <= peak


def test_plan_says_which_pass_a_run_is_in(tmp_path):
  """`main.py plan --workdir=RUN` reads the run's passes record and commits."""
  import jax.numpy as jnp
  from ucore.corr import state as ST
  mesh = M.make_mesh(1, 1, M.jax.devices()[:1])
  spec = M.make_spec([f"m{i}" for i in range(4)], [range(2)] * 4, 32, mesh)
  tiles = [PS.tile(spec, [(0, p)], [p]) for p in (1, 2, 3)]
  state_dir = str(tmp_path / "state")
  os.makedirs(state_dir)
  PS.record(state_dir, {"stop_row": 16}, tiles)
  for k, row in ((0, 16), (1, 8)):
    ST.save(PS.pass_dir(state_dir, k, 3), 2, {"n": jnp.int32(0)},
            {"identity": {"stop_row": 16}, "cursor": {"row": row, "step": row // 4}})
  status, out, err = job_runs.main_in_process("plan", "--config=configs/correlate_tiny.py",
                                              f"--workdir={tmp_path}")
  assert status == 0, err[-2000:]
  assert f"run in {tmp_path}: in pass 2 of 3 (at row 8 of 16; passes 1..1 complete)" in out
