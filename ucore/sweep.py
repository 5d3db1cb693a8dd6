"""Universality over training: a family of models at a list of checkpoints -> one correlation
job per checkpoint on one token store -> the over-training tables and figures.

  python main.py sweep --config=configs/sweep_default.py --workdir=runs/sweep \\
      --config.models=pythia-160m,pythia-160m-seed1,pythia-160m-seed2 \\
      --config.checkpoints=@step1000,@step10000,@step143000 --config.correlate.token_store=DIR

A family is a list of models (aliases, hub ids, or local directories; the first is the
reference); a checkpoint is `@<revision>` of every hub model (`@stepN` for Pythia,
`@checkpoint-N` for the Stanford GPT-2 seeds) or a subdirectory of every local model directory
(the pipeline's `family/seed<s>` holds `checkpoint-<N>`). Checkpoints that are HF files are
converted once into a cache shared by sweeps, keyed by the source's identity (hub id@revision,
or the sha256 of a local directory's files); ucore checkpoints are used in place.

Layout of the workdir (resumable: the same command continues a killed sweep; checkpoints
whose tables are complete are skipped, new checkpoints can be added to the list):
  sweep.json          the sweep's identity (family, names, correlate settings, token store)
  corr/step<N>/       one correlate job (ucore.corr.driver) per checkpoint; checkpoint.json
                      records its sources (ucore.jobs.identity claim), tables/ its result
  over_training/      persistence.parquet, excess_by_step.parquet, share_by_layer.parquet,
                      focus_by_step.parquet, their figures (*.png), summary.json (last)
The pipeline's persistence stage runs the same `correlate_checkpoint` and `over_training`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import time

from absl import logging

from ucore.jobs import atomic, identity, workdir_lock
from ucore.jobs.errors import UserError

SWEEP_JOB = "sweep.json"
CORR_DIR = "corr"
STEP_DIR = "step{}"
CHECKPOINT_JOB = "checkpoint.json"
OUT_DIR = "over_training"
SUMMARY = "summary.json"
# the training step a checkpoint name carries: step1000, checkpoint-1000, checkpoint_1000
_STEP_IN_NAME = re.compile(r"(?:^|[^A-Za-z])(?:step|checkpoint)[-_]?(\d+)$")


def default_cache_dir() -> str:
  """$UCORE_CACHE/converted, else $XDG_CACHE_HOME (or ~/.cache)/ucore/converted."""
  root = os.environ.get("UCORE_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ucore")
  return os.path.join(root, "converted")


# ---------------------------------------------------------------- sources and the cache
@dataclasses.dataclass(frozen=True)
class Source:
  """One model at one checkpoint. kind: "hub" (converted into the cache), "hf_dir" (a local
  HF checkpoint, converted into the cache) or "ucore_dir" (a ucore checkpoint, used as is).
  key: the identity the cache and the resume records use (content, not place)."""
  kind: str
  reference: str
  location: str
  key: dict


def source_of(reference: str, process: str = "none") -> Source:
  """Resolves `reference` (alias | hub id@revision | directory) without converting it."""
  from converters import aliases, hf_files
  from ucore.models.hooked import MANIFEST, read_manifest
  ref = aliases.parse(reference)   # unknown aliases, bad Pythia steps, missing directories
  if ref.kind == "hub":
    return Source("hub", reference, ref.location,
                  {"hub": ref.location, "revision": ref.revision or "main", "process": process})
  if os.path.isfile(os.path.join(ref.location, MANIFEST)):
    fingerprint = read_manifest(ref.location)["params_fingerprint"]
    return Source("ucore_dir", reference, ref.location, {"params_fingerprint": fingerprint})
  files = hf_files.locate(ref)   # UserError unless config.json and weights are there
  return Source("hf_dir", reference, ref.location,
                {"sha256": hf_files.sha256_of(files), "process": process})


def cache_entry(source: Source, cache_dir: str) -> str:
  """The cache directory of a convertible source: named by the digest of its key."""
  digest = hashlib.sha256(json.dumps(identity.normalize(source.key),
                                     sort_keys=True).encode()).hexdigest()
  return os.path.join(os.path.abspath(cache_dir), digest[:32])


def converted_dir(source: Source, cache_dir: str | None) -> str:
  """A ucore checkpoint directory for `source`: in place, from the cache, or converted now
  (into the cache, atomically: a killed conversion leaves no entry)."""
  from ucore.models.hooked import MANIFEST, read_manifest
  if source.kind == "ucore_dir":
    return source.location
  cache_dir = cache_dir or default_cache_dir()
  entry = cache_entry(source, cache_dir)
  if not os.path.isfile(os.path.join(entry, MANIFEST)):
    from converters.convert import convert
    with workdir_lock.hold(cache_dir):   # one converting process per cache at a time
      atomic.remove_partials(entry)
      if not os.path.isfile(os.path.join(entry, MANIFEST)):
        print(f"[sweep]   converting {source.reference} -> {entry}", flush=True)
        convert(source.location if source.kind == "hf_dir" else source.reference, entry,
                source.key["process"])
  manifest = read_manifest(entry)
  held = manifest.get("source", {})
  same = (held.get("location") == source.key["hub"] and
          (held.get("revision") or "main") == source.key["revision"]
          if source.kind == "hub" else manifest.get("sha256") == source.key["sha256"])
  if not same or manifest.get("processing") != source.key["process"]:
    raise UserError(f"conversion cache entry {entry} does not hold {source.reference} "
                    f"(processing {source.key['process']}); delete it and run again")
  return entry


# ---------------------------------------------------------------- one checkpoint
def checkpoint_config(correlate, model_dirs, names):
  """The correlate config of one checkpoint: `correlate` (token_store, start_row, max_tokens
  and every other setting) with this checkpoint's models, the reference first."""
  import ml_collections
  c = ml_collections.ConfigDict(copy.deepcopy(correlate.to_dict()))
  c.models, c.model_names = list(model_dirs), list(names)
  c.mode = "reference"
  return c


def checkpoint_done(step_dir: str) -> bool:
  from ucore.corr import tables
  return os.path.isfile(os.path.join(step_dir, tables.TABLES_DIR, tables.SUMMARY))


def correlate_checkpoint(correlate, step: int, sources, names, step_dir: str,
                         cache_dir: str | None = None) -> str:
  """Correlates the family at one checkpoint into `step_dir` (a ucore.corr.driver workdir);
  returns its tables directory. Resumable: `step_dir`/checkpoint.json claims the sources, a
  checkpoint that finished before is skipped without converting or loading anything."""
  from ucore.corr import driver, tables
  os.makedirs(step_dir, exist_ok=True)
  job = identity.normalize({"step": int(step), "names": list(names),
                            "sources": [s.key for s in sources]})
  resumed = identity.claim(os.path.join(step_dir, CHECKPOINT_JOB), job,
                           f"{step_dir} holds another checkpoint's correlations",
                           "; use a new --workdir or delete that directory")
  tables_dir = os.path.join(step_dir, tables.TABLES_DIR)
  if resumed and checkpoint_done(step_dir):
    return tables_dir
  dirs = [converted_dir(s, cache_dir) for s in sources]
  return driver.run(checkpoint_config(correlate, dirs, names), step_dir)


def read_reference(tables_dir: str, name: str):
  from ucore.corr import tables
  return tables.read_neurons(tables_dir, name)


def over_training(tables_by_step: dict, threshold: float, fallback_k: int):
  """ucore.analyses.persistence.over_training of {step: reference neuron table}."""
  from ucore.analyses.persistence import over_training as compute
  return compute(tables_by_step, threshold, fallback_k)


def write_over_training(result, out_dir: str, reference: str, extra: dict | None = None) -> str:
  """The over-training tables (parquet) and figures into `out_dir`, staged and renamed into
  place with summary.json; returns `out_dir`."""
  from ucore.report import figures as F
  frames = {"persistence": result.persistence, "excess_by_step": result.excess_by_step,
            "share_by_layer": result.share_by_layer, "focus_by_step": result.focus_by_step}
  atomic.remove_partials(out_dir)   # left by a kill between staged_dir's two renames
  with atomic.staged_dir(out_dir, replace=True) as tmp:
    for name, df in frames.items():
      atomic.write_parquet(df, os.path.join(tmp, f"{name}.parquet"))
    F.persistence(result.persistence, os.path.join(tmp, "persistence.png"))
    F.excess_over_training(result.excess_by_step, os.path.join(tmp, "excess_by_step.png"))
    F.share_by_layer_over_training(result.share_by_layer,
                                   os.path.join(tmp, "share_by_layer.png"))
    F.focus_over_training(result.focus_by_step, os.path.join(tmp, "focus_by_step.png"),
                          result.focus.label)
    summary = dict(extra or {}, reference=reference, final_step=result.final_step,
                   steps=[int(s) for s in result.excess_by_step.index],
                   n_universal=[int(v) for v in result.persistence["n_universal"]],
                   focus={"label": result.focus.label, "fallback": result.focus.fallback,
                          "n": len(result.focus.ids)})
    atomic.write_json(os.path.join(tmp, SUMMARY), summary)
  return out_dir


# ---------------------------------------------------------------- the command
def step_of(checkpoint: str) -> int | None:
  """The training step a checkpoint's name carries (@step1000, checkpoint-400), or None."""
  m = _STEP_IN_NAME.search(os.path.basename(os.path.normpath(checkpoint.lstrip("@"))))
  return int(m.group(1)) if m else None


def reference_at(model: str, checkpoint: str) -> str:
  """The reference of `model` at `checkpoint`: model@revision for a hub model, the
  subdirectory for a local one."""
  local = os.path.isdir(model) or model.startswith((".", "/", "~"))
  if checkpoint.startswith("@"):
    if local:
      raise UserError(f"checkpoint {checkpoint!r} is a hub revision but model {model} is a "
                      "local directory: name its checkpoint subdirectories (checkpoint-N)")
    if "@" in model:
      raise UserError(f"model {model!r} carries a revision; the sweep's checkpoints set it")
    return model + checkpoint
  if not local:
    raise UserError(f"checkpoint {checkpoint!r} is a subdirectory but model {model} is not a "
                    "local directory: hub checkpoints are revisions (@step1000, "
                    "@checkpoint-1000)")
  path = os.path.join(os.path.expanduser(model), checkpoint)
  if not os.path.isdir(path):
    raise UserError(f"checkpoint directory {path} does not exist")
  return os.path.abspath(path)


def _default_name(model: str) -> str:
  from converters import aliases
  name = os.path.basename(os.path.normpath(model))
  if not (os.path.isdir(model) or model.startswith((".", "/", "~"))):
    name = model if model in aliases.ALIASES else model.split("/")[-1]
  return name


def plan(config):
  """[(step, checkpoint, [reference per model])] in step order, and the model names; every
  field checked (UserError) before anything is written."""
  from ucore.corr.driver import check_numbers
  from ucore.jobs import schema
  schema.check(config, "sweep")   # every field and cross-field rule (ucore/jobs/schema.py)
  models, checkpoints = list(config.models), list(config.checkpoints)
  names = list(config.model_names) or [_default_name(m) for m in models]
  for n in names:
    atomic.check_safe_name(n, "model name")
  if len(set(names)) != len(names):
    raise UserError(f"model names {names} repeat; set config.model_names")
  steps = list(config.steps) or [step_of(c) for c in checkpoints]
  unnamed = [c for c, s in zip(checkpoints, steps) if s is None]
  if unnamed:
    raise UserError(f"checkpoints {unnamed} carry no step in their name; give every "
                    "checkpoint's training step in config.steps")
  steps = [int(s) for s in steps]
  if len(set(steps)) != len(steps):
    raise UserError(f"checkpoint steps {steps} must be distinct")
  c = config.correlate
  if not c.token_store:
    raise UserError("config.correlate.token_store is required (a directory made by "
                    "`main.py tokenize` with the family's tokenizer)")
  check_numbers(c)
  rows = sorted(zip(steps, checkpoints))
  return [(s, ck, [reference_at(m, ck) for m in models]) for s, ck in rows], names


@workdir_lock.locked
def run(config, workdir: str) -> dict:
  """The sweep command (see the module docstring); returns the over-training summary."""
  from ucore.data.store import open_store
  t0 = time.time()
  todo, names = plan(config)
  sources = [[source_of(r, config.process) for r in refs] for _, _, refs in todo]
  try:
    store = open_store(config.correlate.token_store)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot open token store {config.correlate.token_store!r}: {e}") from e
  cache_dir = config.cache_dir or default_cache_dir()
  workdir = os.path.abspath(workdir)
  settings = {k: v for k, v in config.correlate.to_dict().items()
              if k not in ("models", "model_names", "token_store")}
  job = identity.relative_paths(identity.normalize({
      "models": list(config.models), "names": names, "process": config.process,
      "correlate": settings, "token_store": store.store_id}), workdir)
  identity.claim(os.path.join(workdir, SWEEP_JOB), job,
                 f"{workdir} holds a sweep of another family or settings",
                 "; use a new --workdir (checkpoints may be added to the same sweep)")
  tables_by_step, n = {}, len(todo)
  for i, ((step, checkpoint, _), srcs) in enumerate(zip(todo, sources), 1):
    step_dir = os.path.join(workdir, CORR_DIR, STEP_DIR.format(step))
    t = time.time()
    done = checkpoint_done(step_dir)
    print(f"[sweep] checkpoint {i}/{n} step {step} ({checkpoint}): "
          f"{'finished before' if done else 'correlating'} ...", flush=True)
    tdir = correlate_checkpoint(config.correlate, step, srcs, names, step_dir, cache_dir)
    tables_by_step[step] = read_reference(tdir, names[0])
    u = int(tables_by_step[step]["universal"].sum())
    print(f"[sweep] checkpoint {i}/{n} step {step} done in {time.time() - t:.1f}s: {u} of "
          f"{len(tables_by_step[step])} neurons of {names[0]} universal", flush=True)
  result = over_training(tables_by_step, float(config.correlate.threshold),
                         int(config.fallback_k))
  out = write_over_training(result, os.path.join(workdir, OUT_DIR), names[0], extra={
      "checkpoints": {str(s): ck for s, ck, _ in todo}, "models": list(config.models),
      "names": names})
  logging.info("sweep: %d checkpoints in %.1fs -> %s", n, time.time() - t0, out)
  print(f"[sweep] over-training tables and figures: {out}", flush=True)
  return atomic.read_json(os.path.join(out, SUMMARY)) | {"out_dir": out}
