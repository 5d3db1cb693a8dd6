"""Figures of the universality analysis (paper Fig. 2 and friends) as PNG files.

Every function takes plain data (a neuron table, an array) and an output path, writes one PNG
with ucore.analyses.canvas (Agg, no pyplot, no global backend state) and returns the path.

Neuron table contract: a pandas DataFrame indexed by (layer, neuron) with at least the columns
mean_corr, max_corr, min_corr, mean_baseline, excess_corr and universal (bool).
"""
import numpy as np
import pandas as pd

from ucore.analyses.canvas import figure as _figure, save as _save

REQUIRED_COLUMNS = ("mean_corr", "max_corr", "min_corr", "mean_baseline", "excess_corr",
                    "universal")
UNIVERSAL_COLOR = "#d62728"
OTHER_COLOR = "#7f7f7f"


def check_table(table: pd.DataFrame, name: str = "table") -> pd.DataFrame:
  """UserError unless `table` follows the neuron-table contract."""
  from ucore.jobs.errors import UserError
  if not isinstance(table, pd.DataFrame):
    raise UserError(f"{name} must be a pandas DataFrame; got {type(table).__name__}")
  missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
  if missing:
    raise UserError(f"{name} lacks columns {missing} (needs {list(REQUIRED_COLUMNS)})")
  if list(table.index.names) != ["layer", "neuron"]:
    raise UserError(f"{name} must be indexed by (layer, neuron); index is "
                    f"{list(table.index.names)}")
  if len(table) == 0:
    raise UserError(f"{name} is empty")
  return table


def _finite(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x[np.isfinite(x)]


def layers_of(table: pd.DataFrame) -> np.ndarray:
  return np.asarray(table.index.get_level_values("layer"))


def corr_distributions(table: pd.DataFrame, path: str, threshold: float = 0.5) -> str:
  """Fig. 2a: distributions of mean max correlation, mean baseline and excess correlation."""
  check_table(table)
  fig = _figure(10, 3.4)
  bins = np.linspace(-0.2, 1.0, 61)
  cols = [("mean_corr", "mean max correlation"), ("mean_baseline", "mean baseline"),
          ("excess_corr", "excess correlation")]
  for i, (col, label) in enumerate(cols):
    ax = fig.add_subplot(1, 3, i + 1)
    u = table["universal"].astype(bool).values
    ax.hist(_finite(table[col].values[~u]), bins=bins, color=OTHER_COLOR, alpha=0.8,
            label="other", histtype="stepfilled")
    ax.hist(_finite(table[col].values[u]), bins=bins, color=UNIVERSAL_COLOR, alpha=0.8,
            label="universal", histtype="stepfilled")
    if col == "excess_corr":
      ax.axvline(threshold, color="k", lw=1, ls="--")
    ax.set_xlabel(label)
    ax.set_ylabel("neurons")
    ax.set_yscale("log")
    if i == 0:
      ax.legend(frameon=False, fontsize=8)
  return _save(fig, path)


def max_vs_min(table: pd.DataFrame, path: str) -> str:
  """Fig. 2b: per neuron, max over seeds vs min over seeds of the max correlation."""
  check_table(table)
  fig = _figure(4.6, 4.2)
  ax = fig.add_subplot(1, 1, 1)
  u = table["universal"].astype(bool).values
  x, y = table["max_corr"].values, table["min_corr"].values
  ax.scatter(x[~u], y[~u], s=3, color=OTHER_COLOR, alpha=0.4, label="other", rasterized=True)
  ax.scatter(x[u], y[u], s=4, color=UNIVERSAL_COLOR, alpha=0.7, label="universal",
             rasterized=True)
  lo = float(np.nanmin(np.concatenate([_finite(x), _finite(y), [0.0]])))
  ax.plot([lo, 1], [lo, 1], color="k", lw=0.8, ls="--")
  ax.set_xlabel("max over seeds of max correlation")
  ax.set_ylabel("min over seeds of max correlation")
  ax.legend(frameon=False, fontsize=8, loc="upper left")
  return _save(fig, path)


def partner_layer_shares(hist) -> np.ndarray:
  """Row-normalised partner-layer histogram: [l_ref, l_other] = share of reference layer
  l_ref's neurons whose best partner lies in layer l_other (rows with no neurons stay 0)."""
  hist = np.asarray(hist, np.float64)
  if hist.ndim != 2:
    from ucore.jobs.errors import UserError
    raise UserError(f"partner-layer histogram must be 2-D [n_layer, n_layer]; got {hist.shape}")
  totals = hist.sum(axis=1, keepdims=True)
  return np.divide(hist, totals, out=np.zeros_like(hist), where=totals > 0)


def partner_layer_hist_from_table(table: pd.DataFrame, n_layer_other: int | None = None):
  """Counts [n_layer_ref, n_layer_other] from a table's max_sim_layer column."""
  layers = layers_of(table)
  partner = table["max_sim_layer"].values
  ok = np.isfinite(partner.astype(np.float64))
  n_ref = int(layers.max()) + 1
  n_other = int(n_layer_other or (np.nanmax(partner[ok]) + 1 if ok.any() else n_ref))
  hist = np.zeros((n_ref, n_other), np.int64)
  np.add.at(hist, (layers[ok].astype(int), partner[ok].astype(int)), 1)
  return hist


def partner_layer_heatmap(hist, path: str) -> str:
  """Fig. 2c: for each reference layer, share of its neurons whose best partner lies in each
  layer of the other model."""
  shares = partner_layer_shares(hist)
  n_ref, n_other = shares.shape
  fig = _figure(1.2 + 0.35 * n_other + 1.5, 1.0 + 0.3 * n_ref + 1.0)
  ax = fig.add_subplot(1, 1, 1)
  im = ax.imshow(shares, cmap="viridis", vmin=0, vmax=1, aspect="auto", origin="upper")
  ax.set_xlabel("layer of best partner (other model)")
  ax.set_ylabel("layer (reference model)")
  ax.set_xticks(range(n_other))
  ax.set_yticks(range(n_ref))
  fig.colorbar(im, ax=ax, label="share of the layer's neurons")
  return _save(fig, path)


def universal_by_layer(table: pd.DataFrame, path: str) -> str:
  """Share (bars) and count (labels) of universal neurons per layer."""
  check_table(table)
  per = per_layer_stats(table)
  fig = _figure(max(4.0, 0.45 * len(per) + 2), 3.4)
  ax = fig.add_subplot(1, 1, 1)
  ax.bar(per.index, 100 * per["share_universal"], color=UNIVERSAL_COLOR)
  for layer, row in per.iterrows():
    ax.text(layer, 100 * row["share_universal"], str(int(row["n_universal"])), ha="center",
            va="bottom", fontsize=7)
  ax.set_xlabel("layer")
  ax.set_ylabel("universal neurons (%)")
  ax.set_xticks(list(per.index))
  return _save(fig, path)


def per_layer_stats(table: pd.DataFrame) -> pd.DataFrame:
  """Per layer: n_neurons, n_universal, share_universal."""
  g = table["universal"].astype(bool).groupby(level="layer")
  return pd.DataFrame({"n_neurons": g.size(), "n_universal": g.sum().astype(int),
                       "share_universal": g.mean()})


def persistence(persist: pd.DataFrame, path: str) -> str:
  """Share of the final universal set already universal at step s, and the reverse."""
  fig = _figure(5.5, 3.6)
  ax = fig.add_subplot(1, 1, 1)
  steps = np.asarray(persist.index, np.float64)
  ax.plot(steps, persist["share_of_final"], "o-", color=UNIVERSAL_COLOR,
          label="final universal set already universal at step")
  ax.plot(steps, persist["share_still_universal"], "s--", color="#1f77b4",
          label="universal at step and still universal at the end")
  if np.all(steps > 0):
    ax.set_xscale("log")
  elif len(steps) > 1 and np.any(steps > 0):
    ax.set_xscale("symlog", linthresh=max(1.0, float(np.min(steps[steps > 0]))))
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("training step")
  ax.set_ylabel("share")
  ax.legend(frameon=False, fontsize=8)
  return _save(fig, path)


def training_curves(losses: pd.DataFrame, path: str) -> str:
  """Train (thin) and held-out (markers) loss per seed against step, from
  ucore.train.read_losses(workdir) (columns step, seed, split, loss)."""
  missing = [c for c in ("step", "seed", "split", "loss") if c not in losses.columns]
  if missing:
    from ucore.jobs.errors import UserError
    raise UserError(f"losses table lacks columns {missing} (use ucore.train.read_losses)")
  fig = _figure(6.0, 3.8)
  ax = fig.add_subplot(1, 1, 1)
  colors = [f"C{i}" for i in range(10)]
  for i, (seed, g) in enumerate(losses.groupby("seed")):
    c = colors[i % len(colors)]
    tr = g[g.split == "train"].sort_values("step")
    ho = g[g.split == "heldout"].sort_values("step")
    ax.plot(tr.step, tr.loss, color=c, lw=0.7, alpha=0.6)
    ax.plot(ho.step, ho.loss, "o-", color=c, ms=3, label=f"seed {seed} (held-out)")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats / token)")
  ax.legend(frameon=False, fontsize=8)
  return _save(fig, path)


def excess_over_training(by_step: pd.DataFrame, path: str) -> str:
  """Median and 99th-percentile excess correlation, and median correlation and baseline,
  against training step."""
  fig = _figure(5.5, 3.6)
  ax = fig.add_subplot(1, 1, 1)
  steps = np.asarray(by_step.index, np.float64)
  ax.plot(steps, by_step["median_mean_corr"], "o-", color="#1f77b4", label="median mean max corr")
  ax.plot(steps, by_step["median_mean_baseline"], "o--", color=OTHER_COLOR,
          label="median mean baseline")
  ax.plot(steps, by_step["median_excess"], "s-", color=UNIVERSAL_COLOR, label="median excess")
  ax.plot(steps, by_step["p99_excess"], "s:", color=UNIVERSAL_COLOR, label="99th pct excess")
  if np.all(steps > 0):
    ax.set_xscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("correlation")
  ax.legend(frameon=False, fontsize=8)
  return _save(fig, path)


def focus_over_training(by_step: pd.DataFrame, path: str, label: str) -> str:
  """The final focus set followed back over training (ucore.analyses.persistence.
  focus_over_training): its median excess (left axis) and the shares above the threshold and
  among each step's top neurons (right axis)."""
  fig = _figure(5.8, 3.6)
  ax = fig.add_subplot(1, 1, 1)
  steps = np.asarray(by_step.index, np.float64)
  ax.plot(steps, by_step["median_excess"], "o-", color=UNIVERSAL_COLOR,
          label=f"median excess of the {label} set")
  ax.set_xlabel("training step")
  ax.set_ylabel("excess correlation")
  ax2 = ax.twinx()
  ax2.plot(steps, by_step["share_above_threshold"], "s--", color="#1f77b4",
           label="share above the threshold")
  ax2.plot(steps, by_step["share_in_top"], "^:", color="#2ca02c",
           label="share among the step's top neurons")
  ax2.set_ylim(-0.02, 1.02)
  ax2.set_ylabel("share of the set")
  if np.all(steps > 0):
    ax.set_xscale("log")
  h1, l1 = ax.get_legend_handles_labels()
  h2, l2 = ax2.get_legend_handles_labels()
  ax.legend(h1 + h2, l1 + l2, frameon=False, fontsize=7, loc="lower right")
  return _save(fig, path)


def share_by_layer_over_training(share: pd.DataFrame, path: str) -> str:
  """Share of universal neurons per layer (one line each) against training step, from
  ucore.analyses.persistence.share_by_layer (index (step, layer))."""
  fig = _figure(5.8, 3.6)
  ax = fig.add_subplot(1, 1, 1)
  steps = np.asarray(sorted(set(share.index.get_level_values("step"))), np.float64)
  for i, (layer, g) in enumerate(share.groupby(level="layer")):
    g = g.droplevel("layer").sort_index()
    ax.plot(np.asarray(g.index, np.float64), 100 * g["share_universal"].to_numpy(), "o-",
            color=f"C{i % 10}", ms=3, label=f"layer {layer}")
  if np.all(steps > 0):
    ax.set_xscale("log")
  elif len(steps) > 1 and np.any(steps > 0):
    ax.set_xscale("symlog", linthresh=max(1.0, float(np.min(steps[steps > 0]))))
  ax.set_xlabel("training step")
  ax.set_ylabel("universal neurons (%)")
  ax.legend(frameon=False, fontsize=7, ncol=2)
  return _save(fig, path)
