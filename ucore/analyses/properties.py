"""Properties of universal vs other neurons, per layer, against the directions the paper
reports (§5, Fig. 3/4).

For every statistic of ucore.analyses.stats (activation frequency, pre-activation skew and
kurtosis, weight norms, input bias, cos(w_in, w_out), l2 penalty, vocabulary moments) and every
scope (all layers pooled, then each layer): the median within-layer percentile of the focus set
(ucore.analyses.focus: the universal neurons, or the top-k stand-in) and of the other neurons,
their median raw values, the paper's direction and `holds`: "yes" when the focus set's median
percentile lies on the paper's side of the others' (strictly), "no" when not, "—" when the
paper states no direction or the scope has no focus neuron.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.analyses import common

# statistic -> (direction of universal vs other: +1 higher, -1 lower, 0 none stated; paper text)
PAPER = {
    "sparsity": (-1, "lower: low activation frequency (median 0.025 small-a, 0.036 medium-a)"),
    "skew": (+1, "higher pre-activation skew"),
    "kurt": (+1, "higher pre-activation kurtosis"),
    "w_in_norm": (+1, "higher: large weight norm"),
    "w_out_norm": (+1, "higher: large weight norm"),
    "l2_penalty": (+1, "higher: large weight norm"),
    "input_bias": (-1, "lower: large negative input bias"),
    "in_out_sim": (+1, "higher (implied: frequency and cos(w_in, w_out) correlate at −0.69 "
                       "and universal neurons are sparse)"),
    "vocab_kurt": (+1, "higher vocabulary kurtosis"),
    "vocab_skew": (0, "none stated (sign separates prediction from suppression)"),
    "mean": (0, "none stated"), "var": (0, "none stated"),
    "vocab_mean": (0, "none stated"), "vocab_var": (0, "none stated"),
}


def _median(x) -> float:
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(np.median(x)) if x.size else np.nan


def holds(direction: int, focus_pct: float, other_pct: float) -> str:
  if direction == 0 or not (np.isfinite(focus_pct) and np.isfinite(other_pct)):
    return "—"
  return "yes" if direction * (focus_pct - other_pct) > 0 else "no"


def compare(stats: pd.DataFrame, focus_mask: np.ndarray) -> pd.DataFrame:
  """Long table indexed by (scope, statistic), scope "all" then "L0", "L1", ...: n_focus,
  focus_median_pct, other_median_pct, focus_median, other_median, paper, holds."""
  cols = [c for c in PAPER if c in stats.columns]
  pct = common.layer_percentiles(stats, cols)
  focus_mask = np.asarray(focus_mask, bool)
  layer = stats.index.get_level_values("layer").values
  scopes = [("all", np.ones(len(stats), bool))] + [
      (f"L{l}", layer == l) for l in sorted(set(layer.tolist()))]
  rows = []
  for scope, sel in scopes:
    f, o = sel & focus_mask, sel & ~focus_mask
    for c in cols:
      fp, op = _median(pct[c].values[f]), _median(pct[c].values[o])
      d, text = PAPER[c]
      rows.append({"scope": scope, "statistic": c, "n_focus": int(f.sum()),
                   "focus_median_pct": fp, "other_median_pct": op,
                   "focus_median": _median(stats[c].values[f]),
                   "other_median": _median(stats[c].values[o]),
                   "paper": text, "holds": holds(d, fp, op)})
  return pd.DataFrame(rows).set_index(["scope", "statistic"])


def summary_html(comp: pd.DataFrame, label: str) -> str:
  """Rows = statistics; per scope a cell 'focus pct / other pct holds?'."""
  scopes = list(dict.fromkeys(comp.index.get_level_values("scope")))
  head = ("<tr><th>statistic</th><th>paper: universal vs other</th>" +
          "".join(f"<th>{s} ({label} / other pct) — holds here?</th>" for s in scopes) + "</tr>")
  body = []
  for stat in dict.fromkeys(comp.index.get_level_values("statistic")):
    cells = []
    for s in scopes:
      r = comp.loc[(s, stat)]
      val = ("—" if not np.isfinite(r["focus_median_pct"]) else
             f"{r['focus_median_pct']:.2f} / {r['other_median_pct']:.2f}")
      cells.append(f"<td>{val} {r['holds']}</td>")
    body.append(f"<tr><th>{stat}</th><td>{comp.loc[(scopes[0], stat), 'paper']}</td>"
                + "".join(cells) + "</tr>")
  return f'<table class="grid">{head}{"".join(body)}</table>'


def plot(comp: pd.DataFrame, path: str, label: str) -> str:
  """One panel per scope holding focus neurons (layers without any are left out: the table
  marks them "—"): the focus set's median within-layer percentile per statistic (bars,
  coloured by holds), the others' (gray dots), 0.5 line."""
  scopes = [s for s in dict.fromkeys(comp.index.get_level_values("scope"))
            if (comp.xs(s, level="scope")["n_focus"] > 0).any()]
  fig, axes = common.new_figure(len(scopes), 1, figsize=(9, 2.4 * len(scopes)), squeeze=False)
  colors = {"yes": "tab:green", "no": "tab:red", "—": "tab:gray"}
  for ax, s in zip(axes[:, 0], scopes):
    sub = comp.xs(s, level="scope")
    x = np.arange(len(sub))
    ax.bar(x, np.nan_to_num(sub["focus_median_pct"].values, nan=0.0),
           color=[colors[h] for h in sub["holds"]], alpha=0.7, label=f"{label} (median)")
    ax.plot(x, sub["other_median_pct"].values, "o", color="0.3", label="other (median)")
    ax.axhline(0.5, color="k", lw=0.6, ls="--")
    ax.set_ylim(0, 1)
    ax.set_xticks(x)
    ax.set_xticklabels(list(sub.index), rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"{s}: pct in layer", fontsize=8)
  axes[0, 0].legend(fontsize=7, loc="upper right")
  axes[0, 0].set_title("green: the paper's direction holds here; red: it does not; gray: "
                       "no direction stated", fontsize=8)
  return common.save_figure(fig, path)


def run(stats: pd.DataFrame, focus, out_dir: str) -> list:
  """Writes universal_properties.parquet and .png; returns one report section (4-tuple)."""
  os.makedirs(out_dir, exist_ok=True)
  comp = compare(stats, focus.mask(stats.index))
  atomic.write_parquet(comp, os.path.join(out_dir, "universal_properties.parquet"))
  png = plot(comp, os.path.join(out_dir, "universal_properties.png"), focus.label)
  allrows = comp.xs("all", level="scope")
  n_dir = int((allrows["holds"] != "—").sum())
  n_yes = int((allrows["holds"] == "yes").sum())
  caption = (f"{focus.note} Median within-layer percentile of each statistic for the "
             f"{focus.label} set vs the other neurons, pooled and per layer (paper Fig. 3/4: "
             f"pre-activation moments over held-out tokens, TransformerLens-processed weights). "
             f"The paper's direction holds here for {n_yes} of {n_dir} statistics (all layers).")
  return [("Universal vs other neurons: the paper's properties", png, caption,
           summary_html(comp, focus.label))]
