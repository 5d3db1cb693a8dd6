"""Prediction, suppression and partition neurons from the vocabulary composition of w_out (§7).

With vocab_* = moments over the vocabulary of cos(w_out, W_U[:, t]) (ucore.analyses.stats):
  prediction   vocab_kurt > kurt_threshold and vocab_skew > 0
  suppression  vocab_kurt > kurt_threshold and vocab_skew < 0
  partition    vocab_var > partition_factor × the model's median vocab_var (and not the above)
Fig. 6: per-layer percentiles of vocab_kurt and vocab_skew across a set of neurons (all, or the
universal ones).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pandas as pd

from ucore.analyses import common

PERCENTILES = (5, 10, 25, 50, 75, 90, 95)


def layer_percentiles(stats: pd.DataFrame, columns=("vocab_kurt", "vocab_skew"),
                      select: Optional[pd.Series] = None,
                      percentiles=PERCENTILES) -> pd.DataFrame:
  """(layer, statistic)-indexed frame with one column p<q> per percentile."""
  df = stats if select is None else stats[select.reindex(stats.index).fillna(False).astype(bool)]
  rows = {}
  for layer, g in df.groupby(level="layer"):
    for c in columns:
      vals = g[c].dropna().values
      rows[(int(layer), c)] = (np.percentile(vals, percentiles) if len(vals)
                               else np.full(len(percentiles), np.nan))
  out = pd.DataFrame.from_dict(rows, orient="index", columns=[f"p{q}" for q in percentiles])
  out.index = pd.MultiIndex.from_tuples(out.index, names=["layer", "statistic"])
  return out


def classify(stats: pd.DataFrame, kurt_threshold: float = 10.0,
             partition_factor: float = 4.0) -> pd.Series:
  kurt, skew, var = stats["vocab_kurt"], stats["vocab_skew"], stats["vocab_var"]
  role = pd.Series("other", index=stats.index)
  part = var > partition_factor * np.nanmedian(var.values)
  role[part] = "partition"
  high = kurt > kurt_threshold
  role[high & (skew > 0)] = "prediction"
  role[high & (skew < 0)] = "suppression"
  return role


def role_counts(stats: pd.DataFrame, roles: pd.Series, kurt_threshold: float = 10.0,
                select: Optional[pd.Series] = None) -> pd.DataFrame:
  """Per layer: neurons with vocab_kurt > threshold and the count of each role."""
  sel = (pd.Series(True, index=stats.index) if select is None
         else select.reindex(stats.index).fillna(False).astype(bool))
  layer = stats.index.get_level_values("layer")
  out = pd.DataFrame({"neurons": sel.groupby(layer).sum(),
                      f"kurt_gt_{kurt_threshold:g}": (sel & (stats["vocab_kurt"] >
                                                           kurt_threshold)).groupby(layer).sum()})
  for r in ("prediction", "suppression", "partition"):
    out[r] = (sel & (roles == r)).groupby(layer).sum()
  out.index.name = "layer"
  return out.astype(int)


def plot_percentiles(pct: pd.DataFrame, path: str, title: str) -> str:
  fig, axes = common.new_figure(1, 2, figsize=(9, 3.5))
  for ax, stat in zip(axes, ("vocab_kurt", "vocab_skew")):
    sub = pct.xs(stat, level="statistic")
    x = sub.index.values
    ax.fill_between(x, sub["p5"], sub["p95"], alpha=0.2, label="5–95")
    ax.fill_between(x, sub["p25"], sub["p75"], alpha=0.4, label="25–75")
    ax.plot(x, sub["p50"], "k-", label="median")
    ax.set_xlabel("layer")
    ax.set_title(stat)
    if stat == "vocab_kurt":
      ax.set_yscale("log")
  axes[0].legend(fontsize=7)
  fig.suptitle(title)
  return common.save_figure(fig, path)


def run(model, out_dir: str, stats: Optional[pd.DataFrame] = None,
        corr: Optional[pd.DataFrame] = None, kurt_threshold: float = 10.0,
        partition_factor: float = 4.0) -> list:
  """Writes vocab_roles.parquet (per neuron), vocab_role_counts.parquet (per layer),
  vocab_percentiles.parquet and Fig. 6-style PNGs."""
  from ucore.analyses import stats as stats_mod
  os.makedirs(out_dir, exist_ok=True)
  if stats is None:
    stats = stats_mod.weight_stats(common.processed_weights(model))
  roles = classify(stats, kurt_threshold, partition_factor)
  table = stats[["vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt"]].copy()
  table["role"] = roles
  counts = role_counts(stats, roles, kurt_threshold)
  pct = layer_percentiles(stats)
  figs = [("Vocabulary kurtosis and skew by layer (all neurons)",
           plot_percentiles(pct, os.path.join(out_dir, "vocab_percentiles_all.png"), "all neurons"),
           f"Per-layer percentiles of the moments of cos(w_out, W_U) (paper Fig. 6). Neurons with "
           f"vocab_kurt > {kurt_threshold:g}: {int(counts.iloc[:, 1].sum())}.")]
  if corr is not None:
    uni = corr["universal"]
    table["universal"] = uni.reindex(table.index).fillna(False).astype(bool)
    pct_u = layer_percentiles(stats, select=uni)
    pct = pd.concat({"all": pct, "universal": pct_u}, names=["set"])
    cu = role_counts(stats, roles, kurt_threshold, select=uni)
    counts = pd.concat({"all": counts, "universal": cu}, names=["set"])
    if uni.any():
      figs.append(("Vocabulary kurtosis and skew by layer (universal neurons)",
                   plot_percentiles(pct_u, os.path.join(out_dir, "vocab_percentiles_universal.png"),
                                    "universal neurons"),
                   "As above, universal neurons only."))
  common.write_parquet(table, os.path.join(out_dir, "vocab_roles.parquet"))
  common.write_parquet(counts, os.path.join(out_dir, "vocab_role_counts.parquet"))
  common.write_parquet(pct, os.path.join(out_dir, "vocab_percentiles.parquet"))
  return figs
