"""Ablation of neuron sets (follow-up work, arXiv 2508.00903): zero / mean / fixed ablation of
the post-GELU activations of a set of neurons, loss and KL(clean ‖ ablated) against the clean
run, for the universal neurons vs random sets with the same number of neurons per layer.

Averages are over kept tokens (the token mask), each row's last position excluded (no next
token for the loss; KL uses the same tokens).
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.analyses import common
from ucore.jobs.errors import UserError

MODES = ("zero", "mean", "fixed")


def mean_activations(model, batches: Iterable, hook: str = "mlp.hook_post") -> np.ndarray:
  """[n_layer, d_mlp] float64 mean activation over kept tokens."""
  cfg = model.config
  tot, n = np.zeros(cfg.n_layer * cfg.d_mlp), 0
  for b in batches:
    a = np.asarray(model.neuron_activations(b.tokens, hook=hook), np.float64)
    keep = np.asarray(b.mask)
    tot += a[keep].sum(0)
    n += int(keep.sum())
  if n == 0:
    raise UserError("no kept tokens to average activations over")
  return (tot / n).reshape(cfg.n_layer, cfg.d_mlp)


def interventions_for(neurons: Sequence, mode: str, means: Optional[np.ndarray] = None,
                      value: float = 0.0, hook: str = "mlp.hook_post") -> dict:
  """hook name -> Intervention for a set of (layer, neuron). Every mode is a "fix" of the set's
  units (zero: to 0.0, exactly what zero_neurons writes), so sets of the same per-layer sizes
  (the universal set and its matched random sets) in every mode share one compiled forward."""
  from ucore.interventions import fix_neurons
  if mode not in MODES:
    raise UserError(f"ablation mode {mode!r}; choose one of {', '.join(MODES)}")
  if mode == "mean" and means is None:
    raise UserError("mean ablation needs the mean activations (mean_activations)")
  by_layer: dict = {}
  for l, n in neurons:
    by_layer.setdefault(int(l), []).append(int(n))
  out = {}
  for l, ns in sorted(by_layer.items()):
    ns = sorted(set(ns))
    if mode == "zero":
      vals = np.zeros(len(ns), np.float32)
    elif mode == "mean":
      vals = np.asarray(np.asarray(means)[l, ns], np.float32)
    else:
      vals = np.full(len(ns), value, np.float32)
    out[f"blocks.{l}.{hook}"] = fix_neurons(ns, vals)
  return out


@jax.jit
def _sums(clean_logits, logits, tokens, mask):
  lc = jax.nn.log_softmax(clean_logits[:, :-1], -1)
  la = jax.nn.log_softmax(logits[:, :-1], -1)
  tgt = tokens[:, 1:, None]
  m = mask[:, :-1].astype(jnp.float32)
  loss_c = -jnp.take_along_axis(lc, tgt, -1)[..., 0]
  loss_a = -jnp.take_along_axis(la, tgt, -1)[..., 0]
  kl = (jnp.exp(lc) * (lc - la)).sum(-1)
  return jnp.stack([(loss_c * m).sum(), (loss_a * m).sum(), (kl * m).sum(), m.sum()])


def ablation_effects(model, batches: Iterable, conditions: dict) -> pd.DataFrame:
  """conditions: name -> interventions dict. One clean run per batch, then each condition.
  Returns a frame indexed by condition name: clean_loss, loss, delta_loss, kl, tokens."""
  acc = {k: np.zeros(4) for k in conditions}
  for b in batches:
    toks, mask = np.asarray(b.tokens), np.asarray(b.mask)   # host arrays into the jitted sums
    clean = model(b.tokens)
    for k, iv in conditions.items():
      acc[k] += np.asarray(_sums(clean, model.run_with_hooks(b.tokens, iv), toks, mask),
                           np.float64)
  rows = []
  for k, s in acc.items():
    if s[3] == 0:
      raise UserError("no kept tokens to evaluate the ablation on")
    rows.append(dict(condition=k, clean_loss=s[0] / s[3], loss=s[1] / s[3],
                     delta_loss=(s[1] - s[0]) / s[3], kl=s[2] / s[3], tokens=int(s[3])))
  return pd.DataFrame(rows).set_index("condition")


def matched_random_sets(neurons: Sequence, d_mlp: int, n_sets: int, seed: int = 0,
                        exclude: Sequence = ()) -> list:
  """Random sets with the same number of neurons in each layer as `neurons`, drawn from the
  neurons not in `exclude` (default: not in the set itself)."""
  rng = np.random.default_rng(seed)
  excl = {tuple(map(int, e)) for e in (exclude or neurons)}
  per_layer: dict = {}
  for l, _ in neurons:
    per_layer[int(l)] = per_layer.get(int(l), 0) + 1
  sets = []
  for _ in range(n_sets):
    s = []
    for l, k in sorted(per_layer.items()):
      pool = [n for n in range(d_mlp) if (l, n) not in excl]
      if len(pool) < k:
        raise UserError(f"layer {l} has too few other neurons for a matched random set")
      s += [(l, int(n)) for n in rng.choice(pool, k, replace=False)]
    sets.append(s)
  return sets


def universal_vs_random(model, batches: Sequence, universal: Sequence, modes=("zero", "mean"),
                        n_random: int = 5, seed: int = 0, fixed_value: float = 0.0,
                        means: Optional[np.ndarray] = None) -> pd.DataFrame:
  batches = list(batches)
  if not len(universal):
    raise UserError("the universal neuron set is empty: no neuron has universal=True in the "
                    "correlation results")
  if "mean" in modes and means is None:
    means = mean_activations(model, batches)
  sets = {"universal": list(universal)}
  for i, s in enumerate(matched_random_sets(universal, model.config.d_mlp, n_random, seed)):
    sets[f"random_{i}"] = s
  conditions, meta = {}, {}
  for name, s in sets.items():
    for mode in modes:
      key = f"{name}/{mode}"
      conditions[key] = interventions_for(s, mode, means, fixed_value)
      meta[key] = dict(set=name.split("_")[0], draw=int(name.split("_")[1]) if "_" in name
                       else 0, mode=mode, n_neurons=len(s))
  res = ablation_effects(model, batches, conditions)
  for col in ("set", "draw", "mode", "n_neurons"):
    res[col] = [meta[k][col] for k in res.index]
  return res


def plot_ablation(res: pd.DataFrame, path: str, label: str = "universal") -> str:
  fig, axes = common.new_figure(1, 2, figsize=(9, 3.5))
  modes = list(dict.fromkeys(res["mode"]))
  x = np.arange(len(modes))
  for ax, col in zip(axes, ("delta_loss", "kl")):
    for j, (setname, color) in enumerate((("universal", "tab:red"), ("random", "tab:gray"))):
      sub = res[res["set"] != "random"] if setname == "universal" else res[res["set"] == "random"]
      mu = [sub[sub["mode"] == m][col].mean() for m in modes]
      sd = [sub[sub["mode"] == m][col].std(ddof=0) for m in modes]
      ax.bar(x + (j - 0.5) * 0.35, mu, 0.35, yerr=sd, color=color,
             label=label if setname == "universal" else setname)
    ax.set_xticks(x)
    ax.set_xticklabels(modes)
    ax.set_title(col)
  axes[0].legend(fontsize=7)
  return common.save_figure(fig, path)


def run(model, batches: Sequence, out_dir: str, corr, modes=("zero", "mean"),
        n_random: int = 5, seed: int = 0, fixed_value: float = 0.0, fallback_k: int = 20) -> list:
  """Writes ablation.parquet and ablation.png. `corr`: a ucore.analyses.focus.Focus, or the
  correlation table (then its universal neurons, or — when none is universal — the
  fallback_k neurons of highest excess correlation, as the caption says)."""
  from ucore.analyses.focus import Focus, focus_set
  os.makedirs(out_dir, exist_ok=True)
  if corr is None:
    raise UserError("the ablation analysis needs correlation results (universal neurons)")
  focus = corr if isinstance(corr, Focus) else focus_set(corr, fallback_k)
  uni = list(focus.ids)
  res = universal_vs_random(model, batches, uni, modes, n_random, seed, fixed_value)
  res["set"] = res["set"].replace({"universal": "universal" if not focus.fallback else "focus"})
  atomic.write_parquet(res, os.path.join(out_dir, "ablation.parquet"))
  return [(f"Ablating {focus.label} vs random neurons", plot_ablation(
      res, os.path.join(out_dir, "ablation.png"), focus.label),
      f"{focus.note} Increase in loss and KL(clean‖ablated) when the {len(uni)} "
      f"{focus.label} neurons or {n_random} random sets with the same per-layer counts are "
      "ablated (zero: activation 0; mean: its mean over held-out tokens).")]
