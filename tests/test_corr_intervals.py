"""Intervals (issue 20 item 2): the interval pass's leave-one-block-out correlations and
jackknife SEs against an independent float64 numpy computation over the same rows, and the
count interval's bookkeeping."""
import numpy as np
import pytest

from ucore.corr import baselines as BL
from ucore.corr import driver, intervals as IV, tables as TB
from ucore.corr.synthetic import SyntheticFamily, SyntheticTokens
from ucore.data.mask import token_mask
from ucore.jobs import atomic, config_files


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  c = config_files.load("correlate_tiny")
  c.intervals.blocks = 5
  wd = tmp_path_factory.mktemp("iv")
  driver.run(c, str(wd))
  return c, wd / "tables"


def _loo_se(x, y, bid, B):
  reps = np.array([np.corrcoef(x[bid != b], y[bid != b])[0, 1] for b in range(B)])
  return np.sqrt((B - 1) / B * np.sum((reps - reps.mean()) ** 2))


def test_jackknife_se_matches_float64_numpy(tiny):
  c, t = tiny
  s = atomic.read_json(str(t / "summary.json"))
  assert s["intervals"]["blocks"] == 5
  syn = c.synthetic
  fam = SyntheticFamily(n_models=syn.n_models, n_layers=syn.n_layers, d_mlp=syn.d_mlp,
                        n_planted=syn.n_planted, seed=syn.seed, offset=syn.offset, ctx=syn.ctx)
  store = SyntheticTokens(num_rows=syn.rows, ctx=syn.ctx, seed=syn.seed)
  rows = np.arange(syn.rows)
  tokens = store.read_rows(0, syn.rows)
  mask = np.asarray(token_mask(tokens, exclude_ids=store.mask_exclude_ids)).reshape(-1)
  bid = np.repeat(IV.block_of_rows(rows, 0, syn.rows, 5), syn.ctx)[mask]
  acts = [np.concatenate([fam.row_acts(m, r) for r in rows]).astype(np.float64)[mask]
          for m in range(3)]
  agg = TB.read_neurons(str(t), "synth0")
  d = syn.d_mlp
  rng = np.random.default_rng(0)
  for m in (1, 2):
    pair = TB.read_neuron_table(str(t / "pairs" / f"synth0__synth{m}.parquet"))
    mats = [BL.mixing_matrix("haar", d, seed=0, draw=0, model=m, layer=l) for l in range(2)]
    live = np.flatnonzero(~agg["dead"].to_numpy())
    planted = [int(p) for p in fam.pos[0][:4]]
    for i in sorted(set(planted) | set(rng.choice(live, 12, replace=False).tolist())):
      row = pair.iloc[i]
      y = acts[m][:, int(row["max_sim_layer"]) * d + int(row["max_sim_neuron"])]
      ul, uk = int(row["baseline_unit_layer"]), int(row["baseline_unit"])
      u = acts[m][:, ul * d:(ul + 1) * d] @ mats[ul][uk]
      x = acts[0][:, i]
      # the tables' values are the same pairs' full-data correlations
      np.testing.assert_allclose(np.corrcoef(x, y)[0, 1], row["max_corr"], atol=2e-5)
      np.testing.assert_allclose(np.corrcoef(x, u)[0, 1], row["baseline_haar_0"], atol=2e-5)
      # the pass sums float32 batch-shifted values (merged in float64): 4.1e-5 relative
      # measured on these SEs against float64 throughout
      np.testing.assert_allclose(agg[f"corr_se__synth{m}"].iloc[i], _loo_se(x, y, bid, 5),
                                 rtol=2e-4, atol=0)
      np.testing.assert_allclose(agg[f"baseline_data_se__synth{m}"].iloc[i],
                                 _loo_se(x, u, bid, 5), rtol=2e-4, atol=0)
  # excess_se combines the data and the draws
  np.testing.assert_allclose(agg["excess_se"] ** 2, agg["excess_data_se"] ** 2
                             + agg["mean_baseline_se"].fillna(0) ** 2, rtol=1e-12)
  entry = s["intervals"]["models"]["synth0"]
  assert entry["count"] == int(agg["universal"].sum()) == s["universal"]["synth0"]
  lo, hi = entry["count_ci95"]
  assert lo <= entry["count"] <= hi and entry["of"] == len(agg)


def test_blocks_merge_batches_exactly():
  """Blocks.add (Chan merges of per-batch centred moments) = the float64 moments of the
  concatenated tokens, whatever the batch split and slot layout."""
  rng = np.random.default_rng(1)
  T, N = 300, 4
  x = rng.standard_normal((T, N)) + 50
  y = 0.5 * x + rng.standard_normal((T, N))
  u = rng.standard_normal((T, N)) - 20
  bid = np.repeat(np.arange(3), 100)
  acc = IV.Blocks(3, [(0, 1)], {0: N})
  for s0 in range(0, T, 70):   # batches straddle blocks: two slots each
    sl = slice(s0, s0 + 70)
    out = {"n": [], "x0": ([], []), "p0": tuple([] for _ in range(6))}
    slots = sorted(set(bid[sl]))
    for b in slots:
      k = bid[sl] == b
      xs, ys, us = x[sl][k], y[sl][k], u[sl][k]
      out["n"].append(k.sum())
      xm, ym, um = xs.mean(0), ys.mean(0), us.mean(0)
      for lst, v in zip(out["x0"], (xm, ((xs - xm) ** 2).sum(0))):
        lst.append(v)
      for lst, v in zip(out["p0"], (ym, ((ys - ym) ** 2).sum(0), ((xs - xm) * (ys - ym)).sum(0),
                                    um, ((us - um) ** 2).sum(0), ((xs - xm) * (us - um)).sum(0))):
        lst.append(v)
    out = {"n": np.array(out["n"], float), "x0": tuple(np.array(a) for a in out["x0"]),
           "p0": tuple(np.array(a) for a in out["p0"])}
    acc.add(np.array(slots), out)
  (c, c_loo), (cu, cu_loo) = acc.correlations(0)
  for j in range(N):
    np.testing.assert_allclose(c[j], np.corrcoef(x[:, j], y[:, j])[0, 1], rtol=1e-12)
    np.testing.assert_allclose(cu[j], np.corrcoef(x[:, j], u[:, j])[0, 1], rtol=1e-10)
    for b in range(3):
      k = bid != b
      np.testing.assert_allclose(c_loo[b, j], np.corrcoef(x[k, j], y[k, j])[0, 1], rtol=1e-12)
      np.testing.assert_allclose(cu_loo[b, j], np.corrcoef(x[k, j], u[k, j])[0, 1], rtol=1e-10)


def test_count_interval_and_headline():
  """The count interval: zero width when no neuron is near the threshold relative to its SE;
  widening with replicates that move near-threshold neurons; the one-line headline."""
  from ucore.report.headline import run_universal_line, universal_line
  excess = np.array([0.9, 0.1, 0.51, np.nan])
  se = np.array([0.01, 0.01, 0.02, np.nan])
  far = np.tile(np.array([0.9, 0.1, 0.9, np.nan]), (4, 1))
  count, lo, hi, half = IV.count_interval(excess, se, 0.5, block_excess=far)
  assert (count, lo, hi, half) == (2, 2, 2, 0.0)   # replicates all alike: nothing moves
  reps = np.array([[0.9, 0.1, e, np.nan] for e in (0.47, 0.53, 0.50, 0.54)])
  count, lo, hi, half = IV.count_interval(excess, se, 0.5, block_excess=reps)
  sm = np.array([IV.smoothed_count(r, 0.5, se) for r in reps])
  ref = IV.Z95 * np.sqrt(3 / 4 * np.sum((sm - sm.mean()) ** 2))
  assert np.isclose(half, ref) and 0.5 < half < 1.5
  # integers within half + 0.5 of the count (continuity correction), inside [0, live]
  assert count == 2 and (lo, hi) == (int(np.ceil(2 - ref - 0.5)), 3)
  entry = {"count": 86, "of": 3072, "share": 86 / 3072, "share_ci95": [0.0251, 0.0309],
           "leave_one_seed_out": {"share_min": 0.0241, "share_max": 0.0326}}
  assert universal_line(entry) == ("86 of 3072 (2.80%, 95% interval 2.51–3.09%; leaving one "
                                   "seed out 2.41–3.26%)")
  assert universal_line({"count": 3, "of": 4, "share": 0.75}) == "3 of 4 (75.00%)"
  # a run's line: its interval entry where it has one, else its bare count
  assert run_universal_line(entry, 0, 0) == universal_line(entry)
  assert run_universal_line(None, 3, 4) == "3 of 4 (75.00%)"
  assert run_universal_line(None, 0, 0) == "0 of 0 (0.00%)"


@pytest.mark.slow("four seeded planted families, each a full correlate run with its interval "
                  "pass")
def test_interval_covers_the_planted_truth():
  """benchmarks/interval_coverage.py in small (3 repetitions of 128 rows, each with its own
  rows and baseline.seed): the 95% count interval holds the planted family's true count
  (mean excess over the repetitions vs the threshold) in ≥ 2 of 3 and is not trivially wide.
  The benchmark's 50 repetitions (50 of 50 covered) are in BENCHMARKS.md."""
  from benchmarks import interval_coverage
  res = interval_coverage.main(["--reps", "3", "--rows", "128", "--draws", "4",
                                "--truth_factor", "0"])
  assert res["coverage"] >= 2 / 3, res["rows"]
  assert res["mean_width"] <= 3, res["rows"]
  assert 4 <= res["truth"] <= 4 + 16   # the 4 planted and some graded neurons


def test_distinct_units_pads_to_a_bucket():
  """The rotated-unit slab: every pair's own neurons find their (layer, unit) at their
  position; U is the largest layer's count rounded up to the next number whose binary form
  is three leading bits then zeros (≤ d), so runs whose selected units differ a little in
  number share one compiled interval pass, at < 25% more rotated units."""
  buckets = sorted({1, 2, 3} | {m << k for m in (4, 5, 6, 7) for k in range(12)})
  rng = np.random.default_rng(3)
  d = 128
  for n_units in (1, 3, 9, 40, 65, 83, 90, 128):
    flats = [rng.integers(0, 2 * d, size=200) for _ in range(2)]
    flats[0][:n_units] = np.arange(n_units)   # layer 0 has at least n_units distinct units
    rows, pos = IV.distinct_units(flats, d)
    allu = np.unique(np.concatenate(flats))
    most = max(np.sum(allu // d == l) for l in range(2))
    U = rows.shape[1]
    assert U == min(d, min(b for b in buckets if b >= most)) and rows.shape[0] == 2
    assert U <= 1.25 * most
    for fl, p in zip(flats, pos):
      np.testing.assert_array_equal(p // U, fl // d)
      np.testing.assert_array_equal(rows[p // U, p % U], fl % d)
