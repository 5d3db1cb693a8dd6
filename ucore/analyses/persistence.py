"""Universality over training (the pipeline's persistence stage): results, not figures
(ucore.report.figures draws them).

  persistence_table(final, {step: universal ids or neuron table})  how much of the final
      universal set is universal at each kept checkpoint, and the reverse
  excess_by_step({step: neuron table})  medians / percentiles / threshold shares per step
  focus_over_training(final ids, {step: neuron table})  the final focus set (universal, or the
      top-k stand-in of ucore.analyses.focus) followed back: its excess at each step
  share_by_layer({step: neuron table})  universal neurons per (step, layer)
  over_training({step: neuron table}, threshold, fallback_k)  all of the above against the
      last step's table (the one entry point of ucore.sweep and the pipeline)
"""
import dataclasses

import numpy as np
import pandas as pd

from ucore.analyses.focus import Focus, focus_set


def persistence_table(final_universal, universal_at_step: dict) -> pd.DataFrame:
  """Persistence of universality over training.

  final_universal: the (layer, neuron) ids universal at the end (an Index/iterable of tuples,
    or a neuron table, whose universal column is used).
  universal_at_step: {step: same kind of object} for intermediate checkpoints.
  Returns a DataFrame indexed by step with n_universal, share_of_final (|U_s ∩ U_final| /
  |U_final|: how much of the final set is already universal at s) and share_still_universal
  (|U_s ∩ U_final| / |U_s|: how much of step s's set survives to the end).
  """
  def ids(x):
    if isinstance(x, pd.DataFrame):
      x = x.index[x["universal"].astype(bool).values]
    return {(int(a), int(b)) for a, b in x}

  final = ids(final_universal)
  rows = []
  for step in sorted(universal_at_step):
    u = ids(universal_at_step[step])
    both = len(u & final)
    rows.append({"step": int(step), "n_universal": len(u),
                 "share_of_final": both / len(final) if final else np.nan,
                 "share_still_universal": both / len(u) if u else np.nan})
  return pd.DataFrame(rows).set_index("step")


def excess_by_step(tables_by_step: dict, thresholds=(0.1, 0.2, 0.3, 0.5)) -> pd.DataFrame:
  """Per training step: medians of mean_corr / mean_baseline / excess_corr, the 99th
  percentile of excess, and the share of neurons whose excess clears each threshold."""
  rows = []
  for step in sorted(tables_by_step):
    t = tables_by_step[step]
    ex = np.asarray(t["excess_corr"], np.float64)
    ex = ex[np.isfinite(ex)]
    row = {"step": int(step), "median_mean_corr": float(np.nanmedian(t["mean_corr"])),
           "median_mean_baseline": float(np.nanmedian(t["mean_baseline"])),
           "median_excess": float(np.median(ex)) if ex.size else np.nan,
           "p99_excess": float(np.percentile(ex, 99)) if ex.size else np.nan}
    for th in thresholds:
      row[f"share_excess_gt_{th:g}"] = float(np.mean(ex > th)) if ex.size else np.nan
    rows.append(row)
  return pd.DataFrame(rows).set_index("step")


def focus_over_training(final_ids, tables_by_step: dict, threshold: float = 0.5) -> pd.DataFrame:
  """Per step, for the final set `final_ids` [(layer, neuron)] (populated even when nothing is
  universal): n_set, median_excess and mean_excess of the set, share_above_threshold (share of
  the set with excess_corr > threshold at that step) and share_in_top (share of the set among
  that step's |set| neurons of highest excess_corr)."""
  ids = [(int(a), int(b)) for a, b in final_ids]
  rows = []
  for step in sorted(tables_by_step):
    t = tables_by_step[step]
    ex = pd.Series(np.asarray(t["excess_corr"], np.float64), index=t.index)
    e = ex.reindex(pd.MultiIndex.from_tuples(ids, names=["layer", "neuron"])).values
    top = set(ex.dropna().nlargest(len(ids)).index) if ids else set()
    rows.append({"step": int(step), "n_set": len(ids),
                 "median_excess": float(np.nanmedian(e)) if np.isfinite(e).any() else np.nan,
                 "mean_excess": float(np.nanmean(e)) if np.isfinite(e).any() else np.nan,
                 "share_above_threshold": float(np.mean(np.nan_to_num(e, nan=-np.inf) >
                                                        threshold)) if ids else np.nan,
                 "share_in_top": len(top & set(ids)) / len(ids) if ids else np.nan})
  return pd.DataFrame(rows).set_index("step")


def share_by_layer(tables_by_step: dict) -> pd.DataFrame:
  """Per (step, layer): n_neurons, n_universal and share_universal (dead neurons count as
  neurons that are not universal, as in the tables' layer counts)."""
  parts = []
  for step in sorted(tables_by_step):
    u = tables_by_step[step]["universal"].astype(bool)
    g = u.groupby(level="layer")
    parts.append(pd.DataFrame({"step": int(step), "n_neurons": g.size(),
                               "n_universal": g.sum().astype(int),
                               "share_universal": g.mean().astype(np.float64)}))
  return pd.concat(parts).reset_index().set_index(["step", "layer"]).sort_index()


@dataclasses.dataclass(frozen=True)
class OverTraining:
  """Universality over training against the last step's table."""
  final_step: int
  persistence: pd.DataFrame       # persistence_table
  excess_by_step: pd.DataFrame    # excess_by_step
  share_by_layer: pd.DataFrame    # share_by_layer
  focus: Focus                    # the final step's universal set (or top-k stand-in)
  focus_by_step: pd.DataFrame     # focus_over_training of that set


def over_training(tables_by_step: dict, threshold: float, fallback_k: int) -> OverTraining:
  """`tables_by_step` {step: neuron table of the reference model}; the largest step is the
  final model whose universal set (focus set) is followed back."""
  final_step = max(int(s) for s in tables_by_step)
  final = tables_by_step[final_step]
  focus = focus_set(final, int(fallback_k))
  return OverTraining(final_step, persistence_table(final, tables_by_step),
                      excess_by_step(tables_by_step), share_by_layer(tables_by_step), focus,
                      focus_over_training(focus.ids, tables_by_step, float(threshold)))
