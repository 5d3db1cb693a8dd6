"""End to end on a planted family: the universal flag finds exactly the planted neurons.

The runs average 4 rotation draws per baseline kind (the default config's 16 would take
three quarters of the time, each draw a finalize over 8 virtual devices). At 4 draws the
planted neurons' excess is ≥ 0.57 and every other neuron's ≤ 0.28 (threshold 0.5)."""
import os

import numpy as np
import pandas as pd

from ucore.corr import driver
from ucore.jobs import config_files
from ucore.corr.synthetic import SyntheticFamily


def _config(**over):
  c = config_files.load("correlate_default")
  c.synthetic.enabled = True
  c.max_tokens = 0
  c.batch_rows = 16
  c.top_k = 2
  c.baseline.draws = 4
  for k, v in over.items():
    setattr(c, k, v)
  return c


def test_planted_family_universal_exactly(tmp_path):
  c = _config()
  driver.run(c, str(tmp_path))
  t = tmp_path / "tables"
  df = pd.read_parquet(t / "neurons_synth0.parquet")
  fam = SyntheticFamily(n_models=3, n_layers=2, d_mlp=c.synthetic.d_mlp, n_planted=4)
  assert df.index.names == ["layer", "neuron"] and len(df) == 2 * c.synthetic.d_mlp
  for col in ("mean_corr", "min_corr", "max_corr", "mean_baseline", "min_baseline",
              "max_baseline", "excess_corr", "universal", "corr__synth1", "baseline__synth2",
              "max_sim_layer__synth1", "max_sim_neuron__synth2", "dead"):
    assert col in df.columns, col
  universal = {tuple(map(int, i)) for i in df.index[df["universal"]]}
  assert universal == fam.planted_reference()
  # the partner found is the planted position in each partner model
  for k, p0 in enumerate(fam.pos[0][:4]):
    row = df.loc[(int(p0) // fam.d, int(p0) % fam.d)]
    for m in (1, 2):
      pm = int(fam.pos[m][k])
      assert (row[f"max_sim_layer__synth{m}"], row[f"max_sim_neuron__synth{m}"]) == (
          pm // fam.d, pm % fam.d)
  # decoys (shared with one model only; weakly shared) are not universal, but not noise
  dec1 = int(fam.pos[0][4])
  r1 = df.loc[(dec1 // fam.d, dec1 % fam.d)]
  assert r1["corr__synth1"] > 0.9 and not r1["universal"]
  # the dead neuron is reported as dead with NaN statistics
  dead = (fam.dead_ref // fam.d, fam.dead_ref % fam.d)
  assert df.loc[dead, "dead"] and np.isnan(df.loc[dead, "mean_corr"])
  assert int(df["dead"].sum()) == 1
  np.testing.assert_allclose(df["excess_corr"], df["mean_corr"] - df["mean_baseline"])
  lc = pd.read_parquet(t / "layer_counts_synth0.parquet")
  assert int(lc["universal"].sum()) == 4 and list(lc["neurons"]) == [fam.d, fam.d]
  ph = pd.read_parquet(t / "partner_layers_synth0.parquet")
  sums = ph.groupby(["partner", "layer"])["share"].sum()
  np.testing.assert_allclose(sums.to_numpy(), 1.0)
  pair = pd.read_parquet(t / "pairs" / "synth0__synth1.parquet")
  assert list(pair.columns[:4]) == ["max_corr", "max_sim_layer", "max_sim_neuron", "baseline"]
  np.testing.assert_allclose(pair["max_corr"], df["corr__synth1"])
  np.testing.assert_allclose(pair["baseline_haar"], pair["baseline"])


def test_fill_dead_and_all_pairs(tmp_path):
  c = _config(fill_dead=True, dead_value=0.0, mode="all_pairs", layers="1")
  c.baseline.kinds = ("gaussian_rows",)
  c.baseline.primary = "gaussian_rows"
  driver.run(c, str(tmp_path))
  t = tmp_path / "tables"
  assert sorted(os.listdir(t / "pairs")) == sorted(
      f"synth{a}__synth{b}.parquet" for a in range(3) for b in range(3) if a != b)
  df = pd.read_parquet(t / "neurons_synth0.parquet")
  assert set(df.index.get_level_values("layer")) == {1}
  fam = SyntheticFamily(n_models=3, n_layers=2, d_mlp=c.synthetic.d_mlp, n_planted=4)
  dead = (fam.dead_ref // fam.d, fam.dead_ref % fam.d)
  if dead[0] == 1:
    assert df.loc[dead, "mean_corr"] == 0.0 and df.loc[dead, "dead"]
  assert not df.drop(columns=[]).isna().any().any()
  # symmetric pairs: synth1's table against synth0 is read from the columns of C(0, 1)
  p10 = pd.read_parquet(t / "pairs" / "synth1__synth0.parquet")
  both = [k for k in range(4) if int(fam.pos[0][k]) // fam.d == 1 == int(fam.pos[1][k]) // fam.d]
  assert both                        # seed 0 puts at least one planted pair in layer 1
  for k in both:
    p0, p1 = int(fam.pos[0][k]), int(fam.pos[1][k])
    row = p10.loc[(1, p1 % fam.d)]
    assert (row["max_sim_layer"], row["max_sim_neuron"]) == (1, p0 % fam.d)
    assert row["max_corr"] > 0.9


def test_full_matrix_export_is_zarr3(tmp_path):
  import tensorstore as ts
  from ucore.corr import finalize as F
  c = _config(save_full_matrix=True, top_k=1)
  c.baseline.kinds = ()
  driver.run(c, str(tmp_path))
  path = str(tmp_path / "full" / "synth0__synth2") + "/"
  arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}).result()
  full = arr.read().result()
  d = c.synthetic.d_mlp
  assert full.shape == (2, d, 2, d)
  pair = pd.read_parquet(tmp_path / "tables" / "pairs" / "synth0__synth2.parquet")
  rowmax = np.where(np.isnan(full), -np.inf, full).reshape(2 * d, -1).max(1)
  rowmax = np.where(np.isfinite(rowmax), rowmax, np.nan)
  np.testing.assert_allclose(pair["max_corr"].to_numpy(), rowmax, atol=1e-7, equal_nan=True)
