"""Finalize benchmark: tables from accumulated moments (driver.compute_tables), the current
path against the previous algorithm, in the same process (the machine is shared).

  python -m benchmarks.finalize_bench [--models=3] [--layers=4] [--neurons=512]
  python -m benchmarks.finalize_bench --gpt2_small       # 5 × 12 × 3072: meant for a GPU
                                                         # (≈ 50 GB of state; --no_old to
                                                         # skip the minutes-long old path)

The state is synthetic but consistent (low-rank shared factors + noise, so correlations are
real correlations): no accumulation pass is needed. "old" is a faithful copy of the previous
finalize (host numpy/scipy float64 draws of every d×d mixing matrix per call, device_put of
the stack, a Python loop over partner layers unrolled into the jit, full-block top-k, one
compilation per pair); it lives here only, as the baseline. Both paths are timed cold
(compilation included: finalize runs once per run) and warm; "new_warm" reuses the cached
matrices, "new_warm_redraw" draws them again (the fair warm comparison with the old path). Agreement: corr / partner columns
are compared exactly, the baselines with the old kernels fed the new matrices (≤ 1e-6).
"""
import argparse
import functools
import json
import os
import sys
import time
from functools import partial

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- old path
# (copied from ucore/corr/finalize.py and ucore/corr/baselines.py before the device draw)

def _old_mixing_matrix(kind, d, *, seed, draw, model, layer):
  kinds = ("haar", "gaussian_rows")
  g = np.random.default_rng([int(seed), kinds.index(kind), int(draw), int(model),
                             int(layer)]).standard_normal((d, d))
  if kind == "haar":
    try:
      import scipy.linalg
      q, r = scipy.linalg.qr(g, mode="economic", check_finite=False)
    except ImportError:
      q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))[None, :]
  return g / np.linalg.norm(g, axis=1, keepdims=True)


def _old_mixing_stack(kind, d, d_pad, layer_ids, *, seed, draw, model):
  out = np.zeros((len(layer_ids), d_pad, d_pad), np.float32)
  for pos, layer in enumerate(layer_ids):
    out[pos, :d, :d] = _old_mixing_matrix(kind, d, seed=seed, draw=draw, model=model,
                                          layer=layer)
  return out


def _old_kernels():
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P
  from ucore.corr.finalize import NEG, _slice, _topk_merge
  from ucore.corr.moments import C_SPEC, NEU, PRECISION, S_SPEC, TOK

  def _block_view(spec, x, y, orient, c_loc):
    if orient == "fwd":
      return c_loc, TOK, NEU
    return jnp.transpose(c_loc, (2, 3, 0, 1)), NEU, TOK

  def _corr_local(spec, x, y, orient, k, c_loc, inv_own, inv_part):
    blk, own_ax, part_ax = _block_view(spec, x, y, orient, c_loc)
    lo, do, B, dp = blk.shape
    own, part = (x, y) if orient == "fwd" else (y, x)
    pl = spec.partner_layer(own, part)
    idx = np.where(pl < 0, 0, pl)
    io = _slice(inv_own, own_ax, do)
    ip = _slice(inv_part, part_ax, dp)[idx] * jnp.asarray(pl >= 0, jnp.float32)[..., None]
    rho = blk * io[:, :, None, None] * ip[:, None, :, :]
    ok = (io[:, :, None, None] > 0) & (ip[:, None, :, :] > 0)
    vals = jnp.where(ok, rho, NEG).reshape(lo * do, B * dp)
    v, li = jax.lax.top_k(vals, min(k, B * dp))
    jp = jax.lax.axis_index(part_ax)
    b, c = li // dp, li % dp
    gidx = b * spec.d_pad + jp * dp + c
    v, gidx = _topk_merge(v, gidx, k, part_ax)
    return v.reshape(lo, do, k), gidx.reshape(lo, do, k)

  def _baseline_local(spec, x, y, orient, c_loc, s_loc, rmat, inv_own):
    blk, own_ax, part_ax = _block_view(spec, x, y, orient, c_loc)
    lo, do, B, dp = blk.shape
    own, part = (x, y) if orient == "fwd" else (y, x)
    r = jax.lax.axis_size(TOK)
    c = jax.lax.axis_size(NEU)
    dr, dc = spec.d_pad // r, spec.d_pad // c
    ra = _slice(rmat, TOK, dr)
    rb = _slice(rmat, NEU, dc)
    rs = jnp.einsum("lkp,lpq->lkq", ra, s_loc, precision=PRECISION)
    var = jax.lax.psum(jnp.sum(rs * rb, axis=2), (TOK, NEU))
    inv_var = jnp.where(var > 0, jax.lax.rsqrt(jnp.where(var > 0, var, 1.0)), 0.0)
    io = _slice(inv_own, own_ax, do)
    rp = _slice(rmat, part_ax, dp)
    pl = spec.partner_layer(own, part)
    best = jnp.full((lo, do), NEG, jnp.float32)
    for b in range(B):
      lay = np.where(pl[:, b] < 0, 0, pl[:, b])
      valid = jnp.asarray(pl[:, b] >= 0)
      cb = blk[:, :, b, :]
      if spec.layer_mode == "all":
        part_rot = jnp.einsum("arp,kp->ark", cb, rp[b], precision=PRECISION)
        ivp = inv_var[b][None, :]
      else:
        part_rot = jnp.einsum("arp,akp->ark", cb, rp[lay], precision=PRECISION)
        ivp = inv_var[lay]
      rot = jax.lax.psum_scatter(part_rot, part_ax, scatter_dimension=2, tiled=True)
      ivp = _slice(ivp, part_ax, dp) * valid[:, None]
      rho = rot * io[:, :, None] * ivp[:, None, :]
      ok = (io[:, :, None] > 0) & (ivp[:, None, :] > 0)
      best = jnp.maximum(best, jnp.max(jnp.where(ok, rho, NEG), axis=2))
    return jax.lax.pmax(best, part_ax)

  @functools.lru_cache(maxsize=64)
  def corr_fn(spec, mesh, x, y, orient, k):
    out_spec = P(None, TOK if orient == "fwd" else NEU, None)
    return jax.jit(jax.shard_map(partial(_corr_local, spec, x, y, orient, k), mesh=mesh,
                                 in_specs=(C_SPEC, P(), P()), out_specs=(out_spec, out_spec),
                                 check_vma=False))

  @functools.lru_cache(maxsize=64)
  def baseline_fn(spec, mesh, x, y, orient):
    return jax.jit(jax.shard_map(partial(_baseline_local, spec, x, y, orient), mesh=mesh,
                                 in_specs=(C_SPEC, S_SPEC, P(), P()),
                                 out_specs=P(None, TOK if orient == "fwd" else NEU),
                                 check_vma=False))

  return corr_fn, baseline_fn


def make_old_pair_result(rmat_fn=None):
  """The previous pair_result; rmat_fn(kind, part, draw, seed) -> [L, d_pad, d_pad] overrides
  the host draw (to feed both paths the same matrices)."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from ucore.corr.finalize import (PairResult, _value, baseline_values, inv_stds,
                                   moments_host, top_partners)
  corr_fn, baseline_fn = _old_kernels()

  def pair_result(spec, mesh, state, x, y, orient, *, top_k=5, baseline_kinds=("haar",),
                  draws=1, seed=0, dead_rel_std=1e-6, moments=None):
    if moments is None:
      moments = moments_host(spec, state, dead_rel_std)[1]
    own, part = (x, y) if orient == "fwd" else (y, x)
    k = int(min(top_k, spec.band(own, part) * spec.d_pad))
    inv_own, inv_part = inv_stds(mesh, moments, own, part)
    f = corr_fn(spec, mesh, x, y, orient, k)   # the old kernels: per-call host round trips
    cv, layer, neuron = top_partners(spec, moments, own, part,
                                     *f(_value(state, f"C/{x}_{y}"), inv_own, inv_part))
    dead_own = moments[own]["dead"][:, :spec.d_mlp]
    baselines = {}
    if baseline_kinds:
      fb = baseline_fn(spec, mesh, x, y, orient)
      cval, sval = _value(state, f"C/{x}_{y}"), _value(state, f"S/{part}")
      rep = NamedSharding(mesh, P())
      for kind in baseline_kinds:
        res = []
        for draw in range(draws):
          if rmat_fn is None:
            rmat = _old_mixing_stack(kind, spec.d_mlp, spec.d_pad, spec.layer_ids[part],
                                     seed=seed, draw=draw, model=part)
          else:
            rmat = rmat_fn(kind, part, draw, seed)
          res.append(baseline_values(spec, dead_own,
                                     fb(cval, sval, jax.device_put(rmat, rep), inv_own)))
        baselines[kind] = np.stack(res)
    return PairResult(own=own, partner=part, corr=cv, layer=layer, neuron=neuron,
                      baselines=baselines)

  return pair_result


# ----------------------------------------------------------------------------- state

def synthetic_state(spec, mesh, rank=64, seed=0):
  """A consistent accumulator state: every model's units are noisy linear read-outs of one
  shared latent (rank `rank`), n = 10^6 tokens; C, S, m2 are the exact co-moments of that
  model (so |corr| ≤ 1, universal-looking maxima exist), compensation terms zero."""
  import jax
  import jax.numpy as jnp
  from ucore.corr import moments as M
  n = 1_000_000
  d, dp = spec.d_mlp, spec.d_pad
  shard = M.state_shardings(spec, mesh)

  @functools.partial(jax.jit, static_argnums=(1,))
  def factors(key, L):
    w = jax.random.normal(key, (L, dp, rank), jnp.float32) / np.sqrt(rank)
    noise = jnp.full((L, dp), 0.5, jnp.float32)
    live = (jnp.arange(dp) < d).astype(jnp.float32)
    return w * live[None, :, None], noise * live[None, :]

  keys = jax.random.split(jax.random.key(seed), spec.n_models)
  fac = [factors(keys[m], spec.n_layers[m]) for m in range(spec.n_models)]
  hi = jax.lax.Precision.HIGHEST
  st = {"n": jnp.asarray(n, jnp.int32)}
  for m, (w, nz) in enumerate(fac):
    st[f"mean/{m}"] = jax.device_put(jax.random.normal(jax.random.key(100 + m), nz.shape),
                                     shard[f"mean/{m}"])
    st[f"m2/{m}"] = jax.device_put(n * (jnp.sum(w * w, -1) + nz), shard[f"m2/{m}"])
  K = 2 if spec.compensated else 1
  for x, y in spec.pairs:
    @functools.partial(jax.jit, out_shardings=shard[f"C/{x}_{y}"])
    def cblock(wx, wy):
      c = n * jnp.einsum("apr,bqr->apbq", wx, wy, precision=hi)
      return jnp.stack([c] + [jnp.zeros_like(c)] * (K - 1))
    st[f"C/{x}_{y}"] = cblock(fac[x][0], fac[y][0])
  for y in spec.rotated:
    @functools.partial(jax.jit, out_shardings=shard[f"S/{y}"])
    def sblock(w, nz):
      s = n * (jnp.einsum("lpr,lqr->lpq", w, w, precision=hi) + jax.vmap(jnp.diag)(nz))
      return jnp.stack([s] + [jnp.zeros_like(s)] * (K - 1))
    st[f"S/{y}"] = sblock(*fac[y])
  for k in list(st):
    if k.startswith(("mean/", "m2/")):
      st[k + "#c"] = jnp.zeros_like(st[k])
  return jax.block_until_ready(st)


# ----------------------------------------------------------------------------- bench

def _config(a):
  from ucore.jobs import config_files
  c = config_files.load("correlate_default")
  c.mode = a.mode
  c.baseline.kinds = ("haar", "gaussian_rows")
  c.baseline.draws = a.draws
  return c


def _timed(fn):
  t = time.perf_counter()
  out = fn()
  return time.perf_counter() - t, out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--models", type=int, default=3)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--neurons", type=int, default=512, help="neurons per layer")
  p.add_argument("--mode", default="reference", choices=["reference", "all_pairs"])
  p.add_argument("--draws", type=int, default=1)
  p.add_argument("--gpt2_small", action="store_true",
                 help="5 models × 12 layers × 3072 (issue 13's run; needs a GPU)")
  p.add_argument("--no_old", action="store_true", help="time the current path only")
  a = p.parse_args()
  if a.gpt2_small:
    a.models, a.layers, a.neurons = 5, 12, 3072
  import jax
  from ucore.corr import baselines as BL
  from ucore.corr import driver
  from ucore.corr import finalize as F
  from ucore.corr import moments as M
  mesh = M.make_mesh(1, -1)
  spec = M.make_spec([f"m{i}" for i in range(a.models)], [range(a.layers)] * a.models,
                     a.neurons, mesh, mode=a.mode)
  t_state, state = _timed(lambda: synthetic_state(spec, mesh))
  cfg = _config(a)
  row = dict(device=str(jax.devices()[0].device_kind), devices=jax.device_count(),
             models=a.models, layers=a.layers, neurons=a.neurons, mode=a.mode, draws=a.draws,
             pairs=len(spec.pairs), state_gib=M.state_bytes(spec) / 2 ** 30,
             state_build_s=t_state)
  new_cold, new = _timed(lambda: driver.compute_tables(cfg, spec, mesh, state))
  new_warm, _ = _timed(lambda: driver.compute_tables(cfg, spec, mesh, state))
  BL.clear_cache()             # warm programs, matrices drawn again (a second run's finalize)
  new_redraw, _ = _timed(lambda: driver.compute_tables(cfg, spec, mesh, state))
  BL.clear_cache()
  draw_s, _ = _timed(lambda: jax.block_until_ready([
      BL.mixing_stack(k, spec.d_mlp, spec.d_pad, spec.layer_ids[m], seed=0, draw=dr, model=m,
                      mesh=mesh)
      for k in cfg.baseline.kinds for m in spec.rotated for dr in range(a.draws)]))
  row.update(new_cold_s=new_cold, new_warm_s=new_warm, new_warm_redraw_s=new_redraw,
             new_draws_only_s=draw_s)
  if not a.no_old:
    cur = F.pair_result
    F.pair_result = make_old_pair_result()          # driver looks it up at call time
    try:
      old_cold, old = _timed(lambda: driver.compute_tables(cfg, spec, mesh, state))
      # at GPT-2-small size one old finalize is minutes (268 s on an H100): time it once
      old_warm = None if a.gpt2_small else _timed(
          lambda: driver.compute_tables(cfg, spec, mesh, state))[0]
    finally:
      F.pair_result = cur
    row.update(old_cold_s=old_cold, speedup_cold=old_cold / new_cold)
    if old_warm is not None:
      row.update(old_warm_s=old_warm, speedup_warm_redraw=old_warm / new_redraw)
    # agreement: same corr columns; baselines equal when the old kernels get the new matrices
    same = make_old_pair_result(lambda kind, part, draw, seed: BL.mixing_stack(
        kind, spec.d_mlp, spec.d_pad, spec.layer_ids[part], seed=seed, draw=draw,
        model=part, mesh=mesh))
    x, y = spec.pairs[-1]
    kw = dict(top_k=5, baseline_kinds=cfg.baseline.kinds, draws=a.draws)
    r_new = F.pair_result(spec, mesh, state, x, y, "fwd", **kw)
    r_old = same(spec, mesh, state, x, y, "fwd", **kw)
    assert np.array_equal(r_new.corr, r_old.corr, equal_nan=True)
    clear = r_new.corr[..., 0] - r_new.corr[..., 1] > 1e-6
    assert np.array_equal(r_new.layer[..., 0][clear], r_old.layer[..., 0][clear])
    assert np.array_equal(r_new.neuron[..., 0][clear], r_old.neuron[..., 0][clear])
    row["baseline_max_abs_diff_same_matrices"] = max(
        float(np.nanmax(np.abs(r_new.baselines[k] - r_old.baselines[k])))
        for k in cfg.baseline.kinds)
    assert row["baseline_max_abs_diff_same_matrices"] <= 1e-6
    # tables through compute_tables: correlation columns identical, baselines only differ
    # by the random draw (compare their distribution)
    for name, df in new["neurons"].items():
      o = old["neurons"][name]
      for col in ("mean_corr", "max_corr", "min_corr"):
        assert np.array_equal(df[col].to_numpy(), o[col].to_numpy(), equal_nan=True), col
      row[f"mean_baseline_{name}_new_vs_old"] = (float(np.nanmean(df["mean_baseline"])),
                                                 float(np.nanmean(o["mean_baseline"])))
  print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v)
                    for k, v in row.items()}))


if __name__ == "__main__":
  main()
