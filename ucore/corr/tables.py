"""Per-neuron tables (pandas, `(layer, neuron)` index, reference column names) and parquet.

Per pair (one row model against one partner model), file `pairs/<own>__<partner>.parquet`:
  max_corr, max_sim_layer, max_sim_neuron   best partner (signed max correlation)
  baseline                                   primary baseline (mean over draws of the max
                                             over rotated units)
  baseline_se                                its standard error over the draws (std/√draws,
                                             ddof=1; NaN with one draw)
  baseline_<kind>, baseline_<kind>_se        every baseline kind: mean over draws, its SE
  baseline_<kind>_<draw>                     every draw, while draws ≤ MAX_DRAW_COLUMNS (above,
                                             only the mean and SE: per-draw columns would bloat
                                             the files, and nothing reads them)
  top<k>_corr, top<k>_layer, top<k>_neuron   top-k partners, k = 1..top_k
  baseline_unit_layer, baseline_unit         where draw 0 of the primary baseline found its
                                             max (partner layer, rotated unit); -1 = none
Per row model, file `neurons_<own>.parquet` (aggregated over its partners M):
  corr__<m>, baseline__<m>, max_sim_layer__<m>, max_sim_neuron__<m>   per partner m
  mean_corr, min_corr, max_corr              over m of each partner's max_corr
  mean_baseline, min_baseline, max_baseline  over m of each partner's baseline
  mean_baseline_se                           SE over draws of mean_baseline (partners' draws
                                             are independent: √Σ se_m² / M)
  near_threshold                             |excess_corr - threshold| ≤ 2·mean_baseline_se
  corr_se__<m>, baseline_data_se__<m>,       with intervals.blocks > 0: block-jackknife SEs
  excess_data_se, excess_se                  from the data (and excess_se with the draws'),
                                             ucore.corr.intervals
  excess_corr = mean_corr - mean_baseline;  universal = excess_corr > threshold
  strict_excess = min_corr - max_baseline;  universal_strict = strict_excess > threshold
  dead                                       neuron constant over the kept tokens
Plus `layer_counts_<own>.parquet` (per layer: neurons, dead, universal, share) and
`partner_layers_<own>.parquet` (paper Fig. 2c: share of each layer's neurons whose best
partner lies in each partner layer, per partner model and averaged).
Dead or partner-less neurons are NaN unless `dead_value` is set.
In mode all_pairs (a seed family, every model against every other) also:
  `seed_matrix.parquet`     rows: model i, columns: every model j, value: share of i's live
                            neurons universal against j alone (corr__j - baseline__j >
                            threshold; NaN on the diagonal); column `universal`: the share
                            universal against the family (the neurons table's `universal`)
  `k_of_m_<own>.parquet`    per neuron: k = the siblings it is universal against (of
                            M-1 = `of`), `universal`, `dead`

This module is the one home of the tables directory's layout: the writer (`write_tables`)
and the readers (`read_neurons`, `read_neuron_table`, `read_partner_layers`,
`partner_layer_counts`, `read_summary`, `neuron_models`) sit side by side, and nobody else
spells a file name. It imports no engine code (numpy, pandas and ucore.jobs.atomic only), so the
analyses and the report can read tables without loading JAX.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.jobs.errors import UserError

TABLES_DIR = "tables"                          # <correlate workdir>/tables/: what follows
NEURONS = "neurons_{}.parquet"                 # per row model: aggregated neuron table
LAYER_COUNTS = "layer_counts_{}.parquet"       # per row model: per-layer counts
PARTNER_LAYERS = "partner_layers_{}.parquet"   # per row model: long partner-layer table
PAIRS_DIR = "pairs"                            # pairs/<own>__<partner>.parquet
PAIR = "{}__{}.parquet"
SUMMARY = "summary.json"                       # written last by the driver: marks completion
MEAN_PARTNER = "__mean__"                      # partner name of the average over partners
SEED_MATRIX = "seed_matrix.parquet"            # all_pairs: model × model universal shares
K_OF_M = "k_of_m_{}.parquet"                   # all_pairs, per model: siblings per neuron


MAX_DRAW_COLUMNS = 8                           # per-draw baseline columns kept up to this many


def _index(layer_ids, d):
  return pd.MultiIndex.from_product([list(layer_ids), range(d)], names=["layer", "neuron"])


def draw_se(draws: np.ndarray) -> np.ndarray:
  """Standard error of the mean over axis 0 (the draws): std (ddof=1) / √draws; NaN with
  fewer than two draws."""
  n = draws.shape[0]
  if n < 2:
    return np.full(draws.shape[1:], np.nan)
  return draws.std(axis=0, ddof=1) / np.sqrt(n)


def pair_table(res, layer_ids, primary: str, dead_value=None, unit=None) -> pd.DataFrame:
  """unit: (partner layer id, rotated unit) [L, d] each of the primary's draw 0, or None."""
  L, d, k = res.corr.shape
  cols = {}
  fill = (lambda a: a) if dead_value is None else (lambda a: np.where(np.isnan(a), dead_value, a))
  cols["max_corr"] = fill(res.corr[..., 0].reshape(-1))
  cols["max_sim_layer"] = res.layer[..., 0].reshape(-1).astype(np.int32)
  cols["max_sim_neuron"] = res.neuron[..., 0].reshape(-1).astype(np.int32)
  for kind, arr in res.baselines.items():
    cols[f"baseline_{kind}"] = fill(arr.mean(axis=0).reshape(-1))
    cols[f"baseline_{kind}_se"] = fill(draw_se(arr).reshape(-1))
    if arr.shape[0] <= MAX_DRAW_COLUMNS:
      for draw in range(arr.shape[0]):
        cols[f"baseline_{kind}_{draw}"] = fill(arr[draw].reshape(-1))
  if res.baselines:
    cols["baseline"] = cols[f"baseline_{primary}"]
    cols["baseline_se"] = cols[f"baseline_{primary}_se"]
  for j in range(k):
    cols[f"top{j + 1}_corr"] = fill(res.corr[..., j].reshape(-1))
    cols[f"top{j + 1}_layer"] = res.layer[..., j].reshape(-1).astype(np.int32)
    cols[f"top{j + 1}_neuron"] = res.neuron[..., j].reshape(-1).astype(np.int32)
  if unit is not None:
    cols["baseline_unit_layer"] = np.asarray(unit[0]).reshape(-1).astype(np.int32)
    cols["baseline_unit"] = np.asarray(unit[1]).reshape(-1).astype(np.int32)
  df = pd.DataFrame(cols, index=_index(layer_ids, d))
  order = ["max_corr", "max_sim_layer", "max_sim_neuron"] + (
      ["baseline", "baseline_se"] if res.baselines else [])
  return df[order + [c for c in df.columns if c not in order]]


def aggregate_table(pair_tables: dict, dead: np.ndarray, threshold: float,
                    dead_value=None) -> pd.DataFrame:
  """pair_tables: partner name -> pair_table (same index). dead: [L*d] bool."""
  first = next(iter(pair_tables.values()))
  out = pd.DataFrame(index=first.index)
  corr = np.stack([t["max_corr"].to_numpy() for t in pair_tables.values()], 1)
  has_base = "baseline" in first.columns
  base = (np.stack([t["baseline"].to_numpy() for t in pair_tables.values()], 1)
          if has_base else None)
  base_se = (np.stack([t["baseline_se"].to_numpy() for t in pair_tables.values()], 1)
             if has_base else None)
  for name, t in pair_tables.items():
    out[f"corr__{name}"] = t["max_corr"]
    if has_base:
      out[f"baseline__{name}"] = t["baseline"]
    out[f"max_sim_layer__{name}"] = t["max_sim_layer"]
    out[f"max_sim_neuron__{name}"] = t["max_sim_neuron"]
  out["mean_corr"] = corr.mean(1)
  out["min_corr"] = corr.min(1)
  out["max_corr"] = corr.max(1)
  if has_base:
    out["mean_baseline"] = base.mean(1)
    out["min_baseline"] = base.min(1)
    out["max_baseline"] = base.max(1)
    out["mean_baseline_se"] = np.sqrt(np.sum(base_se ** 2, axis=1)) / base_se.shape[1]
    excess = out["mean_corr"].to_numpy() - out["mean_baseline"].to_numpy()
    strict = out["min_corr"].to_numpy() - out["max_baseline"].to_numpy()
    out["excess_corr"] = excess
    out["strict_excess"] = strict
    with np.errstate(invalid="ignore"):
      out["universal"] = np.nan_to_num(excess, nan=-np.inf) > threshold
      out["universal_strict"] = np.nan_to_num(strict, nan=-np.inf) > threshold
      out["near_threshold"] = (np.abs(excess - threshold)
                               <= 2 * out["mean_baseline_se"].to_numpy())
  out["dead"] = np.asarray(dead, bool)
  if dead_value is not None:
    num = [c for c in out.columns if out[c].dtype.kind == "f"]
    out[num] = out[num].fillna(dead_value)
  return out


def layer_counts(agg: pd.DataFrame) -> pd.DataFrame:
  g = agg.groupby(level="layer")
  df = pd.DataFrame({"neurons": g.size(), "dead": g["dead"].sum()})
  if "universal" in agg.columns:
    df["universal"] = g["universal"].sum()
    df["universal_strict"] = g["universal_strict"].sum()
    df["share"] = df["universal"] / df["neurons"]
  return df


def partner_layer_hist(pair_tables: dict, partner_layers: dict) -> pd.DataFrame:
  """Long table: partner, layer, partner_layer, count, share (of the layer's live neurons)."""
  rows = []
  for name, t in pair_tables.items():
    for layer, sub in t.groupby(level="layer"):
      pl = sub["max_sim_layer"].to_numpy()
      live = pl >= 0
      for p in partner_layers[name]:
        cnt = int(np.sum(pl[live] == p))
        rows.append((name, int(layer), int(p), cnt, cnt / max(int(live.sum()), 1)))
  df = pd.DataFrame(rows, columns=["partner", "layer", "partner_layer", "count", "share"])
  mean = (df.groupby(["layer", "partner_layer"], as_index=False)[["count", "share"]].mean())
  mean.insert(0, "partner", MEAN_PARTNER)
  return pd.concat([df, mean], ignore_index=True)


def pairwise_universal(agg: pd.DataFrame, partner: str, threshold: float) -> np.ndarray:
  """[neurons] bool: universal against `partner` alone (its max correlation exceeds its
  baseline by more than `threshold`; NaN = not)."""
  excess = agg[f"corr__{partner}"].to_numpy() - agg[f"baseline__{partner}"].to_numpy()
  return np.nan_to_num(excess, nan=-np.inf) > threshold


def seed_matrix(neurons: dict, threshold: float):
  """From every model's neurons table (mode all_pairs): (the model × model share matrix,
  {model: per-neuron k-of-M table}); see the module docstring."""
  names = list(neurons)
  mat = pd.DataFrame(np.nan, index=pd.Index(names, name="model"), columns=names + ["universal"])
  k_tables = {}
  for own, agg in neurons.items():
    live = ~agg["dead"].to_numpy()
    partners = [p for p in names if p != own]
    hits = np.stack([pairwise_universal(agg, p, threshold) for p in partners], 1)
    n_live = max(int(live.sum()), 1)
    for p, h in zip(partners, hits.T):
      mat.loc[own, p] = float((h & live).sum()) / n_live
    mat.loc[own, "universal"] = float((agg["universal"].to_numpy() & live).sum()) / n_live
    k_tables[own] = pd.DataFrame({"k": hits.sum(1).astype(np.int32),
                                  "of": np.full(len(agg), len(partners), np.int32),
                                  "universal": agg["universal"].to_numpy(),
                                  "dead": agg["dead"].to_numpy()}, index=agg.index)
  return mat, k_tables


# ----------------------------------------------------------------------------- writer
def write_tables(directory: str, neurons: dict, layer_counts_: dict, partner_layers: dict,
                 pairs: dict) -> None:
  """Writes every table into `directory` (a staging directory: the caller writes SUMMARY
  last and renames it into place). neurons / layer_counts_ / partner_layers: {model: df};
  pairs: {(own, partner): df}."""
  os.makedirs(os.path.join(directory, PAIRS_DIR))
  for name, df in neurons.items():
    atomic.write_parquet(df, os.path.join(directory, NEURONS.format(name)))
    atomic.write_parquet(layer_counts_[name], os.path.join(directory, LAYER_COUNTS.format(name)))
    atomic.write_parquet(partner_layers[name],
                         os.path.join(directory, PARTNER_LAYERS.format(name)))
  for (own, part), df in pairs.items():
    atomic.write_parquet(df, os.path.join(directory, PAIRS_DIR, PAIR.format(own, part)))


def write_seed_matrix(directory: str, matrix: pd.DataFrame, k_tables: dict) -> None:
  """seed_matrix() outputs into `directory` (all_pairs runs; beside write_tables')."""
  atomic.write_parquet(matrix, os.path.join(directory, SEED_MATRIX))
  for name, df in k_tables.items():
    atomic.write_parquet(df, os.path.join(directory, K_OF_M.format(name)))


# ----------------------------------------------------------------------------- readers
def neurons_path(directory: str, name: str) -> str:
  return os.path.join(directory, NEURONS.format(name))


def neuron_models(directory: str) -> list:
  """Sorted names of the models with a neurons table in `directory`."""
  pre, post = NEURONS.split("{}")
  return sorted(f[len(pre):-len(post)] for f in os.listdir(directory)
                if f.startswith(pre) and f.endswith(post))


def model_of(neurons_file: str) -> Optional[str]:
  """The model name of a neurons_<model>.parquet path (None for another file name)."""
  pre, post = NEURONS.split("{}")
  base = os.path.basename(neurons_file)
  if base.startswith(pre) and base.endswith(post):
    return base[len(pre):-len(post)]
  return None


def read_neuron_table(path: str, name: Optional[str] = None) -> pd.DataFrame:
  """A neuron table saved as parquet, indexed by (layer, neuron) (set from columns of those
  names when the file has them as columns). UserError if the file does not exist."""
  if not os.path.isfile(path):
    raise UserError(f"neuron table {name or path!r}: {path} does not exist")
  t = pd.read_parquet(path)
  if "layer" in t.columns and "neuron" in t.columns:
    t = t.set_index(["layer", "neuron"])
  return t


def read_neurons(directory: str, name: str) -> pd.DataFrame:
  """The aggregated neuron table of model `name`."""
  return pd.read_parquet(neurons_path(directory, name))


def read_partner_layers(directory: str, name: str) -> pd.DataFrame:
  """The long partner-layer table of model `name` (see partner_layer_hist)."""
  return pd.read_parquet(os.path.join(directory, PARTNER_LAYERS.format(name)))


def partner_layer_counts(directory: str, name: str) -> np.ndarray:
  """[n_layer, n_partner_layer] counts of best partners, averaged over the partner models."""
  long = read_partner_layers(directory, name)
  mean = long[long["partner"] == MEAN_PARTNER]
  return mean.pivot(index="layer", columns="partner_layer", values="count").to_numpy()


def read_summary(directory: str) -> Optional[dict]:
  """summary.json of a tables directory; None if absent, UserError if unreadable."""
  path = os.path.join(directory, SUMMARY)
  if not os.path.isfile(path):
    return None
  try:
    return atomic.read_json(path)
  except (OSError, ValueError) as e:
    raise UserError(f"correlation summary {path} is unreadable ({e}); re-run the correlation "
                    "finalization") from e


def read_seed_matrix(directory: str) -> Optional[pd.DataFrame]:
  """The model × model share matrix of an all_pairs run (None for other runs)."""
  path = os.path.join(directory, SEED_MATRIX)
  return pd.read_parquet(path) if os.path.isfile(path) else None


def read_k_of_m(directory: str, name: str) -> pd.DataFrame:
  """Model `name`'s per-neuron k-of-M table (all_pairs runs)."""
  return pd.read_parquet(os.path.join(directory, K_OF_M.format(name)))
