"""Neuron statistics: exact streaming moments vs scipy.stats, weight statistics vs independent
float64 numpy, processed-weight invariance, percentiles, universal comparison, bad input."""
import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from ucore.data import batches as batches_mod
from tests import planted
from ucore.analyses import common, stats
from ucore.analyses.moments import StreamingMoments
from ucore.jobs.errors import UserError

RTOL = 1e-6


@pytest.fixture(scope="module")
def tokens():
  return planted.planted_tokens(12, 32, seed=1)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


def test_streaming_moments_match_scipy_on_adversarial_stream():
  rng = np.random.default_rng(0)
  n = 3001
  x = np.stack([rng.normal(size=n) * 1e-3 + 1e4,           # huge offset, tiny spread
                rng.gamma(0.2, size=n) * 5 - 0.17,           # very skewed, GELU-like
                rng.standard_t(3, size=n),                   # heavy tails
                np.where(rng.random(n) < 0.01, 8.0, -0.17),  # sparse
                rng.normal(size=n)], axis=1).astype(np.float32)
  acc = StreamingMoments(x.shape[1])
  for a, b in [(0, 1), (1, 2), (2, 500), (500, 501), (501, 2000), (2000, 2000), (2000, n)]:
    acc.update(x[a:b])
  r = acc.result()
  x64 = x.astype(np.float64)
  assert acc.n == n
  assert _rel(r["mean"], x64.mean(0)) <= RTOL
  assert _rel(r["var"], x64.var(0)) <= RTOL
  assert _rel(r["skew"], st.skew(x64, axis=0)) <= RTOL
  assert _rel(r["kurt"], st.kurtosis(x64, axis=0, fisher=False)) <= RTOL
  np.testing.assert_array_equal(r["sparsity"], (x64 > 0).mean(0))


def test_merge_of_two_accumulators_equals_one_stream():
  rng = np.random.default_rng(1)
  x = rng.exponential(size=(400, 3)) + 50
  a, b, c = StreamingMoments(3), StreamingMoments(3), StreamingMoments(3)
  a.update(x[:123]); b.update(x[123:]); c.update(x)
  a.merge(b)
  for k in ("mean", "var", "skew", "kurt", "sparsity"):
    assert _rel(a.result()[k], c.result()[k]) <= 1e-10


def test_constant_column_gives_nan_shape_stats():
  acc = StreamingMoments(2)
  acc.update(np.array([[1.0, 0.0], [1.0, 2.0], [1.0, 4.0]]))
  r = acc.result()
  assert r["var"][0] == 0 and np.isnan(r["skew"][0]) and np.isnan(r["kurt"][0])
  assert np.isfinite(r["kurt"][1])


def test_activation_stats_match_scipy_on_same_activations(model, tokens):
  batches = batches_mod.make_batches(tokens, 5)     # uneven: 5, 5, 2 rows
  df = stats.activation_stats(model, batches)
  # the same activations, captured independently through run_with_cache batch by batch
  # (XLA may round differently for another batch shape, so use the same batches)
  caps = [model.run_with_cache(b.tokens, [f"blocks.{l}.mlp.hook_pre" for l in range(2)])[1]
          for b in batches]
  keep = (tokens != 50256) & (tokens != 198)
  for l in range(2):
    x = np.concatenate([np.asarray(c[f"blocks.{l}.mlp.hook_pre"], np.float64)
                        for c in caps])[keep]   # [T, F]
    got = df.xs(l, level="layer")
    ok = x.var(0) > 0
    assert _rel(got["mean"], x.mean(0)) <= RTOL
    assert _rel(got["var"], x.var(0)) <= RTOL
    assert _rel(got["skew"][ok], st.skew(x[:, ok], axis=0)) <= RTOL
    assert _rel(got["kurt"][ok], st.kurtosis(x[:, ok], axis=0, fisher=False)) <= RTOL
    np.testing.assert_allclose(got["sparsity"], (x > 0).mean(0))
  assert (df["tokens"] == keep.sum()).all()
  # the planted unigram neuron fires only on its token: activation frequency = its share
  share = (tokens[keep] == planted.UNIGRAM_TOKEN).mean()
  assert df.loc[planted.PLANTED["unigram"], "sparsity"] == pytest.approx(share)


def test_weight_stats_against_loops_on_processed_weights(model):
  from ucore.models.processing import process_transformer_lens
  cfg, p = process_transformer_lens(model.config, model.params)
  df = stats.weight_stats(common.processed_weights(model))
  w_u = np.asarray(p["lm_head"]["kernel"], np.float64)
  w_u_hat = w_u / np.linalg.norm(w_u, axis=0)
  for (l, n) in [(1, 0), (0, 5), (1, 9), (1, 11), (1, 31)]:
    w_in = np.asarray(p[f"h_{l}"]["mlp"]["c_fc"]["kernel"], np.float64)[:, n]
    w_out = np.asarray(p[f"h_{l}"]["mlp"]["c_proj"]["kernel"], np.float64)[n]
    row = df.loc[(l, n)]
    assert row["w_in_norm"] == pytest.approx(np.sqrt((w_in ** 2).sum()), rel=1e-9)
    assert row["w_out_norm"] == pytest.approx(np.sqrt((w_out ** 2).sum()), rel=1e-9)
    assert row["input_bias"] == pytest.approx(float(p[f"h_{l}"]["mlp"]["c_fc"]["bias"][n]))
    cos = w_in @ w_out / np.linalg.norm(w_in) / np.linalg.norm(w_out)
    assert row["in_out_sim"] == pytest.approx(cos, rel=1e-9, abs=1e-12)
    assert row["l2_penalty"] == pytest.approx((w_in ** 2).sum() + (w_out ** 2).sum(), rel=1e-9)
    c = (w_out / np.linalg.norm(w_out)) @ w_u_hat
    assert row["vocab_mean"] == pytest.approx(c.mean(), rel=1e-6, abs=1e-12)
    assert row["vocab_var"] == pytest.approx(c.var(), rel=1e-6)
    if c.var() > 1e-12:
      assert row["vocab_skew"] == pytest.approx(st.skew(c), rel=1e-6, abs=1e-9)
      assert row["vocab_kurt"] == pytest.approx(st.kurtosis(c, fisher=False), rel=1e-6)
  # a neuron that writes nothing: zero norm, undefined cosine and vocabulary shape
  assert df.loc[(0, 0), "w_out_norm"] == 0 and np.isnan(df.loc[(0, 0), "in_out_sim"])
  assert np.isnan(df.loc[(0, 0), "vocab_kurt"])
  # a checkpoint already processed gives the same table
  from ucore.models.hooked import HookedTransformer
  from ucore.models.processing import TRANSFORMER_LENS_STEPS
  pm = HookedTransformer(cfg, p, manifest={"processing": "transformer_lens",
                                    "processing_steps": list(TRANSFORMER_LENS_STEPS)})
  pd.testing.assert_frame_equal(stats.weight_stats(common.processed_weights(pm)), df)
  # the planted prediction neuron has a heavy-tailed, positively skewed vocab distribution
  assert df.loc[planted.PLANTED["prediction"], "vocab_kurt"] > 10
  assert df.loc[planted.PLANTED["prediction"], "vocab_skew"] > 0
  assert df.loc[planted.PLANTED["suppression"], "vocab_skew"] < 0


def _fake_corr(model, universal):
  idx = common.neuron_index(model.config.n_layer, model.config.d_mlp)
  ex = np.where(np.isin(np.arange(len(idx)), universal), 0.8, 0.1)
  return pd.DataFrame({"excess_corr": ex, "universal": ex > 0.5}, index=idx)


def test_runner_writes_tables_and_universal_comparison(model, tokens, tmp_path):
  corr = _fake_corr(model, [3, 5, 7])
  # the batches of test_activation_stats_match_scipy_on_same_activations: the same programs
  figs, returned = stats.run(model, batches_mod.make_batches(tokens, 5), str(tmp_path), corr=corr)
  table = pd.read_parquet(tmp_path / "neuron_stats.parquet")
  pd.testing.assert_frame_equal(returned, table)
  assert list(table.index.names) == ["layer", "neuron"]
  for c in stats.ALL_COLUMNS:
    assert c in table.columns and c + "_pct" in table.columns
  # percentiles are within-layer ranks
  lay0 = table.xs(0, level="layer")
  np.testing.assert_allclose(lay0["w_in_norm_pct"], lay0["w_in_norm"].rank(pct=True))
  assert table.loc[(0, 3), "w_in_norm_pct"] == 1.0       # the planted 10x input weight
  comp = pd.read_parquet(tmp_path / "universal_comparison.parquet")
  assert comp.loc["w_in_norm", "universal_median_pct"] > comp.loc["w_in_norm", "other_median_pct"]
  import json
  summ = json.load(open(tmp_path / "summary.json"))
  assert summ["universal"] == 3 and summ["neurons"] == 64
  ok = table["in_out_sim"].notna()     # layer-0 neurons that write nothing have no cosine
  assert summ["corr_sparsity_in_out_sim"] == pytest.approx(
      np.corrcoef(table["sparsity"][ok], table["in_out_sim"][ok])[0, 1])
  assert len(figs) == 2 and all((tmp_path / p.split("/")[-1]).exists() for _, p, _ in figs)


def test_corr_table_validation(model, tmp_path):
  corr = _fake_corr(model, [1])
  good = tmp_path / "neurons_a.parquet"
  corr.to_parquet(good)
  assert common.read_corr_table(str(good), model.config)["universal"].sum() == 1
  assert common.read_corr_table(str(tmp_path), model.config) is not None   # directory form
  with pytest.raises(UserError, match="do not exist"):
    common.read_corr_table(str(tmp_path / "missing.parquet"), model.config)
  with pytest.raises(UserError, match="no correlation results"):
    common.read_corr_table("", model.config)
  corr.drop(columns=["universal"]).to_parquet(tmp_path / "nocol.parquet")
  with pytest.raises(UserError, match="lack columns"):
    common.read_corr_table(str(tmp_path / "nocol.parquet"), model.config)
  # a summary.json (as written by the correlation engine) names the weights
  import json
  (tmp_path / "summary.json").write_text(json.dumps(
      {"models": [{"name": "a", "fingerprint": model.fingerprint},
                  {"name": "b", "fingerprint": "0" * 64}]}))
  corr.to_parquet(tmp_path / "neurons_b.parquet")
  assert common.read_corr_table(str(good), model.config, model.fingerprint) is not None
  assert common.read_corr_table(str(tmp_path), model.config, model.fingerprint) is not None
  with pytest.raises(UserError, match="other weights"):
    common.read_corr_table(str(tmp_path / "neurons_b.parquet"), model.config, model.fingerprint)
  with pytest.raises(UserError, match="none with this"):
    common.read_corr_table(str(tmp_path), model.config, "1" * 64)
  with pytest.raises(UserError, match="several models"):
    common.read_corr_table(str(tmp_path), model.config)
  corr.iloc[:40].to_parquet(tmp_path / "small.parquet")
  with pytest.raises(UserError, match="does not match|describe"):
    common.read_corr_table(str(tmp_path / "small.parquet"), model.config)
