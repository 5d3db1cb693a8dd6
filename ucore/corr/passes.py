"""Correlations in passes: when the whole accumulator state does not fit the devices, it is
split into tiles that run one after another over the same token rows (issue 18 item 1).

A tile is a `Spec` with the whole run's model list and indices, restricted to
  * reference mode: a group of partner models (their C blocks and within-layer S) and a chunk
    of the reference's layers (the rows of C; every row's top-k and baselines still see all
    partner layers, so a chunk's rows are final);
  * all_pairs mode: a group of pairs, with the S of every model in them (each direction's
    baseline rotates the other model; S is 1/L of one pair's C).
Partner groups come first: a tile keeps whole [L_x·d, L_y·d] GEMMs per pair; the reference's
layers are chunked only where one partner does not fit. Every tile computes the batch
statistics of its models from the same slab as the whole run (`Spec.stats_cols`), so its
moments, co-moments and tables are those of a single-pass run.

`choose` takes the fewest passes whose largest tile fits (`fits(tile)`: the compiled step of
the tile plus its captured activations, ucore.corr.memory); candidates with more passes than a
failed larger tile are never compiled. The chosen tiles are recorded in
<workdir>/state/passes.json before the first pass starts (a resumed run keeps them whatever
the memory now says); pass k commits into <workdir>/state/pass-<k>/ like a single-pass run
into state/. Single-pass runs (the tiles are the whole spec) keep today's state/ layout.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from ucore.corr import moments as M
from ucore.corr import state as ST
from ucore.jobs import atomic
from ucore.jobs.errors import UserError

RECORD = "passes.json"            # <state>/passes.json: identity + tiles
PASS_DIR = "pass-{:03d}"          # <state>/pass-<k>/: pass k's checkpoints


def pass_dir(state_dir: str, index: int, count: int) -> str:
  """Where pass `index` of `count` commits (state/ itself for a single pass)."""
  return state_dir if count == 1 else os.path.join(state_dir, PASS_DIR.format(index))


def tile(spec: M.Spec, pairs, rotated, ref_layers=None) -> M.Spec:
  """`spec` restricted to `pairs` and `rotated` (and the reference's layer positions
  `ref_layers`), batch statistics from the whole spec's slabs."""
  out = dataclasses.replace(spec, pairs=tuple(pairs), rotated=tuple(rotated),
                            stats_cols=tuple(sorted(spec.col_stats_models())))
  if ref_layers is not None and len(ref_layers) != spec.n_layers[0]:
    ids = tuple(spec.layer_ids[0][i] for i in ref_layers)
    out = dataclasses.replace(out, layer_ids=(ids,) + spec.layer_ids[1:],
                              n_layers=(len(ids),) + spec.n_layers[1:])
  return out


def tilings(spec: M.Spec):
  """Candidate tilings, fewest passes first: (passes, (groups, chunks), [tile, ...])."""
  out = []
  if spec.pairs and all(x == 0 for x, _ in spec.pairs) and spec.rotated == tuple(
      y for _, y in spec.pairs):   # reference mode
    partners = [y for _, y in spec.pairs]
    for c in range(1, len(partners) + 1):
      for k in range(1, spec.n_layers[0] + 1):
        groups = [list(g) for g in np.array_split(partners, c)]
        chunks = [list(ch) for ch in np.array_split(np.arange(spec.n_layers[0]), k)]
        if len({len(g) for g in groups}) > 2 or any(not g for g in groups + chunks):
          continue
        tiles = [tile(spec, [(0, int(p)) for p in g], [int(p) for p in g],
                      [int(i) for i in ch] if k > 1 else None)
                 for g in groups for ch in chunks]
        out.append((c * k, (c, k), tiles))
  else:   # all_pairs: groups of pairs; both directions' baselines need both models' S
    for c in range(1, len(spec.pairs) + 1):
      tiles = []
      for g in np.array_split(np.arange(len(spec.pairs)), c):
        pairs = [spec.pairs[int(i)] for i in g]
        tiles.append(tile(spec, pairs, sorted({m for p in pairs for m in p})))
      out.append((c, (c, 1), tiles))
  # fewest passes first; at equal passes the most even tiles
  return sorted(out, key=lambda t: (t[0], max(_size(x) for x in t[2])))


def _size(t: M.Spec) -> int:
  return M.state_bytes(t)


def shape_key(t: M.Spec):
  """Tiles with equal keys compile to steps of equal memory (cache key for `fits`)."""
  shapes = M.state_shapes(t)
  return (tuple(sorted(s for k, (s, _, _) in shapes.items() if k[:2] in ("C/", "S/"))),
          tuple(t.n_layers[m] for m in t.active),
          len(t.col_stats_models() & set(t.active)), t.layer_mode, t.compensated,
          t.precision)


def choose(spec: M.Spec, fits):
  """The fewest tiles that each fit (`fits(tile) -> bool`), or None when not even the
  smallest tile does. [spec] itself when the whole state fits."""
  if fits(spec):
    return [spec]
  cache, failed = {}, []
  for passes, (c, k), tiles in tilings(spec):
    if passes == 1 or any(c <= fc and k <= fk for fc, fk in failed):
      continue   # a larger tile than one that did not fit
    ok = True
    for t in sorted(tiles, key=_size, reverse=True):
      key = shape_key(t)
      if key not in cache:
        cache[key] = bool(fits(t))
      if not cache[key]:
        ok = False
        break
    if ok:
      return tiles
    failed.append((c, k))
  return None


def spec_from_json(d: dict) -> M.Spec:
  """A tile recorded in passes.json (Spec.to_json) back to a Spec."""
  tup = lambda v: tuple(tup(x) for x in v) if isinstance(v, (list, tuple)) else v
  d = dict(d)
  for key in ("names", "n_layers", "layer_ids", "pairs", "rotated", "stats_cols"):
    if key in d:
      d[key] = tup(d[key])
  return M.Spec(**d)


def record(state_dir: str, ident: dict, tiles) -> None:
  atomic.write_json(os.path.join(state_dir, RECORD),
                    {"identity": ident, "tiles": [t.to_json() for t in tiles]})


def recorded(state_dir: str):
  """(identity, tiles) of passes.json, or (None, None) when the run has none."""
  path = os.path.join(state_dir, RECORD)
  if not os.path.isfile(path):
    return None, None
  try:
    rec = atomic.read_json(path)
    return rec["identity"], [spec_from_json(t) for t in rec["tiles"]]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} is unreadable ({e}); delete {state_dir} to start over") from e


def where(state_dir: str, stop_row: int | None = None) -> str:
  """One line: which pass a (resumed) run in `state_dir` is in, and its row."""
  _, tiles = recorded(state_dir)
  n = len(tiles) if tiles else 1
  for k in range(n):
    man, path = ST.latest(pass_dir(state_dir, k, n))
    row = None if man is None else int(man["cursor"]["row"])
    stop = stop_row if stop_row is not None else (
        None if man is None else int(man["identity"]["stop_row"]))
    if row is None or stop is None or row < stop:
      at = "not started" if row is None else f"at row {row:,} of {stop:,}"
      return f"in pass {k + 1} of {n} ({at}; passes 1..{k} complete)"
  return f"all {n} pass(es) complete"


def describe(tiles) -> str:
  """One line: '3 passes: pairs 0-1 | pairs 0-2 | pairs 0-3' (with the reference's layers
  where they are chunked)."""
  if len(tiles) == 1:
    return "1 pass"
  all_ref = sorted({l for t in tiles for l in t.layer_ids[0]})
  parts = []
  for t in tiles:
    ref = ("" if list(t.layer_ids[0]) == all_ref else
           f" × ref layers {t.layer_ids[0][0]}..{t.layer_ids[0][-1]}")
    parts.append(f"pairs {','.join(f'{x}-{y}' for x, y in t.pairs)}{ref}")
  return f"{len(tiles)} passes: " + " | ".join(parts)
