"""Random weights for a tiny model, drawn with numpy in the tree and distribution of
ucore.models.hooked.init_params (flax's init): run eagerly, that init compiles every op it
meets, seconds for the first model of a process; this traces nothing.

  kernels      truncated normal (at 2 std), std 1/sqrt(fan_in)   (flax lecun_normal)
  embeddings   normal, std 1/sqrt(d_model)                       (flax nn.Embed's default)
  LayerNorm    scale 1, bias 0; every other bias 0
"""
import numpy as np

# flax's truncated_normal rescales so that the truncated draw has the requested std
_TRUNCATED_STD = 0.87962566103423978


def _truncated_normal(rng, shape):
  x = rng.standard_normal(shape)
  bad = np.abs(x) > 2.0
  while bad.any():
    x[bad] = rng.standard_normal(int(bad.sum()))
    bad = np.abs(x) > 2.0
  return x / _TRUNCATED_STD


def random_params(config, seed: int = 0) -> dict:
  import jax
  from ucore.models.hooked import abstract_params
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    kind, shape = path[-1].key, leaf.shape
    if kind == "scale":
      x = np.ones(shape)
    elif kind == "bias":
      x = np.zeros(shape)
    elif kind == "embedding":
      x = rng.standard_normal(shape) / np.sqrt(shape[-1])
    elif kind == "kernel":
      x = _truncated_normal(rng, shape) / np.sqrt(shape[-2])
    else:
      raise ValueError(f"no init for {jax.tree_util.keystr(path)}")
    return np.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract_params(config))
