"""Activation sources of the correlation driver (activations, not documents: documents are
ucore.data.sources).

An activation source has: name, fingerprint (identifies the weights), n_layer, d_mlp and
`acts(tokens, layer_ids, rows) -> float32 [b, ctx, len(layer_ids)*d_mlp]`, where `tokens` is
int32 [b, ctx] (numpy, or a device-sharded jax array) and `rows` the store row ids of
`tokens[:len(rows)]`; rows b > len(rows) are padding, masked out by the driver, whose values
do not matter. The driver treats every source alike.

`ModelSource` wraps ucore.models.hooked.load_model; the planted synthetic family (tests, dry runs)
is ucore.corr.synthetic. Its forward runs in `dtype` (config.forward_dtype, `forward_dtype`):
float32 (the default; parity with transformers' fp32 ≤ 1e-5) or bfloat16 (weights, residual
stream and MLP in bf16; LayerNorm, attention scores and softmax in float32; every activation
carries ~1e-2 relative rounding: BENCHMARKS.md "Forward parity per compute dtype"). The
activations it hands over are float32 either way. In the bf16 forward they are close to, but
not always, bf16 numbers (XLA may keep a fused op's result in float32 where it allows excess
precision: seen on CPU inside correlate), so a `bf16` capture still rounds them, and the
self-check's split reports it.
"""
from __future__ import annotations

import os

from ucore.jobs.errors import UserError

FORWARD_DTYPES = ("float32", "bfloat16")   # config.forward_dtype's values


def forward_dtype(name: str):
  """The jax dtype of a config.forward_dtype value."""
  import jax.numpy as jnp
  if name not in FORWARD_DTYPES:
    raise UserError(f"config.forward_dtype={name!r} is not one of {', '.join(FORWARD_DTYPES)}")
  return jnp.dtype(name)


def hook_suffix(hook: str) -> str:
  """'blocks.*.mlp.hook_post' -> 'mlp.hook_post'."""
  parts = hook.split(".")
  if len(parts) < 3 or parts[0] != "blocks" or parts[1] != "*":
    raise UserError(f"hook must look like 'blocks.*.mlp.hook_post', got {hook!r}.")
  return ".".join(parts[2:])


class ModelSource:
  def __init__(self, path: str, name: str, hook: str, dtype="float32"):
    """dtype: the forward's compute dtype (a FORWARD_DTYPES name or a jax dtype)."""
    dtype = forward_dtype(dtype if isinstance(dtype, str) else jnp_name(dtype))
    try:
      from ucore.models.hooked import load_model
    except ImportError as e:
      raise UserError(f"cannot load models: ucore.models.hooked is unavailable ({e}).")
    if not os.path.exists(path):
      raise UserError(f"model {name}: path {path!r} does not exist; convert it first "
                      "(python main.py convert ...).")
    self.model = load_model(path, dtype=dtype)
    self.forward_dtype = dtype.name   # the weights' fingerprint stays the model's (analyze
                                      # matches tables to weights by it); the run identity
                                      # carries the forward dtype beside it
    self.name, self.path, self.hook = name, path, hook_suffix(hook)
    self.fingerprint = str(self.model.fingerprint)
    self.n_layer = int(self.model.config.n_layer)
    self.d_mlp = int(self.model.config.d_mlp)

  def acts(self, tokens, layer_ids, rows=None):
    """The model's forward on `tokens`; `rows` is not needed (the tokens say it all)."""
    del rows
    return self.model.neuron_activations(tokens, layers=list(layer_ids), hook=self.hook)


def jnp_name(dtype) -> str:
  import jax.numpy as jnp
  return jnp.dtype(dtype).name
