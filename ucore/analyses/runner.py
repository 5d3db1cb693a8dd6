"""Runs the analyses from a config: reads a model directory, a token store and (optionally) the
correlation results; writes `<workdir>/<analysis>/*.parquet|png` and `<workdir>/sections.json`
(the report sections, (title, png_path, caption)); with correlation results also an HTML
report in `<workdir>/report/`.

config fields: see configs/analyze_default.py. `model_dir="planted"` / `token_store="planted"`
use the hand-set tiny model of ucore.analyses.planted (offline smoke run).
"""
from __future__ import annotations

import json
import os
import time

from absl import logging

from ucore import atomic
from ucore.analyses import common
from ucore.errors import UserError

ANALYSES = ("stats", "families", "vocab", "entropy", "attention", "ablation")
NEEDS_CORR = ("ablation",)


def parse_analyses(spec: str, have_corr: bool) -> list:
  names = [s.strip() for s in str(spec).split(",") if s.strip()]
  if not names:
    raise UserError("no analysis selected; use --analysis=all or a comma list of "
                    f"{', '.join(ANALYSES)}")
  if "all" in names:
    return [a for a in ANALYSES if have_corr or a not in NEEDS_CORR]
  unknown = [n for n in names if n not in ANALYSES]
  if unknown:
    raise UserError(f"unknown analyses {unknown}; choose from all, {', '.join(ANALYSES)}")
  missing = [n for n in names if n in NEEDS_CORR and not have_corr]
  if missing:
    raise UserError(f"analyses {missing} need correlation results: set corr_table to the "
                    "neurons_<model>.parquet written by `python main.py correlate`")
  return names


def _load(config):
  from ucore.analyses import planted
  if config.model_dir == "planted":
    model = planted.planted_model(n_positions=max(32, int(config.get("planted_ctx", 32))))
  else:
    if not config.model_dir:
      raise UserError("model_dir is required (a converted checkpoint directory); "
                      "set --config.model_dir=...")
    from ucore.model import load_model
    model = load_model(config.model_dir)
  if config.token_store == "planted":
    ctx = model.config.n_positions
    toks = planted.planted_tokens(int(config.get("planted_rows", 32)), ctx, seed=config.seed)
    rows = toks.shape[0]
    label_names = ["planted"]
    factory = lambda max_rows=None: common.make_batches(
        toks[:max_rows or rows], config.batch_rows, row_labels=[0] * min(rows, max_rows or rows))
    return model, None, factory, label_names, planted.BOS
  if not config.token_store:
    raise UserError("token_store is required: set --config.token_store=<store dir>")
  from ucore.data.store import open_store
  store = open_store(config.token_store)
  common.check_store_matches_model(store, model)
  if not 0 <= int(config.get("start_row", 0)) < store.num_rows:
    raise UserError(f"start_row={config.get('start_row')} outside the store's "
                    f"{store.num_rows} rows")

  def factory(max_rows=None):
    mr = config.max_rows or None
    if max_rows:
      mr = min(mr, max_rows) if mr else max_rows
    return list(common.store_batches(store, config.batch_rows, mr,
                                     start_row=int(config.get("start_row", 0))))
  return model, store, factory, list(store.label_names), store.bos_id


def run_all(config, workdir: str, analyses: str = "all") -> list:
  """Returns the report sections [(title, png_path, caption)] of the analyses run."""
  from ucore.analyses import ablation, attention, entropy, families, prediction, stats, vocab
  os.makedirs(workdir, exist_ok=True)
  model, store, factory, label_names, bos_id = _load(config)
  fp = model.fingerprint if config.get("corr_check_fingerprint", True) else None
  corr = (common.read_corr_table(config.corr_table, model.config, fp) if config.corr_table
          else None)
  todo = parse_analyses(analyses, corr is not None)
  if "ablation" in todo and analyses == "all" and not corr["universal"].astype(bool).any():
    # Nothing to compare against random sets; an explicit --analysis=ablation still errors.
    logging.warning("no universal neurons in %s: skipping the ablation analysis",
                    config.corr_table)
    todo.remove("ablation")
  sections, timings = [], {}
  stats_table = None
  for name in todo:
    t0 = time.time()
    out = os.path.join(workdir, name)
    logging.info("analysis %s -> %s", name, out)
    if name == "stats":
      secs = stats.run(model, factory(config.stats.max_rows), out, corr=corr)
      import pandas as pd
      stats_table = pd.read_parquet(os.path.join(out, "neuron_stats.parquet"))
    elif name == "families":
      texts = vocab.decode_vocab(common.vocab_file_of(
          model if config.model_dir != "planted" else None, store), model.config.vocab_size)
      ds = label_names if len(label_names) > 1 else None
      secs = families.run(model, lambda: factory(config.families.max_rows), out, texts,
                          dataset_names=ds, n_unigrams=config.families.n_unigrams,
                          layers_per_pass=config.families.layers_per_pass or None,
                          memory_gb=config.families.memory_gb,
                          position_mi_threshold=config.families.position_mi_threshold,
                          vr_threshold=config.families.vr_threshold,
                          alphabet_threshold=config.families.alphabet_threshold)
    elif name == "vocab":
      fam_models = None
      if config.vocab.family_model_dirs:
        from ucore.model import load_model
        fam_models = {os.path.basename(os.path.normpath(d)): load_model(d)
                      for d in str(config.vocab.family_model_dirs).split(",") if d.strip()}
      secs = prediction.run(model, out, stats=stats_table, corr=corr,
                            kurt_threshold=config.vocab.kurt_threshold,
                            partition_factor=config.vocab.partition_factor, family=fam_models)
    elif name == "entropy":
      secs = entropy.run(model, factory(config.entropy.max_rows), out,
                         n_targets=config.entropy.n_targets, n_random=config.entropy.n_random,
                         last_layers=config.entropy.last_layers,
                         values=tuple(config.entropy.fixed_values), seed=config.seed)
    elif name == "attention":
      secs = attention.run(model, factory(config.attention.max_rows), out, bos_id,
                           top_pairs=config.attention.top_pairs,
                           positions=tuple(config.attention.positions),
                           n_random=config.attention.n_random, seed=config.seed)
    elif name == "ablation":
      secs = ablation.run(model, factory(config.ablation.max_rows), out, corr,
                          modes=tuple(config.ablation.modes), n_random=config.ablation.n_random,
                          seed=config.seed, fixed_value=config.ablation.fixed_value)
    sections += [tuple(s) for s in secs]
    timings[name] = round(time.time() - t0, 2)
  atomic.write_json(os.path.join(workdir, "sections.json"),
                    {"analyses": todo, "seconds": timings,
                     "sections": [list(s) for s in sections]})
  if corr is not None and config.get("report", True):
    from ucore.report.figures import REQUIRED_COLUMNS
    from ucore.report.html import write_report
    missing = [c for c in REQUIRED_COLUMNS if c not in corr.columns]
    if missing:
      logging.warning("no HTML report: the correlation table lacks %s", missing)
      return sections
    write_report(os.path.join(workdir, "report"), {"model": corr}, figures_extra=sections,
                 summary={"model": config.model_dir, "token_store": config.token_store,
                          "analyses": ", ".join(todo)})
  return sections
