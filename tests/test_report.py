"""Report: figures and HTML from a synthetic neuron table."""
import os
import re

import numpy as np
import pandas as pd
import pytest

from ucore.analyses.persistence import persistence_table
from ucore.jobs.errors import UserError
from ucore.report import (Section, partner_layer_shares, per_layer_stats, table_summary,
                          write_report)

N_LAYER, D_MLP = 4, 50


def _table(seed=0):
  rng = np.random.default_rng(seed)
  idx = pd.MultiIndex.from_product([range(N_LAYER), range(D_MLP)], names=["layer", "neuron"])
  n = len(idx)
  base = rng.uniform(0.05, 0.25, n)
  mean = base + rng.uniform(0.0, 0.8, n)
  spread = rng.uniform(0.0, 0.1, n)
  t = pd.DataFrame({"mean_corr": mean, "max_corr": mean + spread, "min_corr": mean - spread,
                    "mean_baseline": base, "max_sim_layer": rng.integers(0, N_LAYER, n)},
                   index=idx)
  t["excess_corr"] = t.mean_corr - t.mean_baseline
  t["universal"] = t.excess_corr > 0.5
  t.loc[(1, 3), "mean_corr"] = np.nan   # a dead neuron must not break the figures
  return t


def _examples(table):
  top = table[table.universal].sort_values("excess_corr", ascending=False).head(3)
  rows = []
  for (l, n) in top.index:
    for i in range(4):
      rows.append({"layer": l, "neuron": n, "activation": 2.0 - 0.1 * i,
                   "context_before": "the <cat> sat ", "token": f"tok{l}_{n}_{i}",
                   "context_after": " on the mat"})
  return pd.DataFrame(rows)


def test_report_writes_every_figure_and_references_them(tmp_path):
  table = _table()
  hist = np.eye(N_LAYER, dtype=np.int64) * 40 + 3
  final = table
  steps = {0: table.index[:5], 100: table.index[table.universal.values][:10],
           1000: table.index[table.universal.values]}
  persist = persistence_table(final, steps)
  extra_png = tmp_path / "elsewhere" / "extra.png"
  extra_png.parent.mkdir()
  # A later analysis's figure, made by that analysis.
  from ucore.report.figures import _figure, _save
  fig = _figure()
  fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
  _save(fig, str(extra_png))

  out = tmp_path / "report"
  html_path = write_report(
      str(out), {"small-a vs b..e": table, "second <model>": _table(1)},
      partner_layers={"small-a vs b..e": hist},
      examples={"small-a vs b..e": _examples(table)},
      persistence={"small-a vs b..e": persist},
      figures_extra=[("Weight norms", str(extra_png), "w_out norm by class"),
                     Section("Notes", html="<p id='notes'>free text</p>")],
      summary={"models": "a, b, c, d, e", "tokens": 1_000_000})
  assert html_path == str(out / "index.html")
  html = open(html_path, encoding="utf-8").read()
  pngs = sorted(os.listdir(out / "figures"))
  # Per table: 2a, 2b, 2c (given or from max_sim_layer), per-layer; persistence once; extra.
  assert len(pngs) == 2 * 4 + 1 + 1, pngs
  for png in pngs:
    data = (out / "figures" / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert f'src="figures/{png}"' in html
  referenced = re.findall(r'src="([^"]+)"', html)
  assert all((out / r).is_file() for r in referenced)   # every link resolves, relatively
  assert len(referenced) == len(pngs)
  # Summary table, names escaped, examples in context, extra sections in order.
  n_univ = int(table.universal.sum())
  assert f"{n_univ:,}" in html and "second &lt;model&gt;" in html
  assert "<mark>tok" in html and "the &lt;cat&gt; sat " in html
  assert html.index("Weight norms") < html.index("id='notes'")
  assert "1,000,000" in html
  top = table[table.universal].sort_values("excess_corr", ascending=False).index[0]
  assert f"L{top[0]}.{top[1]}" in html


def test_summary_and_helpers_compute_the_paper_quantities():
  table = _table()
  s = table_summary(table)
  u = table.universal
  assert s["universal"] == int(u.sum()) and s["neurons"] == N_LAYER * D_MLP
  assert s["universal share"] == pytest.approx(u.mean())
  assert s["median excess_corr (universal)"] == pytest.approx(table.excess_corr[u].median())
  assert s["mean (max - min over seeds) of max_corr (all)"] == pytest.approx(
      (table.max_corr - table.min_corr).mean())
  per = per_layer_stats(table)
  assert per.n_universal.sum() == u.sum() and list(per.index) == list(range(N_LAYER))
  shares = partner_layer_shares(np.array([[3, 1], [0, 0]]))
  np.testing.assert_allclose(shares, [[0.75, 0.25], [0, 0]])
  final = [(0, 1), (0, 2), (1, 5), (3, 7)]
  p = persistence_table(final, {0: [], 10: [(0, 1), (2, 2)], 20: final})
  assert list(p.index) == [0, 10, 20]
  np.testing.assert_allclose(p.share_of_final.values, [0.0, 0.25, 1.0])
  assert np.isnan(p.share_still_universal[0])
  np.testing.assert_allclose(p.share_still_universal.values[1:], [0.5, 1.0])


def test_bad_inputs_are_user_errors(tmp_path):
  table = _table()
  with pytest.raises(UserError, match="lacks columns"):
    write_report(str(tmp_path), {"t": table.drop(columns="excess_corr")})
  with pytest.raises(UserError, match=r"indexed by \(layer, neuron\)"):
    write_report(str(tmp_path), {"t": table.reset_index()})
  with pytest.raises(UserError, match="not in tables"):
    write_report(str(tmp_path), {"t": table}, partner_layers={"u": np.eye(2)})
  with pytest.raises(UserError, match="does not exist"):
    write_report(str(tmp_path), {"t": table}, figures_extra=[("x", str(tmp_path / "no.png"))])
  with pytest.raises(UserError, match="at least one"):
    write_report(str(tmp_path), {})


def test_parquet_table_and_training_curves_section(tmp_path):
  from ucore.report import training_curves
  table = _table()
  pq = tmp_path / "neurons.parquet"
  table.reset_index().to_parquet(pq)
  rows = []
  for seed in (0, 1):
    for step in range(1, 21):
      rows.append({"step": step, "seed": seed, "split": "train", "loss": 5 - 0.1 * step + seed})
    for step in (0, 10, 20):
      rows.append({"step": step, "seed": seed, "split": "heldout", "loss": 5 - 0.1 * step})
  curves = training_curves(pd.DataFrame(rows), str(tmp_path / "curves.png"))
  html_path = write_report(str(tmp_path / "r"), {"from parquet": str(pq)},
                           figures_extra=[("Training", curves, "loss per seed")])
  html = open(html_path).read()
  assert 'src="figures/curves.png"' in html and (tmp_path / "r" / "figures" / "curves.png").is_file()
  assert f"{int(table.universal.sum()):,}" in html
  with pytest.raises(UserError, match="lacks columns"):
    training_curves(pd.DataFrame({"step": [1]}), str(tmp_path / "x.png"))


def test_focus_set_over_training_and_html_sections(tmp_path):
  """The final set followed back (numpy by hand), its section, and 4-tuple sections' HTML."""
  from ucore.analyses.focus import focus_set
  from ucore.analyses.persistence import focus_over_training
  from ucore.report import sections as RS
  final = _table(0).assign(universal=False)           # nothing universal: top-k stand-in
  f = focus_set(final, k=5)
  steps = {10: _table(3), 20: _table(4), 30: final}
  by = focus_over_training(f.ids, steps, 0.5)
  ids = pd.MultiIndex.from_tuples(f.ids)
  for s, t in steps.items():
    e = t["excess_corr"].reindex(ids).values
    assert by.loc[s, "median_excess"] == pytest.approx(np.nanmedian(e))
    assert by.loc[s, "share_above_threshold"] == pytest.approx(np.mean(np.nan_to_num(e, nan=-1) > 0.5))
    top = set(t["excess_corr"].dropna().sort_values(ascending=False).index[:5])
    assert by.loc[s, "share_in_top"] == pytest.approx(len(top & set(f.ids)) / 5)
  assert by.loc[30, "share_in_top"] == 1.0
  sec = RS.focus_over_training(by, str(tmp_path / "figs"), f)
  assert "top-5 by excess" in sec.title and "No neuron is universal" in sec.caption
  html = open(write_report(str(tmp_path / "r"), {"t": final}, figures_extra=[
      sec, ("Cards", sec.png_path, "caption here", "<div class='card' id='c1'>x</div>")])).read()
  assert "id='c1'" in html and "caption here" in html and "<table" in html
  assert html.count("<img") == 4 + 2                      # table figures + the two sections
