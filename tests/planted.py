"""A tiny GPT-2 with hand-set neurons of every kind the analyses look for (planted ground truth).

Used by the tests (ground truth for the analyses). Vocabulary: the real
GPT-2 BPE (50257 ids), so the vocabulary labels are the real ones. Residual dimensions:
  0,1   unigram feature: only token UNIGRAM_TOKEN has (+a, -a) there
  2,3   BOS feature: only BOS/EOS (ucore.data.mask.GPT2_EOS_ID) has (+a, -a) there
  4,5   query direction written by the query-path neuron, read by W_Q of head (1, 0)
  6,7   position feature from wpe (+c·(p - P/2)/P, -...)
  8,9   a vocabulary cluster: tokens PREDICTED_TOKENS have (+2, -2) there
  10..D-2 random token features
  D-1   nothing in the embedding: the unembedding's null space (entropy neuron writes here)
Embedding rows are zero-mean, so after LayerNorm centering the null direction stays null.
Layer 0 attention is switched off (zero weights); of layer 0's neurons only the query neuron
writes to the stream. Planted neurons (layer, neuron) in PLANTED.
"""
from __future__ import annotations

import numpy as np

from ucore.data.mask import GPT2_EOS_ID as BOS   # GPT-2's <|endoftext|>
UNIGRAM_TOKEN = 3290          # " dog" in GPT-2's vocabulary
UNIGRAM_GROUP = (3290, 9703, 32942, 8532)   # " dog", "dog", "Dog", " Dog": kept out of the data
PREDICTED_TOKENS = tuple(range(30000, 30100))   # a cluster the prediction neuron predicts

PLANTED = {
    "unigram": (0, 3),        # fires only on UNIGRAM_TOKEN
    "query": (0, 5),          # writes the query direction of head (1, 0) -> attends to BOS
    "position": (0, 7),       # reads the position feature
    "entropy": (1, 9),        # large w_out in W_U's null space
    "prediction": (1, 11),    # w_out = +cluster direction (raises PREDICTED_TOKENS)
    "suppression": (1, 12),   # w_out = -cluster direction
}
HEAD = (1, 0)


def planted_config(n_positions: int = 32):
  from ucore.models.gpt2 import GPT2Config
  return GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=n_positions, d_mlp=32,
                    vocab_size=50257)


def planted_params(config, seed: int = 0):
  import jax
  from ucore.models.hooked import init_params
  rng = np.random.default_rng(seed)
  # init_params compiled as one program: run eagerly it compiles every op it meets (seconds
  # per process). The kernels, biases and LayerNorms kept below are bit-identical to the eager
  # init's; only the normal-drawn embeddings round differently (last bit), and wte and wpe are
  # replaced below.
  p = jax.tree_util.tree_map(lambda x: np.array(x, np.float32),
                             jax.jit(init_params, static_argnums=0)(config, seed))
  D, V, P, F = config.n_embd, config.vocab_size, config.n_positions, config.d_mlp
  dh = D // config.n_head
  a = 3.0
  wte = np.zeros((V, D), np.float32)
  wte[:, 10:D - 1] = rng.normal(0, 0.5, (V, D - 11))
  wte[:, 10:D - 1] -= wte[:, 10:D - 1].mean(1, keepdims=True)
  wte[list(PREDICTED_TOKENS), 8:10] = (2.0, -2.0)
  wte[UNIGRAM_TOKEN, 0:2] = (a, -a)
  wte[BOS, 2:4] = (a, -a)
  wte[BOS, 10:D - 1] = 0                  # v_BOS = 0: attending to BOS switches a head off
  p["wte"]["embedding"] = wte
  wpe = np.zeros((P, D), np.float32)
  ramp = 2.0 * (np.arange(P) - P / 2) / P
  wpe[:, 6], wpe[:, 7] = ramp, -ramp
  p["wpe"]["embedding"] = wpe
  # layer 0: no attention
  at0 = p["h_0"]["attn"]
  for k in ("c_attn", "c_proj"):
    at0[k]["kernel"][:] = 0
    at0[k]["bias"][:] = 0
  mlp0 = p["h_0"]["mlp"]
  mlp0["c_fc"]["bias"][:] = 0
  l, n = PLANTED["unigram"]
  mlp0["c_fc"]["kernel"][:, n] = 0
  mlp0["c_fc"]["kernel"][0, n] = 10.0
  mlp0["c_fc"]["bias"][n] = -1.0          # pre = -1 (post constant) on every other token
  l, n = PLANTED["query"]
  mlp0["c_fc"]["kernel"][:, n] = 0
  mlp0["c_fc"]["kernel"][10:D - 1, n] = rng.normal(0, 1.0, D - 11)
  mlp0["c_proj"]["kernel"][n, :] = 0
  mlp0["c_proj"]["kernel"][n, 4:6] = (4.0, -4.0)
  l, n = PLANTED["position"]
  mlp0["c_fc"]["kernel"][:, n] = 0
  mlp0["c_fc"]["kernel"][6, n] = 4.0
  # Only the query neuron writes from layer 0 (so the stream at BOS is exactly the BOS
  # embedding + position 0, and v_BOS of head (1, 0) is exactly 0).
  others = [i for i in range(F) if i != PLANTED["query"][1]]
  mlp0["c_proj"]["kernel"][others, :] = 0
  # layer 1, head 0: query reads dims 4,5, key reads the BOS feature.
  at1 = p["h_1"]["attn"]["c_attn"]
  q_cols = slice(0, dh)
  k_cols = slice(D, D + dh)
  at1["kernel"][:, q_cols] = 0
  at1["kernel"][:, k_cols] = 0
  at1["bias"][q_cols] = 0
  at1["bias"][k_cols] = 0
  at1["kernel"][0:10, 2 * D:2 * D + dh] = 0     # head (1, 0)'s value ignores planted dims
  at1["kernel"][4, 0], at1["kernel"][5, 0] = 3.0, -3.0
  at1["kernel"][2, D + 0], at1["kernel"][3, D + 0] = 3.0, -3.0
  mlp1 = p["h_1"]["mlp"]
  l, n = PLANTED["entropy"]
  mlp1["c_proj"]["kernel"][n, :] = 0
  mlp1["c_proj"]["kernel"][n, D - 1] = 20.0
  u = np.zeros(D, np.float32)
  u[8:10] = (1.0, -1.0)
  l, n = PLANTED["prediction"]
  mlp1["c_proj"]["kernel"][n, :] = 2.0 * u
  l, n = PLANTED["suppression"]
  mlp1["c_proj"]["kernel"][n, :] = -2.0 * u
  return p


def planted_model(n_positions: int = 32, seed: int = 0):
  from ucore.models.hooked import HookedTransformer
  config = planted_config(n_positions)
  return HookedTransformer(config, planted_params(config, seed))


def planted_tokens(rows: int, ctx: int, seed: int = 0, unigram_rate: float = 0.08):
  """int32 [rows, ctx]: BOS first, then ids from a fixed pool (no other member of the
  unigram token's normalized group), UNIGRAM_TOKEN at ~unigram_rate of positions."""
  rng = np.random.default_rng(seed)
  pool = np.setdiff1d(np.arange(200, 2200), np.array(UNIGRAM_GROUP + (BOS,)))
  pool = rng.choice(pool, 300, replace=False)
  # Zipf-like frequencies so frequent-unigram labels exist
  w = 1.0 / np.arange(1, len(pool) + 1)
  toks = rng.choice(pool, size=(rows, ctx), p=w / w.sum())
  toks[rng.random((rows, ctx)) < unigram_rate] = UNIGRAM_TOKEN
  toks[:, 0] = BOS
  return toks.astype(np.int32)
