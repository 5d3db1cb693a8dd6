"""Train a seed family in a workdir: resumable, checkpointed like the Mistral GPT-2 runs.

Workdir layout (`train_family(config, workdir, rows, ...)`):

  job.json                     config + data identity of this run (a resume must match it)
  state/<step>/                orbax CheckpointManager: stacked params, optimizer state, step
                               (orbax finalizes a step directory last: its commit marker)
  losses.jsonl                 one line per (step, seed, split): {"step", "seed", "split":
                               "train"|"heldout", "loss", "lr"?, "grad_norm"?}
  seed{s}/checkpoint-{N}/      ucore.models.hooked.save_model directory (manifest written last):
                               params after N updates; loads with ucore.load_model
  seed{s}/final -> checkpoint-{num_steps}   relative symlink, made when training completes
  family.json                  written last: seeds, steps, checkpoint paths (relative to the
                               workdir, which can move), final losses

Step N means "after N updates"; checkpoint-0 is the initialisation. The train loss logged at
step N is the loss of update N's batch computed with the params of step N-1 (before the
update). The data order of seed s is a pure function of (s, step) (core.batch_row_indices), so
the training state needs no data cursor beyond the step. A killed run restarted with the same
command restores the latest committed state, drops loss lines after it, and continues; the
losses and weights are bit-identical to an uninterrupted run on the same machine.
"""
import json
import os
import shutil
import time
from typing import Callable, Optional

import jax
import numpy as np
from absl import logging

from ucore.jobs import atomic, identity, workdir_lock
from ucore.jobs.errors import UserError
from ucore.models.gpt2 import GPT2Config
from ucore.train import core

JOB = "job.json"
FAMILY = "family.json"
LOSSES = "losses.jsonl"
STATE = "state"
FAMILY_FORMAT = "ucore-train-family/1"


# ---------------------------------------------------------------- config
def config_dict(config) -> dict:
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return identity.normalize(d)


def model_config(config, vocab_size: int, ctx: int) -> GPT2Config:
  """The GPT2Config of every member; vocab_size/n_positions of 0 in the config mean "from the
  data" (the tokenizer's vocabulary, the rows' length)."""
  m = config.model
  vocab = int(m.vocab_size) or int(vocab_size or 0)
  if vocab <= 0:
    raise UserError("config.model.vocab_size is 0 and the data gives no vocabulary size; "
                    "set --config.model.vocab_size")
  n_pos = int(m.n_positions) or int(ctx)
  if n_pos < ctx:
    raise UserError(f"config.model.n_positions={n_pos} is shorter than the token rows "
                    f"({ctx}); use 0 (= row length) or a larger value")
  return GPT2Config(
      n_layer=int(m.n_layer), n_embd=int(m.n_embd), n_head=int(m.n_head), n_positions=n_pos,
      d_mlp=int(m.d_mlp), vocab_size=vocab, activation_function=str(m.activation_function),
      layer_norm_epsilon=float(m.layer_norm_epsilon),
      scale_attn_by_inverse_layer_idx=bool(m.scale_attn_by_inverse_layer_idx),
      reorder_and_upcast_attn=bool(m.reorder_and_upcast_attn), tie_word_embeddings=True)


def checkpoint_steps(config) -> list[int]:
  """Sorted kept steps, always including 0 and num_steps."""
  n = int(config.num_steps)
  steps = {int(s) for s in config.checkpoint_steps}
  bad = sorted(s for s in steps if not 0 <= s <= n)
  if bad:
    raise UserError(f"config.checkpoint_steps {bad} lie outside [0, num_steps={n}]")
  return sorted(steps | {0, n})


def validate_config(config) -> list:
  """UserError for a training config no data can make valid (checked before anything is
  written, by train_family and, before its first stage, the pipeline); returns the seeds."""
  seeds = [int(s) for s in config.seeds]
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise UserError(f"config.seeds={list(config.seeds)} must be distinct non-negative integers")
  for name in ("num_steps", "batch_rows", "heldout_rows", "eval_every", "state_every",
               "log_every", "eval_batch_rows"):
    if int(config[name]) <= 0:
      raise UserError(f"config.{name}={config[name]} must be > 0")
  o = config.optim
  if not float(o.lr) > 0 or not 0 <= float(o.min_lr_ratio) <= 1:
    raise UserError("config.optim.lr must be > 0 and min_lr_ratio in [0, 1]")
  if not 0 <= int(o.warmup_steps) < int(config.num_steps):
    raise UserError(f"config.optim.warmup_steps={o.warmup_steps} must lie in [0, num_steps)")
  checkpoint_steps(config)
  return seeds


def _validate(config, num_rows: int, ctx: int):
  seeds = validate_config(config)
  if ctx < 2:
    raise UserError(f"token rows have {ctx} tokens; training needs at least 2")
  n_train = num_rows - int(config.heldout_rows)
  if n_train < int(config.batch_rows):
    raise UserError(f"{num_rows} token rows leave {n_train} training rows after holding out "
                    f"{config.heldout_rows}; need at least batch_rows={config.batch_rows}")
  return seeds


# ---------------------------------------------------------------- data
def _read_all(rows, start: int, stop: int) -> np.ndarray:
  if hasattr(rows, "read_rows"):
    return np.asarray(rows.read_rows(start, stop), np.int32)
  return np.ascontiguousarray(np.asarray(rows[start:stop], np.int32))


def _num_rows_ctx(rows):
  if hasattr(rows, "read_rows"):
    return int(rows.num_rows), int(rows.ctx)
  shape = np.shape(rows)
  if len(shape) != 2:
    raise UserError(f"token rows must be a [rows, ctx] array; got shape {shape}")
  return int(shape[0]), int(shape[1])


def array_identity(rows: np.ndarray) -> dict:
  import hashlib
  arr = np.ascontiguousarray(np.asarray(rows, np.int32))
  return {"kind": "array", "shape": list(arr.shape),
          "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}


# ---------------------------------------------------------------- workdir
def _claim(workdir: str, job: dict):
  """Creates job.json, or checks that a resumed run has the same config and data."""
  path = os.path.join(workdir, JOB)
  if not os.path.exists(path) and os.path.isdir(workdir) and os.listdir(workdir):
    raise UserError(f"workdir {workdir} is not empty and holds no {JOB}; it is not a training "
                    "run — choose an empty or new --workdir")
  os.makedirs(workdir, exist_ok=True)
  try:   # a job.json written before the store's path left the job (movable workdirs)
    old = atomic.read_json(path) if os.path.exists(path) else None
  except (OSError, ValueError):
    old = None   # identity.claim reports it
  if isinstance(old, dict) and "store" in ((old.get("config") or {}).get("data") or {}):
    old["config"]["data"].pop("store")
    if old == job:
      atomic.write_json(path, job)
  return identity.claim(path, job, f"workdir {workdir} holds a training run with a different "
                    "config/data", "; use a new --workdir or the original config")


def _portable(config) -> dict:
  """The job's config without config.data.store: the data is identified by its content
  (data_identity: the store's id or the rows' sha256), so a moved store or workdir resumes."""
  d = config_dict(config)
  if isinstance(d.get("data"), dict):
    d["data"].pop("store", None)
  return d


def _relative_family(summary: dict, workdir: str) -> dict:
  """family.json's checkpoint paths relative to the training workdir (so it can move)."""
  out = dict(summary)
  out["checkpoints"] = {s: {n: os.path.relpath(p, workdir) for n, p in by_step.items()}
                        for s, by_step in summary["checkpoints"].items()}
  out["final"] = {s: os.path.relpath(p, workdir) for s, p in summary["final"].items()}
  return out


def _resolved_family(summary: dict, workdir: str) -> dict:
  """family.json with its paths under `workdir` (where the run is now; paths written by
  older versions were absolute and stay as they are)."""
  out = dict(summary)
  out["checkpoints"] = {s: {n: os.path.join(workdir, p) for n, p in by_step.items()}
                        for s, by_step in summary["checkpoints"].items()}
  out["final"] = {s: os.path.join(workdir, p) for s, p in summary["final"].items()}
  return out


def read_losses(workdir: str):
  """losses.jsonl as a pandas DataFrame (columns step, seed, split, loss, lr, grad_norm)."""
  import pandas as pd
  return pd.DataFrame(_read_loss_lines(os.path.join(workdir, LOSSES)))


def _read_loss_lines(path):
  if not os.path.exists(path):
    return []
  out = []
  with open(path, "r", encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          out.append(json.loads(line))
        except ValueError:  # a torn last line from a kill
          break
  return out


class _LossLog:
  def __init__(self, path, restored_step):
    self.path = path
    kept = [r for r in _read_loss_lines(path) if r["step"] <= restored_step]
    atomic.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    self.pending = []

  def add(self, **row):
    self.pending.append(identity.normalize(row))

  def flush(self):
    if self.pending:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.pending))
        f.flush()
        os.fsync(f.fileno())
      self.pending = []


def _checkpoint_dir(workdir, seed, step):
  return os.path.join(workdir, f"seed{seed}", f"checkpoint-{step}")


def _state_manager(workdir):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), STATE),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True,
                                           enable_async_checkpointing=False))


def _remove_partials(workdir):
  atomic.remove_partials(os.path.join(workdir, "seed*", "checkpoint-*"))


# ---------------------------------------------------------------- the loop
@workdir_lock.locked
def train_family(config, workdir: str, rows, *, vocab_size: Optional[int] = None,
                 tokenizer_files=None, data_identity: Optional[dict] = None,
                 _hook: Optional[Callable] = None) -> dict:
  """Trains (or resumes) the family described by `config` on token `rows`.

  rows: int32 array-like [num_rows, ctx] (numpy) or a TokenStore (has read_rows). Of the first
    config.data.max_rows rows (0 = all), the last config.heldout_rows are held out and the
    rest are training rows (loaded into host memory: 4 bytes per token).
  vocab_size: the tokenizer's vocabulary (used when config.model.vocab_size is 0).
  tokenizer_files: ucore.models.tokenizer.TokenizerFiles copied into every checkpoint, or None.
  data_identity: what identifies the data in job.json (default: sha256 of the rows).
  _hook(event, step): test hook, called with "step" after every update (may raise to simulate
    a kill).
  Returns the family summary (also written to <workdir>/family.json).
  """
  from ucore.models.hooked import save_model
  t_start = time.time()
  num_rows, ctx = _num_rows_ctx(rows)
  max_rows = int(config.data.get("max_rows", 0) or 0) if "data" in config else 0
  if max_rows < 0:
    raise UserError(f"config.data.max_rows={max_rows} must be >= 0 (0 = all rows)")
  if max_rows:
    num_rows = min(num_rows, max_rows)
  seeds = _validate(config, num_rows, ctx)
  mcfg = model_config(config, vocab_size, ctx)
  n_heldout = int(config.heldout_rows)
  n_train = num_rows - n_heldout
  train_rows = _read_all(rows, 0, n_train)
  heldout = _read_all(rows, n_train, num_rows)
  if data_identity is None:
    data_identity = array_identity(np.concatenate([train_rows, heldout]))
  for name, arr in (("training", train_rows), ("held-out", heldout)):
    if arr.size and (arr.min() < 0 or arr.max() >= mcfg.vocab_size):
      raise UserError(f"{name} token ids span [{arr.min()}, {arr.max()}], outside the model's "
                      f"vocabulary [0, {mcfg.vocab_size})")
  job = identity.normalize({"config": _portable(config), "data": data_identity,
                    "model_config": mcfg.to_dict()})
  workdir = os.path.abspath(workdir)
  resumed = _claim(workdir, job)
  family_path = os.path.join(workdir, FAMILY)
  if os.path.exists(family_path):
    logging.info("training in %s is already complete", workdir)
    return _resolved_family(atomic.read_json(family_path), workdir)
  _remove_partials(workdir)

  num_steps = int(config.num_steps)
  keep = checkpoint_steps(config)
  tx = core.make_optimizer(config.optim, num_steps)
  schedule = core.lr_schedule(config.optim, num_steps)
  mngr = _state_manager(workdir)
  params = core.stack_params([core.gpt2_init(mcfg, s, float(config.init_std)) for s in seeds])
  opt_state = core.init_family_opt_state(tx, params)
  step = 0
  latest = mngr.latest_step()
  if latest is not None:
    import orbax.checkpoint as ocp
    target = {"params": params, "opt_state": opt_state, "step": np.zeros((1,), np.int64)}
    target = jax.tree_util.tree_map(np.asarray, target)
    state = mngr.restore(latest, args=ocp.args.StandardRestore(target))
    params, opt_state, step = state["params"], state["opt_state"], int(state["step"][0])
    logging.info("resumed %s at step %d of %d", workdir, step, num_steps)
  elif resumed:
    logging.info("restarting %s from step 0 (no committed state yet)", workdir)
  # jax arrays from here on: numpy or committed inputs would add entries to the step's cache.
  # (device_put: an uncommitted transfer, as jnp.asarray's, without its staging program)
  params, opt_state = jax.tree_util.tree_map(jax.device_put, (params, opt_state))
  # Lines after the restored step (or all lines, when no state was committed) are redone.
  log = _LossLog(os.path.join(workdir, LOSSES), step if latest is not None else -1)

  family_step = core.make_family_step(mcfg, tx)
  family_eval = core.make_family_eval(mcfg)
  eval_bs = int(config.eval_batch_rows)

  def heldout_losses(p):
    sums = np.zeros(len(seeds), np.float64)
    count = 0.0
    for a in range(0, n_heldout, eval_bs):
      s, c = family_eval(p, heldout[a:a + eval_bs])
      sums += np.asarray(s, np.float64)
      count += float(c)
    return sums / count

  def export(p, at_step, losses):
    host = None
    for k, s in enumerate(seeds):
      d = _checkpoint_dir(workdir, s, at_step)
      if os.path.exists(os.path.join(d, "manifest.json")):
        continue  # written before a kill; the redone steps reproduce the same params
      if os.path.isdir(d):
        shutil.rmtree(d)
      if host is None:   # the family to the host once, sliced there (slicing the device
        host = jax.tree_util.tree_map(np.asarray, p)   # arrays compiles programs per shape)
      save_model(d, mcfg, core.unstack(host, k), tokenizer_files=tokenizer_files, manifest={
          "source": "trained", "seed": s, "step": at_step, "num_steps": num_steps,
          "heldout_loss": float(losses[k]), "train_config": job["config"],
          "data": data_identity, "trainer": "ucore.train (vmapped seed family)"})

  def save_state(p, o, at_step):
    import orbax.checkpoint as ocp
    log.flush()
    mngr.save(at_step, args=ocp.args.StandardSave(
        {"params": p, "opt_state": o, "step": np.asarray([at_step], np.int64)}), force=True)
    mngr.wait_until_finished()

  def evaluate_and_keep(p, at_step):
    losses = heldout_losses(p)
    for k, s in enumerate(seeds):
      log.add(step=at_step, seed=s, split="heldout", loss=float(losses[k]))
    logging.info("step %d held-out loss %s", at_step, " ".join(f"{x:.4f}" for x in losses))
    if at_step in keep:
      export(p, at_step, losses)
    return losses

  if step == 0 and latest is None:
    evaluate_and_keep(params, 0)
    save_state(params, opt_state, 0)

  tokens_per_step = len(seeds) * int(config.batch_rows) * (ctx - 1)
  t0, s0 = time.time(), step
  while step < num_steps:
    batch = core.family_batch(train_rows, seeds, step, int(config.batch_rows))
    lr = float(schedule(step))
    params, opt_state, stats = family_step(params, opt_state, batch)
    step += 1
    loss = np.asarray(stats["loss"])
    gnorm = np.asarray(stats["grad_norm"])
    if not np.all(np.isfinite(loss)):
      raise UserError(f"training diverged at step {step}: losses {loss.tolist()}; lower "
                      "config.optim.lr or raise warmup_steps")
    for k, s in enumerate(seeds):
      log.add(step=step, seed=s, split="train", loss=float(loss[k]), lr=lr,
              grad_norm=float(gnorm[k]))
    if step % int(config.log_every) == 0 or step == num_steps:
      dt = time.time() - t0
      logging.info("step %d/%d train loss %s  lr %.3g  %.0f tok/s (family)", step, num_steps,
                   " ".join(f"{x:.4f}" for x in loss), lr,
                   (step - s0) * tokens_per_step / max(dt, 1e-9))
      log.flush()
    if step % int(config.eval_every) == 0 or step in keep:
      evaluate_and_keep(params, step)
    if step % int(config.state_every) == 0 or step in keep:
      save_state(params, opt_state, step)
    if _hook is not None:
      _hook("step", step)
  log.flush()

  final = {}
  for s in seeds:
    link = os.path.join(workdir, f"seed{s}", "final")
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
      os.unlink(tmp)
    os.symlink(f"checkpoint-{num_steps}", tmp)
    os.replace(tmp, link)
    final[str(s)] = link
  df = read_losses(workdir)
  last = df[(df.step == num_steps) & (df.split == "heldout")].set_index("seed")["loss"]
  last_train = df[(df.step == num_steps) & (df.split == "train")].set_index("seed")["loss"]
  summary = {
      "format": FAMILY_FORMAT, "seeds": seeds, "num_steps": num_steps,
      "checkpoint_steps": keep, "model_config": mcfg.to_dict(),
      "checkpoints": {str(s): {str(n): _checkpoint_dir(workdir, s, n) for n in keep}
                      for s in seeds},
      "final": final,
      "final_heldout_loss": {str(s): float(last[s]) for s in seeds},
      "final_train_loss": {str(s): float(last_train[s]) for s in seeds},
      "tokens_per_seed": num_steps * int(config.batch_rows) * (ctx - 1),
      "last_session_seconds": time.time() - t_start,
  }
  atomic.write_json(family_path, _relative_family(summary, workdir))
  return summary


def read_family(workdir: str) -> dict:
  """family.json of a completed training run (seeds, checkpoint paths per seed and step,
  final paths, final losses); UserError if the run is missing or unfinished."""
  path = os.path.join(os.path.abspath(workdir), FAMILY)
  if not os.path.isfile(path):
    if os.path.isfile(os.path.join(workdir, JOB)):
      raise UserError(f"training in {workdir} is not finished (no {FAMILY}); rerun the same "
                      "`python main.py train ...` command to complete it")
    raise UserError(f"{workdir} is not a training run (no {FAMILY}); train one with "
                    "`python main.py train --config=configs/train_default.py --workdir=...`")
  family = atomic.read_json(path)
  if family.get("format") != FAMILY_FORMAT:
    raise UserError(f"{path} has format {family.get('format')!r}, expected {FAMILY_FORMAT!r}")
  return _resolved_family(family, os.path.dirname(path))
