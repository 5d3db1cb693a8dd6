"""Correlation-engine benchmarks (results in BENCHMARKS.md, section "Correlation").

  python -m benchmarks.corr_bench accumulate [--neurons=4096] [--tokens=4096]
  python -m benchmarks.corr_bench original [--neurons=4096] [--tokens=18432] [--batch=3072] [--legacy=1]
  python -m benchmarks.corr_bench memory [--neurons=4096]
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.corr_bench devices

Run as a module from the repository root (so `ucore` is importable). Every ratio is against
a baseline measured in the same process (the machine is shared).
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _best(fn, reps):
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return min(ts), float(np.median(ts))


def _acts(T, L, d, K=2, seed=0, offset=-0.17):
  """GELU-like activations with shared structure: most mass near -0.17, rare large values."""
  rng = np.random.default_rng(seed)
  lat = rng.standard_normal((T, 64)).astype(np.float32)
  mix = rng.standard_normal((64, L * d)).astype(np.float32) / 8
  out = []
  for m in range(K):
    pre = lat @ (mix + 0.5 * rng.standard_normal(mix.shape).astype(np.float32) / 8) \
        + rng.standard_normal((T, L * d)).astype(np.float32) - 1.0
    g = 0.5 * pre * (1 + np.tanh(0.7978845608 * (pre + 0.044715 * pre ** 3)))
    out.append(g.reshape(T, L, d).astype(np.float32))
  return out


def bench_accumulate(a):
  import jax
  from ucore.corr import moments as M
  L = 4
  d = a.neurons // L
  T = a.tokens
  mesh = M.make_mesh(1, 1, jax.devices()[:1])
  rows = []
  for comp in (True, False):
    spec = M.make_spec(["a", "b"], [range(L)] * 2, d, mesh, compensated=comp)
    acc = M.Accumulator(spec, mesh)
    acts = _acts(T, L, d)
    mask = np.ones(T, bool)
    xs, w = acc.prepare(acts, mask)

    def step():
      acc.state = acc._step(acc.state, xs, w)
      jax.block_until_ready(acc.state["n"])

    x = acts[0].reshape(T, -1)
    y = acts[1].reshape(T, -1)
    yl = acts[1]

    def np_gemm():   # numpy float32 GEMMs with the same FLOPs (cross block + layer blocks)
      x.T @ y
      for l in range(L):
        yl[:, l].T @ yl[:, l]

    H = jax.lax.Precision.HIGHEST

    @jax.jit
    def bare(xa, xb):   # the same GEMMs alone in XLA (the ceiling for any JAX kernel)
      c = jax.lax.dot_general(xa.reshape(L * spec.d_pad, -1), xb.reshape(L * spec.d_pad, -1),
                              (((1,), (1,)), ((), ())), precision=H)
      return c, jax.lax.dot_general(xb, xb, (((2,), (2,)), ((0,), (0,))), precision=H)

    def jax_gemm():
      jax.block_until_ready(bare(xs[0], xs[1]))

    step()
    np_gemm()
    jax_gemm()
    t_ours = t_np = t_jax = 1e9
    for _ in range(a.reps):     # interleaved: all see the same machine load
      t_ours = min(t_ours, _best(step, 1)[0])
      t_np = min(t_np, _best(np_gemm, 1)[0])
      t_jax = min(t_jax, _best(jax_gemm, 1)[0])
    fl = M.step_flops(spec, T)
    rows.append(dict(neurons_per_model=L * d, tokens=T, compensated=comp,
                     ours_gflops=fl / t_ours / 1e9, numpy_gflops=fl / t_np / 1e9,
                     bare_xla_gemm_gflops=fl / t_jax / 1e9,
                     fraction=t_np / t_ours, bare_xla_fraction=t_np / t_jax))
  return rows


def _original_careful(h16, T, B, L, d, rot):
  """The original algorithm as a careful numpy user writes it (its numerics unchanged):
  activations held as captured (float16), upcast per batch, ONE float32 GEMM per batch
  (`x.T @ y`, all layer pairs at once) added into float64 host sums, Σx and Σx² in float64,
  NaN→0, max over partners; the baseline is a second full pass over rotated activations
  (rotation = float32 BLAS matmul per layer). Returns (max corr, baseline max corr) [N]."""
  N = L * d

  def one_pass(g):
    sxy = np.zeros((N, N))
    sx, sxx, sy, syy = (np.zeros(N) for _ in range(4))
    for s in range(0, T, B):
      xa = h16[0][s:s + B].astype(np.float32).reshape(-1, N)
      xb = h16[1][s:s + B].astype(np.float32)
      if g is not None:
        xb = np.stack([xb[:, l] @ g[l].T for l in range(L)], axis=1)
      xb = xb.reshape(-1, N)
      np.add(sxy, xa.T @ xb, out=sxy)          # float32 GEMM, float64 accumulation
      fa, fb = xa.astype(np.float64), xb.astype(np.float64)
      sx += fa.sum(0)
      sxx += np.einsum("tn,tn->n", fa, fa)
      sy += fb.sum(0)
      syy += np.einsum("tn,tn->n", fb, fb)
    return _original_finish(sxy, sx, sxx, sy, syy, T)

  g = np.stack([rot(l) for l in range(L)]).astype(np.float32)
  return one_pass(None), one_pass(g)


def _original_finish(sxy, sx, sxx, sy, syy, n):
  sxy /= n
  sxy -= np.outer(sx / n, sy / n)                                   # covariance
  vx = sxx / n - (sx / n) ** 2
  vy = syy / n - (sy / n) ** 2
  with np.errstate(all="ignore"):
    sxy /= np.sqrt(vx)[:, None]
    sxy /= np.sqrt(vy)[None, :]
  return np.nan_to_num(sxy).max(1)                                  # original: NaN -> 0


def _original_as_benchmarked(acts, T, B, L, d, rot):
  """What this benchmark timed as "the original" until 2026-11-25 (kept to reproduce the old
  4.4×/6.4×): same numerics, but the rotation was `np.einsum` without `optimize` — numpy's
  non-BLAS loop, ~20× slower than a matmul — plus a float16 round trip of every batch and
  16 per-layer-pair GEMMs each copied to float64."""
  N = L * d
  g = np.stack([rot(l) for l in range(L)]).astype(np.float32)

  def one_pass(rotate):
    sxy = np.zeros((L, L, d, d))
    sx, sxx, sy, syy = (np.zeros(N) for _ in range(4))
    for s in range(0, T, B):
      xa = acts[0][s:s + B].astype(np.float16).astype(np.float32)
      xb = acts[1][s:s + B].astype(np.float16).astype(np.float32)
      if rotate:
        xb = np.einsum("tlp,lkp->tlk", xb, g)
      for la in range(L):
        for lb in range(L):
          sxy[la, lb] += (xa[:, la].T @ xb[:, lb]).astype(np.float64)
      fa = xa.reshape(len(xa), -1).astype(np.float64)
      fb = xb.reshape(len(xb), -1).astype(np.float64)
      sx += fa.sum(0)
      sxx += (fa * fa).sum(0)
      sy += fb.sum(0)
      syy += (fb * fb).sum(0)
    return _original_finish(sxy.transpose(0, 2, 1, 3).reshape(N, N), sx, sxx, sy, syy, T)
  return one_pass(False), one_pass(True)


def _exact_max(x64, y64):
  """float64 Pearson of every column of x against every column of y; max over y: [N]."""
  xc = x64 - x64.mean(0)
  yc = y64 - y64.mean(0)
  c = xc.T @ yc
  c /= np.sqrt((xc * xc).sum(0))[:, None]
  c /= np.sqrt((yc * yc).sum(0))[None, :]
  return c.max(1)


def bench_original(a):
  """Ours (one pass; the same Gaussian-row baseline from the moments) vs the original
  algorithm as a careful user writes it (`_original_careful`); `--legacy=1` also times the
  slower re-implementation behind the 4.4×/6.4× this file reported before 2026-11-25."""
  import jax
  import jax.numpy as jnp
  from ucore.corr import baselines as BL
  from ucore.corr import finalize as F
  from ucore.corr import moments as M
  L = 4
  d = a.neurons // L
  T = a.tokens
  B = a.batch
  kind = "gaussian_rows"       # the original's baseline: Gaussian matrix with unit-norm rows
  rot = lambda l: BL.mixing_matrix(kind, d, seed=0, draw=0, model=1, layer=l)
  acts = _acts(T, L, d)
  h16 = [v.astype(np.float16) for v in acts]     # the original captures float16 activations
  mask = np.ones(T, bool)
  x64 = acts[0].reshape(T, -1).astype(np.float64)
  y64 = acts[1].astype(np.float64)
  exact_max = _exact_max(x64, y64.reshape(T, -1))
  yr = np.stack([y64[:, l] @ rot(l).T for l in range(L)], axis=1).reshape(T, -1)
  exact_base = _exact_max(x64, yr)
  del x64, y64, yr

  mesh = M.make_mesh(1, 1, jax.devices()[:1])
  spec = M.make_spec(["a", "b"], [range(L)] * 2, d, mesh, compensated=bool(a.compensated))
  acc_s, fin_s = [], []
  from jax.sharding import NamedSharding
  shapes = M.state_shapes(spec)

  def zeros():
    # M.init_state compiles a fresh jnp.zeros per array on every call (~1 s here, measured
    # 2026-11-25): a once-per-run cost like compilation, so warm runs build the zero state
    # with jnp.zeros (compiled once per shape); the cold run uses Accumulator's own init.
    return {k: jnp.zeros(sh, dt, device=NamedSharding(mesh, ps))
            for k, (sh, dt, ps) in shapes.items()}

  def ours(cold=False):
    t0 = time.perf_counter()
    acc = M.Accumulator(spec, mesh) if cold else M.Accumulator(spec, mesh, state=zeros())
    for s in range(0, T, B):
      acc.update([v[s:s + B] for v in acts], mask[s:s + B])
    jax.block_until_ready(acc.state)
    t1 = time.perf_counter()
    r = F.pair_result(spec, mesh, acc.state, 0, 1, "fwd", top_k=1,
                      baseline_kinds=(kind,), draws=1)
    acc_s.append(t1 - t0)
    fin_s.append(time.perf_counter() - t1)
    return r.corr[..., 0].reshape(-1), r.baselines[kind][0].reshape(-1)

  def timed(fn):
    time.sleep(1.0)     # let OpenBLAS's spinning threads go idle before XLA's pool runs
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out

  # first call in this process: compiles the step and the finalize programs
  t_cold, (o_max, o_base) = timed(lambda: ours(cold=True))
  acc_cold, fin_cold = acc_s.pop(), fin_s.pop()
  orig = lambda: _original_careful(h16, T, B, L, d, rot)
  legacy = lambda: _original_as_benchmarked(acts, T, B, L, d, rot)
  t_o, t_g, t_l = [], [], []
  for _ in range(a.reps):     # interleaved: all see the same machine load
    t, (o_max, o_base) = timed(ours)
    t_o.append(t)
    t, (g_max, g_base) = timed(orig)
    t_g.append(t)
    if a.legacy:
      t, (l_max, l_base) = timed(legacy)
      t_l.append(t)
  med = lambda v: float(np.median(v))
  # GEMM FLOPs: the original does the cross GEMM twice (plain + rotated pass) and the rotation;
  # ours the cross GEMM once plus the within-layer blocks (baselines come from those)
  fl_orig = 2 * 2.0 * T * (L * d) ** 2 + 2.0 * T * L * d * d
  fl_ours = M.step_flops(spec, T)
  row = dict(neurons_per_model=L * d, tokens=T, batch_tokens=B, compensated=bool(a.compensated),
             reps=a.reps, original_s=med(t_g), ours_s=med(t_o),
             ours_accumulate_s=med(acc_s), ours_finalize_s=med(fin_s),
             speedup=med(t_g) / med(t_o), flop_ratio=fl_orig / fl_ours,
             original_gflops=fl_orig / med(t_g) / 1e9,
             ours_accumulate_gflops=fl_ours / med(acc_s) / 1e9,
             ours_cold_s=t_cold, ours_cold_compile_incl_accumulate_s=acc_cold,
             ours_cold_finalize_s=fin_cold, speedup_cold=med(t_g) / t_cold,
             original_maxcorr_err=float(np.abs(g_max - exact_max).max()),
             ours_maxcorr_err=float(np.abs(o_max - exact_max).max()),
             original_baseline_err=float(np.abs(g_base - exact_base).max()),
             ours_baseline_err=float(np.abs(o_base - exact_base).max()))
  if a.legacy:
    row.update(legacy_original_s=med(t_l), legacy_speedup=med(t_l) / med(t_o),
               legacy_maxcorr_err=float(np.abs(l_max - exact_max).max()),
               legacy_baseline_err=float(np.abs(l_base - exact_base).max()))
  return [row]


def _step_memory(acc, xs, w):
  """XLA's own accounting of one compiled step, per device: (peak bytes, temp bytes)."""
  ma = acc._step.lower(acc.state, xs, w).compile().memory_analysis()
  peak = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
          + ma.temp_size_in_bytes)
  return peak, ma.temp_size_in_bytes


def bench_memory(a):
  import jax
  from ucore.corr import finalize as F
  from ucore.corr import moments as M
  L = 4
  d = a.neurons // L
  T = a.tokens
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  mesh = M.make_mesh(1, 1, jax.devices()[:1])
  spec = M.make_spec(["a", "b"], [range(L)] * 2, d, mesh, compensated=a.compensated)
  acc = M.Accumulator(spec, mesh)
  acts = _acts(T, L, d)
  act_bytes = sum(v.nbytes for v in acts)
  xs, w = acc.prepare(acts, np.ones(T, bool))
  peak, temp = _step_memory(acc, xs, w)
  acc.update(acts, np.ones(T, bool))
  F.pair_result(spec, mesh, acc.state, 0, 1, "fwd", top_k=5, baseline_kinds=("haar",))
  jax.block_until_ready(acc.state)
  rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  sb = M.state_bytes(spec)
  step_in = sum(x.nbytes for x in xs) + w.nbytes
  return [dict(neurons_per_model=L * d, tokens_per_step=T, compensated=a.compensated,
               state_mib=sb / 2 ** 20, step_inputs_mib=step_in / 2 ** 20,
               xla_step_peak_mib=peak / 2 ** 20, xla_step_temp_mib=temp / 2 ** 20,
               xla_step_peak_over_state_plus_inputs=peak / (sb + step_in),
               process_rss_growth_mib=(rss1 - rss0) / 2 ** 20,
               host_input_activations_mib=act_bytes / 2 ** 20)]


def bench_devices(a):
  import jax
  from ucore.corr import moments as M
  L = 4
  d = a.neurons // L
  T = a.tokens
  rows = []
  for n in (1, 2, 4, 8):
    if n > jax.device_count():
      continue
    for tok in sorted({1, 2 if n >= 2 else 1}):
      mesh = M.make_mesh(tok, n // tok, jax.devices()[:n])
      spec = M.make_spec(["a", "b", "c"], [range(L)] * 3, d, mesh)
      acc = M.Accumulator(spec, mesh)
      per_dev = {}
      for v in acc.state.values():
        for sh in v.addressable_shards:
          per_dev[sh.device] = per_dev.get(sh.device, 0) + sh.data.nbytes
      total = M.state_bytes(spec)
      xs, w = acc.prepare([np.zeros((T, L, d), np.float32)] * 3, np.ones(T, bool))
      peak, temp = _step_memory(acc, xs, w)
      rows.append(dict(devices=n, mesh=f"{tok}x{n // tok}", state_total_mib=total / 2 ** 20,
                       state_per_device_mib=max(per_dev.values()) / 2 ** 20,
                       ideal_mib=total / n / 2 ** 20,
                       xla_step_peak_per_device_mib=peak / 2 ** 20,
                       xla_step_temp_per_device_mib=temp / 2 ** 20))
      del acc
  return rows


def main():
  p = argparse.ArgumentParser()
  p.add_argument("what", choices=["accumulate", "original", "memory", "devices"])
  p.add_argument("--neurons", type=int, default=4096)
  p.add_argument("--tokens", type=int, default=None)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--compensated", type=int, default=1)
  p.add_argument("--batch", type=int, default=3072,
                 help="original: tokens per batch (the original's 24 × 512 = 12288, scaled)")
  p.add_argument("--legacy", type=int, default=0,
                 help="original: also time the pre-2026-11-25 re-implementation")
  a = p.parse_args()
  a.tokens = a.tokens or {"accumulate": 4096, "original": 18432, "memory": 4096,
                          "devices": 4096}[a.what]
  fn = {"accumulate": bench_accumulate, "original": bench_original, "memory": bench_memory,
        "devices": bench_devices}[a.what]
  for row in fn(a):
    print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v)
                      for k, v in row.items()}))


if __name__ == "__main__":
  main()
