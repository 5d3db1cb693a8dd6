"""Interventions as data: a mapping hook name -> Intervention, applied inside the forward pass.

An Intervention is a pytree whose `value` and `neurons` (the unit indices) are traced, so a
sweep over values, or over neuron sets of one size (an ablation's universal set and its matched
random sets), reuses one compiled function; only its kind is static. The constructors below
keep host inputs as numpy arrays (the jitted forward takes them as they are; jnp.asarray would
compile a conversion program per shape). Plain callables `x -> x'` are accepted too (compiled
per distinct function).
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("zero", "fix", "scale", "add", "patch")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Intervention:
  kind: str = dataclasses.field(metadata=dict(static=True))
  neurons: Optional[jax.Array] = None   # int32 unit indices; None = every unit
  value: Optional[jax.Array] = None

  def __call__(self, x):
    idx = (Ellipsis,) if self.neurons is None else (Ellipsis, self.neurons)
    if self.kind == "zero":
      return x.at[idx].set(0)
    if self.kind == "fix":
      return x.at[idx].set(jnp.asarray(self.value, x.dtype))
    if self.kind == "scale":
      return x.at[idx].multiply(jnp.asarray(self.value, x.dtype))
    if self.kind == "add":
      return x + jnp.asarray(self.value, x.dtype)
    if self.kind == "patch":
      return x.at[idx].set(jnp.asarray(self.value, x.dtype)[idx])
    raise ValueError(f"unknown intervention kind {self.kind!r}; one of {KINDS}")


def _neurons(neurons):
  return None if neurons is None else np.atleast_1d(np.asarray(neurons, np.int32))


def zero_neurons(neurons=None) -> Intervention:
  """Set the given last-axis units (all if None) to 0."""
  return Intervention("zero", _neurons(neurons), None)


def fix_neurons(neurons, value) -> Intervention:
  """Set the given units to `value` (scalar, or one value per unit) at every position."""
  return Intervention("fix", _neurons(neurons), np.asarray(value, np.float32))


def scale_neurons(neurons, factor) -> Intervention:
  return Intervention("scale", _neurons(neurons), np.asarray(factor, np.float32))


def add_vector(vector) -> Intervention:
  """Add a vector (broadcast over batch and position) to the activation."""
  return Intervention("add", None, np.asarray(vector, np.float32))


def patch_from(activation, neurons=None) -> Intervention:
  """Replace the activation (or the given units of it) by one recorded in another run."""
  return Intervention("patch", _neurons(neurons), jnp.asarray(activation))


# ---- TransformerLens-style hooks: fwd_hooks=[(name | name filter, fn(x, hook))] ----------
@dataclasses.dataclass(frozen=True)
class HookPoint:
  """What a TransformerLens hook function receives as `hook`: here only its `.name`."""
  name: str


@dataclasses.dataclass(frozen=True)
class TLHooks:
  """The fwd_hooks of one hook point, applied in order; a hook returning None leaves x as it
  is (TransformerLens semantics). Hashable by the functions' identity, so calling
  run_with_hooks again with the same functions reuses the compiled forward pass."""
  name: str
  fns: tuple

  def __call__(self, x):
    hook = HookPoint(self.name)
    for fn in self.fns:
      out = fn(x, hook)
      if out is not None:
        x = out
    return x


def from_fwd_hooks(fwd_hooks, hook_names) -> dict:
  """[(name or callable name filter, fn(x, hook))] -> {hook name: TLHooks}."""
  from ucore.jobs.errors import UserError
  per_name = {}
  for item in fwd_hooks:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and callable(item[1])):
      raise UserError("fwd_hooks must be a list of (hook name or name filter, fn(x, hook))")
    key, fn = item
    names = [n for n in hook_names if key(n)] if callable(key) else [key]
    for n in names:
      per_name.setdefault(n, []).append(fn)
  return {n: TLHooks(n, tuple(fns)) for n, fns in per_name.items()}
