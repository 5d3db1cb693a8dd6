"""Per-neuron statistics of the paper's §5 (Fig. 3, 9, 14).

Activation statistics (over the kept tokens of a token stream, pre-activations
`blocks.{l}.mlp.hook_pre`): mean, var, skew, kurt (non-excess), sparsity = activation frequency
= share of pre-activations > 0 — exact streaming moments (ucore.analyses.moments), not the
original's 256-bin histograms.
Weight statistics (TransformerLens-processed weights): w_in_norm, w_out_norm, input_bias,
in_out_sim = cos(w_in, w_out), l2_penalty = ‖w_in‖² + ‖w_out‖², and vocab_mean/var/skew/kurt =
moments over the vocabulary of cos(w_out, W_U[:, t]) with unit-normalized W_U columns.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.analyses import common
from ucore.analyses.moments import StreamingMoments

ACTIVATION_COLUMNS = ("mean", "var", "skew", "kurt", "sparsity")
WEIGHT_COLUMNS = ("w_in_norm", "w_out_norm", "input_bias", "in_out_sim", "l2_penalty")
VOCAB_COLUMNS = ("vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt")
ALL_COLUMNS = WEIGHT_COLUMNS + ACTIVATION_COLUMNS + VOCAB_COLUMNS


# ---- activations ----------------------------------------------------------------------------
def activation_stats(model, batches: Iterable, hook: str = "mlp.hook_pre",
                     layers: Optional[list] = None) -> pd.DataFrame:
  """Exact moments of every neuron's activation at `hook` over the kept tokens of `batches`
  (ucore.data.batches.Batch objects: tokens, mask). Returns a (layer, neuron)-indexed frame with
  mean, var, skew, kurt, sparsity and the column `tokens` (count)."""
  cfg = model.config
  layers = list(range(cfg.n_layer)) if layers is None else [int(l) for l in layers]
  acc = [StreamingMoments(cfg.d_mlp) for _ in layers]
  for batch in batches:
    # sliced on the host: slicing the device array compiles a dynamic_slice program
    acts = np.asarray(model.neuron_activations(batch.tokens, layers=layers, hook=hook))
    keep = np.asarray(batch.mask).reshape(-1)
    for i in range(len(layers)):
      a = acts[..., i * cfg.d_mlp:(i + 1) * cfg.d_mlp].reshape(-1, cfg.d_mlp)
      acc[i].update(a[keep])
  if acc[0].n == 0:
    from ucore.jobs.errors import UserError
    raise UserError("no kept tokens in the token stream (all masked or empty); use more rows")
  cols = {k: np.concatenate([a.result()[k] for a in acc]) for k in ACTIVATION_COLUMNS}
  index = pd.MultiIndex.from_product([layers, range(cfg.d_mlp)], names=["layer", "neuron"])
  df = pd.DataFrame(cols, index=index)
  df["tokens"] = acc[0].n
  return df


# ---- weights --------------------------------------------------------------------------------
def vocab_cosine_moments(w_out: np.ndarray, w_u: np.ndarray, chunk: int = 1024) -> dict:
  """Moments over the vocabulary of cos(w_out[n], W_U[:, t]) for every row n of w_out [N, D]
  (W_U [D, V]); float64, two-pass per chunk of neurons."""
  w_u = np.asarray(w_u, np.float64)
  wu_hat = w_u / np.maximum(np.linalg.norm(w_u, axis=0, keepdims=True), 1e-30)
  w_out = np.asarray(w_out, np.float64)
  w_hat = w_out / np.maximum(np.linalg.norm(w_out, axis=1, keepdims=True), 1e-30)
  out = {k: np.empty(w_out.shape[0]) for k in ("mean", "var", "skew", "kurt")}
  for a in range(0, w_out.shape[0], chunk):
    cos = w_hat[a:a + chunk] @ wu_hat          # [n, V]
    mean = cos.mean(1)
    d = cos - mean[:, None]
    d2 = d * d
    m2 = d2.mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
      out["mean"][a:a + chunk] = mean
      out["var"][a:a + chunk] = m2
      out["skew"][a:a + chunk] = (d2 * d).mean(1) / m2 ** 1.5
      out["kurt"][a:a + chunk] = (d2 * d2).mean(1) / m2 ** 2
  return out


def weight_stats(weights: common.Weights) -> pd.DataFrame:
  """Weight statistics per neuron from (processed) weights; (layer, neuron) index."""
  L, D, F = weights.w_in.shape
  w_in = np.transpose(weights.w_in, (0, 2, 1)).reshape(L * F, D)    # rows = neurons
  w_out = weights.w_out.reshape(L * F, D)
  in_norm = np.linalg.norm(w_in, axis=1)
  out_norm = np.linalg.norm(w_out, axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    sim = (w_in * w_out).sum(1) / (in_norm * out_norm)
  voc = vocab_cosine_moments(w_out, weights.w_u)
  df = pd.DataFrame({
      "w_in_norm": in_norm, "w_out_norm": out_norm, "input_bias": weights.b_in.reshape(-1),
      "in_out_sim": sim, "l2_penalty": in_norm ** 2 + out_norm ** 2,
      "vocab_mean": voc["mean"], "vocab_var": voc["var"], "vocab_skew": voc["skew"],
      "vocab_kurt": voc["kurt"]}, index=common.neuron_index(L, F))
  return df


def neuron_stats(model, batches: Optional[Iterable] = None, weights=None) -> pd.DataFrame:
  """The full per-neuron table (ALL_COLUMNS; activation columns only when `batches` given)."""
  weights = common.processed_weights(model) if weights is None else weights
  df = weight_stats(weights)
  if batches is not None:
    act = activation_stats(model, batches)
    df = df.join(act)
  ordered = [c for c in ALL_COLUMNS if c in df.columns]
  return df[ordered + [c for c in df.columns if c not in ordered]]


# ---- universal vs non-universal --------------------------------------------------------------
def universal_comparison(stats: pd.DataFrame, universal: pd.Series) -> pd.DataFrame:
  """Median within-layer percentile of every statistic for universal vs other neurons
  (the paper's Fig. 3 summary), plus the correlation sparsity vs in_out_sim."""
  pct = common.layer_percentiles(stats, ALL_COLUMNS)
  uni = universal.reindex(stats.index).fillna(False).astype(bool)
  rows = []
  for col in pct.columns:
    rows.append({"statistic": col,
                 "universal_median_pct": float(pct.loc[uni.values, col].median()),
                 "other_median_pct": float(pct.loc[~uni.values, col].median()),
                 "universal_median": float(stats.loc[uni.values, col].median()),
                 "other_median": float(stats.loc[~uni.values, col].median())})
  return pd.DataFrame(rows).set_index("statistic")


def plot_universal(stats: pd.DataFrame, universal: pd.Series, path: str) -> str:
  pct = common.layer_percentiles(stats, ALL_COLUMNS)
  uni = universal.reindex(stats.index).fillna(False).astype(bool).values
  cols = list(pct.columns)
  fig, ax = common.new_figure(figsize=(max(6, 0.7 * len(cols)), 4))
  pos = np.arange(len(cols))
  data_u = [pct[c].values[uni & np.isfinite(pct[c].values)] for c in cols]
  data_o = [pct[c].values[~uni & np.isfinite(pct[c].values)] for c in cols]
  if any(len(d) for d in data_u):
    ax.boxplot([d if len(d) else [np.nan] for d in data_u], positions=pos - 0.18, widths=0.3,
               patch_artist=True, boxprops=dict(facecolor="tab:red", alpha=0.5),
               showfliers=False)
  ax.boxplot([d if len(d) else [np.nan] for d in data_o], positions=pos + 0.18, widths=0.3,
             patch_artist=True, boxprops=dict(facecolor="tab:gray", alpha=0.5),
             showfliers=False)
  ax.set_xticks(pos)
  ax.set_xticklabels(cols, rotation=45, ha="right")
  ax.set_ylabel("percentile within layer")
  ax.set_title(f"universal (red, n={int(uni.sum())}) vs other neurons (gray)")
  return common.save_figure(fig, path)


def plot_stat_by_layer(stats: pd.DataFrame, path: str,
                       columns=("sparsity", "skew", "kurt", "w_out_norm", "input_bias",
                                "vocab_kurt")) -> str:
  cols = [c for c in columns if c in stats.columns]
  fig, axes = common.new_figure(1, len(cols), figsize=(3 * len(cols), 3), squeeze=False)
  layers = sorted(set(stats.index.get_level_values("layer")))
  for ax, c in zip(axes[0], cols):
    per = [stats.xs(l, level="layer")[c].dropna().values for l in layers]
    ax.boxplot([p if len(p) else [np.nan] for p in per], positions=layers, showfliers=False)
    ax.set_title(c)
    ax.set_xlabel("layer")
    if c in ("kurt", "vocab_kurt"):
      ax.set_yscale("log")
  return common.save_figure(fig, path)


# ---- runner -----------------------------------------------------------------------------------
def run(model, batches, out_dir: str, corr: Optional[pd.DataFrame] = None) -> tuple:
  """Writes neuron_stats.parquet (+ universal_comparison.parquet with `corr`) and figures;
  returns (report sections, the neuron_stats table as written)."""
  os.makedirs(out_dir, exist_ok=True)
  stats = neuron_stats(model, batches)
  pct = common.layer_percentiles(stats, ALL_COLUMNS).add_suffix("_pct")
  table = stats.join(pct)
  if corr is not None:
    table = table.join(corr[["excess_corr", "universal"]])
  atomic.write_parquet(table, os.path.join(out_dir, "neuron_stats.parquet"))
  figs = [("Neuron statistics by layer", plot_stat_by_layer(
      stats, os.path.join(out_dir, "stats_by_layer.png")),
      "Per-layer distribution of activation frequency, pre-activation skew and kurtosis, "
      "‖w_out‖, input bias and vocabulary kurtosis (processed weights).")]
  summary = {"neurons": int(len(stats))}
  if "sparsity" in stats:
    ok = np.isfinite(stats["sparsity"]) & np.isfinite(stats["in_out_sim"])
    summary["tokens"] = int(stats["tokens"].iloc[0])
    summary["median_sparsity"] = float(stats["sparsity"].median())
    if ok.sum() > 2:   # paper: -0.69 (small-a), -0.63 (medium-a)
      summary["corr_sparsity_in_out_sim"] = float(np.corrcoef(
          stats["sparsity"][ok], stats["in_out_sim"][ok])[0, 1])
  if corr is not None:
    uni = corr["universal"].reindex(stats.index).fillna(False).astype(bool)
    summary["universal"] = int(uni.sum())
    if "sparsity" in stats:
      summary["median_sparsity_universal"] = float(stats["sparsity"][uni.values].median())
    comp = universal_comparison(stats, corr["universal"])
    atomic.write_parquet(comp, os.path.join(out_dir, "universal_comparison.parquet"))
  if corr is not None and uni.any():   # else: the properties analysis shows the top-k stand-in
    figs.append(("Universal vs other neurons", plot_universal(
        stats, corr["universal"], os.path.join(out_dir, "universal_vs_other.png")),
        "Within-layer percentiles of each statistic for universal (excess_corr > threshold) "
        "and other neurons (paper Fig. 3). " + ", ".join(
            f"{k} = {v:.3g}" for k, v in summary.items() if isinstance(v, float))))
  atomic.write_json(os.path.join(out_dir, "summary.json"), summary)
  return figs, table
