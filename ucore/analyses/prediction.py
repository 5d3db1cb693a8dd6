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

from ucore.jobs import atomic
from ucore.analyses import common
from ucore.jobs.errors import UserError

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


def family_summary(stats_by_model: dict, kurt_threshold: float = 10.0,
                   percentiles=PERCENTILES) -> tuple:
  """Across a model family (e.g. the 5 seeds): per-layer percentiles of vocab_kurt and
  vocab_skew pooled over all models' neurons, and per layer the count of vocab_kurt >
  threshold for each model plus the mean over models (paper: 130.8, 142.2, 207.2, 339.2 in
  L20..L23 of GPT-2 medium). Returns (percentiles, counts)."""
  if not stats_by_model:
    raise ValueError("no models")
  layers = {tuple(sorted(set(s.index.get_level_values("layer")))) for s in stats_by_model.values()}
  if len(layers) != 1:
    raise UserError("the models of a family must have the same layers")
  pooled = pd.concat(list(stats_by_model.values()))
  pct = layer_percentiles(pooled, percentiles=percentiles)
  col = f"kurt_gt_{kurt_threshold:g}"
  counts = pd.DataFrame({name: (s["vocab_kurt"] > kurt_threshold).groupby(level="layer").sum()
                         for name, s in stats_by_model.items()})
  counts[f"mean_{col}"] = counts.mean(axis=1)
  counts.index.name = "layer"
  return pct, counts


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
        partition_factor: float = 4.0, family: Optional[dict] = None) -> list:
  """Writes vocab_roles.parquet (per neuron), vocab_role_counts.parquet (per layer),
  vocab_percentiles.parquet and Fig. 6-style PNGs. `family`: {name: other model of the same
  family} — then also vocab_family_percentiles.parquet and vocab_family_counts.parquet
  (this model included as "self")."""
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
           f"vocab_kurt > {kurt_threshold:g}: {int(counts.iloc[:, 1].sum())} (prediction: skew > 0,"
           f" suppression: skew < 0; threshold from the authors' notebooks); partition neurons: "
           f"vocab_var > {partition_factor:g} × median, this project's own threshold (the paper "
           "states none).")]
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
  if family:
    by_model = {"self": stats}
    for name, m in family.items():
      if (m.config.n_layer, m.config.d_mlp) != (model.config.n_layer, model.config.d_mlp):
        raise UserError(f"family model {name} has {m.config.n_layer}×{m.config.d_mlp} neurons, "
                        f"not {model.config.n_layer}×{model.config.d_mlp} like the analysed model")
      by_model[name] = stats_mod.weight_stats(common.processed_weights(m))
    fpct, fcounts = family_summary(by_model, kurt_threshold)
    atomic.write_parquet(fpct, os.path.join(out_dir, "vocab_family_percentiles.parquet"))
    atomic.write_parquet(fcounts, os.path.join(out_dir, "vocab_family_counts.parquet"))
    figs.append((f"Vocabulary kurtosis and skew by layer ({len(by_model)} models)",
                 plot_percentiles(fpct, os.path.join(out_dir, "vocab_percentiles_family.png"),
                                  f"{len(by_model)} models pooled"),
                 "Per-layer percentiles pooled over the model family; mean count of "
                 f"vocab_kurt > {kurt_threshold:g} per layer (last layers): " + ", ".join(
                     f"L{l}: {v:.1f}" for l, v in fcounts.iloc[-4:, -1].items())))
  atomic.write_parquet(table, os.path.join(out_dir, "vocab_roles.parquet"))
  atomic.write_parquet(counts, os.path.join(out_dir, "vocab_role_counts.parquet"))
  atomic.write_parquet(pct, os.path.join(out_dir, "vocab_percentiles.parquet"))
  return figs
