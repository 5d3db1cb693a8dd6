"""The universality sections' numbers against independent numpy: the focus set (and its
top-k stand-in), universal-vs-other percentiles and the paper's directions, strict-excess
counts, excess among sparse neurons, cards' logit effects and partners, role shares."""
import numpy as np
import pandas as pd
import pytest

from ucore.analyses import common, focus, properties, roles
from ucore.report import cards, views
from ucore.jobs.errors import UserError

L, F = 3, 40


def _corr(seed=0, n_universal=6):
  rng = np.random.default_rng(seed)
  idx = common.neuron_index(L, F)
  n = len(idx)
  base = rng.uniform(0.1, 0.3, n)
  t = pd.DataFrame({"mean_corr": base + rng.uniform(0, 0.5, n), "mean_baseline": base},
                   index=idx)
  t["excess_corr"] = t.mean_corr - t.mean_baseline
  t.iloc[:n_universal, t.columns.get_loc("excess_corr")] = 0.6 + 0.01 * np.arange(n_universal)
  t["min_corr"] = t.mean_corr - rng.uniform(0, 0.2, n)
  t["max_baseline"] = t.mean_baseline + rng.uniform(0, 0.1, n)
  t["universal"] = t.excess_corr > 0.5
  t.iloc[7, t.columns.get_loc("excess_corr")] = np.nan          # a dead neuron
  return t


def _stats(seed=1):
  rng = np.random.default_rng(seed)
  idx = common.neuron_index(L, F)
  return pd.DataFrame({c: rng.normal(size=len(idx)) for c in properties.PAPER},
                      index=idx).assign(sparsity=lambda d: rng.uniform(0.001, 0.5, len(d)))


def test_focus_set_is_universal_else_top_k():
  t = _corr()
  f = focus.focus_set(t, k=4)
  assert not f.fallback and f.label == "universal" and len(f.ids) == 6
  assert f.ids[0] == (0, 5)                       # highest excess first
  none = t.assign(universal=False)
  g = focus.focus_set(none, k=4)
  ex = none["excess_corr"].dropna().sort_values(ascending=False)
  assert g.fallback and list(g.ids) == [tuple(i) for i in ex.index[:4]]
  assert "No neuron is universal" in g.note and g.label == "top-4 by excess"
  assert g.mask(t.index).sum() == 4
  with pytest.raises(UserError, match="NaN"):
    focus.focus_set(none.assign(excess_corr=np.nan))


def test_properties_match_numpy_percentiles_and_directions():
  st, t = _stats(), _corr()
  f = focus.focus_set(t)
  comp = properties.compare(st, f.mask(st.index))
  m = f.mask(st.index)
  layer = st.index.get_level_values("layer").values
  for scope, sel in (("all", np.ones(len(st), bool)), ("L0", layer == 0)):
    for c in ("sparsity", "in_out_sim", "vocab_skew"):
      pct = np.empty(len(st))
      for l in range(L):   # within-layer percentile rank, independent of pandas' rank
        v = st[c].values[layer == l]
        pct[layer == l] = (np.argsort(np.argsort(v)) + 1) / len(v)
      row = comp.loc[(scope, c)]
      fp, op = np.median(pct[sel & m]), np.median(pct[sel & ~m])
      assert row["focus_median_pct"] == pytest.approx(fp)
      assert row["other_median_pct"] == pytest.approx(op)
      d = properties.PAPER[c][0]
      assert row["holds"] == ("—" if d == 0 else "yes" if d * (fp - op) > 0 else "no")
  # layers 1, 2 hold no universal neuron: no verdict there
  assert (comp.xs("L1", level="scope")["holds"] == "—").all()
  assert (comp.xs("L1", level="scope")["n_focus"] == 0).all()


def test_strict_excess_and_sparse_counts_match_numpy(tmp_path):
  t, st = _corr(), _stats()
  counts = views.excess_counts(t)
  strict = t.min_corr.values - t.max_baseline.values
  layer = t.index.get_level_values("layer").values
  for thr in views.THRESHOLDS:
    assert counts.loc["all", f"strict_gt_{thr:g}"] == int(np.sum(strict > thr))
    assert counts.loc["L0", f"excess_gt_{thr:g}"] == int(np.nansum(
        t.excess_corr.values[layer == 0] > thr))
  # the table's own strict_excess column wins when present
  t2 = t.assign(strict_excess=0.7)
  assert views.excess_counts(t2).loc["all", "strict_gt_0.5"] == len(t)
  sp = views.sparse_excess(t, st)
  for l in range(L):
    s = st.sparsity.values[layer == l]
    e = t.excess_corr.values[layer == l]
    sparse = s <= np.quantile(s, 0.1)
    assert sp.loc[l, "sparse_neurons"] == sparse.sum()
    assert sp.loc[l, "median_excess_sparse"] == pytest.approx(np.nanmedian(e[sparse]))
    assert sp.loc[l, "sparse_excess_gt_0.5"] == int(np.sum(e[sparse] > 0.5))
  secs = views.run(t, st, focus.focus_set(t), str(tmp_path))
  assert [s[0] for s in secs] == ["Excess correlation without a threshold",
                                  "Excess correlation of sparse neurons"]
  assert all(len(s) == 4 and "<table" in s[3] for s in secs)


def test_cards_logit_effects_and_partners_match_numpy():
  rng = np.random.default_rng(3)
  D, V = 6, 11
  w = common.Weights(w_in=rng.normal(size=(L, D, F)), b_in=rng.normal(size=(L, F)),
                     w_out=rng.normal(size=(L, F, D)), w_u=rng.normal(size=(D, V)),
                     processed=True)
  texts = [f"t{i}" for i in range(V)]
  eff = cards.logit_effects(w, [(1, 4)], texts, k=3)[(1, 4)]
  ref = w.w_out[1, 4] @ (w.w_u - w.w_u.mean(1, keepdims=True))
  assert [t for t, _ in eff[0]] == [texts[i] for i in np.argsort(-ref)[:3]]
  assert [t for t, _ in eff[1]] == [texts[i] for i in np.argsort(ref)[:3]]
  assert eff[0][0][1] == pytest.approx(ref.max())
  t = _corr()
  t["corr__b"], t["max_sim_layer__b"], t["max_sim_neuron__b"] = 0.7, 2, 9
  assert cards.partners(t, (0, 1)) == [("b", 0.7, "L2.9")]


def test_role_shares_and_per_neuron_join():
  t = _corr()
  f = focus.focus_set(t)
  fam = pd.DataFrame({"family": np.where(np.arange(L * F) % 3 == 0, "unigram", "none"),
                      "best_label": "x", "best_vr": 0.7}, index=t.index)
  sh = roles.shares(fam["family"], f.mask(t.index))
  ids = np.array(f.mask(t.index))
  uni_fam = fam["family"].values[ids]
  assert sh.loc[(0, "unigram"), "share_focus"] == pytest.approx(np.mean(uni_fam == "unigram"))
  assert sh.loc[(0, "unigram"), "share_all"] == pytest.approx(
      np.mean(fam.xs(0, level="layer")["family"] == "unigram"))
  assert np.isnan(sh.loc[(1, "none"), "share_focus"])         # no focus neuron in layer 1
  per = roles.neuron_roles(f, families=fam)
  assert list(per.index) == list(f.ids) and (per["best_vr"] == 0.7).all()
