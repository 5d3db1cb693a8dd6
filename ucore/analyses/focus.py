"""The neuron set the universality sections are about ("focus set").

  f = focus_set(corr, k)     the universal neurons (corr["universal"]) when there is at least
                             one; otherwise the k neurons of highest excess_corr (finite), so
                             no section of a run without universal neurons is empty
  f.ids      [(layer, neuron)], sorted by excess_corr, highest first
  f.fallback True when the set is the top-k stand-in
  f.label    "universal" or "top-k by excess"; f.note: one sentence for a caption
  f.mask(index)  bool array over a (layer, neuron) index
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ucore.jobs.errors import UserError


@dataclasses.dataclass(frozen=True)
class Focus:
  ids: tuple
  fallback: bool
  k: int

  @property
  def label(self) -> str:
    return f"top-{self.k} by excess" if self.fallback else "universal"

  @property
  def note(self) -> str:
    if self.fallback:
      return (f"No neuron is universal in this run: the {len(self.ids)} neurons of highest "
              "excess correlation stand in for the universal set here.")
    return f"The {len(self.ids)} universal neurons (excess correlation above the threshold)."

  def mask(self, index: pd.MultiIndex) -> np.ndarray:
    s = set(self.ids)
    return np.array([(int(l), int(n)) in s for l, n in index], bool)

  def top(self, k: int) -> list:
    return list(self.ids[:int(k)])


def focus_set(corr: pd.DataFrame, k: int = 20) -> Focus:
  """The universal neurons of `corr` by descending excess_corr, else the top-k stand-in."""
  if corr is None or "excess_corr" not in corr.columns:
    raise UserError("the universality sections need a correlation table with excess_corr")
  ex = pd.Series(np.asarray(corr["excess_corr"], np.float64), index=corr.index)
  uni = (corr["universal"].astype(bool).values if "universal" in corr.columns
         else np.zeros(len(corr), bool))
  fallback = not uni.any()
  sel = ex[np.isfinite(ex.values)] if fallback else ex[uni]
  sel = sel.sort_values(ascending=False, kind="stable")
  if fallback:
    sel = sel.head(int(k))
  if sel.empty:
    raise UserError("every neuron's excess correlation is NaN (all dead?): nothing to analyse")
  return Focus(tuple((int(l), int(n)) for l, n in sel.index), fallback, int(k))
