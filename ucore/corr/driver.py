"""`python main.py correlate`: models + token store -> streaming moments -> tables.

Each model's forward runs once per batch; every pair is updated from that batch. The state is
checkpointed (ucore.corr.state) every `checkpoint.every_steps` steps or
`checkpoint.every_minutes` minutes; the same command resumes from the last commit. Where the
whole state does not fit the devices it is split into tiles run as passes over the same rows
(ucore.corr.passes; each pass's models' forwards run again).

Phases (each a function): prepare -> finished_tables (done / re-finalize) -> place_models ->
plan_passes -> per pass: resume_or_start -> accumulate -> commit -> finalize.

Outputs in <workdir>/:
  state/                      resumable accumulator checkpoints (in passes: passes.json and
                              pass-<k>/ per pass)
  tables/                     written once at the end (staged, renamed into place); layout
                              and readers in ucore.corr.tables
  full/<x>__<y>/              [zarr3 correlation blocks, with save_full_matrix]
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ucore.jobs import atomic, identity, workdir_lock
from ucore.corr import finalize as F
from ucore.corr import memory as MEM
from ucore.corr import moments as M
from ucore.corr import passes as PS
from ucore.corr import activations as S
from ucore.corr import precision as precision_names
from ucore.corr import selfcheck as SC
from ucore.corr import state as ST
from ucore.corr import tables as TB
from ucore.data.mask import DEFAULT_EXCLUDE_IDS, token_mask
from ucore.data.read_ahead import read_ahead
from ucore.data.store import check_store_matches_model, process_rows
from ucore.jobs.errors import UserError

NUMERICS = ("float32 per-batch centred co-moments (two-pass batch means), GEMMs at "
            "{gemm}, merged with Chan's pairwise formulas into float32 running sums{comp}; "
            "int32 counts.")


def _cfg_get(cfg, key, default=None):
  try:
    return cfg[key]
  except (KeyError, AttributeError):
    return default


def build_sources(config, need_store=True):
  """(activation sources, token store, synthetic family or None)."""
  syn = _cfg_get(config, "synthetic")
  if syn is not None and syn.enabled:
    from ucore.corr import synthetic
    return synthetic.build(syn)
  models = list(config.models)
  if len(models) < 2:
    raise UserError("config.models must list at least two converted model directories "
                    "(the first is the reference).")
  names = list(config.model_names) if config.model_names else [
      os.path.basename(os.path.normpath(p)) for p in models]
  if len(names) != len(models):
    raise UserError("config.model_names must have one name per entry of config.models.")
  for n in names:   # they name the table files
    atomic.check_safe_name(n, "model name")
  if len(set(names)) != len(names):
    raise UserError(f"model names {names} repeat; give each model its own name with "
                    "config.model_names")
  dtype = str(_cfg_get(config, "forward_dtype", "float32"))
  srcs = [S.ModelSource(p, n, config.hook, dtype=dtype) for p, n in zip(models, names)]
  if not need_store:
    return srcs, None, None
  if not config.token_store:
    raise UserError("config.token_store is required (a directory made by `main.py tokenize`).")
  from ucore.data.store import open_store
  try:
    store = open_store(config.token_store)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot open token store {config.token_store!r}: {e}")
  return srcs, store, None


def parse_layers(spec: str, n_layer: int):
  if spec in ("", "all", None):
    return tuple(range(n_layer))
  try:
    out = tuple(sorted({int(s) for s in str(spec).split(",") if s.strip()}))
  except ValueError:
    raise UserError(f"config.layers must be 'all' or comma-separated ints, got {spec!r}.")
  if not out or any(not 0 <= l < n_layer for l in out):
    raise UserError(f"config.layers {spec!r} out of range for {n_layer} layers.")
  return out


def exclude_ids(config, store) -> tuple:
  """config.exclude_ids, or the token store's own mask ids (its tokenizer's BOS/EOS and "\\n")
  when the config leaves it empty. Every token source has `mask_exclude_ids`."""
  ids = tuple(int(i) for i in config.exclude_ids)
  return ids or tuple(int(i) for i in store.mask_exclude_ids)


def job_identity(config, spec, srcs, store, mesh, stop_row):
  """Everything that defines the result; a resumed run must match it exactly."""
  return {
      "spec": spec.to_json(),
      "models": [{"name": s.name, "fingerprint": s.fingerprint} for s in srcs],
      "token_store": store.store_id,
      "ctx": int(store.ctx),
      "hook": config.hook,
      "mesh": {"tok": int(mesh.shape[M.TOK]), "neu": int(mesh.shape[M.NEU])},
      "process_count": jax.process_count(),
      "batch_rows": int(config.batch_rows),
      "start_row": int(config.start_row),
      "stop_row": int(stop_row),
      "exclude_ids": list(exclude_ids(config, store)),
      "pad_id": int(config.pad_id),
      # the forward's dtype, where not the default (older runs' identity resumes unchanged)
      **({"forward_dtype": str(config.forward_dtype)}
         if str(_cfg_get(config, "forward_dtype", "float32")) != "float32" else {}),
  }


def check_numbers(config):
  """UserError for a count or row that no run can use (issue 10 item 5)."""
  for key, lo in (("batch_rows", 1), ("top_k", 1), ("start_row", 0), ("max_tokens", 0)):
    v = int(config[key])
    if v < lo:
      raise UserError(f"config.{key}={v} must be >= {lo}")
  if int(config.baseline.draws) < 1:
    raise UserError(f"config.baseline.draws={config.baseline.draws} must be >= 1")
  ids = config.exclude_ids
  if isinstance(ids, (str, bytes)) or not all(
      isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in ids):
    raise UserError(f"config.exclude_ids={ids!r} must be a list of token ids (integers >= 0), "
                    "e.g. --config.exclude_ids="
                    f"{','.join(map(str, DEFAULT_EXCLUDE_IDS))} (GPT-2's); () uses the token "
                    "store's own")
  if isinstance(config.pad_id, bool) or not isinstance(config.pad_id, (int, np.integer)):
    raise UserError(f"config.pad_id={config.pad_id!r} must be an integer token id (-1 = none)")
  if int(config.selfcheck.sample) < 0:
    raise UserError(f"config.selfcheck.sample={config.selfcheck.sample} must be >= 0 "
                    "(0 turns the float64 self-check off)")


@dataclasses.dataclass
class Job:
  """What `prepare` resolves from a config before anything is written: the sources, the
  spec, the rows and the identity a resumed run must match."""
  config: object
  srcs: list
  store: object
  spec: M.Spec
  mesh: object
  layer_ids: list
  stop_row: int
  ident: dict
  state_dir: str
  tables_dir: str
  t_start: float

  @property
  def identity(self) -> dict:
    return identity.normalize(self.ident)


@dataclasses.dataclass
class Progress:
  """One accumulation's moving parts: the accumulator, the row cursor, the step count, the
  self-check (or why there is none) and the last step committed (-1: none)."""
  acc: M.Accumulator
  cursor: int
  step: int
  check: object
  saved_step: int
  worker: object = None


@dataclasses.dataclass
class Pass:
  """One resumable unit over the rows: the whole spec (a single pass, committed in state/)
  or one tile of it (ucore.corr.passes, committed in state/pass-<k>/)."""
  index: int
  count: int
  spec: M.Spec
  state_dir: str
  ident: dict

  @property
  def identity(self) -> dict:
    return identity.normalize(self.ident)

  @property
  def label(self) -> str:
    return "" if self.count == 1 else f" (pass {self.index + 1} of {self.count})"


def prepare(config, workdir: str, store=None) -> Job:
  """Phase 1: validates the config, opens the sources and the store, makes the spec and
  the run's identity. Writes nothing (bad input is a UserError before any file exists)."""
  t_start = time.time()
  check_numbers(config)   # before anything is written (job state, tables)
  if store is not None and not (config.synthetic.enabled):
    srcs, _, fam = build_sources(config, need_store=False)
  else:
    srcs, store, fam = build_sources(config)
  for s in srcs:   # real models: the store must be made for every one of them
    if getattr(s, "model", None) is not None:
      check_store_matches_model(store, s.model, s.name)
  d = {s.d_mlp for s in srcs}
  if len(d) != 1:
    raise UserError(f"all models must have the same d_mlp, got {sorted(d)}.")
  d_mlp = d.pop()
  mesh = M.make_mesh(int(config.mesh.tok), int(config.mesh.neu))
  layer_ids = [parse_layers(config.layers, s.n_layer) for s in srcs]
  spec = M.make_spec([s.name for s in srcs], layer_ids, d_mlp, mesh, mode=config.mode,
                     layer_mode=config.layer_mode, compensated=config.compensated,
                     precision=str(config.precision))
  if config.batch_rows % jax.process_count():
    raise UserError(f"batch_rows={config.batch_rows} must be divisible by the "
                    f"{jax.process_count()} processes.")
  ctx = int(store.ctx)
  budget_rows = math.ceil(int(config.max_tokens) / ctx) if config.max_tokens > 0 else store.num_rows
  stop_row = min(int(config.start_row) + budget_rows, int(store.num_rows))
  if stop_row <= config.start_row:
    raise UserError(f"no rows to read: start_row={config.start_row}, store has "
                    f"{store.num_rows} rows.")
  return Job(config=config, srcs=srcs, store=store, spec=spec, mesh=mesh,
             layer_ids=layer_ids, stop_row=stop_row,
             ident=job_identity(config, spec, srcs, store, mesh, stop_row),
             state_dir=os.path.join(workdir, "state"),
             tables_dir=os.path.join(workdir, TB.TABLES_DIR), t_start=t_start)


def finished_tables(job: Job):
  """Phase 2a: the tables directory when the run is already finalized (nothing to do) or
  only its finalize-only settings changed (new tables from the committed moments, no new
  pass over the tokens); None when tokens remain to be accumulated."""
  config, tables_dir, state_dir = job.config, job.tables_dir, job.state_dir
  summary_path = os.path.join(tables_dir, TB.SUMMARY)
  if jax.process_index() == 0:   # left by a kill during the final table write
    atomic.remove_partials(tables_dir)
  if not os.path.exists(summary_path):
    return None
  done = atomic.read_json(summary_path)
  ST.check_identity(done.get("identity"), job.identity, tables_dir)
  if done.get("finalize") == finalize_settings(config):
    logging.info("correlate: %s already finalized; nothing to do (delete it to recompute "
                 "the tables from the last committed state).", tables_dir)
    return tables_dir
  # finalize-only settings changed: new tables from the committed moments (no new pass)
  changed = identity.diff(done.get("finalize"), finalize_settings(config))
  _, tiles = PS.recorded(state_dir)
  units = recorded_passes(job, tiles or [job.spec])
  manifests = [ST.latest(u.state_dir) for u in units]
  if all(m is None for m, _ in manifests) and "finalize" not in done:   # predates the record
    logging.warning("correlate: %s predates the finalize-settings record and its state "
                    "is gone; kept as is (delete it to recompute)", tables_dir)
    return tables_dir
  for (manifest, path), unit in zip(manifests, units):
    if manifest is None or int(manifest["cursor"]["row"]) != job.stop_row:
      raise UserError(f"{tables_dir} was finalized with other settings "
                      f"({'; '.join(changed[:4])}) and the committed moments in "
                      f"{unit.state_dir} are gone; delete {tables_dir} to recompute")
    ST.check_identity(manifest["identity"], unit.identity, path)
  logging.info("correlate: re-finalizing %s from %s (%s)", tables_dir, state_dir, changed)
  with MEM.oom_as_user_error("correlate finalize", resume=state_dir):
    return finalize(job, units, {}, replace=True)


def place_models(job: Job) -> None:
  """Weights on the forwards' devices once (numpy weights would cross the host link per
  call)."""
  mesh = job.mesh
  for s in job.srcs:
    if getattr(s, "model", None) is not None:
      s.model.place(list(mesh.local_devices) if jax.process_count() == 1
                    else list(mesh.local_devices)[:1])


def padded_rows_per_process(job: Job) -> int:
  """Rows each process feeds its forwards per step: its share of batch_rows, padded to a
  multiple of its devices (the forwards run data-parallel over them)."""
  per = job.config.batch_rows // jax.process_count()
  n_local = len(job.mesh.local_devices)
  return -(-per // n_local) * n_local


def _tokens_per_step(job: Job) -> int:
  return padded_rows_per_process(job) * int(job.store.ctx) * jax.process_count()


def _device_cap(job: Job):
  gib = float(job.config.memory.device_gib)
  return int(gib * MEM.GIB) if gib > 0 else None


def recorded_passes(job: Job, tiles) -> list:
  """The Pass units of `tiles` (a single pass: the whole spec, in state/)."""
  n = len(tiles)
  out = []
  for k, t in enumerate(tiles):
    ident = job.ident if n == 1 else dict(job.ident, **{
        "pass": {"index": k, "of": n, "tile": t.to_json()}})
    out.append(Pass(index=k, count=n, spec=t, state_dir=PS.pass_dir(job.state_dir, k, n),
                    ident=ident))
  return out


def plan_passes(job: Job) -> list:
  """Phase 2b: the passes this run makes. A run already started keeps its own (state/
  passes.json, or a single pass's commits in state/); a new one takes the whole state in
  one pass when one step of it fits the devices (free memory or memory.device_gib), else
  the fewest tiles that each fit (ucore.corr.passes), recorded before the first pass.
  Where not even the smallest tile fits: the preflight's one-line refusal."""
  rec_ident, tiles = PS.recorded(job.state_dir)
  if tiles is not None:
    ST.check_identity(rec_ident, job.identity, os.path.join(job.state_dir, PS.RECORD))
    return recorded_passes(job, tiles)
  if ST.latest(job.state_dir)[0] is not None:
    return recorded_passes(job, [job.spec])
  free, _ = MEM.free_per_device(job.mesh, _device_cap(job))
  tokens = _tokens_per_step(job)
  tiles = [job.spec] if free is None else PS.choose(
      job.spec, lambda t: MEM.step_need(t, job.mesh, tokens) <= free)
  if tiles is None:   # the one-line refusal, with the whole run's figure
    MEM.preflight(job.spec, job.mesh, tokens, 0, free=_device_cap(job))
    raise UserError(f"correlate: not even one tile of the state fits; {MEM.REMEDIES}")
  if len(tiles) > 1:
    if job.config.save_full_matrix and any(t.n_layers[0] != job.spec.n_layers[0]
                                           for t in tiles):
      raise UserError("save_full_matrix needs whole reference layers in every pass, and "
                      f"this run needs {PS.describe(tiles)}; use more devices or drop "
                      "save_full_matrix")
    logging.info("correlate: the state does not fit the devices in one pass; %s",
                 PS.describe(tiles))
    if jax.process_index() == 0:
      os.makedirs(job.state_dir, exist_ok=True)
      PS.record(job.state_dir, job.ident, tiles)
  return recorded_passes(job, tiles)


def steps_in_flight(job: Job, unit: Pass) -> int:
  """Before any state exists or is allocated: refuses a step that cannot fit (one line).
  With overlap the next step's activations are captured while this one runs: counted twice;
  where only one step fits, the loop runs sequentially (same tables)."""
  return MEM.steps_in_flight_that_fit(
      unit.spec, job.mesh, _tokens_per_step(job), 0, free=_device_cap(job),
      wanted=2 if job.config.overlap else 1)


def pass_complete(job: Job, unit: Pass) -> bool:
  """The pass has committed its last row (its state waits for finalize)."""
  manifest, _ = ST.latest(unit.state_dir)
  return manifest is not None and int(manifest["cursor"]["row"]) == job.stop_row


def resume_or_start(job: Job, unit: Pass) -> Progress:
  """Phase 2c: the pass's accumulator from its last committed checkpoint (identity
  checked), or a fresh one at config.start_row."""
  config, spec, mesh = job.config, unit.spec, job.mesh
  os.makedirs(unit.state_dir, exist_ok=True)
  manifest, path = ST.latest(unit.state_dir)
  if manifest is not None:
    ST.check_identity(manifest["identity"], unit.identity, path)
    state = ST.restore(path, M.state_shapes(spec), M.state_shardings(spec, mesh),
                       manifest["cursor"]["count"])
    cursor, step = int(manifest["cursor"]["row"]), int(manifest["cursor"]["step"])
    logging.info("correlate: resuming from %s (row %d, step %d)%s", path, cursor, step,
                 unit.label)
    check = _restore_check(config, spec, manifest, path, job.spec)
  else:
    state, cursor, step = None, int(config.start_row), 0
    check = _new_check(config, spec, job.spec)
    if unit.count > 1:
      logging.info("correlate: starting pass %d of %d", unit.index + 1, unit.count)
  worker = SC.Worker(check) if isinstance(check, SC.SelfCheck) else None
  return Progress(acc=M.Accumulator(spec, mesh, state), cursor=cursor, step=step,
                  check=check, saved_step=step if manifest is not None else -1, worker=worker)


def commit(job: Job, unit: Pass, prog: Progress, hook=ST._no_hook) -> None:
  """Phase 4: commits the accumulator (and the self-check's sums) at the current cursor;
  never rewrites (and so never endangers) a committed step."""
  if prog.saved_step == prog.step:
    return
  prog.saved_step = prog.step
  config = job.config
  man = {"identity": unit.ident,
         "cursor": {"row": prog.cursor, "step": prog.step, "count": prog.acc.count},
         "numerics": numerics(unit.spec),
         "config": config.to_dict() if hasattr(config, "to_dict") else {}}
  extra = {}
  if prog.worker is not None:
    prog.worker.drain()          # the reference sums up to this step's cursor
    data = prog.check.to_bytes()
    extra[SC.FILE] = data
    man["selfcheck"] = {"settings": prog.check.settings(), "sha256": SC.digest(data)}
  t = time.time()
  ST.save(unit.state_dir, prog.step, prog.acc.state, identity.normalize(man),
          keep=int(config.checkpoint.keep), hook=hook, extra_files=extra)
  logging.info("correlate: committed step %d (row %d)%s in %.1fs", prog.step, prog.cursor,
               unit.label, time.time() - t)


class _Batches:
  """Turns the store's rows into the forwards' inputs: padded device tokens, the mask of
  counted tokens, and the rows' first index in this process's share."""

  def __init__(self, job: Job):
    config, mesh = job.config, job.mesh
    self.job = job
    self.per_pad = padded_rows_per_process(job)
    self.ctx = int(job.store.ctx)
    self.row_sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(mesh.local_devices), ("rows",)),
        jax.sharding.PartitionSpec("rows", None))
    self.excl = exclude_ids(config, job.store)
    self.pad_id = None if int(config.pad_id) < 0 else int(config.pad_id)
    self.vocab = min([int(s.model.config.vocab_size) for s in job.srcs
                      if getattr(s, "model", None) is not None] or [np.iinfo(np.int32).max])

  def inputs(self, g, rows):
    """(tokens for the forwards, mask [tokens] bool, store row range of the valid rows)."""
    config, job = self.job.config, self.job
    n_valid = rows.shape[0]
    if rows.size and (rows.min() < 0 or rows.max() >= self.vocab):   # device arrays skip
      raise UserError(f"rows [{g}, {g + config.batch_rows}) hold token ids in "  # the model's check
                      f"[{rows.min()}, {rows.max()}], outside every model's vocabulary "
                      f"[0, {self.vocab}); use a token store made with the models' tokenizer")
    pidx, pcount = jax.process_index(), jax.process_count()
    a, _ = process_rows(g, config.batch_rows, job.stop_row, pidx, pcount)
    tokens = np.zeros((self.per_pad, self.ctx), np.int32)
    tokens[:n_valid] = rows
    mask = np.asarray(token_mask(tokens, exclude_ids=self.excl, pad_id=self.pad_id))
    mask[n_valid:] = False
    dev_tokens = jax.device_put(tokens, self.row_sharding) if pcount == 1 else tokens
    return dev_tokens, mask.reshape(-1), range(a, a + n_valid)


class _ProgressLog:
  """The progress lines: tokens/s overall and since the last line, GFLOP/s, the time split
  and the ETA."""

  def __init__(self, job: Job, unit: Pass):
    self.job, self.ctx = job, int(job.store.ctx)
    self.flops_step = M.step_flops(unit.spec, job.config.batch_rows * self.ctx)
    self.t0 = time.time()
    self.rows_done = self.steps_run = 0
    self.last_line = (self.t0, 0)   # (time, rows done) at the previous progress line
    self.split = {"forward": 0.0, "accumulate": 0.0, "host wait": 0.0}

  def step_done(self, prog: Progress, g: int) -> None:
    job = self.job
    self.steps_run += 1
    self.rows_done += min(job.config.batch_rows, job.stop_row - g)
    if not (prog.step % max(int(job.config.log_every), 1) == 0 or prog.cursor >= job.stop_row):
      return
    now = time.time()
    el = now - self.t0
    tps = self.rows_done * self.ctx / max(el, 1e-9)
    # the rate since the previous line: the steady state, without the first step's compile
    recent = (self.rows_done - self.last_line[1]) * self.ctx / max(now - self.last_line[0], 1e-9)
    self.last_line = (now, self.rows_done)
    eta = (job.stop_row - prog.cursor) * self.ctx / max(recent, 1e-9)
    logging.info("correlate: step %d row %d/%d | %.0f tokens/s (%.0f since the last line) | "
                 "%.1f GFLOP/s of correlation | forward %.0fs, accumulate %.0fs, host wait "
                 "%.0fs | ETA %.0fs", prog.step, prog.cursor, job.stop_row, tps, recent,
                 self.flops_step * self.steps_run / max(el, 1e-9) / 1e9,
                 self.split["forward"], self.split["accumulate"], self.split["host wait"], eta)


def accumulate(job: Job, unit: Pass, prog: Progress, *, overlap: bool,
               hook=ST._no_hook) -> Progress:
  """Phase 3: streams rows [cursor, stop_row) through the forwards of the pass's models into
  the accumulator (and the self-check), committing every checkpoint.every_steps steps or
  every_minutes minutes. `hook("step")` after every accumulated batch."""
  config = job.config
  pidx, pcount = jax.process_index(), jax.process_count()
  feed = _Batches(job)
  log = _ProgressLog(job, unit)
  active = set(unit.spec.active)   # a tile's other models run no forward in this pass
  batches = job.store.iter_batches(config.batch_rows, start_row=prog.cursor,
                                   stop_row=job.stop_row, process_index=pidx,
                                   process_count=pcount)
  if overlap:   # rows of step k+1 are read (and checked) while the device runs step k
    batches = read_ahead(batches, depth=2)
  last_save = time.time()
  in_flight = collections.deque()   # tickets of dispatched steps
  t_wait = time.time()
  for g, rows in batches:
    log.split["host wait"] += time.time() - t_wait
    dev_tokens, mask, row_ids = feed.inputs(g, rows)
    tf = time.time()
    acts = [src.acts(dev_tokens, lids, row_ids).reshape(feed.per_pad * feed.ctx, -1)
            if m in active else None
            for m, (src, lids) in enumerate(zip(job.srcs, unit.spec.layer_ids))]
    ta = time.time()
    log.split["forward"] += ta - tf
    prog.acc.update(acts, mask)
    if prog.worker is not None:
      prog.worker.submit(prog.check.gather(acts), mask)
    # async dispatch: wait for the previous step only, so the host prepares (and dispatches
    # the forward of) step k+1 while the device runs step k, and at most two steps'
    # activations are alive; without overlap, wait for this step (sequential, for profiling)
    in_flight.append(_ticket(prog.acc.state["n"]))
    while len(in_flight) > (1 if overlap else 0):
      in_flight.popleft().block_until_ready()
    log.split["accumulate"] += time.time() - ta
    prog.step += 1
    prog.cursor = min(g + config.batch_rows, job.stop_row)
    log.step_done(prog, g)
    hook("step")
    due = (prog.step % max(int(config.checkpoint.every_steps), 1) == 0 or
           time.time() - last_save > 60 * float(config.checkpoint.every_minutes))
    if due and prog.cursor < job.stop_row:
      commit(job, unit, prog, hook)
      last_save = time.time()
    t_wait = time.time()
  return prog


def finalize(job: Job, units, live: dict, replace: bool = False) -> str:
  """Phase 5: the tables from every pass's moments — `live` {pass index: Progress} still
  in memory, the others restored one at a time from their last commit — checked against the
  float64 self-check before anything is written."""
  config, mesh = job.config, job.mesh
  dead_rel_std = float(config.dead_rel_std)
  dfs, dead, checks, count, finalize_s, draws = {}, {}, [], 0, 0.0, {}
  for unit in sorted(units, key=lambda u: u.index not in live):   # in-memory state first
    prog = live.pop(unit.index, None)
    if prog is not None:
      if prog.worker is not None:
        prog.worker.drain()
        prog.worker.close()
      state, check = prog.acc.state, prog.check
      del prog
    else:
      manifest, path = ST.latest(unit.state_dir)
      if manifest is None or int(manifest["cursor"]["row"]) != job.stop_row:
        raise UserError(f"{unit.state_dir}: pass {unit.index + 1} of {unit.count} has no "
                        "complete commit; rerun the same command to resume")
      ST.check_identity(manifest["identity"], unit.identity, path)
      state = ST.restore(path, M.state_shapes(unit.spec), M.state_shardings(unit.spec, mesh),
                         manifest["cursor"]["count"])
      check = _restore_check(config, unit.spec, manifest, path, job.spec)
    moments = F.moments_host(unit.spec, state, dead_rel_std)   # once, for both
    count = moments[0]
    checks.append(measure_check(config, unit.spec, state, check, moments))
    t = time.time()
    pair_dfs, pair_dead = pair_tables(config, unit.spec, mesh, state, moments, draws)
    finalize_s += time.time() - t
    for key, df in pair_dfs.items():
      dfs.setdefault(key, []).append(df)
    for own, (layers, d) in pair_dead.items():
      dead.setdefault(own, {})[layers] = d
    if config.save_full_matrix:   # before tables/: tables mark completion
      from ucore.corr import export
      export.write_full(unit.spec, mesh, state, os.path.join(workdir_of(job.tables_dir), "full"),
                        dead_rel_std)
    del state
  checked = combine_checks(checks, job.spec)
  t = time.time()
  res = assemble_tables(config, job.spec, dfs, dead, count)
  finalize_s += time.time() - t
  logging.info("correlate: tables computed from the moments in %.1fs", finalize_s)
  res["intervals"] = interval_pass(job, res, draws)
  return write_tables_dir(config, job.spec, res, checked, job.tables_dir, job.srcs,
                          job.t_start, job.identity, finalize_s, replace=replace,
                          passes=len(units))


@workdir_lock.locked(process_zero_only=True)
def run(config, workdir: str, *, store=None, _hook=ST._no_hook):
  """prepare -> (already finalized | re-finalize) or plan the passes -> per pass: resume or
  start -> accumulate -> commit -> finalize. `store` (optional) replaces config.token_store:
  any object with the TokenStore interface (num_rows, ctx, store_id, mask_exclude_ids,
  iter_batches).
  `_hook(phase)`: test-only callback, with "step" after every accumulated batch and at the
  checkpoint's crash-sensitive points (ucore.corr.state.save); tests kill the process there."""
  job = prepare(config, workdir, store)
  done = finished_tables(job)
  if done is not None:
    return done
  place_models(job)
  units = plan_passes(job)
  live = {}
  with MEM.oom_as_user_error("correlate", resume=job.state_dir):
    for unit in units:
      if pass_complete(job, unit) and unit.index != units[-1].index:
        continue   # restored at finalize
      overlap = steps_in_flight(job, unit) > 1
      prog = resume_or_start(job, unit)
      accumulate(job, unit, prog, overlap=overlap, hook=_hook)
      commit(job, unit, prog, _hook)
      if unit.index == units[-1].index:
        live[unit.index] = prog
      else:
        if prog.worker is not None:
          prog.worker.drain()
          prog.worker.close()
        del prog   # the next pass's state takes its memory
    return finalize(job, units, live)


@jax.jit
def _ticket(n):
  """A fresh copy of the step counter: the step's completion marker (the state itself is
  donated to the next step, so it cannot be waited on later)."""
  return n + 0


def numerics(spec) -> str:
  return NUMERICS.format(comp=" with Kahan compensation" if spec.compensated else "",
                         gemm=precision_names.describe(spec.precision))


def _new_check(config, spec, whole=None):
  """A SelfCheck (of a pass's tile `spec` of the run's `whole` spec), or a string saying why
  this run has none."""
  if int(config.selfcheck.sample) == 0:
    return "off (config.selfcheck.sample=0)"
  if jax.process_count() > 1:
    return "unavailable in multi-process runs"
  return SC.SelfCheck(spec, int(config.selfcheck.sample), int(config.selfcheck.seed), whole)


def _restore_check(config, spec, manifest, path, whole=None):
  """The resumed run's SelfCheck with its reference sums, or why there is none."""
  check = _new_check(config, spec, whole)
  if not isinstance(check, SC.SelfCheck):
    return check
  rec = manifest.get("selfcheck")
  if rec is None:
    return f"unavailable (resumed from {path}, committed without a self-check)"
  if rec.get("settings") != identity.normalize(check.settings()):
    return (f"unavailable (config.selfcheck changed since the run started: "
            f"{'; '.join(identity.diff(rec.get('settings'), identity.normalize(check.settings()))[:2])})")
  check.load_bytes(ST.read_extra(path, SC.FILE, rec["sha256"]), path)
  return check


def _check_baseline_kinds(config) -> tuple:
  kinds = tuple(config.baseline.kinds)
  if kinds and config.baseline.primary not in kinds:
    raise UserError(f"baseline.primary={config.baseline.primary!r} is not in baseline.kinds.")
  return kinds


def pair_tables(config, spec, mesh, state, moments, draws=None):
  """Per-pair tables of one state (the whole run's or one pass's tile): ({(own, partner)
  model index: df}, {own: (own layer ids, dead [L_own·d_mlp])}) for every row model the
  run reports (the reference; in all_pairs every model, in both directions of each pair).
  draws (optional dict): gets {(own, partner): [(first own layer id, the primary baseline's
  draws [D, L·d_mlp])]} (the interval's leave-one-draw-out; the tables keep only the
  draws' mean and SE above TB.MAX_DRAW_COLUMNS draws)."""
  dead_value = float(config.dead_value) if config.fill_dead else None
  _, moms = moments
  kinds = _check_baseline_kinds(config)
  dfs, dead = {}, {}
  for x, y in spec.pairs:
    for own, part, orient in ((x, y, "fwd"), (y, x, "bwd")):
      if orient == "bwd" and config.mode == "reference":
        continue
      res = F.pair_result(spec, mesh, state, x, y, orient, top_k=int(config.top_k),
                          baseline_kinds=kinds, draws=int(config.baseline.draws),
                          seed=int(config.baseline.seed), dead_rel_std=float(config.dead_rel_std),
                          moments=moms)
      primary = config.baseline.primary
      unit = (F.unit_ids(spec, own, part, res.baseline_units[primary][0])
              if kinds else None)
      dfs[(own, part)] = TB.pair_table(res, spec.layer_ids[own], primary, dead_value, unit)
      if draws is not None and kinds:
        draws.setdefault((own, part), []).append(
            (spec.layer_ids[own][0], res.baselines[primary].reshape(int(config.baseline.draws), -1)))
      dead[own] = (spec.layer_ids[own], moms[own]["dead"][:, :spec.d_mlp].reshape(-1))
  from ucore.corr import baselines
  baselines.clear_cache()   # up to 2 GiB of mixing matrices; nothing later needs them
  return dfs, dead


def assemble_tables(config, spec, dfs, dead, count):
  """The whole run's tables from the passes' pair tables. dfs: {(own, part): [df per chunk
  of own's layers]}; dead: {own: {own layer ids: dead}}. Partners in the run's pair order
  (a single pass's order, whatever the tiles were)."""
  import pandas as pd
  dead_value = float(config.dead_value) if config.fill_dead else None
  own_models = [0] if config.mode == "reference" else list(range(spec.n_models))
  out = {"neurons": {}, "pairs": {}, "layer_counts": {}, "partner_layers": {}, "count": count}
  for own in own_models:
    pts, layers = {}, {}
    for x, y in spec.pairs:
      if own not in (x, y):
        continue
      part = y if own == x else x
      chunks = sorted(dfs[(own, part)], key=lambda df: df.index[0][0])
      t = chunks[0] if len(chunks) == 1 else pd.concat(chunks)
      pts[spec.names[part]] = t
      layers[spec.names[part]] = spec.layer_ids[part]
      out["pairs"][(spec.names[own], spec.names[part])] = t
    own_dead = np.concatenate([d for _, d in sorted(dead[own].items())])
    agg = TB.aggregate_table(pts, own_dead, float(config.threshold), dead_value)
    name = spec.names[own]
    out["neurons"][name] = agg
    out["layer_counts"][name] = TB.layer_counts(agg)
    out["partner_layers"][name] = TB.partner_layer_hist(pts, layers)
  if config.mode == "all_pairs" and config.baseline.kinds:   # the seed × seed matrix
    out["seed_matrix"] = TB.seed_matrix(out["neurons"], float(config.threshold))
  return out


def compute_tables(config, spec, mesh, state, moments=None):
  """{'neurons': {own: df}, 'pairs': {(own, partner): df}, 'layer_counts', 'partner_layers'}
  of one state holding every pair. moments: F.moments_host's (n, per-model moments) when
  the caller has them."""
  moments = moments or F.moments_host(spec, state, float(config.dead_rel_std))
  _check_baseline_kinds(config)
  dfs, dead = pair_tables(config, spec, mesh, state, moments)
  return assemble_tables(config, spec, {k: [v] for k, v in dfs.items()},
                         {own: {layers: d} for own, (layers, d) in dead.items()}, moments[0])


FINALIZE_FIELDS = ("top_k", "threshold", "dead_rel_std", "fill_dead", "dead_value",
                   "baseline.primary", "baseline.draws", "baseline.seed", "intervals.blocks")


def finalize_settings(config) -> dict:
  """The fields used only when the tables are computed from the moments (not part of the
  run identity): changing them re-finalizes finished tables from the committed state."""
  out = {}
  for key in FINALIZE_FIELDS:
    node = config
    for part in key.split("."):
      node = node[part]
    out[key] = node
  return identity.normalize(out)


def interval_pass(job: Job, res: dict, draws: dict):
  """The universal count's intervals (ucore.corr.intervals): one more pass of the same rows
  through the forwards, keeping per block of rows the moments of each neuron's selected
  pairs (best partner, draw 0's argmax rotated unit) only; annotates res["neurons"] in
  place. Returns summary.json's "intervals" entry ({model: ...} plus the pass's cost), a
  string saying why there is none, or None when intervals are off. Runs inside finalize:
  a kill re-runs it, nothing of it is written before the tables."""
  from ucore.corr import baselines as BL
  from ucore.corr import intervals as IV
  config, spec = job.config, job.spec
  blocks = int(_cfg_get(_cfg_get(config, "intervals", {}), "blocks", 0) or 0)
  if blocks == 0 or not config.baseline.kinds:
    return None
  if jax.process_count() > 1:
    return "unavailable in multi-process runs"
  t0 = time.time()
  n_rows = job.stop_row - int(config.start_row)
  blocks = min(blocks, n_rows)
  owners = [0] if config.mode == "reference" else list(range(spec.n_models))
  pairs = [(o, y if o == x else x) for o in owners for x, y in spec.pairs if o in (x, y)]
  d = spec.d_mlp
  names = spec.names

  def flat(p, layers, units):   # (layer id, unit) -> flat index into p's kept layers
    pos = {l: i for i, l in enumerate(job.layer_ids[p])}
    li = np.array([pos.get(int(l), 0) for l in layers])
    return np.where(np.asarray(layers) < 0, 0, li * d + np.maximum(units, 0)).astype(np.int32)

  part_idx, unit_idx = [], []
  for o, p in pairs:
    t = res["pairs"][(names[o], names[p])]
    part_idx.append(flat(p, t["max_sim_layer"].to_numpy(), t["max_sim_neuron"].to_numpy()))
    unit_idx.append(flat(p, t["baseline_unit_layer"].to_numpy(), t["baseline_unit"].to_numpy()))
  place_models(job)
  feed = _Batches(job)
  rep = jax.sharding.NamedSharding(feed.row_sharding.mesh, jax.sharding.PartitionSpec())
  rots, unit_pos = [None] * spec.n_models, [None] * len(pairs)
  for p in sorted({p for _, p in pairs}):
    mine = [i for i, (_, pp) in enumerate(pairs) if pp == p]
    keep, pos = IV.distinct_units([unit_idx[i] for i in mine], d)
    for i, q in zip(mine, pos):
      unit_pos[i] = q
    r = BL.mixing_stack(config.baseline.primary, d, spec.d_pad, job.layer_ids[p],
                        seed=int(config.baseline.seed), draw=0, model=p, mesh=job.mesh)
    # R's rows of the units kept, gathered where the stack lives (not via the host)
    rots[p] = jax.device_put(jnp.take_along_axis(
        r[:keep.shape[0], :d, :d], jnp.asarray(keep)[:, :, None], axis=1), rep)
  BL.clear_cache()
  part_idx = tuple(jax.device_put(a, rep) for a in part_idx)
  unit_pos = tuple(jax.device_put(a, rep) for a in unit_pos)
  used = sorted({o for o in owners} | {p for _, p in pairs})
  T = feed.per_pad * feed.ctx
  # a scan step's slab: every used model's activations + y, u and their products per pair
  width = sum(len(job.layer_ids[m]) * d for m in used) + 3 * sum(len(a) for a in part_idx)
  fn = IV.make_batch_fn(tuple(pairs), IV.chunk_tokens(T, width))
  acc = IV.Blocks(blocks, pairs, {o: len(job.layer_ids[o]) * d for o in owners})
  S = IV.slots_per_batch(int(config.batch_rows), n_rows, blocks)
  shifts = None
  for g, rows in job.store.iter_batches(config.batch_rows, start_row=int(config.start_row),
                                        stop_row=job.stop_row):
    dev_tokens, mask, row_ids = feed.inputs(g, rows)
    acts = tuple(job.srcs[m].acts(dev_tokens, job.layer_ids[m], row_ids)
                 .reshape(T, -1).astype(np.float32)
                 if m in used else None for m in range(spec.n_models))
    row_of = np.full(feed.per_pad, -1, np.int64)
    row_of[:len(row_ids)] = np.asarray(row_ids)
    tb = np.repeat(IV.block_of_rows(row_of, int(config.start_row), job.stop_row, blocks),
                   feed.ctx)
    tb[~mask] = -1
    present = sorted(set(np.unique(tb[tb >= 0]).tolist()))
    slot = np.full(S, -1)
    slot[:len(present)] = present
    w = jax.device_put(np.stack([(tb == b) & (b >= 0) for b in slot]).astype(np.float32), rep)
    if shifts is None:   # the first batch's means: every later sum is of small numbers
      zero = {f"x{o}": np.zeros(len(job.layer_ids[o]) * d, np.float32) for o in owners}
      zero.update({f"{v}{i}": np.zeros(len(part_idx[i]), np.float32)
                   for i in range(len(pairs)) for v in "yu"})
      shifts = jax.device_put(IV.batch_means(
          jax.device_get(fn(acts, w, jax.device_put(zero, rep), part_idx, unit_pos,
                            tuple(rots))), pairs), rep)
    acc.add(slot, jax.device_get(fn(acts, w, shifts, part_idx, unit_pos, tuple(rots))))
  out = {}
  dead_value = float(config.dead_value) if config.fill_dead else None
  for o in owners:
    agg = res["neurons"][names[o]]
    mine = [(i, p) for i, (oo, p) in enumerate(pairs) if oo == o]
    before = set(agg.columns)
    out[names[o]] = IV.annotate(
        agg, [names[p] for _, p in mine],
        {names[p]: acc.correlations(i) for i, p in mine},
        {names[p]: np.concatenate([a for _, a in sorted(draws[(o, p)], key=lambda c: c[0])],
                                  axis=1) for _, p in mine},
        float(config.threshold))
    if dead_value is not None:
      new = [c for c in agg.columns if c not in before]
      agg[new] = agg[new].fillna(dead_value)
  seconds = time.time() - t0
  logging.info("correlate: interval pass (%d blocks of rows, %d pairs) in %.1fs", blocks,
               len(pairs), seconds)
  return {"models": out, "blocks": blocks, "seconds": seconds,
          "method": "delete-1 block jackknife over contiguous row blocks (best partner and "
                    "draw 0's argmax rotated unit held fixed) + leave-one-draw-out; 95% "
                    "normal interval of the count"}


def measure_check(config, spec, state, check, moments) -> dict:
  """The self-check's measured errors on one state (the run's or one pass's), or its
  status where the run has none."""
  if not isinstance(check, SC.SelfCheck):
    return {"status": check, "precision": spec.precision}
  t = time.time()
  res = dict(check.measure(state, moments[1]), precision=spec.precision,
             fail_above=float(config.selfcheck.fail_above))
  logging.info("correlate: self-check of %d pair(s) (%.1fs): %s", len(spec.pairs),
               time.time() - t, SC.describe(dict(res, status="measured")))
  return res


def combine_checks(results, spec) -> dict:
  """The passes' self-checks as one (summary.json's "selfcheck": maxima over the passes,
  entries summed: what one pass over every pair measures); UserError, before any table is
  written, when the errors exceed config.selfcheck.fail_above (the moments stay committed:
  rerun with a higher bound, or another precision, to get tables)."""
  if any("max_abs_corr" not in r for r in results):
    return next(r for r in results if "max_abs_corr" not in r)
  res = SC.merge(results)   # maxima (the capture/arithmetic split too), counts summed
  worst = max(res["max_abs_corr"], res["max_abs_rotated"])
  res["status"] = "ok" if worst <= res["fail_above"] else "failed"
  if not worst <= res["fail_above"]:   # NaN fails too
    raise UserError(f"self-check failed: max |Δcorr| {res['max_abs_corr']:.2e}, max |Δrotated "
                    f"corr| {res['max_abs_rotated']:.2e} vs the float64 reference exceed "
                    f"selfcheck.fail_above={res['fail_above']:g} at precision "
                    f"{spec.precision!r}; no tables written (the moments stay in state/: "
                    "rerun with precision='highest' in a new workdir, or raise the bound)")
  return res


def write_tables_dir(config, spec, res, checked, tables_dir, srcs, t_start, ident,
                     finalize_s, replace=False, passes=1) -> str:
  """The tables and summary.json (last: it marks completion), staged and renamed."""
  if jax.process_index() == 0:
    with atomic.staged_dir(tables_dir, replace=replace) as tmp:
      TB.write_tables(tmp, res["neurons"], res["layer_counts"], res["partner_layers"],
                      res["pairs"])
      if "seed_matrix" in res:
        TB.write_seed_matrix(tmp, *res["seed_matrix"])
      summary = {
          "tokens_counted": int(res["count"]),
          "models": [{"name": s.name, "fingerprint": s.fingerprint} for s in srcs],
          "numerics": numerics(spec),
          "precision": spec.precision,
          "forward_dtype": str(_cfg_get(config, "forward_dtype", "float32")),
          "selfcheck": checked,
          "universal": {n: int(df["universal"].sum()) for n, df in res["neurons"].items()
                        if "universal" in df},
          "universal_per_layer": {n: [int(v) for v in lc["universal"]]
                                  for n, lc in res["layer_counts"].items() if "universal" in lc},
          "threshold": float(config.threshold),
          # neurons whose excess lies within two baseline standard errors (over the draws)
          # of the threshold: the draws alone could move them across it
          "near_threshold": {n: int(df["near_threshold"].sum())
                             for n, df in res["neurons"].items() if "near_threshold" in df},
          "baseline_se": {n: _quantiles(df["mean_baseline_se"])
                          for n, df in res["neurons"].items() if "mean_baseline_se" in df},
          "baseline_draws": int(config.baseline.draws),
          "identity": ident,
          "finalize": finalize_settings(config),
          "seconds": time.time() - t_start,
          "finalize_seconds": finalize_s,   # compute_tables alone (baselines, top-k)
      }
      if passes > 1:
        summary["passes"] = int(passes)
      if res.get("intervals") is not None:
        summary["intervals"] = res["intervals"]
      atomic.write_json(os.path.join(tmp, TB.SUMMARY), summary)
    logging.info("correlate: wrote %s (%s universal)", tables_dir, summary["universal"])
  return tables_dir


def _quantiles(col) -> dict:
  """{median, p95, max} of a column over its finite values (None where it has none, e.g.
  the baseline SE of a one-draw run)."""
  v = col.to_numpy(np.float64)
  v = v[np.isfinite(v)]
  if not v.size:
    return None
  return {"median": float(np.median(v)), "p95": float(np.quantile(v, 0.95)),
          "max": float(v.max())}


def workdir_of(tables_dir):
  return os.path.dirname(os.path.abspath(tables_dir))
