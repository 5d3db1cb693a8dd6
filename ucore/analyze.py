"""Runs the analyses from a config: reads a model directory, a token store and (optionally) the
correlation results; writes `<workdir>/<analysis>/*.parquet|png` and `<workdir>/sections.json`
(the report sections, (title, png_path, caption)). The report itself is written by its caller
(`python main.py analyze` through `report`, the pipeline with its own sections), each with one
call of ucore.report.write_report.

config fields: see configs/analyze_default.py.

Extension point — adding an analysis:
  @analysis("name", needs_corr=False)
  def _name(inp: Inputs, out_dir: str) -> list:     # report sections [(title, png, caption)]
      ...call ucore.analyses.<module>.run(...) with inp.model, inp.batches(max_rows), inp.corr,
      inp.config.<name>.* (fields in configs/analyze_default.py) and inp.results of the
      analyses registered before it; leave a result in inp.results["name"] for later ones.
`--analysis=all` runs every registered analysis in registration order (those with
needs_corr only when correlation results are given); the sections join the report in the
same order. A section is (title, png_path[, caption[, html]]). `inp.out_dirs[name]` is the
directory of every analysis run before (its parquet tables are readable there);
`inp.focus()` is the neuron set the universality sections are about (ucore.analyses.focus:
the universal neurons, or the top-k by excess correlation when there is none).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional

import pandas as pd
from absl import logging

from ucore.jobs import workdir_lock
from ucore.data import batches as batches_mod
from ucore.jobs import atomic
from ucore.analyses import common
from ucore.jobs.errors import UserError


@dataclasses.dataclass(frozen=True)
class Analysis:
  name: str
  run: Callable            # (Inputs, out_dir) -> sections
  needs_corr: bool = False


REGISTRY: dict = {}         # name -> Analysis, in registration (= run) order


def analysis(name: str, needs_corr: bool = False):
  """Registers `fn(inputs, out_dir) -> sections` as the analysis `name`."""
  def deco(fn):
    REGISTRY[name] = Analysis(name, fn, needs_corr)
    return fn
  return deco


@dataclasses.dataclass
class Inputs:
  """What every analysis may read. `batches(max_rows=None)` -> list of batches_mod.Batch."""
  config: object
  model: object
  store: object             # TokenStore
  batches: Callable
  label_names: list
  bos_id: int
  corr: Optional[object]    # the neuron table of ucore.corr, or None
  results: dict = dataclasses.field(default_factory=dict)
  out_dirs: dict = dataclasses.field(default_factory=dict)   # analysis name -> its directory

  def focus(self):
    from ucore.analyses.focus import focus_set
    return focus_set(self.corr, int(self.config.universal.fallback_k))

  def table_path(self, analysis: str, file: str) -> Optional[str]:
    """`<dir of analysis>/<file>` when that analysis ran in this run, else None."""
    d = self.out_dirs.get(analysis)
    return os.path.join(d, file) if d else None

  def vocab_texts(self) -> list:
    from ucore.analyses import vocab
    return vocab.decode_vocab(common.vocab_file_of(self.model, self.store),
                              self.model.config.vocab_size)


def parse_analyses(spec: str, have_corr: bool) -> list:
  names = [s.strip() for s in str(spec).split(",") if s.strip()]
  if not names:
    raise UserError("no analysis selected; use --analysis=all or a comma list of "
                    f"{', '.join(REGISTRY)}")
  if "all" in names:
    return [a for a in REGISTRY if have_corr or not REGISTRY[a].needs_corr]
  unknown = [n for n in names if n not in REGISTRY]
  if unknown:
    raise UserError(f"unknown analyses {unknown}; choose from all, {', '.join(REGISTRY)}")
  missing = [n for n in names if REGISTRY[n].needs_corr and not have_corr]
  if missing:
    raise UserError(f"analyses {missing} need correlation results: set corr_table to the "
                    "neurons_<model>.parquet written by `python main.py correlate`")
  return names


# ---- the analyses --------------------------------------------------------------------------
@analysis("stats")
def _stats(inp: Inputs, out: str) -> list:
  from ucore.analyses import stats
  secs, inp.results["stats"] = stats.run(inp.model, inp.batches(inp.config.stats.max_rows), out,
                                         corr=inp.corr)
  return secs


@analysis("properties", needs_corr=True)
def _properties(inp: Inputs, out: str) -> list:
  from ucore.analyses import properties
  return properties.run(inp.results["stats"], inp.focus(), out)


@analysis("views", needs_corr=True)
def _views(inp: Inputs, out: str) -> list:
  from ucore.report import views
  return views.run(inp.corr, inp.results.get("stats"), inp.focus(), out,
                   threshold=float(inp.config.universal.threshold))


@analysis("families")
def _families(inp: Inputs, out: str) -> list:
  from ucore.analyses import families
  c = inp.config
  texts = inp.vocab_texts()
  ds = inp.label_names if len(inp.label_names) > 1 else None
  return families.run(inp.model, lambda: inp.batches(c.families.max_rows), out, texts,
                      dataset_names=ds, n_unigrams=c.families.n_unigrams,
                      layers_per_pass=c.families.layers_per_pass or None,
                      memory_gb=c.families.memory_gb,
                      position_mi_threshold=c.families.position_mi_threshold,
                      vr_threshold=c.families.vr_threshold,
                      alphabet_threshold=c.families.alphabet_threshold)


def family_names(dirs: list) -> list:
  """The names of the family's model directories: their basenames, or parent-basename when
  basenames repeat (seed1/final, seed2/final -> seed1-final, seed2-final); each must be a
  safe name (atomic.check_safe_name, as correlate's model names) and all distinct."""
  def base(d, parts):
    return "-".join(os.path.normpath(os.path.abspath(d)).split(os.sep)[-parts:])
  names = [base(d, 1) for d in dirs]
  if len(set(names)) != len(names):
    names = [base(d, 2) for d in dirs]
  for n in names:
    atomic.check_safe_name(n, "family model name")
  if len(set(names)) != len(names):
    raise UserError(f"config.prediction.family_model_dirs names models {names} more than "
                    "once; list each model directory once")
  return names


@analysis("prediction")
def _prediction(inp: Inputs, out: str) -> list:
  from ucore.analyses import prediction
  c = inp.config.prediction
  fam_models = None
  if c.family_model_dirs:
    from ucore.models.hooked import load_model
    dirs = [d.strip() for d in str(c.family_model_dirs).split(",") if d.strip()]
    fam_models = {name: load_model(d) for name, d in zip(family_names(dirs), dirs)}
  return prediction.run(inp.model, out, stats=inp.results.get("stats"), corr=inp.corr,
                        kurt_threshold=c.kurt_threshold, partition_factor=c.partition_factor,
                        family=fam_models)


@analysis("entropy")
def _entropy(inp: Inputs, out: str) -> list:
  from ucore.analyses import entropy
  c = inp.config
  return entropy.run(inp.model, inp.batches(c.entropy.max_rows), out,
                     n_targets=c.entropy.n_targets, n_random=c.entropy.n_random,
                     last_layers=c.entropy.last_layers, values=tuple(c.entropy.fixed_values),
                     seed=c.seed, control_filter=c.entropy.get("control_filter", "original"))


@analysis("attention")
def _attention(inp: Inputs, out: str) -> list:
  from ucore.analyses import attention
  c = inp.config
  return attention.run(inp.model, inp.batches(c.attention.max_rows), out, inp.bos_id,
                       top_pairs=c.attention.top_pairs, positions=tuple(c.attention.positions),
                       n_random=c.attention.n_random, seed=c.seed,
                       rank_by=c.attention.get("rank_by", "paper"))


@analysis("roles", needs_corr=True)
def _roles(inp: Inputs, out: str) -> list:
  from ucore.analyses import roles
  c = inp.config
  paths = {"families": inp.table_path("families", "families.parquet"),
           "vocab_roles": inp.table_path("prediction", "vocab_roles.parquet"),
           "entropy": inp.table_path("entropy", "entropy_candidates.parquet"),
           "attention": inp.table_path("attention", "attention_scores.parquet")}
  return roles.run(inp.focus(), out, paths, dict(
      vr=c.families.vr_threshold, kurt=c.prediction.kurt_threshold,
      mi=c.families.position_mi_threshold, part=c.prediction.partition_factor))


@analysis("ablation", needs_corr=True)
def _ablation(inp: Inputs, out: str) -> list:
  from ucore.analyses import ablation
  c = inp.config
  return ablation.run(inp.model, inp.batches(c.ablation.max_rows), out, inp.focus(),
                      modes=tuple(c.ablation.modes), n_random=c.ablation.n_random,
                      seed=c.seed, fixed_value=c.ablation.fixed_value)


@analysis("cards", needs_corr=True)
def _cards(inp: Inputs, out: str) -> list:
  from ucore.report import cards
  c = inp.config
  fam_path = inp.table_path("families", "families.parquet")
  fam = pd.read_parquet(fam_path) if fam_path and os.path.isfile(fam_path) else None
  return cards.run(inp.model, inp.batches(c.universal.cards_rows), out, inp.corr, inp.focus(),
                   inp.vocab_texts(), k=int(c.universal.cards_k), families=fam)


@analysis("browser", needs_corr=True)
def _browser(inp: Inputs, out: str) -> list:
  from ucore.report import browser
  texts = inp.vocab_texts()
  tables = {a: inp.table_path(a, f) for a, f in (("stats", "neuron_stats.parquet"),
                                                 ("families", "families.parquet"))}
  tables = {a: pd.read_parquet(p) if p and os.path.isfile(p) else None for a, p in tables.items()}
  return browser.run(inp.model, inp.batches(inp.config.universal.cards_rows), out, inp.corr,
                     texts, lambda ids: "".join(texts[int(i)] for i in ids),
                     stats=tables["stats"], families=tables["families"])


ANALYSES = tuple(REGISTRY)


# ---- inputs and the loop -------------------------------------------------------------------
def _load(config):
  if not config.model_dir:
    raise UserError("model_dir is required (a converted checkpoint directory); "
                    "set --config.model_dir=...")
  from ucore.models.hooked import load_model
  model = load_model(config.model_dir)
  if not config.token_store:
    raise UserError("token_store is required: set --config.token_store=<store dir>")
  from ucore.data.store import check_store_matches_model, open_store
  store = open_store(config.token_store)
  check_store_matches_model(store, model)
  if not 0 <= int(config.get("start_row", 0)) < store.num_rows:
    raise UserError(f"start_row={config.get('start_row')} outside the store's "
                    f"{store.num_rows} rows")

  def factory(max_rows=None):
    mr = config.max_rows or None
    if max_rows:
      mr = min(mr, max_rows) if mr else max_rows
    return list(batches_mod.store_batches(store, config.batch_rows, mr,
                                     start_row=int(config.get("start_row", 0))))
  return Inputs(config, model, store, factory, list(store.label_names), store.bos_id, None)


def _corr(config, model):
  fp = model.fingerprint if config.get("corr_check_fingerprint", True) else None
  return (common.read_corr_table(config.corr_table, model.config, fp) if config.corr_table
          else None)


@dataclasses.dataclass
class Run:
  """What an analyze run produced: report sections, the analyses run, the correlation table;
  complete: True when an earlier run had already finished them for the same inputs."""
  sections: list
  analyses: list
  corr: Optional[object]
  complete: bool = False


SECTIONS = "sections.json"   # written last: the analyses of its "inputs" are complete
REPORT_DIR = "report"


def _inputs_identity(config, inp: Inputs, todo: list) -> dict:
  """What the workdir's results depend on: the config, the analyses run, and the inputs'
  contents (the model's weights, the token store's id, the correlation table's values)."""
  from ucore.jobs import identity
  import hashlib
  corr = None
  if inp.corr is not None:
    corr = hashlib.sha256(pd.util.hash_pandas_object(inp.corr, index=True).values.tobytes() +
                          ",".join(map(str, inp.corr.columns)).encode()).hexdigest()
  return identity.normalize({"config": config.to_dict(), "analyses": list(todo),
                             "model": str(inp.model.fingerprint), "store": inp.store.store_id,
                             "corr": corr})


def _finished(workdir: str, inputs: dict) -> bool:
  path = os.path.join(workdir, SECTIONS)
  try:
    return os.path.isfile(path) and atomic.read_json(path).get("inputs") == inputs
  except (OSError, ValueError):
    return False


def _remove_earlier_outputs(workdir: str) -> None:
  """A redone run starts clean: the completion marker first, then every analysis directory
  and the report of an earlier run (their figures would otherwise linger beside the new)."""
  import shutil
  marker = os.path.join(workdir, SECTIONS)
  if os.path.exists(marker):
    os.unlink(marker)
  for name in (*REGISTRY, REPORT_DIR):
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)


@workdir_lock.locked
def run(config, workdir: str, analyses: str = "all") -> Run:
  """Runs the selected analyses (see parse_analyses) into `workdir`; writes sections.json.
  A workdir whose sections.json records the same inputs is complete: nothing is recomputed
  or written. Otherwise the outputs of an earlier run there are removed first."""
  os.makedirs(workdir, exist_ok=True)
  inp = _load(config)
  inp.corr = _corr(config, inp.model)
  todo = parse_analyses(analyses, inp.corr is not None)
  inputs = _inputs_identity(config, inp, todo)
  if _finished(workdir, inputs):
    logging.info("analyses in %s are complete for these inputs; nothing to do", workdir)
    return Run(read_sections(workdir), todo, inp.corr, complete=True)
  _remove_earlier_outputs(workdir)
  if inp.corr is not None and not inp.corr["universal"].astype(bool).any():
    logging.warning("no universal neurons in %s: the universality sections use the top %d "
                    "neurons by excess correlation", config.corr_table,
                    int(config.universal.fallback_k))
  sections, timings = [], {}
  for name in todo:
    t0 = time.time()
    out = os.path.join(workdir, name)
    logging.info("analysis %s -> %s", name, out)
    sections += [tuple(s) for s in REGISTRY[name].run(inp, out)]
    inp.out_dirs[name] = out
    timings[name] = round(time.time() - t0, 2)
  atomic.write_json(os.path.join(workdir, SECTIONS),
                    {"analyses": todo, "seconds": timings, "inputs": inputs,
                     # figure paths relative to the workdir, which can move
                     "sections": [[s[0], _relative(s[1], workdir), *s[2:]] for s in sections]})
  return Run(sections, todo, inp.corr)


def _relative(path, workdir):
  if isinstance(path, str) and os.path.isabs(path) and \
      os.path.abspath(path).startswith(os.path.abspath(workdir) + os.sep):
    return os.path.relpath(path, workdir)
  return path


def read_sections(workdir: str) -> list:
  """The [(title, png_path, caption)] of `<workdir>/sections.json`, paths under `workdir`."""
  meta = atomic.read_json(os.path.join(workdir, SECTIONS))
  return [(s[0], os.path.join(workdir, s[1]) if isinstance(s[1], str) else s[1], *s[2:])
          for s in meta["sections"]]


def run_all(config, workdir: str, analyses: str = "all") -> list:
  """run(...)'s report sections [(title, png_path, caption)]."""
  return run(config, workdir, analyses).sections


def report(config, workdir: str, r: Run) -> Optional[str]:
  """`<workdir>/report/index.html` of an analyze run: the correlation table's figures, then
  the analyses' sections. None without correlation results (or, with a warning, when the
  table lacks the report's columns)."""
  if r.corr is None:
    return None
  done = os.path.join(workdir, REPORT_DIR, "index.html")
  if r.complete and os.path.isfile(done):   # written by the run that did the analyses
    return done
  from ucore.report.figures import REQUIRED_COLUMNS
  from ucore.report.html import write_report
  missing = [c for c in REQUIRED_COLUMNS if c not in r.corr.columns]
  if missing:
    logging.warning("no HTML report: the correlation table lacks %s", missing)
    return None
  from ucore.report.browser import write_beside_report
  return write_beside_report(write_report(
      os.path.join(workdir, REPORT_DIR), {"model": r.corr}, figures_extra=r.sections,
      summary={"model": config.model_dir, "token_store": config.token_store,
               "analyses": ", ".join(r.analyses)}), os.path.join(workdir, "browser"))
