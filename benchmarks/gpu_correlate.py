"""GPU table of issue 13, measured with this repository's own code (results: BENCHMARKS.md,
section "GPU (H100)").

  python -m benchmarks.gpu_correlate                       # on the GPU host, paper shapes
  python -m benchmarks.gpu_correlate --small               # tiny shapes; runs on CPU (tested)
  python -m benchmarks.gpu_correlate --models ckpt/s0 ckpt/s1 ... --token_store data/tok \
      --e2e_tokens 500000                                  # adds `main.py correlate` end to end

Rows (every ratio against a figure timed in the same process, same device):
  1. GEMM ceiling: the accumulate step's own GEMMs (cross block of one pair + the within-layer
     blocks of the rotated model) as bare XLA dots, at HIGHEST and at the dot algorithm presets
     BF16_BF16_F32_X3 and TF32_TF32_F32, plus XLA's DEFAULT; torch fp32 (TF32 off / on) when
     torch is importable (optional, never required).
  2. The accumulate step alone (`ucore.corr.moments.make_step`, 2 models × L × d, T tokens,
     compensated) in TFLOP/s and as a fraction of the same-precision ceiling; per precision
     where `make_spec` takes `precision=` (issue 13 item 1), else HIGHEST only.
  3. Precision: max |Δcorr| against float64 of an n × n correlation matrix over T tokens
     (batch-centred float32, GEMM at each preset), with that GEMM's TFLOP/s.
  4. The original algorithm re-implemented on the device (per pair of models; float16 capture;
     float32 GEMM per batch on the device at HIGHEST; float64 sums on the host; rotation
     baseline = a second pass over rotated activations) in tokens/s, and the engine's
     accumulate step on the same activations. Neither includes model forwards.
  5. Optional: `main.py correlate` end to end on --models (shells out; wall time, tokens/s).

No dependency beyond the project's (jax, numpy); presets the platform lacks print as
"unsupported" (CPU has no TF32; its bf16 presets run as float32).
"""
import argparse
import concurrent.futures as cf
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = ("highest", "bf16_3x", "tf32", "default")
_ENGINE_NAME = {"highest": "highest", "bf16_3x": "bf16_3x", "tf32": "tf32"}   # make_spec names


def _precision(name):
  import jax
  return {"highest": jax.lax.Precision.HIGHEST,
          "bf16_3x": jax.lax.DotAlgorithmPreset.BF16_BF16_F32_X3,
          "tf32": jax.lax.DotAlgorithmPreset.TF32_TF32_F32,
          "default": jax.lax.Precision.DEFAULT}[name]


def _timeit(fn, reps, warmup=1):
  """Median seconds of fn() (fn blocks until its result is ready)."""
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def _unsupported(e):
  return "unsupported: " + (str(e).strip().splitlines() or [type(e).__name__])[0][:120]


def _device_acts(key, T, L, d, dtype):
  """[T, L, d] GELU-like activations made on the device (values do not matter for speed)."""
  import jax
  import jax.numpy as jnp

  @jax.jit
  def make(k):
    x = jax.random.normal(k, (T, L, d), jnp.float32) - 1.0
    return jax.nn.gelu(x).astype(dtype)
  return make(key)


# ----------------------------------------------------------------------------- 1 + 2


def _bare_fn(L, d, prec):
  """The step's GEMMs alone: cross [L·d, T]·[L·d, T]ᵀ and per-layer [d, T]·[d, T]ᵀ."""
  import jax
  import jax.numpy as jnp

  @jax.jit
  def bare(xa, xb):       # feature-major [L, d, T]
    T = xa.shape[-1]
    c = jax.lax.dot_general(xa.reshape(L * d, T), xb.reshape(L * d, T),
                            (((1,), (1,)), ((), ())), precision=prec,
                            preferred_element_type=jnp.float32)
    s = jax.lax.dot_general(xb, xb, (((2,), (2,)), ((0,), (0,))), precision=prec,
                            preferred_element_type=jnp.float32)
    return c, s
  return bare


def bench_ceiling_and_step(a, rows):
  import jax
  import jax.numpy as jnp
  from ucore.corr import moments as M
  L, d, T = a.layers, a.d_mlp, a.tokens
  mesh = M.make_mesh(1, 1, jax.devices()[:1])
  has_prec = "precision" in inspect.signature(M.make_spec).parameters
  base_spec = M.make_spec(["a", "b"], [range(L)] * 2, d, mesh, compensated=True)
  flops = M.step_flops(base_spec, T)
  k0, k1 = jax.random.split(jax.random.PRNGKey(0))
  acts = [_device_acts(k0, T, L, d, jnp.float32), _device_acts(k1, T, L, d, jnp.float32)]
  xa, xb = (jnp.transpose(v, (1, 2, 0)) for v in acts)       # feature-major, as the step
  ceiling = {}
  for name in PRESETS:
    try:
      f = _bare_fn(L, d, _precision(name))
      t = _timeit(lambda: jax.block_until_ready(f(xa, xb)), a.reps)
      ceiling[name] = t
      rows.append(dict(section="1 ceiling", what=f"bare XLA dot, {name}",
                       tflops=flops / t / 1e12, seconds=t))
    except Exception as e:      # noqa: BLE001 — a platform without the algorithm
      rows.append(dict(section="1 ceiling", what=f"bare XLA dot, {name}", note=_unsupported(e)))
  del xa, xb
  _torch_ceiling(a, rows, L * d, T)
  for name in ("highest", "bf16_3x", "tf32"):
    if name != "highest" and not has_prec:
      rows.append(dict(section="2 step", what=f"accumulate step, {name}",
                       note="make_spec has no precision= yet (issue 13 item 1)"))
      continue
    try:
      kw = {"precision": _ENGINE_NAME[name]} if has_prec else {}
      spec = M.make_spec(["a", "b"], [range(L)] * 2, d, mesh, compensated=True, **kw)
      step = M.make_step(spec, mesh)
      acc = M.Accumulator(spec, mesh)
      xs, w = acc.prepare(acts, np.ones(T, bool))
      state = {"s": acc.state}
      del acc

      def run():
        state["s"] = step(state["s"], xs, w)
        jax.block_until_ready(state["s"]["n"])
      t = _timeit(run, a.reps)
      row = dict(section="2 step", what=f"accumulate step, {name}, 2 × {L * d} neurons, "
                 f"{T} tokens, compensated", tflops=flops / t / 1e12, seconds=t)
      if name in ceiling:
        row["fraction_of_ceiling"] = ceiling[name] / t
      rows.append(row)
      del state, xs, w
    except Exception as e:      # noqa: BLE001
      rows.append(dict(section="2 step", what=f"accumulate step, {name}", note=_unsupported(e)))


def _torch_ceiling(a, rows, N, T):
  try:
    import torch
  except ImportError:
    rows.append(dict(section="1 ceiling", what="torch fp32 GEMM", note="torch not installed"))
    return
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  g = torch.Generator(device=dev).manual_seed(0)
  x = torch.randn(N, T, device=dev, generator=g)
  y = torch.randn(N, T, device=dev, generator=g)
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  modes = [("fp32, TF32 off", False)] + ([("TF32", True)] if dev == "cuda" else [])
  old = torch.backends.cuda.matmul.allow_tf32
  try:
    for label, tf32 in modes:
      torch.backends.cuda.matmul.allow_tf32 = tf32

      def run():
        x @ y.T
        sync()
      t = _timeit(run, a.reps)
      rows.append(dict(section="1 ceiling", what=f"torch GEMM {N}×{N}×{T} ({dev}), {label}",
                       tflops=2.0 * N * N * T / t / 1e12, seconds=t))
  finally:
    torch.backends.cuda.matmul.allow_tf32 = old
    del x, y
    if dev == "cuda":
      torch.cuda.empty_cache()     # give the memory back before JAX's steps need it


# ----------------------------------------------------------------------------- 3


def bench_precision(a, rows):
  import jax
  import jax.numpy as jnp
  from benchmarks.corr_bench import _acts
  n, T = a.prec_n, a.prec_tokens
  xs = _acts(T, 1, n)                          # shared latent structure, GELU-like offsets
  x, y = (v.reshape(T, n) for v in xs)
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  xc, yc = x64 - x64.mean(0), y64 - y64.mean(0)
  exact = (xc.T @ yc) / np.outer(np.sqrt((xc * xc).sum(0)), np.sqrt((yc * yc).sum(0)))
  del x64, y64, xc, yc
  xd, yd = jnp.asarray(x), jnp.asarray(y)
  for name in PRESETS:
    prec = _precision(name)

    @jax.jit
    def corr(x, y):
      xc, yc = x - x.mean(0), y - y.mean(0)         # float32, batch-centred
      c = jax.lax.dot_general(xc, yc, (((0,), (0,)), ((), ())), precision=prec,
                              preferred_element_type=jnp.float32)
      return c * jax.lax.rsqrt((xc * xc).sum(0))[:, None] * jax.lax.rsqrt((yc * yc).sum(0))

    @jax.jit
    def gemm(x, y):
      return jax.lax.dot_general(x, y, (((0,), (0,)), ((), ())), precision=prec,
                                 preferred_element_type=jnp.float32)
    try:
      err = float(np.abs(np.asarray(corr(xd, yd), np.float64) - exact).max())
      t = _timeit(lambda: jax.block_until_ready(gemm(xd, yd)), a.reps)
      rows.append(dict(section="3 precision", what=f"{name}, {n}×{n}×{T}",
                       tflops=2.0 * n * n * T / t / 1e12, max_abs_corr_err=err))
    except Exception as e:      # noqa: BLE001
      rows.append(dict(section="3 precision", what=f"{name}, {n}×{n}×{T}",
                       note=_unsupported(e)))


# ----------------------------------------------------------------------------- 4


def _host_add(acc, blk, pool, chunks):
  """acc += blk (float64 += float32) in row chunks on the host's cores."""
  n = acc.shape[0]
  step = -(-n // chunks)
  list(pool.map(lambda s: np.add(acc[s:s + step], blk[s:s + step], out=acc[s:s + step]),
                range(0, n, step)))


def bench_original(a, rows):
  """The original algorithm (the paper's code: fp16 hooks, per-layer-pair fp32 einsum on the
  device, `.cpu()` into float64 sums, rotation = Gaussian unit rows applied in fp32 as a second
  pass) written as a careful JAX user would: one jitted fp32 GEMM for all layer pairs per batch
  (HIGHEST: torch's fp32 matmul default has TF32 off), one device→host copy, float64 adds on
  all host cores, next batch's GEMM dispatched before the host adds the current one."""
  import jax
  import jax.numpy as jnp
  from ucore.corr import baselines as BL
  from ucore.corr import moments as M
  L, d, T, B = a.layers, a.d_mlp, a.orig_tokens, a.orig_batch
  N = L * d
  H = jax.lax.Precision.HIGHEST
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  h16 = [_device_acts(k, T, L, d, jnp.float16) for k in keys]     # captured float16, on device
  rot = jnp.asarray(np.stack([BL.mixing_matrix("gaussian_rows", d, seed=0, draw=0, model=1,
                                               layer=l) for l in range(L)]), jnp.float16)

  def batch_moments(xa16, xb16, r16, rotate):
    xa, xb = xa16.astype(jnp.float32), xb16.astype(jnp.float32)     # [B, L, d]
    if rotate:
      xb = jnp.einsum("tlp,lkp->tlk", xb, r16.astype(jnp.float32), precision=H)
    xa, xb = xa.reshape(-1, N), xb.reshape(-1, N)
    sxy = jax.lax.dot_general(xa, xb, (((0,), (0,)), ((), ())), precision=H,
                              preferred_element_type=jnp.float32)
    return sxy, xa.sum(0), (xa * xa).sum(0), xb.sum(0), (xb * xb).sum(0)
  batch_moments = jax.jit(batch_moments, static_argnums=(3,))

  threads = os.cpu_count() or 1
  pool = cf.ThreadPoolExecutor(threads)

  def one_pass(rotate):
    sxy = np.zeros((N, N))
    s = [np.zeros(N) for _ in range(4)]
    starts = list(range(0, T, B))
    nxt = batch_moments(h16[0][0:B], h16[1][0:B], rot, rotate)
    for i, _ in enumerate(starts):
      cur = nxt
      if i + 1 < len(starts):
        t0 = starts[i + 1]
        nxt = batch_moments(h16[0][t0:t0 + B], h16[1][t0:t0 + B], rot, rotate)
      blk = np.asarray(cur[0])
      _host_add(sxy, blk, pool, threads)
      for acc, v in zip(s, cur[1:]):
        acc += np.asarray(v, np.float64)
    return sxy, s

  def finish(sxy, s, n):
    sx, sxx, sy, syy = s
    vx = np.sqrt(np.maximum(sxx / n - (sx / n) ** 2, 0))
    vy = np.sqrt(np.maximum(syy / n - (sy / n) ** 2, 0))
    step = -(-N // threads)

    def rows_max(r0):
      blk = sxy[r0:r0 + step] / n - np.outer(sx[r0:r0 + step] / n, sy / n)
      with np.errstate(all="ignore"):
        blk /= np.outer(vx[r0:r0 + step], vy)
      return np.nan_to_num(blk).max(1)
    return np.concatenate(list(pool.map(rows_max, range(0, N, step))))

  out = {}
  for label, rotate in (("no baseline", False), ("rotation baseline", True)):
    one_pass(rotate)                                  # warm-up: compiles, faults in memory
    t = time.perf_counter()
    sxy, s = one_pass(rotate)
    t_pass = time.perf_counter() - t
    t = time.perf_counter()
    finish(sxy, s, T)
    t_fin = time.perf_counter() - t
    del sxy
    out[label] = T / t_pass
    rows.append(dict(section="4 original", what=f"original algorithm, {label}, 2 × {N} neurons, "
                     f"batches of {B}", tokens_per_s=T / t_pass, finalize_s=t_fin))
  fam = a.family_pairs / out["no baseline"] + a.family_pairs / out["rotation baseline"]
  rows.append(dict(section="4 original", what=f"original, {a.family_pairs} pairs × (plain + "
                   "rotation) runs, per corpus token", tokens_per_s=1.0 / fam))
  pool.shutdown()
  # the engine's accumulate step on the same activations (one pass; baselines come from
  # the moments in finalize, not timed here)
  mesh = M.make_mesh(1, 1, jax.devices()[:1])
  spec = M.make_spec(["a", "b"], [range(L)] * 2, d, mesh, compensated=True)
  acc = M.Accumulator(spec, mesh)
  Bs = min(B, a.tokens)

  def ours():
    for t0 in range(0, T, Bs):
      acc.update([v[t0:t0 + Bs] for v in h16], np.ones(min(Bs, T - t0), bool))
    jax.block_until_ready(acc.state["n"])
  t = _timeit(ours, 1)
  rows.append(dict(section="4 original", what=f"this engine's accumulate step, same activations, "
                   f"batches of {Bs}, highest, compensated", tokens_per_s=T / t,
                   speedup_vs_original_no_baseline=T / t / out["no baseline"]))


# ----------------------------------------------------------------------------- 5


def bench_end_to_end(a, rows):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as tmp:
    cfg = os.path.join(tmp, "corr_bench_cfg.py")
    with open(cfg, "w") as f:
      f.write("from ucore.jobs import config_files\n\n\ndef get_config():\n"
              f"  c = config_files.load({a.e2e_config!r})\n"
              f"  c.models = {list(a.models)!r}\n"
              f"  c.model_names = {[os.path.basename(m.rstrip('/')) for m in a.models]!r}\n"
              f"  c.token_store = {a.token_store!r}\n"
              f"  c.max_tokens = {int(a.e2e_tokens)}\n"
              "  return c\n")
    cmd = [sys.executable, "main.py", "correlate", f"--config={cfg}",
           f"--workdir={os.path.join(tmp, 'run')}"]
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
  tail = (p.stdout + p.stderr).strip().splitlines()[-6:]
  print("\n".join("  e2e> " + l for l in tail))
  rows.append(dict(section="5 end to end", what=f"main.py correlate, {len(a.models)} models, "
                   f"{a.e2e_tokens} tokens ({a.e2e_config})", rc=p.returncode, wall_s=wall,
                   tokens_per_s=a.e2e_tokens / wall if p.returncode == 0 else float("nan")))


# ----------------------------------------------------------------------------- main


def _fmt(v):
  if isinstance(v, float):
    return f"{v:.3g}" if math.isfinite(v) else str(v)
  return str(v)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run)")
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--d_mlp", type=int, default=3072)
  p.add_argument("--tokens", type=int, default=4096, help="tokens per accumulate step")
  p.add_argument("--prec_n", type=int, default=3072)
  p.add_argument("--prec_tokens", type=int, default=16384)
  p.add_argument("--orig_tokens", type=int, default=24576)
  p.add_argument("--orig_batch", type=int, default=12288, help="the original's 24 × 512")
  p.add_argument("--family_pairs", type=int, default=4, help="5 seeds = 4 reference pairs")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--sections", default="1,2,3,4,5")
  p.add_argument("--models", nargs="*", default=[], help="converted checkpoints for row 5")
  p.add_argument("--token_store", default="")
  p.add_argument("--e2e_tokens", type=int, default=500_000)
  p.add_argument("--e2e_config", default="correlate_gpt2_small")
  p.add_argument("--json", default="", help="also write the rows to this file")
  a = p.parse_args(argv)
  if a.small:
    a.layers, a.d_mlp, a.tokens = 2, 64, 256
    a.prec_n, a.prec_tokens = 128, 1024
    a.orig_tokens, a.orig_batch = 512, 256
    a.reps = 1
  import jax
  dev = jax.devices()[0]
  print(f"# gpu_correlate on {dev.platform}: {getattr(dev, 'device_kind', '')} "
        f"(jax {jax.__version__}, {jax.device_count()} device(s), {os.cpu_count()} host cores)")
  sections = set(a.sections.split(","))
  rows = []
  print("| section | what | figures |")
  print("|---|---|---|", flush=True)
  shown = [0]

  def show():   # rows as each section finishes: a time-out keeps what was measured
    for r in rows[shown[0]:]:
      figs = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k not in ("section", "what"))
      print(f"| {r['section']} | {r['what']} | {figs} |", flush=True)
    shown[0] = len(rows)
  if sections & {"1", "2"}:
    bench_ceiling_and_step(a, rows)
    show()
  if "3" in sections:
    bench_precision(a, rows)
    show()
  if "4" in sections:
    bench_original(a, rows)
    show()
  if "5" in sections and a.models:
    bench_end_to_end(a, rows)
    show()
  if a.json:
    with open(a.json, "w") as f:
      json.dump(dict(device=str(dev), platform=dev.platform, rows=rows), f, indent=1)
  return rows


if __name__ == "__main__":
  main()
