"""The HF GPT-2 -> Flax key map: one declarative table, plus the keys deliberately ignored.

HF's Conv1D stores weights [in, out] — exactly a Flax Dense kernel — so every entry is a plain
copy. `{l}` stands for the layer index. Keys may carry a `transformer.` prefix
(GPT2LMHeadModel) or not (GPT2Model).
"""
import re

NAME = "GPT-2"
PREFIX = "transformer."

# (HF key, Flax param path, HF shape in config terms, value transform) — '/'-separated path
# into the params tree; shapes name config attributes (D = n_embd, F = d_mlp, V = vocab_size,
# P = n_positions); transforms are in converters.convert.TRANSFORMS.
LAYER_KEYS = (
    ("h.{l}.ln_1.weight", "h_{l}/ln_1/scale", "D", "copy"),
    ("h.{l}.ln_1.bias", "h_{l}/ln_1/bias", "D", "copy"),
    ("h.{l}.attn.c_attn.weight", "h_{l}/attn/c_attn/kernel", "D,3D", "copy"),
    ("h.{l}.attn.c_attn.bias", "h_{l}/attn/c_attn/bias", "3D", "copy"),
    ("h.{l}.attn.c_proj.weight", "h_{l}/attn/c_proj/kernel", "D,D", "copy"),
    ("h.{l}.attn.c_proj.bias", "h_{l}/attn/c_proj/bias", "D", "copy"),
    ("h.{l}.ln_2.weight", "h_{l}/ln_2/scale", "D", "copy"),
    ("h.{l}.ln_2.bias", "h_{l}/ln_2/bias", "D", "copy"),
    ("h.{l}.mlp.c_fc.weight", "h_{l}/mlp/c_fc/kernel", "D,F", "copy"),
    ("h.{l}.mlp.c_fc.bias", "h_{l}/mlp/c_fc/bias", "F", "copy"),
    ("h.{l}.mlp.c_proj.weight", "h_{l}/mlp/c_proj/kernel", "F,D", "copy"),
    ("h.{l}.mlp.c_proj.bias", "h_{l}/mlp/c_proj/bias", "D", "copy"),
)
GLOBAL_KEYS = (
    ("wte.weight", "wte/embedding", "V,D", "copy"),
    ("wpe.weight", "wpe/embedding", "P,D", "copy"),
    ("ln_f.weight", "ln_f/scale", "D", "copy"),
    ("ln_f.bias", "ln_f/bias", "D", "copy"),
)
# Output head (HF [vocab, d_model]; Flax Dense wants [in, out]); only read when untied, and
# checked equal to the embedding when tied. Accepted spellings, first found wins.
LM_HEAD_KEYS = ("lm_head.weight",)
EMBEDDING_PATH = "wte/embedding"

# Causal-mask buffers saved by older transformers versions: not weights.
IGNORED_PATTERNS = (re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$"),)


def table(config):
  """All (HF key without prefix, Flax path, shape spec, transform) rows for `config`."""
  rows = list(GLOBAL_KEYS)
  for l in range(config.n_layer):
    rows += [(k.format(l=l), v.format(l=l), s, t) for k, v, s, t in LAYER_KEYS]
  return rows
