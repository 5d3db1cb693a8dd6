"""Attention deactivation: the planted query-path neuron gets the top weight score; the
query-only path ablation matches an independent numpy recomputation of the head's attention
and moves BOS attention in proportion to the neuron's activation."""
import numpy as np
import pandas as pd
import pytest

from ucore.data import batches as batches_mod
from ucore.analyses import attention, common, planted
from ucore.errors import UserError


@pytest.fixture(scope="module")
def batches():
  return batches_mod.make_batches(planted.planted_tokens(8, 32, seed=2), 4)


def test_planted_query_neuron_has_top_score(model):
  s = attention.attention_scores(model, planted.BOS, n_random=500)
  assert len(s) == 32 * 2          # layer-0 neurons × layer-1 heads
  top = s["score"].idxmax()
  assert top == planted.PLANTED["query"] + planted.HEAD
  assert s.loc[top, "z"] > 4
  # independent computation of the score from processed weights
  from ucore.processing import process_transformer_lens
  cfg, p = process_transformer_lens(model.config, model.params)
  from ucore.model import HookedGPT2
  _, c = HookedGPT2(cfg, p).run_with_cache(np.array([[planted.BOS]]), ["blocks.1.attn.hook_k"])
  k = np.asarray(c["blocks.1.attn.hook_k"], np.float64)[0, 0, 0]          # head 0
  wq = np.asarray(p["h_1"]["attn"]["c_attn"]["kernel"], np.float64)[:, :cfg.d_head]
  w = np.asarray(p["h_0"]["mlp"]["c_proj"]["kernel"], np.float64)[5]
  ref = (w / np.linalg.norm(w)) @ wq @ k / np.sqrt(cfg.d_head)
  assert s.loc[top, "score"] == pytest.approx(ref, rel=1e-5)
  # random baseline is centered near zero relative to the planted score
  base = attention.random_baseline_scores(model, planted.BOS, 500)
  assert np.abs(base).max() < s.loc[top, "score"]


def _softmax_bos(q, k, pos):
  sc = q @ k[: pos + 1].T / np.sqrt(q.shape[-1])
  e = np.exp(sc - sc.max())
  return e[0] / e.sum()


def test_path_ablation_matches_numpy_and_moves_bos_attention(model, batches):
  pts = attention.path_ablation(model, batches, planted.PLANTED["query"], planted.HEAD, (8, 32))
  # independent recomputation for the first batch
  b = batches[0]
  p = model.params
  D, dh = model.config.n_embd, model.config.d_head
  _, c = model.run_with_cache(b.tokens, ["blocks.0.mlp.hook_post", "blocks.1.hook_resid_pre",
                                         "blocks.1.attn.hook_k"])
  act = np.asarray(c["blocks.0.mlp.hook_post"], np.float64)[..., 5]
  resid = np.asarray(c["blocks.1.hook_resid_pre"], np.float64) - act[..., None] * np.asarray(
      p["h_0"]["mlp"]["c_proj"]["kernel"], np.float64)[5]
  mu = resid.mean(-1, keepdims=True)
  x = (resid - mu) / np.sqrt(((resid - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
  x = x * np.asarray(p["h_1"]["ln_1"]["scale"]) + np.asarray(p["h_1"]["ln_1"]["bias"])
  q = x @ np.asarray(p["h_1"]["attn"]["c_attn"]["kernel"], np.float64)[:, :dh] + np.asarray(
      p["h_1"]["attn"]["c_attn"]["bias"], np.float64)[:dh]
  k = np.asarray(c["blocks.1.attn.hook_k"], np.float64)[:, :, 0]
  ref = [_softmax_bos(q[r, pos], k[r], pos) for r in range(b.tokens.shape[0])
         for pos in range(8, 32) if b.mask[r, pos]]
  np.testing.assert_allclose(pts["bos_ablated"].values[:len(ref)], ref, atol=1e-5)
  np.testing.assert_allclose(pts["activation"].values[:len(ref)],
                             [act[r, pos] for r in range(b.tokens.shape[0])
                              for pos in range(8, 32) if b.mask[r, pos]], rtol=1e-6)
  s = attention.path_summary(pts)
  assert s["mean_delta_bos"] > 0.1
  assert s["corr_activation_delta_bos"] > 0.5
  assert s["corr_delta_bos_delta_norm"] < -0.5      # v_BOS = 0: BOS attention silences the head
  # a neuron that does not write into the query dims barely moves BOS attention (its small
  # random w_out only changes the LayerNorm scale of the query input)
  other = attention.path_ablation(model, batches, planted.PLANTED["unigram"], planted.HEAD,
                                  (8, 32))
  assert other["delta_bos"].abs().max() < 1e-3 < pts["delta_bos"].abs().max() / 100


def test_runner_and_bad_input(model, batches, tmp_path):
  figs = attention.run(model, batches, str(tmp_path), planted.BOS, top_pairs=1,
                       positions=(8, 32), n_random=200)
  summ = pd.read_parquet(tmp_path / "path_ablation.parquet")
  assert summ.index[0] == planted.PLANTED["query"] + planted.HEAD
  assert len(pd.read_parquet(tmp_path / "attention_scores.parquet")) == 64
  assert len(figs) == 2
  heads = pd.read_parquet(tmp_path / "head_bos_norms.parquet")
  assert heads.loc[planted.HEAD, "norm_bos"] < 1e-6 < heads.loc[planted.HEAD, "norm_other_median"]
  assert heads.loc[planted.HEAD, "ratio"] > 1e3
  with pytest.raises(UserError, match="earlier layer"):
    attention.path_ablation(model, batches, (1, 0), (1, 0))
  with pytest.raises(UserError, match="empty"):
    attention.path_ablation(model, batches, (0, 5), (1, 0), positions=(64, 256))
