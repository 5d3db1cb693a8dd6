"""Job identity: the one home of "is this the same job?" for every resumable stage.

A job is described by a JSON-able dict (config, data identity, weights' fingerprints...).
  normalize(obj)             the dict as it reads back from JSON (tuples -> lists, keys
                             strings, numpy scalars -> Python numbers, other objects -> str):
                             compare a saved job only with a normalized current one
  diff(old, new)             ["a.b: old -> new", ...] over nested dicts, sorted by key path
  check_same(old, new, msg)  UserError "<msg> (<first differences>)<hint>" unless equal
  claim(path, job, msg)      resume-or-start: False after writing `job` to the fresh `path`,
                             True if `path` already holds `job`, UserError (check_same) if
                             it holds another job
  relative_paths(obj, root)  `obj` with every path inside `root` written relative to it
                             (also inside comma lists), so a job can move with its workdir
Used by the token store build (ucore.data.build), training (ucore.train.loop), the
correlation state (ucore.corr.driver/state) and the pipeline's stage stamps.
"""
from __future__ import annotations

import json
import os

from ucore.jobs import atomic
from ucore.jobs.errors import UserError


def _default(o):
  if hasattr(o, "item") and getattr(o, "ndim", None) == 0:   # numpy scalars
    return o.item()
  if hasattr(o, "tolist"):
    return o.tolist()
  return str(o)


def _str_keys(o):
  """Dict keys as JSON writes them (so mixed int/str keys can be sorted)."""
  if isinstance(o, dict):
    return {(k if isinstance(k, str) else
             json.dumps(k) if isinstance(k, (int, float, bool)) or k is None else str(k)):
            _str_keys(v) for k, v in o.items()}
  if isinstance(o, (list, tuple)):
    return [_str_keys(v) for v in o]
  return o


def normalize(obj):
  """`obj` as atomic.write_json + atomic.read_json give it back."""
  return json.loads(json.dumps(_str_keys(obj), sort_keys=True, default=_default))


def _short(v, n=60):
  s = json.dumps(v, sort_keys=True, default=_default)
  return s if len(s) <= n else s[:n - 3] + "..."


def diff(old, new, prefix: str = "") -> list:
  """Differences between two normalized jobs, as 'key.path: old -> new' lines."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += diff(old.get(k), new.get(k), f"{prefix}{k}.")
    return out
  return [] if old == new else [f"{prefix.rstrip('.') or '(job)'}: {_short(old)} -> {_short(new)}"]


def check_same(old, new, message: str, hint: str = "", limit: int = 4) -> None:
  """UserError '<message> (<up to `limit` differences>)<hint>' unless old == new."""
  if old != new:
    raise UserError(f"{message} ({'; '.join(diff(old, new)[:limit])}){hint}")


def claim(path: str, job: dict, message: str, hint: str = "") -> bool:
  """Starts or resumes the job recorded in the JSON file `path`; see the module docstring.
  `job` must be normalized. An unreadable `path` is a UserError."""
  if os.path.exists(path):
    try:
      old = atomic.read_json(path)
    except (OSError, ValueError) as e:
      raise UserError(f"{path} is unreadable ({e}); delete its job directory and start "
                      "again") from e
    check_same(old, job, message, hint)
    return True
  atomic.write_json(path, job)
  return False


def relative_paths(obj, root: str):
  """`obj` (normalized) with each string that is a path inside `root` (or a comma list of
  such paths) replaced by "<root>/" + its path relative to `root`: a job that names files of
  its own workdir stays the same job when the workdir is moved or copied."""
  root = os.path.abspath(root)

  def one(s):
    if not s or not os.path.isabs(s):
      return None
    p = os.path.abspath(s)
    if p != root and not p.startswith(root + os.sep):
      return None
    return "<root>/" + os.path.relpath(p, root)

  def walk(o):
    if isinstance(o, dict):
      return {k: walk(v) for k, v in o.items()}
    if isinstance(o, list):
      return [walk(v) for v in o]
    if isinstance(o, str):
      parts = [one(p) for p in o.split(",")]
      return ",".join(parts) if all(p is not None for p in parts) else o
    return o
  return walk(obj)
