"""The HF GPT-NeoX (Pythia) -> Flax key map: one declarative table, plus the keys ignored.

The Flax tree uses the same names as GPT-2 (ucore/models/transformer.py), so torch Linear weights
[out, in] are transposed, and query_key_value — packed per head as [head, (q, k, v), d_head]
along its output axis — is reordered into GPT-2's [q | k | v] head-major packing.
Keys may carry a `gpt_neox.` prefix (GPTNeoXForCausalLM) or not (GPTNeoXModel).
"""
import re

NAME = "GPT-NeoX"
PREFIX = "gpt_neox."

# (HF key, Flax param path, HF shape in config terms, value transform); see gpt2_keymap.
LAYER_KEYS = (
    ("layers.{l}.input_layernorm.weight", "h_{l}/ln_1/scale", "D", "copy"),
    ("layers.{l}.input_layernorm.bias", "h_{l}/ln_1/bias", "D", "copy"),
    ("layers.{l}.attention.query_key_value.weight", "h_{l}/attn/c_attn/kernel", "3D,D",
     "qkv_kernel"),
    ("layers.{l}.attention.dense.weight", "h_{l}/attn/c_proj/kernel", "D,D", "transpose"),
    ("layers.{l}.post_attention_layernorm.weight", "h_{l}/ln_2/scale", "D", "copy"),
    ("layers.{l}.post_attention_layernorm.bias", "h_{l}/ln_2/bias", "D", "copy"),
    ("layers.{l}.mlp.dense_h_to_4h.weight", "h_{l}/mlp/c_fc/kernel", "F,D", "transpose"),
    ("layers.{l}.mlp.dense_h_to_4h.bias", "h_{l}/mlp/c_fc/bias", "F", "copy"),
    ("layers.{l}.mlp.dense_4h_to_h.weight", "h_{l}/mlp/c_proj/kernel", "D,F", "transpose"),
    ("layers.{l}.mlp.dense_4h_to_h.bias", "h_{l}/mlp/c_proj/bias", "D", "copy"),
)
ATTENTION_BIAS_KEYS = (   # present iff config.attention_bias
    ("layers.{l}.attention.query_key_value.bias", "h_{l}/attn/c_attn/bias", "3D", "qkv_bias"),
    ("layers.{l}.attention.dense.bias", "h_{l}/attn/c_proj/bias", "D", "copy"),
)
GLOBAL_KEYS = (
    ("embed_in.weight", "wte/embedding", "V,D", "copy"),
    ("final_layer_norm.weight", "ln_f/scale", "D", "copy"),
    ("final_layer_norm.bias", "ln_f/bias", "D", "copy"),
)
# Pythia's files say embed_out; transformers 5 saves lm_head.
LM_HEAD_KEYS = ("embed_out.weight", "lm_head.weight")
EMBEDDING_PATH = "wte/embedding"

# Buffers older transformers saved into pytorch_model.bin: causal masks and rotary
# frequencies (recomputed from the config). Not weights.
IGNORED_PATTERNS = (
    re.compile(r"^(gpt_neox\.)?layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$"),
    re.compile(r"^(gpt_neox\.)?rotary_emb\.inv_freq$"),
)


def table(config):
  """All (HF key without prefix, Flax path, shape spec, transform) rows for `config`."""
  layer_keys = LAYER_KEYS + (ATTENTION_BIAS_KEYS if config.attention_bias else ())
  rows = list(GLOBAL_KEYS)
  for l in range(config.n_layer):
    rows += [(k.format(l=l), v.format(l=l), s, t) for k, v, s, t in layer_keys]
  return rows
