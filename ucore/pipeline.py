"""The default study end to end: tokens -> seed family -> correlations (+ over training) ->
analyses -> report. Every stage is itself resumable and skips work already finished, so
re-running the pipeline after a kill continues where it stopped; a finished pipeline rerun with
the same config keeps its report (pipeline.json, written last, records the report's inputs).

Layout of the workdir:
  tokens/            token store (ucore.data)
  family/            trained seeds, family/seed{s}/checkpoint-{N} and final (ucore.train)
  corr/              correlations of the final models (ucore.corr), tables in corr/tables/
  corr_steps/step{N} the same at earlier checkpoints (ucore.sweep's per-checkpoint jobs)
  over_training/     universality over training (ucore.sweep's tables and figures)
  analyses/          the paper's analyses on the reference seed (ucore.analyses)
  report/index.html  the combined report; pipeline.json (written last) summarises the run
"""
import copy
import os
import time

import numpy as np
from absl import logging

from ucore.jobs import atomic, identity, workdir_lock
from ucore.jobs.errors import UserError

SUMMARY = "pipeline.json"


def _copy(config):
  """An unlocked deep copy (flag-parsed configs are locked)."""
  import ml_collections
  return ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))


def _stage(name, fn, timings):
  t0 = time.time()
  logging.info("pipeline: stage %s ...", name)
  print(f"[pipeline] {name} ...", flush=True)
  out = fn()
  timings[name] = round(time.time() - t0, 1)
  print(f"[pipeline] {name} done in {timings[name]:.1f}s", flush=True)
  return out


def _correlate(config, model_dirs, names, store_dir, start_row, max_tokens, workdir):
  from ucore.corr import driver, tables
  c = _copy(config.correlate)
  c.models, c.model_names = list(model_dirs), list(names)
  c.token_store, c.start_row, c.max_tokens = store_dir, int(start_row), int(max_tokens)
  c.mode = "reference"
  tables_dir = driver.run(c, workdir)
  return tables_dir, tables.read_summary(tables_dir)


def _read_tables(tables_dir, name):
  from ucore.corr import tables
  return tables.read_neurons(tables_dir, name), tables.partner_layer_counts(tables_dir, name)


@workdir_lock.locked
def run(config, workdir: str) -> dict:
  from ucore.data.build import build_store
  from ucore.train.store_input import train_from_store
  from ucore.train import checkpoint_steps
  from ucore.train.loop import validate_config
  from ucore.corr.driver import check_numbers
  from ucore.jobs import schema
  schema.check(config, "pipeline")   # every stage's fields, before the first stage writes
  validate_config(config.train)   # every number before the first stage writes anything
  check_numbers(config.correlate)
  kept = checkpoint_steps(config.train)
  missing = [int(s) for s in config.persistence_steps if int(s) not in kept]
  if missing:   # checked before hours of work, not after
    raise UserError(f"persistence_steps {missing} are not kept training checkpoints {kept}; "
                    "add them to train.checkpoint_steps")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  t_start, timings = time.time(), {}
  tokens_dir = os.path.join(workdir, "tokens")
  store = _stage("tokenize", lambda: build_store(config.tokenize, tokens_dir), timings)
  train_rows = int(config.train_rows)
  heldout_needed = max(int(config.correlate.max_tokens), int(config.persistence_max_tokens))
  heldout_rows = store.num_rows - train_rows
  if train_rows <= 0 or heldout_rows * store.ctx < heldout_needed:
    raise UserError(f"the token store has {store.num_rows} rows of {store.ctx}; train_rows="
                    f"{train_rows} leaves {max(heldout_rows, 0) * store.ctx} held-out tokens, "
                    f"fewer than the {heldout_needed} the correlations need; lower train_rows "
                    "or correlate.max_tokens")

  train_cfg = _copy(config.train)
  train_cfg.data.store, train_cfg.data.max_rows = tokens_dir, train_rows
  family = _stage("train", lambda: train_from_store(train_cfg, os.path.join(workdir, "family")),
                  timings)
  seeds = [str(s) for s in family["seeds"]]
  names = [f"seed{s}" for s in seeds]
  ref = names[0]
  finals = [family["final"][s] for s in seeds]

  tables_dir, corr_summary = _stage("correlate", lambda: _correlate(
      config, finals, names, tokens_dir, train_rows, config.correlate.max_tokens,
      os.path.join(workdir, "corr")), timings)
  neurons, hist = _read_tables(tables_dir, ref)
  ivs = corr_summary.get("intervals")
  interval = ivs["models"].get(ref) if isinstance(ivs, dict) else None

  def persistence():
    # the sweep's code path over the family's kept checkpoints, the final correlations above
    # as the last step (ucore.sweep: the over-training tables and figures in over_training/)
    from ucore import sweep
    c = _copy(config.correlate)
    c.token_store, c.start_row = tokens_dir, int(train_rows)
    c.max_tokens = int(config.persistence_max_tokens)
    # over training only the excess is read: one draw of the primary kind, no interval pass
    # (each costs finalize time at every step; the headline's draws, kinds and interval are
    # the final correlations')
    c.intervals.blocks = 0
    c.baseline.draws = 1
    c.baseline.kinds = (c.baseline.primary,)
    universal_at = {}
    for step in config.persistence_steps:
      step = int(step)
      sources = [sweep.source_of(family["checkpoints"][s][str(step)]) for s in seeds]
      tdir = sweep.correlate_checkpoint(c, step, sources, names,
                                        os.path.join(workdir, "corr_steps", f"step{step}"))
      universal_at[step] = sweep.read_reference(tdir, ref)
    universal_at[int(family["num_steps"])] = neurons
    result = sweep.over_training(universal_at, float(config.correlate.threshold),
                                 int(config.analyze.universal.fallback_k))
    sweep.write_over_training(result, os.path.join(workdir, sweep.OUT_DIR), ref)
    return result
  from ucore.analyses.focus import focus_set
  focus = focus_set(neurons, int(config.analyze.universal.fallback_k))
  over = _stage("persistence", persistence, timings) if config.persistence_steps else None
  persist, by_step, focus_by_step = ((over.persistence, over.excess_by_step, over.focus_by_step)
                                     if over is not None else (None, None, None))

  analyses_dir = os.path.join(workdir, "analyses")
  sections = _stage("analyze", lambda: _analyze(config, family, seeds, tokens_dir, train_rows,
                                                tables_dir, analyses_dir), timings)
  # The report is a function of the config and the finished stages' outputs: a rerun with
  # the same inputs keeps the report it wrote (pipeline.json records the inputs, last).
  report_inputs = _report_inputs(config, corr_summary, analyses_dir, workdir)
  previous = _read_result(workdir)   # the last finished run's pipeline.json (or None)
  html_path = os.path.join(workdir, "report", "index.html")
  report_done = (html_path if previous is not None and os.path.isfile(html_path)
                 and previous.get("report_inputs") == report_inputs else None)
  if report_done:
    logging.info("pipeline: the report in %s is complete for these inputs; kept", workdir)
  elif os.path.exists(os.path.join(workdir, SUMMARY)):
    os.unlink(os.path.join(workdir, SUMMARY))   # complete again only when rewritten
  examples = None if report_done else _stage(
      "examples", lambda: _examples(config, finals[0], tokens_dir, train_rows, neurons), timings)

  def report():
    from ucore.report import sections as RS
    from ucore.corr.selfcheck import describe as describe_selfcheck
    from ucore.report.html import write_report
    from ucore.report.headline import run_universal_line
    from ucore.train import read_losses
    n_univ = int(neurons["universal"].sum())
    fig_dir = os.path.join(workdir, "report_extra")
    extra = [RS.training(read_losses(os.path.join(workdir, "family")), fig_dir)]
    if by_step is not None:
      extra.append(RS.excess_over_training(by_step, fig_dir))
      extra.append(RS.focus_over_training(focus_by_step, fig_dir, focus))
    if n_univ == 0:
      extra.append(RS.closest_to_threshold(neurons, config.correlate.threshold,
                                           config.report_top_k, examples))
    summary = {
        "models": ", ".join(f"{n} ({d})" for n, d in zip(names, finals)),
        "reference": ref,
        "training": f"{len(seeds)} seeds x {family['num_steps']} steps, final held-out loss "
                    + ", ".join(f"{v:.3f}" for v in family["final_heldout_loss"].values()),
        "held-out tokens correlated": corr_summary["tokens_counted"],
        "universal neurons": run_universal_line(interval, n_univ, len(neurons)),
        "numerics": corr_summary.get("numerics", ""),
        "float64 self-check": describe_selfcheck(corr_summary.get("selfcheck")),
    }
    return write_report(os.path.join(workdir, "report"), {f"{ref} vs other seeds": neurons},
                        figures_extra=extra + list(sections), summary=summary,
                        partner_layers={f"{ref} vs other seeds": np.asarray(hist, np.float64)},
                        examples={f"{ref} vs other seeds": examples},
                        # without a universal neuron the persistence chart would be
                        # empty: the focus-set section above follows the top-k instead
                        persistence=({f"{ref} vs other seeds": persist}
                                     if persist is not None and n_univ else None),
                        threshold=float(config.correlate.threshold),
                        top_k=int(config.report_top_k))
  from ucore.report.browser import write_beside_report   # the neuron browser beside it
  html = report_done or _stage("report", lambda: write_beside_report(
      report(), os.path.join(analyses_dir, "browser")), timings)

  n_univ = int(neurons["universal"].sum())
  result = {
      "report": html, "tables": tables_dir, "family": os.path.join(workdir, "family"),
      "reference": ref, "n_neurons": int(len(neurons)), "n_universal": n_univ,
      "share_universal": n_univ / max(len(neurons), 1),
      "universal_interval": interval,
      "excess_corr_median": float(np.nanmedian(neurons["excess_corr"])),
      "mean_corr_median": float(np.nanmedian(neurons["mean_corr"])),
      "mean_baseline_median": float(np.nanmedian(neurons["mean_baseline"])),
      "universal_per_layer": [int(v) for v in
                              neurons["universal"].groupby(level="layer").sum()],
      "persistence": (persist.reset_index().to_dict(orient="records")
                      if persist is not None else None),
      "excess_by_step": (by_step.reset_index().to_dict(orient="records")
                         if by_step is not None else None),
      "focus": {"label": focus.label, "fallback": focus.fallback, "n": len(focus.ids),
                "by_step": (focus_by_step.reset_index().to_dict(orient="records")
                            if focus_by_step is not None else None)},
      "selfcheck": corr_summary.get("selfcheck"),
      "stage_seconds": timings, "seconds": round(time.time() - t_start, 1),
      "report_inputs": report_inputs,
  }
  if report_done and _without_timings(previous) == _without_timings(result):
    logging.info("pipeline: %s is complete for these inputs; nothing written", workdir)
    return previous
  atomic.write_json(os.path.join(workdir, SUMMARY), result)
  return result


def _read_result(workdir):
  """pipeline.json of a finished run in `workdir`; None if absent or unreadable (then it is
  rewritten)."""
  try:
    return atomic.read_json(os.path.join(workdir, SUMMARY))
  except (OSError, ValueError):
    return None


def _without_timings(result) -> dict:
  """A pipeline.json's content but its timings: a finished rerun that would write the same
  writes nothing (a moved workdir's paths differ, so its pipeline.json is rewritten)."""
  return identity.normalize({k: v for k, v in result.items()
                             if k not in ("stage_seconds", "seconds")})


def _report_inputs(config, corr_summary, analyses_dir, workdir) -> dict:
  """What the examples and the report are computed from: the pipeline's config, the final
  correlations' identity and finalize settings, the analyses' completion stamp (paths inside
  the workdir relative to it: a moved workdir keeps its report)."""
  stamp_path = os.path.join(analyses_dir, "pipeline_stamp.json")
  inputs = {"config": config.to_dict(),
            "correlations": {k: corr_summary.get(k) for k in ("identity", "finalize")},
            "analyses": atomic.read_json(stamp_path) if os.path.exists(stamp_path) else None}
  return identity.relative_paths(identity.normalize(inputs), os.path.abspath(workdir))


def _analyze(config, family, seeds, tokens_dir, train_rows, tables_dir, out_dir):
  """The analyses on the reference seed; skipped when a previous run finished them."""
  from ucore import analyze as runner
  done = os.path.join(out_dir, "sections.json")
  c = _copy(config.analyze)
  c.model_dir = family["final"][seeds[0]]
  c.token_store, c.start_row = tokens_dir, int(train_rows)
  c.corr_table = tables_dir
  c.prediction.family_model_dirs = ",".join(family["final"][s] for s in seeds[1:])
  ctx = int(family["model_config"]["n_positions"])
  lo, hi = (int(p) for p in c.attention.positions)
  if hi > ctx:   # the paper's 64..255 of 256-token rows, scaled to shorter rows
    c.attention.positions = (min(lo, ctx // 4), ctx)
  from ucore.corr import tables
  stamp = {"config": c.to_dict(), "corr_tables": tables.read_summary(tables_dir)["identity"]}
  # paths of the pipeline's own workdir relative to it: a moved workdir's analyses still count
  stamp = identity.relative_paths(identity.normalize(stamp), os.path.dirname(os.path.abspath(out_dir)))
  stamp_path = os.path.join(out_dir, "pipeline_stamp.json")
  if os.path.exists(done) and os.path.exists(stamp_path) and \
      atomic.read_json(stamp_path) == stamp:
    logging.info("analyses in %s are complete; skipping", out_dir)
    return runner.read_sections(out_dir)
  if os.path.exists(stamp_path):
    os.unlink(stamp_path)
  sections = runner.run_all(c, out_dir, "all")
  atomic.write_json(stamp_path, stamp)   # last: marks the analyses complete for these inputs
  return sections


def _examples(config, model_dir, tokens_dir, start_row, neurons):
  """Top-activating held-out contexts of the top universal neurons (for the report)."""
  from ucore import load_model
  from ucore.models import tokenizer as tokmod
  from ucore.data.batches import store_batches
  from ucore.analyses.top_examples import top_activating_examples
  from ucore.data.store import open_store
  u = neurons[neurons["universal"].astype(bool).values]
  if u.empty:   # nothing universal: show what the closest neurons fire on
    u = neurons
  top = u.sort_values("excess_corr", ascending=False).head(int(config.report_top_k))
  store = open_store(tokens_dir)
  model = load_model(model_dir)
  tok = tokmod.load(tokmod.files_in_dir(store.tokenizer_dir))
  batches = store_batches(store, 32, int(config.examples_rows), start_row=int(start_row))
  return top_activating_examples(model, batches, list(top.index), decode=tok.decode)
