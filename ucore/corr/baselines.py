"""Random mixing matrices for the baselines (applied to the accumulated moments, one pass).

This module is the one home of what a baseline kind is:

  haar          Haar-orthogonal R per layer: QR of a standard Gaussian with the sign fix
                (R = Q diag(sign(diag(Rqr)))).
  gaussian_rows The paper's code: a standard Gaussian matrix with unit-norm rows (not
                orthogonal). Seeded here (the original was not).

Every matrix is seeded by (seed, kind, draw, model, layer) through jax.random (threefry,
fold_in in that order) and drawn ON THE DEVICE in float64 (QR included), so finalize never
builds a d×d matrix on the host nor ships one to the device; the run uses the float32
rounding of that float64 matrix. Same seed → same matrices on the same platform, whatever
the mesh (each process draws every matrix once on one of its devices of the mesh and copies
the stack to the others). The stream is not numpy's: runs finalized
before this change drew other (equally distributed) matrices.

Rotating layer l of model y by R maps the cross co-moment block C[:, l] to C[:, l] R^T and
y's second moments to diag(R S_l R^T) (S_l = within-layer co-moment), so every draw is exact
without a second pass over the data.
"""
from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

KINDS = ("haar", "gaussian_rows")

# Stacks kept on the device between pair_result calls (all_pairs mode uses each model as the
# partner of K-1 calls and in both orientations). Bounded so a GPT-2-medium run does not
# hold gigabytes after finalize; clear_cache() frees them at once.
CACHE_BYTES = 2 << 30
_cache: "collections.OrderedDict" = collections.OrderedDict()


def _check_kind(kind):
  if kind not in KINDS:
    raise ValueError(f"unknown baseline kind {kind!r}; choose from {KINDS}")


def _f64_ok(devices) -> bool:
  # TPUs have no float64 QR; there the draw is float32 (same stream, same distribution)
  return devices[0].platform in ("cpu", "gpu", "cuda", "rocm")


def _one(kind, d, dtype, key):
  g = jax.random.normal(key, (d, d), dtype)
  if kind == "haar":
    q, r = jnp.linalg.qr(g)
    return q * jnp.sign(jnp.diagonal(r))[None, :]
  return g / jnp.linalg.norm(g, axis=1, keepdims=True)


def _key(seed, kind_id, draw, model, layer):
  key = jax.random.key(seed)
  for v in (kind_id, draw, model, layer):
    key = jax.random.fold_in(key, v)
  return key


@functools.lru_cache(maxsize=32)
def _draw_fn(kind, d, f64):
  """Compiled once per (kind, d): (seed, kind_id, draw, model, layer) -> one [d, d] matrix
  (float64 where f64) on the process's default device. One program serves every layer count,
  padding and mesh (and mixing_matrix): a stack drawn by one replicated program compiled the
  QR again for each of those."""
  dtype = jnp.float64 if f64 else jnp.float32
  return jax.jit(lambda *a: _one(kind, d, dtype, _key(*a)))


@functools.lru_cache(maxsize=32)
def _pad_fn(d_pad):
  """[d, d] -> [d_pad, d_pad] float32 (the run's rounding), zero outside the d×d block."""
  return jax.jit(lambda m: jnp.pad(m.astype(jnp.float32), ((0, d_pad - m.shape[0]),
                                                            (0, d_pad - m.shape[1]))))


def _draw(kind, d, f64, seed, draw, model, layer, d_pad=None, device=None):
  """One matrix on `device` (None: the default device): float64 where f64 (d_pad None), else
  float32 padded."""
  args = (np.uint32(seed) if 0 <= seed < 2 ** 32 else seed, KINDS.index(kind), int(draw),
          int(model), np.int32(layer))
  with jax.enable_x64(f64), jax.default_device(device):
    m = _draw_fn(kind, d, f64)(*args)
    return m if d_pad is None else _pad_fn(d_pad)(m)


def mixing_matrix(kind: str, d: int, *, seed: int, draw: int, model: int, layer: int):
  """float64 numpy [d, d], the matrix a run uses for (kind, seed, draw, model, layer) before
  its float32 rounding; rotated units are R @ v (row k of R mixes v into unit k)."""
  _check_kind(kind)
  f64 = _f64_ok(jax.devices())
  return np.asarray(_draw(kind, d, f64, seed, draw, model, layer), np.float64)


def mixing_stack(kind: str, d: int, d_pad: int, layer_ids, *, seed: int, draw: int,
                 model: int, mesh=None):
  """float32 jax array [L, d_pad, d_pad] replicated over `mesh` (default: all devices): one
  matrix per kept layer, zero outside the real d×d block (padded units then have zero
  variance and are excluded like dead neurons). Cached on the device (see CACHE_BYTES)."""
  _check_kind(kind)
  layer_ids = tuple(int(l) for l in layer_ids)
  if mesh is None:
    from ucore.corr.moments import make_mesh
    mesh = make_mesh(1, -1)
  key = (kind, d, d_pad, layer_ids, int(seed), int(draw), int(model), mesh)
  hit = _cache.get(key)
  if hit is not None:
    _cache.move_to_end(key)
    return hit
  f64 = _f64_ok(mesh.devices.flat)
  # drawn once on this process's first device of the mesh, one d×d QR at a time, in layer
  # order, then copied to its other devices of the mesh: the same matrices a replicated
  # program drew (bit for bit), with one compiled draw per (kind, d) instead of one per layer
  # count, padded size and mesh
  sharding = NamedSharding(mesh, P())
  first = mesh.local_devices[0]
  one = jnp.stack([_draw(kind, d, f64, seed, draw, model, l, d_pad, first)
                   for l in layer_ids])
  out = jax.make_array_from_single_device_arrays(
      one.shape, sharding, [jax.device_put(one, dev) for dev in sharding.addressable_devices])
  nbytes = out.size * 4
  if nbytes <= CACHE_BYTES:
    _cache[key] = out
    while sum(v.size * 4 for v in _cache.values()) > CACHE_BYTES:
      _cache.popitem(last=False)
  return out


def clear_cache():
  """Frees the cached device stacks (e.g. after compute_tables)."""
  _cache.clear()
