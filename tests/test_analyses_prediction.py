"""Prediction / suppression / partition neurons: planted neurons classified, percentiles and
counts against direct numpy computation."""
import numpy as np
import pandas as pd
import pytest

from tests import planted
from ucore.analyses import common, prediction, stats


def test_planted_prediction_and_suppression(model, tmp_path):
  idx = common.neuron_index(2, 32)
  corr = pd.DataFrame({"excess_corr": 0.0, "universal": False}, index=idx)
  corr.loc[planted.PLANTED["prediction"], "universal"] = True
  figs = prediction.run(model, str(tmp_path), corr=corr)
  roles = pd.read_parquet(tmp_path / "vocab_roles.parquet")
  assert roles.loc[planted.PLANTED["prediction"], "role"] == "prediction"
  assert roles.loc[planted.PLANTED["suppression"], "role"] == "suppression"
  counts = pd.read_parquet(tmp_path / "vocab_role_counts.parquet")
  all_c = counts.xs("all", level="set")
  # independent count of kurtosis > 10 per layer
  ws = stats.weight_stats(common.processed_weights(model))
  expect = (ws["vocab_kurt"] > 10).groupby(level="layer").sum()
  np.testing.assert_array_equal(all_c["kurt_gt_10"].values, expect.values)
  assert all_c.loc[1, "prediction"] >= 1 and all_c.loc[1, "suppression"] >= 1
  assert counts.xs("universal", level="set").loc[1, "prediction"] == 1
  assert len(figs) == 2


def test_layer_percentiles_match_numpy():
  rng = np.random.default_rng(0)
  idx = common.neuron_index(3, 50)
  df = pd.DataFrame({"vocab_kurt": rng.lognormal(size=150), "vocab_skew": rng.normal(size=150),
                     "vocab_var": rng.random(150)}, index=idx)
  pct = prediction.layer_percentiles(df)
  for l in range(3):
    vals = df.xs(l, level="layer")["vocab_skew"].values
    np.testing.assert_allclose(pct.loc[(l, "vocab_skew")].values,
                               np.percentile(vals, prediction.PERCENTILES))
  sel = pd.Series(np.arange(150) % 2 == 0, index=idx)
  pct_sel = prediction.layer_percentiles(df, select=sel)
  vals = df.xs(2, level="layer")["vocab_kurt"].values[::2]
  assert pct_sel.loc[(2, "vocab_kurt"), "p50"] == pytest.approx(np.median(vals))


def test_family_summary_over_seeds(model, tmp_path):
  other = planted.planted_model(seed=1)
  figs = prediction.run(model, str(tmp_path), family={"seed1": other})
  counts = pd.read_parquet(tmp_path / "vocab_family_counts.parquet")
  s0 = stats.weight_stats(common.processed_weights(model))
  s1 = stats.weight_stats(common.processed_weights(other))
  for name, s in (("self", s0), ("seed1", s1)):
    np.testing.assert_array_equal(counts[name].values,
                                  (s["vocab_kurt"] > 10).groupby(level="layer").sum().values)
  np.testing.assert_allclose(counts["mean_kurt_gt_10"], (counts["self"] + counts["seed1"]) / 2)
  pct = pd.read_parquet(tmp_path / "vocab_family_percentiles.parquet")
  pooled = np.concatenate([s0.xs(1, level="layer")["vocab_skew"].dropna(),
                           s1.xs(1, level="layer")["vocab_skew"].dropna()])
  assert pct.loc[(1, "vocab_skew"), "p50"] == pytest.approx(np.median(pooled))
  assert len(figs) == 2
  from ucore.jobs.errors import UserError
  with pytest.raises(UserError, match="neurons"):
    from ucore.models.hooked import HookedTransformer
    import dataclasses
    cfg = dataclasses.replace(other.config, d_mlp=16)
    from tests.random_params import random_params   # init_params' tree, without eager init
    prediction.run(model, str(tmp_path),
                   family={"bad": HookedTransformer(cfg, random_params(cfg))})


def test_family_model_names_are_safe_and_distinct():
  """analyze's model names pass correlate's safe-name check; seed{s}/final directories
  (the pipeline's) get distinct names instead of all being "final"."""
  from ucore.analyze import family_names
  from ucore.jobs.errors import UserError
  assert family_names(["ckpt/b", "ckpt/c/"]) == ["b", "c"]
  assert family_names(["/w/family/seed1/final", "/w/family/seed2/final"]) == \
      ["seed1-final", "seed2-final"]
  with pytest.raises(UserError, match="not a safe name"):
    family_names(["ckpt/b", "ckpt/bad name"])
  with pytest.raises(UserError, match="more than once"):
    family_names(["ckpt/b", "ckpt/b"])
