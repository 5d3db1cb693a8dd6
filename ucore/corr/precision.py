"""Dot precision of the accumulate GEMMs: the one home of the names a config may use.

  highest    true float32 (jax.lax.Precision.HIGHEST: no TF32 / bf16 passes). The default.
  bf16_3x    XLA's BF16_BF16_F32_X3 algorithm: each float32 operand split into bf16 hi + lo,
             three bf16 products accumulated in float32 (~1e-5 relative error on correlations,
             ~3× the fp32 throughput of an H100's tensor cores)
  tf32       TF32_TF32_F32: one TF32 pass of the centred float32 operands (~2e-5). GPUs only.
  bf16       the activations are rounded once to bfloat16 when they enter the engine
             (`capture`); every moment of the run (means, M2, C, S) is then that of the rounded
             activations. The co-moment GEMMs are one bf16 pass (BF16_BF16_F32) over the raw,
             masked rounded activations: a product of two bf16 numbers (8-bit significands) is
             exact in float32, so the only arithmetic error is float32 accumulation.
  tf32_fp16  the same with the activations rounded to float16 and one TF32 pass: TF32 keeps
             fp16's 10-bit mantissa (and a wider exponent), so products of fp16 numbers are
             exact in float32 too. float16 overflows above 65504: such activations become inf
             and the self-check fails the run.

The rounded modes ("capture" modes) cannot run the GEMM on centred operands (a centred bf16
number is not a bf16 number), so a batch's co-moment is the raw GEMM minus n·μ_x·μ_yᵀ (the
batch means, hi + lo, from the float32 two-pass statistics). That cancels where |mean| ≫ spread,
costing ~eps32·(1 + μ²/σ²) — the same order as the capture rounding itself there (a bf16/fp16
spacing grows with |x|); the self-check reports both parts separately (capture vs arithmetic).

On CPU XLA has no TF32 dot and runs BF16_BF16_F32 as a float32 dot: there `tf32_fp16` uses
Precision.HIGHEST and `bf16` the float32 dot XLA picks. On the rounded operands both compute
exactly the same (exact) products as the GPU algorithms — only the float32 accumulation order
differs — so the capture modes run on every platform (`check` does not refuse them); their
speed is a GPU matter.

Only the co-moment GEMMs (C, S) use the chosen precision; batch means and variances (GEMVs,
cheap) stay at HIGHEST. Every run measures the resulting error against a float64 reference
on a sample of neuron pairs (ucore.corr.selfcheck).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ucore.jobs.errors import UserError

NAMES = ("highest", "bf16_3x", "tf32", "bf16", "tf32_fp16")

# the capture modes: the dtype the activations are rounded to when they enter the engine
CAPTURE = {"bf16": jnp.bfloat16, "tf32_fp16": jnp.float16}

_ALGORITHMS = {
    "bf16_3x": "BF16_BF16_F32_X3",
    "tf32": "TF32_TF32_F32",
    "bf16": "BF16_BF16_F32",
    "tf32_fp16": "TF32_TF32_F32",
}


def _known(name: str) -> str:
  if name not in NAMES:
    raise UserError(f"config.precision={name!r} is not one of {', '.join(NAMES)}")
  return name


def capture_dtype(name: str):
  """The dtype a capture mode rounds the activations to; None for the others."""
  return CAPTURE.get(_known(name))


def capture(x, name: str):
  """x (numpy or jax, any float dtype) rounded to the mode's capture dtype, as float32 (round
  to nearest even, fp16's subnormals and overflow to inf included); x as float32 for the modes
  that do not round. On device the rounding is explicit arithmetic (reduce_precision, and a
  fixed-point rounding for fp16's subnormals), never a convert pair: XLA may drop a
  f32 → bf16 → f32 convert chain where it allows excess precision (its GPU default)."""
  dt = capture_dtype(name)
  if isinstance(x, np.ndarray):
    x = x.astype(np.float32)
    if dt is None:
      return x
    with np.errstate(over="ignore"):   # beyond fp16's range: inf, as on device (docstring)
      return x.astype(dt).astype(np.float32)
  x = x.astype(jnp.float32)
  if dt is None:
    return x
  if dt == jnp.bfloat16:
    return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=7)
  # fp16: reduce_precision flushes fp16's subnormals (|x| < 2^-14) to zero; they are the
  # multiples of 2^-24, so round those on that grid (scaling by powers of 2 is exact)
  sub = jnp.round(x * 2.0 ** 24) * 2.0 ** -24
  return jnp.where(jnp.abs(x) < 2.0 ** -14, sub,
                   jax.lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10))


def _algorithm(name: str):
  return (jax.lax.Precision.HIGHEST if name == "highest"
          else getattr(jax.lax.DotAlgorithmPreset, _ALGORITHMS[name]))


def dot_precision(name: str, platform: str | None = None):
  """The `precision=` argument of jax.lax.dot_general for a precision name on `platform`
  (default: the default backend). A capture mode whose algorithm the platform lacks uses
  Precision.HIGHEST: on its rounded operands the same exact products (module docstring)."""
  _known(name)
  if name in CAPTURE and _supported(name, platform or jax.default_backend()):
    return jax.lax.Precision.HIGHEST
  return _algorithm(name)


@functools.lru_cache(maxsize=None)
def _supported(name: str, platform: str) -> str:
  """'' when a tiny dot with this precision's algorithm compiles on the platform, else XLA's
  reason."""
  dev = jax.devices(platform)[0]
  a = jax.device_put(jnp.ones((8, 8), jnp.float32), dev)
  try:
    jax.jit(lambda x: jax.lax.dot_general(x, x, (((1,), (0,)), ((), ())),
                                          precision=_algorithm(name),
                                          preferred_element_type=jnp.float32))(a).block_until_ready()
  except Exception as e:   # XLA's error type differs by platform and version
    return str(e).splitlines()[0][:200]
  return ""


def describe(name: str) -> str:
  return {"highest": "jax.lax.Precision.HIGHEST (true fp32: no TF32/bf16 passes)",
          "bf16_3x": "DotAlgorithmPreset.BF16_BF16_F32_X3 (3 bf16 passes, fp32 accumulate)",
          "tf32": "DotAlgorithmPreset.TF32_TF32_F32 (one TF32 pass)",
          "bf16": "activations rounded to bfloat16 at capture; DotAlgorithmPreset.BF16_BF16_F32 "
                  "(one bf16 pass over the raw rounded activations: exact products, fp32 "
                  "accumulate; batch co-moment = raw − n·μμᵀ)",
          "tf32_fp16": "activations rounded to float16 at capture; DotAlgorithmPreset."
                       "TF32_TF32_F32 (one TF32 pass over the raw rounded activations: exact "
                       "products, fp32 accumulate; batch co-moment = raw − n·μμᵀ; "
                       "Precision.HIGHEST where the platform has no TF32, e.g. CPU)"}[_known(name)]


def check(name: str, platform: str | None = None) -> str:
  """Validates `name` for the default (or given) platform; returns it. UserError when the
  platform has no such dot algorithm (e.g. tf32 on CPU); the capture modes run everywhere."""
  _known(name)
  platform = platform or jax.default_backend()
  why = "" if name in CAPTURE else _supported(name, platform)
  if why:
    raise UserError(f"config.precision={name!r} is not available on {platform} ({why}); "
                    f"use one of: " + ", ".join(
                        n for n in NAMES if n in CAPTURE or not _supported(n, platform)))
  return name
