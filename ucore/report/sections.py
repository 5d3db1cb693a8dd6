"""Report sections beyond the per-table figures: each function draws its figure (if any)
into `fig_dir` and returns a ucore.report.html.Section for write_report's `figures_extra`.

Extension point: a new report section is one more function here (plain data in, Section
out); the caller appends it to `figures_extra` of its single write_report call, where
sections appear in list order after the neuron-table figures.
"""
import os

import pandas as pd

from ucore.report import figures as F
from ucore.report.html import Section, top_universal_html


def training(losses: pd.DataFrame, fig_dir: str) -> Section:
  """Loss curves of a trained family (ucore.train.read_losses)."""
  return Section("Training", F.training_curves(losses, os.path.join(fig_dir, "training.png")),
                 "Train (lines) and held-out (markers) loss of every seed.")


def excess_over_training(by_step: pd.DataFrame, fig_dir: str) -> Section:
  """ucore.analyses.persistence.excess_by_step as a figure and a table."""
  return Section(
      "Excess correlation over training",
      F.excess_over_training(by_step, os.path.join(fig_dir, "excess_by_step.png")),
      "Correlations of the reference seed with the others at each kept checkpoint.",
      by_step.reset_index().to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                    classes="grid", border=0))


def focus_over_training(by_step: pd.DataFrame, fig_dir: str, focus) -> Section:
  """ucore.analyses.persistence.focus_over_training of the final focus set
  (ucore.analyses.focus.Focus) as a figure and a table."""
  return Section(
      f"The final {focus.label} set over training",
      F.focus_over_training(by_step, os.path.join(fig_dir, "focus_by_step.png"), focus.label),
      f"{focus.note} Their excess correlation at each kept checkpoint (the last row is the "
      "final model).",
      by_step.reset_index().to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                    classes="grid", border=0))


def closest_to_threshold(neurons: pd.DataFrame, threshold: float, k: int,
                         examples=None) -> Section:
  """The k neurons of highest excess correlation, for a run where none is universal."""
  top = neurons.nlargest(int(k), "excess_corr")
  return Section(
      "Neurons of highest excess correlation",
      caption=f"No neuron clears the universality threshold ({threshold}); these come "
              "closest.",
      html=top_universal_html(top.assign(universal=True), int(k), examples,
                              name="top excess"))
