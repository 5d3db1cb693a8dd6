"""The dict run_with_cache returns, with TransformerLens's short keys as well:
cache["pattern", 0] == cache["blocks.0.attn.hook_pattern"], cache["resid_pre", -1],
cache["scale", 2, "ln1"], cache["scale"] (ln_final) — TransformerLens's utils.get_act_name."""
import jax

_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q",
            "value": "v", "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_ATTN = ("k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores")
_MLP = ("pre", "post", "mid", "pre_linear")


def act_name(name: str, layer=None, layer_type=None) -> str:
  """TransformerLens's get_act_name: ("pattern", 0) -> "blocks.0.attn.hook_pattern"."""
  name = _ALIASES.get(name, name)
  full = "" if layer is None else f"blocks.{layer}."
  if name in _ATTN:
    layer_type = "attn"
  elif name in _MLP:
    layer_type = "mlp"
  elif layer_type in ("a", "m"):
    layer_type = {"a": "attn", "m": "mlp"}[layer_type]
  elif layer_type in ("b", "block", "blocks"):
    layer_type = None
  full += f"{layer_type}." if layer_type else ""
  full += f"hook_{name}"
  if name in ("scale", "normalized") and layer is None:
    full = f"ln_final.{full}"
  return full


class ActivationCache(dict):
  """hook name -> array, also indexable by TransformerLens tuples (name, layer[, type])."""

  def __init__(self, data, n_layer: int):
    super().__init__(data)
    self.n_layer = n_layer

  def _key(self, key):
    if isinstance(key, tuple):
      if len(key) > 1 and key[1] is not None and key[1] < 0:
        key = (key[0], self.n_layer + key[1], *key[2:])
      return act_name(*key)
    if key not in self and isinstance(key, str) and not key.startswith(("blocks.", "hook_")):
      short = act_name(key)
      return short if short in self else key
    return key

  def __getitem__(self, key):
    return super().__getitem__(self._key(key))

  def __contains__(self, key):
    return super().__contains__(self._key(key) if isinstance(key, tuple) else key)


jax.tree_util.register_pytree_node(
    ActivationCache,
    lambda c: (tuple(dict.__getitem__(c, k) for k in sorted(c)), (tuple(sorted(c)), c.n_layer)),
    lambda aux, leaves: ActivationCache(dict(zip(aux[0], leaves)), aux[1]))
