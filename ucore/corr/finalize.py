"""From accumulated co-moments to per-neuron tables, without gathering any N×N matrix.

Every reduction runs per device on its own block inside shard_map (max / top-k over the local
partner columns, then an all-gather of k candidates per row over the partner axis), so the
largest thing that ever leaves a device is O(N·k). Top-k runs one own layer at a time
(lax.map), so the largest temporary is one layer's rows × all partner columns. Baselines
rotate the stored co-moments (C[:, l] R_l^T, diag(R_l S_l R_l^T)) with a reduce-scatter over
the partner axis, one partner layer per lax.scan step; the mixing matrices are drawn on the
device (ucore.corr.baselines), so nothing of size N² crosses the host. The programs are
keyed on shapes (layer mode, layer counts, d_pad, orientation, k, mesh), so a family of
same-shaped pairs compiles each once.

Dead neurons: a neuron whose standard deviation is ≤ dead_rel_std·|mean| (or 0) has no
correlation: its row is NaN (or `dead_value` when configured) and it is never anyone's partner.
"""
from __future__ import annotations

import dataclasses
import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from ucore.corr.moments import C_SPEC, NEU, PRECISION, S_SPEC, TOK, Spec

NEG = -jnp.inf


def _value(state, key):
  """Compensated value s - c (C and S carry [sum, compensation] on a leading axis)."""
  v = state[key]
  if key.startswith(("C/", "S/")):
    return v[0] - v[1] if v.shape[0] == 2 else v[0]
  c = state.get(key + "#c")
  return v if c is None else v - c


def _to_host(x):
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def moments_host(spec: Spec, state, dead_rel_std: float):
  """Per model: n, mean [L, d_pad], std [L, d_pad], dead mask (host numpy)."""
  n = int(_to_host(state["n"]))
  out = []
  for m in range(spec.n_models):
    mean = _to_host(_value(state, f"mean/{m}")).astype(np.float64)
    m2 = np.maximum(_to_host(_value(state, f"m2/{m}")).astype(np.float64), 0.0)
    std = np.sqrt(m2 / max(n, 1))
    dead = (std <= dead_rel_std * np.abs(mean)) | (std == 0) | (n < 2)
    dead[:, spec.d_mlp:] = True
    out.append(dict(mean=mean, m2=m2, std=std, dead=dead))
  return n, out


def _topk_merge(vals, idx, k, axis_name):
  """vals/idx [R, k] local candidates -> global top-k over `axis_name`."""
  gv = jax.lax.all_gather(vals, axis_name, axis=1, tiled=True)
  gi = jax.lax.all_gather(idx, axis_name, axis=1, tiled=True)
  v, pos = jax.lax.top_k(gv, k)
  return v, jnp.take_along_axis(gi, pos, axis=1)


class _Geo(tuple):
  """What a compiled finalize program depends on: (layer_mode, L_x, L_y, d_pad, orient).
  Keyed on shapes, not on model ids, so every pair of a family reuses one compilation."""

  @property
  def own_part(self):
    mode, lx, ly, d_pad, orient = self
    return (lx, ly) if orient == "fwd" else (ly, lx)

  def partner_layer(self):
    """[L_own, B] position of the partner layer in the partner's kept layers, -1 if none."""
    mode, lx, ly, d_pad, orient = self
    lo, lp = self.own_part
    if mode == "all":
      return np.tile(np.arange(lp), (lo, 1))
    pl = np.arange(lo)[:, None] + np.arange(3)[None, :] - 1
    return np.where((pl >= 0) & (pl < lp), pl, -1)


def _geo(spec, x, y, orient):
  return _Geo((spec.layer_mode, spec.n_layers[x], spec.n_layers[y], spec.d_pad, orient))


def _axes(orient):
  """(own_axis, partner_axis): rows of C are split over TOK, columns over NEU."""
  return (TOK, NEU) if orient == "fwd" else (NEU, TOK)


def _own_slab(orient, c_loc, a):
  """Own layer a of the local block as [d_own_loc, B, d_part_loc]."""
  if orient == "fwd":
    return jax.lax.dynamic_index_in_dim(c_loc, a, 0, keepdims=False)
  return jnp.transpose(jax.lax.dynamic_index_in_dim(c_loc, a, 2, keepdims=False), (2, 0, 1))


def _part_slab(orient, c_loc, b):
  """Partner position b of the local block as [L_own, d_own_loc, d_part_loc]."""
  if orient == "fwd":
    return jax.lax.dynamic_index_in_dim(c_loc, b, 2, keepdims=False)
  return jnp.transpose(jax.lax.dynamic_index_in_dim(c_loc, b, 0, keepdims=False), (1, 2, 0))


def _slice(a, axis_name, size):
  k = jax.lax.axis_index(axis_name)
  return jax.lax.dynamic_slice_in_dim(a, k * size, size, axis=a.ndim - 1)


def _corr_local(geo, k, c_loc, inv_own, inv_part):
  """inv_own [L_own, d_pad] (0 for dead), inv_part [L_part, d_pad] replicated. Top-k per
  row, one own layer (a [d_own_loc, B·d_part_loc] slab) at a time."""
  own_ax, part_ax = _axes(geo[4])
  lo, _ = geo.own_part
  do, dp = c_loc.shape[1 if geo[4] == "fwd" else 3], c_loc.shape[3 if geo[4] == "fwd" else 1]
  pl = geo.partner_layer()                                    # [L_own, B]
  B = pl.shape[1]
  idx = np.where(pl < 0, 0, pl)
  io = _slice(inv_own, own_ax, do)                            # [L_own, do]
  ip = _slice(inv_part, part_ax, dp)[idx] * jnp.asarray(pl >= 0, jnp.float32)[..., None]
  kk = min(k, B * dp)

  def one(a):
    blk = _own_slab(geo[4], c_loc, a)                         # [do, B, dp]
    ioa, ipa = io[a], ip[a]                                   # [do], [B, dp]
    rho = blk * ioa[:, None, None] * ipa[None]
    ok = (ioa[:, None, None] > 0) & (ipa[None] > 0)
    return jax.lax.top_k(jnp.where(ok, rho, NEG).reshape(do, B * dp), kk)

  v, li = jax.lax.map(one, jnp.arange(lo))                    # [L_own, do, kk]
  jp = jax.lax.axis_index(part_ax)
  b, c = li // dp, li % dp
  gidx = b * geo[3] + jp * dp + c
  v, gidx = _topk_merge(v.reshape(lo * do, kk), gidx.reshape(lo * do, kk), k, part_ax)
  return v.reshape(lo, do, k), gidx.reshape(lo, do, k)


def _baseline_local(geo, c_loc, s_loc, rmat, inv_own):
  """Max over rotated partner units of one draw, and where it is (flat index b·d_pad + unit:
  partner position b, rotated unit; the interval pass re-reads that unit's activations).
  rmat [L_part, d_pad, d_pad] replicated; s_loc the partner's within-layer co-moment block
  [L_part, d_pad/r (TOK), d_pad/c (NEU)].
  One partner position per scan step: a [L_own·d_own_loc, d_part_loc] × [d_part_loc, d_pad]
  GEMM, reduce-scattered over the partner axis (no unrolled loop: one compile, any depth)."""
  mode, orient = geo[0], geo[4]
  own_ax, part_ax = _axes(orient)
  lo, _ = geo.own_part
  do, dp = c_loc.shape[1 if orient == "fwd" else 3], c_loc.shape[3 if orient == "fwd" else 1]
  d_pad = geo[3]
  r = jax.lax.axis_size(TOK)
  c = jax.lax.axis_size(NEU)
  dr, dc = d_pad // r, d_pad // c
  # Rotated second moments diag(R S R^T), all partner layers: [L_part, d_pad].
  ra = _slice(rmat, TOK, dr)                                  # [L, d_pad, dr]
  rb = _slice(rmat, NEU, dc)                                  # [L, d_pad, dc]
  rs = jnp.einsum("lkp,lpq->lkq", ra, s_loc, precision=PRECISION)
  var = jax.lax.psum(jnp.sum(rs * rb, axis=2), (TOK, NEU))   # [L, d_pad]
  inv_var = jnp.where(var > 0, jax.lax.rsqrt(jnp.where(var > 0, var, 1.0)), 0.0)
  io = _slice(inv_own, own_ax, do)                            # [L_own, do]
  rp = _slice(rmat, part_ax, dp)                              # [L_part, d_pad(k), dp]
  pl = geo.partner_layer()
  B = pl.shape[1]
  lay_all = jnp.asarray(np.where(pl < 0, 0, pl).T)           # [B, L_own]
  valid_all = jnp.asarray((pl >= 0).T, jnp.float32)           # [B, L_own]

  jp = jax.lax.axis_index(part_ax)

  def step(carry, b):
    best, arg = carry
    lay, valid = lay_all[b], valid_all[b]
    cb = _part_slab(orient, c_loc, b)                         # [L_own, do, dp]
    if mode == "all":
      part_rot = jnp.einsum("arp,kp->ark", cb, rp[b], precision=PRECISION)
      ivp = inv_var[b][None, :]
    else:
      part_rot = jnp.einsum("arp,akp->ark", cb, rp[lay], precision=PRECISION)
      ivp = inv_var[lay]
    rot = jax.lax.psum_scatter(part_rot, part_ax, scatter_dimension=2, tiled=True)
    ivp = _slice(ivp, part_ax, dp) * valid[:, None]           # [L_own, dp]
    rho = rot * io[:, :, None] * ivp[:, None, :]
    ok = (io[:, :, None] > 0) & (ivp[:, None, :] > 0)
    masked = jnp.where(ok, rho, NEG)
    here = jnp.max(masked, axis=2)
    at = b * d_pad + jp * dp + jnp.argmax(masked, axis=2).astype(jnp.int32)
    better = here > best   # ties keep the earlier position (as jnp.max's value does)
    return (jnp.where(better, here, best), jnp.where(better, at, arg)), None

  init = (jnp.full((lo, do), NEG, jnp.float32), jnp.zeros((lo, do), jnp.int32))
  (best, arg), _ = jax.lax.scan(step, init, jnp.arange(B))
  v, i = _topk_merge(best.reshape(lo * do, 1), arg.reshape(lo * do, 1), 1, part_ax)
  return v.reshape(lo, do), i.reshape(lo, do)


@functools.lru_cache(maxsize=64)
def _corr_fn(geo, mesh, k):
  own_ax = _axes(geo[4])[0]
  out_spec = P(None, own_ax, None)
  return jax.jit(jax.shard_map(partial(_corr_local, geo, k), mesh=mesh,
                               in_specs=(C_SPEC, P(), P()), out_specs=(out_spec, out_spec),
                               check_vma=False))


@functools.lru_cache(maxsize=64)
def _baseline_fn(geo, mesh):
  out_spec = P(None, _axes(geo[4])[0])
  return jax.jit(jax.shard_map(partial(_baseline_local, geo), mesh=mesh,
                               in_specs=(C_SPEC, S_SPEC, P(), P()),
                               out_specs=(out_spec, out_spec),
                               check_vma=False))


@dataclasses.dataclass
class PairResult:
  own: int
  partner: int
  corr: np.ndarray        # [L_own, d_mlp, k] top-k correlations (k=0 is max_corr), NaN = none
  layer: np.ndarray       # [L_own, d_mlp, k] partner layer id (-1 = none)
  neuron: np.ndarray      # [L_own, d_mlp, k]
  baselines: dict         # kind -> [draws, L_own, d_mlp]
  baseline_units: dict = dataclasses.field(default_factory=dict)
  # kind -> [draws, L_own, d_mlp] int: the draw's argmax rotated unit, flat b·d_pad + unit
  # (b: partner position as in spec.partner_layer; -1 where the baseline is NaN)


def _inv_std(mom):
  return np.where(mom["dead"], 0.0, 1.0 / np.sqrt(np.where(mom["dead"], 1.0, mom["m2"])))


def inv_stds(mesh, moments, own, part):
  """1/std of both models' neurons (0 for dead), replicated on the mesh."""
  rep = NamedSharding(mesh, P())
  return tuple(jax.device_put(_inv_std(moments[m]).astype(np.float32), rep) for m in (own, part))


def top_partners(spec: Spec, moments, own, part, values, index):
  """The top-k kernel's (values, flat partner index) on the host -> (corr, layer, neuron),
  [L_own, d_mlp, k] each; NaN / -1 where the own neuron is dead or has no partner."""
  cv, ci = _to_host(values)[:, :spec.d_mlp], _to_host(index)[:, :spec.d_mlp]
  none = ~np.isfinite(cv) | moments[own]["dead"][:, :spec.d_mlp][:, :, None]
  cv = np.where(none, np.nan, cv).astype(np.float64)
  b_pos, neuron = ci // spec.d_pad, ci % spec.d_pad
  pl = spec.partner_layer(own, part)                          # [L_own, B]
  lay_pos = np.take_along_axis(pl[:, None, :].repeat(cv.shape[1], 1), b_pos, axis=2)
  lay_ids = np.asarray(spec.layer_ids[part])[np.maximum(lay_pos, 0)]
  return cv, np.where(none, -1, lay_ids), np.where(none, -1, neuron)


def baseline_values(spec: Spec, dead_own, b):
  """One baseline draw on the host, float64, NaN for dead own neurons."""
  b = _to_host(b)[:, :spec.d_mlp].astype(np.float64)
  return np.where(~np.isfinite(b) | dead_own, np.nan, b)


def pair_result(spec: Spec, mesh, state, x, y, orient, *, top_k=5, baseline_kinds=("haar",),
                draws=1, seed=0, dead_rel_std=1e-6, moments=None) -> PairResult:
  """Statistics for the rows of one model ('fwd': x, 'bwd': y) against the other."""
  if orient == "bwd" and spec.layer_mode != "all":
    raise ValueError("column orientation needs layer_mode='all'")
  if moments is None:
    moments = moments_host(spec, state, dead_rel_std)[1]
  own, part = (x, y) if orient == "fwd" else (y, x)
  k = int(min(top_k, spec.band(own, part) * spec.d_pad))
  inv_own, inv_part = inv_stds(mesh, moments, own, part)
  geo = _geo(spec, x, y, orient)
  f = _corr_fn(geo, mesh, k)
  cv, layer, neuron = top_partners(spec, moments, own, part,
                                   *f(_value(state, f"C/{x}_{y}"), inv_own, inv_part))
  dead_own = moments[own]["dead"][:, :spec.d_mlp]
  baselines, units_ = {}, {}
  if baseline_kinds:
    if part not in spec.rotated:
      raise ValueError(f"model {part} has no within-layer co-moments (not rotated)")
    from ucore.corr import baselines as bl
    fb = _baseline_fn(geo, mesh)
    cval, sval = _value(state, f"C/{x}_{y}"), _value(state, f"S/{part}")
    for kind in baseline_kinds:
      res, units = [], []
      for draw in range(draws):
        rmat = bl.mixing_stack(kind, spec.d_mlp, spec.d_pad, spec.layer_ids[part], seed=seed,
                               draw=draw, model=part, mesh=mesh)
        val, arg = fb(cval, sval, rmat, inv_own)
        res.append(baseline_values(spec, dead_own, val))
        units.append(np.where(np.isnan(res[-1]), -1, _to_host(arg)[:, :spec.d_mlp]))
      baselines[kind] = np.stack(res)
      units_[kind] = np.stack(units)
  return PairResult(own=own, partner=part, corr=cv, layer=layer, neuron=neuron,
                    baselines=baselines, baseline_units=units_)


def unit_ids(spec: Spec, own, part, flat):
  """baseline_units' flat b·d_pad + unit [L_own, d_mlp] -> (partner layer id, unit), -1
  where there is none."""
  flat = np.asarray(flat)
  none = flat < 0
  b, unit = np.maximum(flat, 0) // spec.d_pad, np.maximum(flat, 0) % spec.d_pad
  pl = spec.partner_layer(own, part)                          # [L_own, B]
  pos = np.take_along_axis(pl, b, axis=1)
  lay = np.asarray(spec.layer_ids[part])[np.maximum(pos, 0)]
  return np.where(none, -1, lay), np.where(none, -1, unit)


def full_corr_blocks(spec: Spec, state, x, y, dead_rel_std=1e-6, moments=None):
  """Correlation matrix of pair (x, y) as a sharded jax array [L_x, d_pad, B, d_pad]
  (NaN for dead); stays sharded like the accumulator (for the optional zarr export)."""
  if moments is None:
    moments = moments_host(spec, state, dead_rel_std)[1]
  ix = _inv_std(moments[x]).astype(np.float32)
  iy = _inv_std(moments[y]).astype(np.float32)
  pl = spec.partner_layer(x, y)
  iyb = iy[np.where(pl < 0, 0, pl)] * (pl >= 0).astype(np.float32)[..., None]   # × 1 or 0: exact
  return _corr_blocks(_value(state, f"C/{x}_{y}"), ix, iyb)


@jax.jit
def _corr_blocks(c, ix, iyb):
  # the scales are arguments, not constants baked into a fresh program: one compile per shape
  rho = c * ix[:, :, None, None] * iyb[:, None, :, :]
  ok = (ix[:, :, None, None] > 0) & (iyb[:, None, :, :] > 0)
  return jnp.where(ok, rho, jnp.nan)
