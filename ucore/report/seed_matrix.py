"""Figures of a many-seed family correlated in mode all_pairs (issue 18 item 2): the seed ×
seed heatmap of universal shares and the distribution of k ("universal against k of M-1
siblings").

Every function takes an all_pairs tables directory (or the tables themselves, read with
ucore.corr.tables.read_seed_matrix / read_k_of_m), writes one PNG with ucore.analyses.canvas
(Agg, no pyplot) and returns its path; `seed_matrix_section` returns both with a caption, for
whoever assembles a report. A tables directory without a seed matrix (a reference-mode run)
is a UserError.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ucore.analyses.canvas import figure as _figure, save as _save
from ucore.corr import tables as TB
from ucore.jobs.errors import UserError


def _matrix(tables) -> pd.DataFrame:
  if isinstance(tables, pd.DataFrame):
    return tables
  mat = TB.read_seed_matrix(tables)
  if mat is None:
    raise UserError(f"{tables} has no {TB.SEED_MATRIX}: correlate the family with "
                    "--config.mode=all_pairs")
  return mat


def k_counts(tables) -> pd.DataFrame:
  """Live neurons per model (rows) and k = 0..M-1 (columns): how many siblings each neuron
  is universal against."""
  mat = _matrix(tables)
  names = list(mat.index)
  if isinstance(tables, pd.DataFrame):
    raise UserError("k_counts needs the tables directory (the k-of-M tables)")
  out = pd.DataFrame(0, index=pd.Index(names, name="model"), columns=range(len(names)))
  for name in names:
    kt = TB.read_k_of_m(tables, name)
    ks = kt.loc[~kt["dead"], "k"].to_numpy()
    out.loc[name] = np.bincount(ks, minlength=len(names))[:len(names)]
  return out


def seed_matrix_figure(tables, path: str) -> str:
  """Heatmap: row model i, column model j, share of i's live neurons universal against j
  alone (diagonal blank); the last column is the share universal against the family."""
  mat = _matrix(tables)
  names = list(mat.index)
  vals = mat[names + ["universal"]].to_numpy(np.float64)
  n = len(names)
  fig = _figure(2.0 + 0.55 * (n + 1), 1.6 + 0.45 * n)
  ax = fig.add_subplot(1, 1, 1)
  im = ax.imshow(np.ma.masked_invalid(vals), cmap="viridis", vmin=0,
                 vmax=max(float(np.nanmax(vals)) if np.isfinite(vals).any() else 0, 1e-9),
                 aspect="auto")
  for i in range(n):
    for j in range(n + 1):
      if np.isfinite(vals[i, j]):
        ax.text(j, i, f"{100 * vals[i, j]:.1f}", ha="center", va="center", fontsize=7,
                color="white")
  ax.axvline(n - 0.5, color="black", linewidth=1.5)
  ax.set_xticks(range(n + 1))
  ax.set_xticklabels(names + ["family"], rotation=60, ha="right", fontsize=7)
  ax.set_yticks(range(n))
  ax.set_yticklabels(names, fontsize=7)
  ax.set_xlabel("partner model")
  ax.set_ylabel("model")
  fig.colorbar(im, ax=ax, label="share of live neurons universal (%)")
  ax.set_title("universal against one sibling (% of the row model's neurons)", fontsize=9)
  return _save(fig, path)


def k_of_m_figure(tables, path: str) -> str:
  """Bars: per k = 1..M-1, the share of live neurons universal against exactly k siblings,
  one bar per model (k = 0 left out: most neurons)."""
  counts = k_counts(tables)
  names = list(counts.index)
  m = len(names)
  shares = counts.to_numpy(np.float64) / np.maximum(counts.sum(axis=1).to_numpy()[:, None], 1)
  fig = _figure(2.0 + 0.6 * m, 3.6)
  ax = fig.add_subplot(1, 1, 1)
  width = 0.8 / max(m, 1)
  ks = np.arange(1, m)
  for i, name in enumerate(names):
    ax.bar(ks + (i - (m - 1) / 2) * width, 100 * shares[i, 1:], width, label=name)
  ax.set_xticks(ks)
  ax.set_xlabel(f"universal against k of {m - 1} siblings")
  ax.set_ylabel("% of live neurons")
  ax.legend(fontsize=6, ncol=2)
  return _save(fig, path)


def seed_matrix_section(tables_dir: str, out_dir: str) -> dict:
  """{'title', 'caption', 'figures': [png, png], 'k_counts': DataFrame} for a report."""
  import os
  os.makedirs(out_dir, exist_ok=True)
  mat = _matrix(tables_dir)
  counts = k_counts(tables_dir)
  m = len(mat.index)
  everywhere = int(counts[m - 1].sum())
  return {
      "title": f"Seed × seed universality ({m} models, all pairs)",
      "caption": (f"Left: share of each model's neurons universal against each sibling alone "
                  f"and against the family. Right: neurons universal against k of {m - 1} "
                  f"siblings; {everywhere} neurons over all models are universal against "
                  "every sibling."),
      "figures": [seed_matrix_figure(tables_dir, os.path.join(out_dir, "seed_matrix.png")),
                  k_of_m_figure(tables_dir, os.path.join(out_dir, "k_of_m.png"))],
      "k_counts": counts,
  }
