"""TransformerLens weight processing: fold LayerNorm, center writing weights, center unembed,
fold value biases — TransformerLens's defaults (`from_pretrained`), for GPT-2 and GPT-NeoX alike
(both share one parameter layout, ucore/models/transformer.py).

The paper's weight statistics (w_in/w_out norms, input bias, cos with W_U, ...) are taken on
these processed weights. Every step leaves log-probabilities unchanged: folded LayerNorm
scale/bias move into the weights that read the normalized stream; weights that write to the
residual stream are centered because every reader subtracts the mean anyway; W_U is centered
across the vocabulary, which shifts all logits of a position by one constant. The value bias
b_V moves into the attention output bias (b_O += Σ_h b_V^h · W_O^h) because every attention
pattern row sums to 1; hook_v / hook_z then hold no bias, as in TransformerLens.
A model without attention biases (NeoX attention_bias=false) gets them: folding the LayerNorm
bias creates them. Arithmetic in float64, result float32.
"""
import dataclasses

import numpy as np

from ucore.models.config import LMConfig


def _np(tree):
  if isinstance(tree, dict):
    return {k: _np(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)


def _fold_ln_into(ln: dict, dense: dict):
  """LN(x) @ K + c with LN's (scale w, bias b) -> normalized(x) @ K' + c', K' centered."""
  w, b = ln["scale"], ln["bias"]
  kernel = w[:, None] * dense["kernel"]
  bias = dense.get("bias", 0.0) + b @ dense["kernel"]
  kernel = kernel - kernel.mean(axis=0, keepdims=True)   # input is zero-mean: free to center
  ln["scale"], ln["bias"] = np.ones_like(w), np.zeros_like(b)
  return kernel, bias


def _center_out(dense: dict):
  dense["kernel"] = dense["kernel"] - dense["kernel"].mean(axis=1, keepdims=True)
  dense["bias"] = dense["bias"] - dense["bias"].mean()


def _fold_value_biases(attn: dict, d_model: int):
  """b_O += b_V @ W_O, b_V = 0 (c_attn bias is [q | k | v], c_proj kernel [H*d_head, D])."""
  b_v = attn["c_attn"]["bias"][2 * d_model:]
  attn["c_proj"]["bias"] = attn["c_proj"]["bias"] + b_v @ attn["c_proj"]["kernel"]
  attn["c_attn"]["bias"] = np.concatenate([attn["c_attn"]["bias"][:2 * d_model],
                                           np.zeros_like(b_v)])


# What `process_transformer_lens` applies by default, as recorded in a converted checkpoint's
# manifest ("processing_steps"); a checkpoint lacking a step is processed again in memory.
TRANSFORMER_LENS_STEPS = ("fold_ln", "center_writing_weights", "center_unembed",
                          "fold_value_biases")


def process_transformer_lens(config: LMConfig, params, fold_value_biases: bool = True
                             ) -> tuple[LMConfig, dict]:
  """Returns (config with an untied, biased unembedding [and attention biases], processed
  float32 params)."""
  p = _np(params)
  d = config.n_embd
  for l in range(config.n_layer):
    block = p[f"h_{l}"]
    block["attn"]["c_proj"].setdefault("bias", np.zeros(d))   # attention_bias=false
    block["attn"]["c_attn"]["kernel"], block["attn"]["c_attn"]["bias"] = _fold_ln_into(
        block["ln_1"], block["attn"]["c_attn"])
    block["mlp"]["c_fc"]["kernel"], block["mlp"]["c_fc"]["bias"] = _fold_ln_into(
        block["ln_2"], block["mlp"]["c_fc"])
    _center_out(block["attn"]["c_proj"])
    _center_out(block["mlp"]["c_proj"])
    if fold_value_biases:
      _fold_value_biases(block["attn"], d)
  unembed = p["wte"]["embedding"].T if config.tie_word_embeddings else p["lm_head"]["kernel"]
  unembed_bias = p.get("lm_head", {}).get("bias", np.zeros(config.vocab_size))
  kernel, bias = _fold_ln_into(p["ln_f"], {"kernel": unembed, "bias": unembed_bias})
  kernel = kernel - kernel.mean(axis=1, keepdims=True)
  bias = bias - bias.mean()
  p["lm_head"] = {"kernel": kernel, "bias": bias}
  for name in ("wte", "wpe"):
    if name in p:   # rotary models have no wpe
      emb = p[name]["embedding"]
      p[name]["embedding"] = emb - emb.mean(axis=1, keepdims=True)
  changes = dict(tie_word_embeddings=False, unembed_bias=True)
  if "attention_bias" in {f.name for f in dataclasses.fields(config)}:
    changes["attention_bias"] = True
  new_config = dataclasses.replace(config, **changes)
  return new_config, _f32(p)


def _f32(tree):
  if isinstance(tree, dict):
    return {k: _f32(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)
