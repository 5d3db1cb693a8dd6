"""Threshold-free views of universality beside the 0.5 cut (paper §4).

  excess_counts(corr)        per layer (and all): neurons with excess_corr > t and with
                             strict_excess = min_corr − max_baseline > t, for each t
  sparse_excess(corr, stats) per layer: excess of the sparsest decile (lowest activation
                             frequency within the layer) vs the other neurons
and two figures: per-layer ECDFs of mean_corr, mean_baseline and excess_corr; excess_corr
against activation frequency.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.analyses import common

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


def strict_excess(corr: pd.DataFrame) -> np.ndarray:
  """min_corr − max_baseline (the table's strict_excess column when present)."""
  if "strict_excess" in corr.columns:
    return np.asarray(corr["strict_excess"], np.float64)
  return np.asarray(corr["min_corr"], np.float64) - np.asarray(corr["max_baseline"], np.float64)


def excess_counts(corr: pd.DataFrame, thresholds=THRESHOLDS) -> pd.DataFrame:
  """Index scope ("all", "L0", ...); columns neurons, excess_gt_<t>, strict_gt_<t>."""
  ex = np.asarray(corr["excess_corr"], np.float64)
  st = strict_excess(corr)
  layer = corr.index.get_level_values("layer").values
  rows = []
  for scope, sel in [("all", np.ones(len(corr), bool))] + [
      (f"L{l}", layer == l) for l in sorted(set(layer.tolist()))]:
    row = {"scope": scope, "neurons": int(sel.sum())}
    with np.errstate(invalid="ignore"):
      for t in thresholds:
        row[f"excess_gt_{t:g}"] = int(np.sum(ex[sel] > t))
      for t in thresholds:
        row[f"strict_gt_{t:g}"] = int(np.sum(st[sel] > t))
    rows.append(row)
  return pd.DataFrame(rows).set_index("scope")


def sparse_excess(corr: pd.DataFrame, stats: pd.DataFrame, decile: float = 0.1,
                  thresholds=(0.2, 0.5)) -> pd.DataFrame:
  """Per layer: the sparsest `decile` of neurons by activation frequency (stats.sparsity, lowest
  within the layer) vs the rest — median excess_corr and counts above each threshold."""
  df = pd.DataFrame({"excess": corr["excess_corr"]}).join(stats[["sparsity"]], how="inner")
  rows = []
  for layer, g in df.groupby(level="layer"):
    cut = g["sparsity"].quantile(decile)
    sparse = (g["sparsity"] <= cut).values
    row = {"layer": int(layer), "sparse_neurons": int(sparse.sum()),
           "sparsity_cut": float(cut),
           "median_excess_sparse": float(np.nanmedian(g["excess"].values[sparse])),
           "median_excess_other": float(np.nanmedian(g["excess"].values[~sparse]))
           if (~sparse).any() else np.nan}
    for t in thresholds:
      row[f"sparse_excess_gt_{t:g}"] = int(np.sum(g["excess"].values[sparse] > t))
      row[f"other_excess_gt_{t:g}"] = int(np.sum(g["excess"].values[~sparse] > t))
    rows.append(row)
  return pd.DataFrame(rows).set_index("layer")


def _ecdf(ax, x, **kw):
  x = np.sort(np.asarray(x, np.float64)[np.isfinite(x)])
  if len(x):
    ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", **kw)


def plot_cdfs(corr: pd.DataFrame, path: str, threshold: float = 0.5) -> str:
  layers = sorted(set(corr.index.get_level_values("layer").tolist()))
  ncol = min(4, len(layers))
  nrow = -(-len(layers) // ncol)
  fig, axes = common.new_figure(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False)
  for i, l in enumerate(layers):
    ax = axes[i // ncol, i % ncol]
    g = corr.xs(l, level="layer")
    _ecdf(ax, g["mean_corr"], color="tab:blue", label="mean max corr")
    _ecdf(ax, g["mean_baseline"], color="0.4", ls="--", label="mean baseline")
    _ecdf(ax, g["excess_corr"], color="tab:red", label="excess")
    ax.axvline(threshold, color="k", lw=0.6, ls=":")
    ax.set_title(f"layer {l}", fontsize=9)
    ax.set_xlabel("correlation")
    ax.set_ylabel("share of neurons ≤ x")
  for j in range(len(layers), nrow * ncol):
    axes[j // ncol, j % ncol].axis("off")
  axes[0, 0].legend(fontsize=7, loc="lower right")
  return common.save_figure(fig, path)


def plot_sparse(corr: pd.DataFrame, stats: pd.DataFrame, focus_mask, path: str,
                label: str) -> str:
  df = pd.DataFrame({"excess": corr["excess_corr"]}).join(stats[["sparsity"]], how="inner")
  m = pd.Series(np.asarray(focus_mask, bool), index=corr.index).reindex(df.index).values
  fig, ax = common.new_figure(figsize=(6, 4))
  x = np.clip(df["sparsity"].values, 1e-4, 1)
  ax.scatter(x[~m], df["excess"].values[~m], s=4, c="0.6", label="other")
  ax.scatter(x[m], df["excess"].values[m], s=10, c="tab:red", label=label)
  ax.set_xscale("log")
  ax.set_xlabel("activation frequency (share of pre-activations > 0)")
  ax.set_ylabel("excess correlation")
  ax.legend(fontsize=7)
  return common.save_figure(fig, path)


def _html(df: pd.DataFrame) -> str:
  return df.reset_index().to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                  classes="grid", border=0)


def run(corr: pd.DataFrame, stats, focus, out_dir: str, threshold: float = 0.5) -> list:
  """Writes excess_counts.parquet (+ sparse_excess.parquet with stats) and figures; returns
  report sections (4-tuples)."""
  os.makedirs(out_dir, exist_ok=True)
  counts = excess_counts(corr)
  atomic.write_parquet(counts, os.path.join(out_dir, "excess_counts.parquet"))
  secs = [("Excess correlation without a threshold", plot_cdfs(
      corr, os.path.join(out_dir, "excess_cdf.png"), threshold),
      "Per layer: cumulative distributions of each neuron's mean max correlation, its mean "
      "rotation baseline and their difference (excess); dotted: the 0.5 cut. Table: neurons "
      "whose excess (mean_corr − mean_baseline) and strict excess (min_corr − max_baseline, "
      "the paper's stricter list) clear each threshold.", _html(counts))]
  if stats is not None and "sparsity" in stats.columns:
    sp = sparse_excess(corr, stats)
    atomic.write_parquet(sp, os.path.join(out_dir, "sparse_excess.parquet"))
    secs.append(("Excess correlation of sparse neurons", plot_sparse(
        corr, stats, focus.mask(corr.index), os.path.join(out_dir, "sparse_excess.png"),
        focus.label),
        f"Excess correlation against activation frequency (red: {focus.label}). Table: per "
        "layer, the sparsest 10% of neurons (lowest activation frequency) against the others. "
        + focus.note, _html(sp)))
  return secs
