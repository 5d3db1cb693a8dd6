"""Baseline draws (issue 20 item 1): the tables carry the mean over draws and its standard
error (float64 numpy reference), the neurons table the SE of mean_baseline, and summary.json
how many neurons sit within two SEs of the threshold; per-draw columns stop above
MAX_DRAW_COLUMNS draws."""
import numpy as np
import pandas as pd

from ucore.corr import driver, tables as TB
from ucore.corr.finalize import PairResult
from ucore.jobs import atomic, config_files


def _result(draws, seed=0, L=2, d=5):
  rng = np.random.default_rng(seed)
  corr = rng.uniform(0.2, 0.9, (L, d, 1))
  corr[0, 1] = np.nan   # a dead neuron
  base = {"haar": rng.uniform(0.1, 0.4, (draws, L, d)),
          "gaussian_rows": rng.uniform(0.1, 0.4, (draws, L, d))}
  base["haar"][:, 0, 1] = np.nan
  return PairResult(own=0, partner=1, corr=corr, layer=np.zeros((L, d, 1), int),
                    neuron=np.zeros((L, d, 1), int), baselines=base)


def test_pair_and_neuron_tables_carry_draw_se():
  r1, r2 = _result(5, 0), _result(5, 1)
  t1, t2 = (TB.pair_table(r, [0, 1], "haar") for r in (r1, r2))
  for kind in ("haar", "gaussian_rows"):
    a = r1.baselines[kind].reshape(5, -1)
    ref_se = np.array([np.std(a[:, i], ddof=1) / np.sqrt(5) for i in range(a.shape[1])])
    np.testing.assert_allclose(t1[f"baseline_{kind}_se"], ref_se, rtol=1e-12)
    np.testing.assert_allclose(t1[f"baseline_{kind}"], a.mean(0), rtol=1e-12)
    assert f"baseline_{kind}_4" in t1.columns
  np.testing.assert_allclose(t1["baseline_se"], t1["baseline_haar_se"])
  agg = TB.aggregate_table({"a": t1, "b": t2}, np.zeros(10, bool), threshold=0.3)
  ref = np.sqrt(t1["baseline_se"] ** 2 + t2["baseline_se"] ** 2) / 2
  np.testing.assert_allclose(agg["mean_baseline_se"], ref, rtol=1e-12)
  near = (np.abs(agg["excess_corr"] - 0.3) <= 2 * ref).to_numpy()
  assert near.any() and (agg["near_threshold"].to_numpy() == near).all()
  # one draw: no SE (NaN), nobody near the threshold by the draws
  one = TB.pair_table(_result(1), [0, 1], "haar")
  assert one["baseline_se"].isna().all()
  # many draws: the stats stay, the per-draw columns go
  many = TB.pair_table(_result(TB.MAX_DRAW_COLUMNS + 1), [0, 1], "haar")
  assert "baseline_haar_se" in many.columns and "baseline_haar_0" not in many.columns


def test_summary_counts_near_threshold(tmp_path):
  c = config_files.load("correlate_tiny")
  c.baseline.draws = 3
  c.threshold = 0.05
  driver.run(c, str(tmp_path))
  s = atomic.read_json(str(tmp_path / "tables" / "summary.json"))
  assert s["baseline_draws"] == 3
  for name, n in s["near_threshold"].items():
    df = TB.read_neurons(str(tmp_path / "tables"), name)
    assert n == int(df["near_threshold"].sum())
    se = df["mean_baseline_se"].dropna()
    assert len(se) and s["baseline_se"][name]["max"] == se.max()
    pair = pd.read_parquet(tmp_path / "tables" / "pairs" / f"{name}__{df.columns[0][6:]}.parquet")
    draws = np.stack([pair[f"baseline_haar_{k}"] for k in range(3)])
    np.testing.assert_allclose(pair["baseline_se"], np.std(draws, 0, ddof=1) / np.sqrt(3),
                               rtol=1e-10)
