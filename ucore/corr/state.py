"""Resumable accumulator state: tensorstore zarr3 shards + manifest + commit marker.

  <workdir>/state/ckpt-<step>/arrays/<key>/   one zarr3 array per accumulator, chunked like
                                             its device shards; every process writes only the
                                             shards it owns (replica 0)
  <workdir>/state/ckpt-<step>/manifest.json   identity (weights' sha256, token store id, spec,
                                             mesh, config) + cursor + count
  <workdir>/state/ckpt-<step>/COMMIT          written last (after a global barrier), by
                                             process 0; holds the manifest's sha256

A checkpoint counts only if COMMIT exists and matches its manifest: a job killed anywhere
leaves at worst an uncommitted directory, which is ignored and later deleted. Progress is
never inferred from array contents (unwritten zarr chunks read as zeros).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import jax
import numpy as np
import tensorstore as ts
from jax.experimental import multihost_utils

from ucore.jobs import atomic, identity
from ucore.jobs.errors import UserError

_CKPT = re.compile(r"^ckpt-(\d{10})$")


def _no_hook(phase: str) -> None:
  del phase


def _barrier(name):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _key_dir(key: str) -> str:
  return key.replace("/", "__").replace("#", "_comp")


def _ts_spec(path, shape=None, chunk=None):
  spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.abspath(path) + "/"}}
  if shape is not None:
    spec["metadata"] = {"shape": list(shape), "data_type": "float32",
                        "chunk_grid": {"name": "regular",
                                       "configuration": {"chunk_shape": list(chunk)}}}
  return spec


def manifest_digest(manifest: dict) -> str:
  return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def committed(state_dir: str):
  """[(step, path)] of committed checkpoints, oldest first."""
  out = []
  if not os.path.isdir(state_dir):
    return out
  for name in os.listdir(state_dir):
    m = _CKPT.match(name)
    if not m:
      continue
    path = os.path.join(state_dir, name)
    try:
      with open(os.path.join(path, "COMMIT")) as f:
        digest = f.read().strip()
      man = atomic.read_json(os.path.join(path, "manifest.json"))
    except (OSError, ValueError):
      continue
    if manifest_digest(man) == digest:
      out.append((int(m.group(1)), path))
  return sorted(out)


def latest(state_dir: str):
  """(manifest, path) of the newest committed checkpoint, or (None, None)."""
  c = committed(state_dir)
  if not c:
    return None, None
  path = c[-1][1]
  return atomic.read_json(os.path.join(path, "manifest.json")), path


def save(state_dir: str, step: int, state: dict, manifest: dict, keep: int = 1,
         hook=_no_hook, extra_files=None) -> str:
  """Writes a checkpoint; returns its path. Collective: every process must call it.
  `extra_files` {name: bytes} (process 0's) are written beside the arrays, before the
  manifest (which should carry their digests: `read_extra` checks them).
  `hook(phase)` is called after each crash-sensitive point ("arrays" written, "manifest"
  written, "commit" written): tests kill the process there."""
  path = os.path.join(state_dir, f"ckpt-{step:010d}")
  arrays = os.path.join(path, "arrays")
  if jax.process_index() == 0:
    if os.path.exists(path):   # an uncommitted leftover of a killed job at the same step
      shutil.rmtree(path)
    os.makedirs(arrays)
    for key, arr in state.items():
      if arr.ndim == 0:
        continue
      chunk = arr.sharding.shard_shape(arr.shape)
      ts.open(_ts_spec(os.path.join(arrays, _key_dir(key)), arr.shape, chunk),
              create=True, delete_existing=True).result()
  _barrier(f"corr-save-create-{step}")
  for key, arr in state.items():
    if arr.ndim == 0:
      continue
    t = ts.open(_ts_spec(os.path.join(arrays, _key_dir(key)))).result()
    futs = [t[shard.index].write(np.asarray(shard.data))
            for shard in arr.addressable_shards if shard.replica_id == 0]
    for fu in futs:
      fu.result()
  if jax.process_index() == 0:
    for name, data in (extra_files or {}).items():
      atomic.write_bytes(os.path.join(path, name), data)
  hook("arrays")
  _barrier(f"corr-save-written-{step}")
  if jax.process_index() == 0:
    atomic.write_json(os.path.join(path, "manifest.json"), manifest)
    hook("manifest")
    atomic.write_text(os.path.join(path, "COMMIT"), manifest_digest(manifest) + "\n")
    hook("commit")
    for old_step, old in committed(state_dir)[:-keep]:
      shutil.rmtree(old, ignore_errors=True)
    for name in os.listdir(state_dir):   # uncommitted leftovers
      p = os.path.join(state_dir, name)
      if _CKPT.match(name) and p != path and not os.path.exists(os.path.join(p, "COMMIT")):
        shutil.rmtree(p, ignore_errors=True)
  _barrier(f"corr-save-done-{step}")
  return path


def read_extra(path: str, name: str, sha256: str) -> bytes:
  """A file saved with `extra_files`, checked against the digest its manifest recorded."""
  import hashlib
  try:
    with open(os.path.join(path, name), "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"checkpoint {path} lacks {name} ({e}); delete {path} to resume from "
                    "the previous commit, or the state/ directory to start over") from e
  if hashlib.sha256(data).hexdigest() != sha256:
    raise UserError(f"checkpoint {path}: {name} does not match its manifest (corrupted); "
                    f"delete {path} to resume from the previous commit")
  return data


def restore(path: str, shapes: dict, shardings: dict, count: int):
  """Reads a committed checkpoint into arrays with `shardings` (any process layout)."""
  import jax.numpy as jnp
  out = {}
  for key, (shape, dtype, _) in shapes.items():
    if key == "n":
      out[key] = jax.device_put(jnp.asarray(count, jnp.int32), shardings[key])
      continue
    t = ts.open(_ts_spec(os.path.join(path, "arrays", _key_dir(key)))).result()
    if tuple(t.shape) != tuple(shape):
      raise UserError(f"checkpoint {path}: array {key} has shape {tuple(t.shape)}, expected "
                      f"{tuple(shape)}; the checkpoint belongs to a different configuration.")
    out[key] = jax.make_array_from_callback(
        tuple(shape), shardings[key], lambda idx, t=t: np.asarray(t[idx].read().result()))
  return out


def check_identity(saved: dict, current: dict, path: str) -> None:
  """Refuses to resume when anything that defines the result changed (`current` normalized:
  ucore.jobs.identity.normalize)."""
  identity.check_same(saved, current, f"cannot resume from {path}: the inputs changed",
                  ". Use a new --workdir, or restore the original inputs.")
