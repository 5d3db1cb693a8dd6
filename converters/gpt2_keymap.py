"""The HF GPT-2 -> Flax key map: one declarative table, plus the keys deliberately ignored.

HF's Conv1D stores weights [in, out] — exactly a Flax Dense kernel — so every entry is a plain
copy. `{l}` stands for the layer index. Keys may carry a `transformer.` prefix
(GPT2LMHeadModel) or not (GPT2Model).
"""
import re

# (HF key, Flax param path) — '/'-separated path into the params tree.
LAYER_KEYS = (
    ("h.{l}.ln_1.weight", "h_{l}/ln_1/scale"),
    ("h.{l}.ln_1.bias", "h_{l}/ln_1/bias"),
    ("h.{l}.attn.c_attn.weight", "h_{l}/attn/c_attn/kernel"),
    ("h.{l}.attn.c_attn.bias", "h_{l}/attn/c_attn/bias"),
    ("h.{l}.attn.c_proj.weight", "h_{l}/attn/c_proj/kernel"),
    ("h.{l}.attn.c_proj.bias", "h_{l}/attn/c_proj/bias"),
    ("h.{l}.ln_2.weight", "h_{l}/ln_2/scale"),
    ("h.{l}.ln_2.bias", "h_{l}/ln_2/bias"),
    ("h.{l}.mlp.c_fc.weight", "h_{l}/mlp/c_fc/kernel"),
    ("h.{l}.mlp.c_fc.bias", "h_{l}/mlp/c_fc/bias"),
    ("h.{l}.mlp.c_proj.weight", "h_{l}/mlp/c_proj/kernel"),
    ("h.{l}.mlp.c_proj.bias", "h_{l}/mlp/c_proj/bias"),
)
GLOBAL_KEYS = (
    ("wte.weight", "wte/embedding"),
    ("wpe.weight", "wpe/embedding"),
    ("ln_f.weight", "ln_f/scale"),
    ("ln_f.bias", "ln_f/bias"),
)
# Untied output head: HF stores lm_head.weight [vocab, d_model]; Flax Dense wants [in, out].
LM_HEAD_KEY = "lm_head.weight"
LM_HEAD_PATH = "lm_head/kernel"

# Causal-mask buffers saved by older transformers versions: not weights.
IGNORED_PATTERNS = (re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$"),)


def strip_prefix(key: str) -> str:
  return key[len("transformer."):] if key.startswith("transformer.") else key


def is_ignored(key: str) -> bool:
  return any(p.match(key) for p in IGNORED_PATTERNS)


def table(n_layer: int):
  """All (HF key without prefix, Flax path) pairs for a model with n_layer blocks."""
  rows = list(GLOBAL_KEYS)
  for l in range(n_layer):
    rows += [(k.format(l=l), v.format(l=l)) for k, v in LAYER_KEYS]
  return rows
