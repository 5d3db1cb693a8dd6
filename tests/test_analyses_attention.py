"""Attention deactivation: the planted query-path neuron gets the top weight score; the
query-only path ablation matches an independent numpy recomputation of the head's attention
and moves BOS attention in proportion to the neuron's activation."""
import numpy as np
import pandas as pd
import pytest

from ucore.data import batches as batches_mod
from tests import planted
from ucore.analyses import attention, common
from ucore.jobs.errors import UserError


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
  from ucore.models.processing import process_transformer_lens
  cfg, p = process_transformer_lens(model.config, model.params)
  from ucore.models.hooked import HookedTransformer
  # every layer's hook_k, as attention.bos_keys asks: the program it compiled (cache hit)
  _, c = HookedTransformer(cfg, p).run_with_cache(np.array([[planted.BOS]], np.int32),
                                                  ["blocks.0.attn.hook_k", "blocks.1.attn.hook_k"])
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


def test_scores_rank_by_paper_score_and_keep_the_model_score(model):
  """The paper's score has no 1/(layer+1); an inverse-layer-scaled model keeps it beside."""
  import dataclasses
  from ucore.models.hooked import HookedTransformer
  scaled = HookedTransformer(dataclasses.replace(model.config, scale_attn_by_inverse_layer_idx=True),
                      model.params)
  plain = attention.attention_scores(model, planted.BOS, n_random=50)
  s = attention.attention_scores(scaled, planted.BOS, n_random=50)
  np.testing.assert_allclose(plain["score"], plain["score_model"])
  L = s.index.get_level_values("head_layer").values
  np.testing.assert_allclose(s["score_model"].values, s["score"].values / (L + 1), rtol=1e-10)


def test_relative_delta_norm_and_bos_value_norms_by_hand(model, batches):
  """Δnorm = (‖o‖ − ‖o_abl‖)/‖o‖; BOS = position 0 only; ratio uses the mean over others."""
  np.testing.assert_allclose(attention.relative_norm_change([2.0, 4.0, 0.0], [1.0, 5.0, 1.0]),
                             [0.5, -0.25, np.nan])
  pts = attention.path_ablation(model, batches, planted.PLANTED["query"], planted.HEAD, (8, 32))
  on = pts["norm_clean"].values > 0      # the planted head is fully off at some positions
  assert on.sum() > 10 and np.isnan(pts["delta_norm"].values[~on]).all()
  np.testing.assert_allclose(pts["delta_norm"][on], (pts["norm_clean"][on] -
                             pts["norm_ablated"][on]) / pts["norm_clean"][on], rtol=1e-12)
  np.testing.assert_allclose(pts["delta_norm_abs"], pts["norm_clean"] - pts["norm_ablated"])
  # rows with a mid-row EOS (= BOS id): those positions are ordinary tokens, not BOS
  toks = planted.planted_tokens(4, 32, seed=9)
  toks[:, 10] = planted.BOS
  b = batches_mod.make_batches(toks, 4, exclude_ids=())   # count the mid-row EOS as a token
  heads = attention.bos_value_norms(model, b, planted.BOS)
  names = [f"blocks.{l}.attn.hook_v" for l in range(2)]
  _, c = model.run_with_cache(toks, names)
  dh, D = model.config.d_head, model.config.n_embd
  for (l, h), row in heads.iterrows():
    w_o = np.asarray(model.params[f"h_{l}"]["attn"]["c_proj"]["kernel"], np.float64)
    o = np.asarray(c[names[l]], np.float64)[:, :, h] @ w_o[h * dh:(h + 1) * dh]
    n = np.linalg.norm(o, axis=-1)                   # [B, P]
    assert row["norm_bos"] == pytest.approx(n[:, 0].mean(), rel=1e-5)
    assert row["norm_other_mean"] == pytest.approx(n[:, 1:].mean(), rel=1e-5)
    assert row["norm_other_median"] == pytest.approx(np.median(n[:, 1:]), rel=1e-5)
    if n[:, 0].mean() > 1e-6:                        # v_BOS = 0 in the planted model's layer 0
      assert row["ratio"] == pytest.approx(n[:, 1:].mean() / n[:, 0].mean(), rel=1e-4)
