"""Dot precision of the accumulate GEMMs: the one home of the names a config may use.

  highest   true float32 (jax.lax.Precision.HIGHEST: no TF32 / bf16 passes). The default.
  bf16_3x   XLA's BF16_BF16_F32_X3 algorithm: each float32 operand split into bf16 hi + lo,
            three bf16 products accumulated in float32 (~1e-5 relative error on correlations,
            ~3× the fp32 throughput of an H100's tensor cores)
  tf32      TF32_TF32_F32: one TF32 pass (fastest, ~2e-5). GPUs only.

Only the co-moment GEMMs (C, S) use the chosen precision; batch means and variances (GEMVs,
cheap) stay at HIGHEST. Every run measures the resulting error against a float64 reference
on a sample of neuron pairs (ucore.corr.selfcheck).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ucore.jobs.errors import UserError

NAMES = ("highest", "bf16_3x", "tf32")


def dot_precision(name: str):
  """The `precision=` argument of jax.lax.dot_general for a precision name."""
  if name == "highest":
    return jax.lax.Precision.HIGHEST
  if name == "bf16_3x":
    return jax.lax.DotAlgorithmPreset.BF16_BF16_F32_X3
  if name == "tf32":
    return jax.lax.DotAlgorithmPreset.TF32_TF32_F32
  raise UserError(f"config.precision={name!r} is not one of {', '.join(NAMES)}")


@functools.lru_cache(maxsize=None)
def _supported(name: str, platform: str) -> str:
  """'' when a tiny dot with this precision compiles on the platform, else XLA's reason."""
  dev = jax.devices(platform)[0]
  a = jax.device_put(jnp.ones((8, 8), jnp.float32), dev)
  try:
    jax.jit(lambda x: jax.lax.dot_general(x, x, (((1,), (0,)), ((), ())),
                                          precision=dot_precision(name),
                                          preferred_element_type=jnp.float32))(a).block_until_ready()
  except Exception as e:   # XLA's error type differs by platform and version
    return str(e).splitlines()[0][:200]
  return ""


def describe(name: str) -> str:
  return {"highest": "jax.lax.Precision.HIGHEST (true fp32: no TF32/bf16 passes)",
          "bf16_3x": "DotAlgorithmPreset.BF16_BF16_F32_X3 (3 bf16 passes, fp32 accumulate)",
          "tf32": "DotAlgorithmPreset.TF32_TF32_F32 (one TF32 pass)"}[name]


def check(name: str, platform: str | None = None) -> str:
  """Validates `name` for the default (or given) platform; returns it. UserError when the
  platform has no such dot algorithm (e.g. tf32 on CPU)."""
  dot_precision(name)
  platform = platform or jax.default_backend()
  why = _supported(name, platform)
  if why:
    raise UserError(f"config.precision={name!r} is not available on {platform} ({why}); "
                    f"use one of: " + ", ".join(n for n in NAMES if not _supported(n, platform)))
  return name
