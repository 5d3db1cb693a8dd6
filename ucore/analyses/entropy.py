"""Entropy neurons (paper §5, Fig. 7): large w_out almost in the null space of W_U.

Candidates (processed weights, W_U centered): for every neuron
  w_out_norm       ‖w_out‖
  logit_var        Var over the vocabulary of W_Uᵀ w_out (the neuron's direct logit effect)
  rel_logit_var    logit_var / (‖w_out‖² · E_u Var(W_Uᵀ u)) with u a random unit vector
                   (= ‖W_U‖_F² / (D·V)): 1 for a random direction, ≈ 0 in the null space
  entropy_score    w_out_norm / sqrt(rel_logit_var + eps): high norm and little logit effect
Sweep: fix the post-GELU activation to each c at every position; mean over kept tokens (not
BOS, not the last position) of the final LayerNorm scale, the entropy of the prediction
(nats), the reciprocal rank of the true next token and the loss; compared with random neurons
of the last layers. Control filter (`control_filter`):
  "original" (default, as the authors' code): not in the top decile of l2_penalty
             (‖w_in‖² + ‖w_out‖²) and not in the bottom decile of vocab_var (variance over the
             vocabulary of cos(w_out, W_U[:, t]))
  "w_out"    not in the top decile of ‖w_out‖ and not in the bottom decile of logit_var
Deciles are taken within the last `last_layers` layers.
"""
from __future__ import annotations

import functools
import os
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.analyses import common
from ucore.jobs.errors import UserError

DEFAULT_VALUES = (-0.17, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
METRICS = ("ln_scale", "entropy", "reciprocal_rank", "loss")


def entropy_candidates(weights: common.Weights, eps: float = 1e-3) -> pd.DataFrame:
  """Per neuron: w_out_norm, logit_var, rel_logit_var, entropy_score, rank (1 = best), and the
  control-filter columns l2_penalty and vocab_var (ucore.analyses.stats.weight_stats)."""
  from ucore.analyses.stats import weight_stats
  L, F, D = weights.w_out.shape
  w_u = weights.w_u - weights.w_u.mean(axis=1, keepdims=True)       # [D, V], centered
  V = w_u.shape[1]
  w_out = weights.w_out.reshape(L * F, D)
  norm = np.linalg.norm(w_out, axis=1)
  eff = w_out @ w_u                                                  # [N, V]
  logit_var = eff.var(axis=1)
  rand_var = (w_u ** 2).sum() / (D * V)
  with np.errstate(divide="ignore", invalid="ignore"):
    rel = np.where(norm > 0, logit_var / (norm ** 2 * rand_var), np.nan)
  score = norm / np.sqrt(np.nan_to_num(rel, nan=np.inf) + eps)
  df = pd.DataFrame({"w_out_norm": norm, "logit_var": logit_var, "rel_logit_var": rel,
                     "entropy_score": score}, index=common.neuron_index(L, F))
  df["rank"] = df["entropy_score"].rank(ascending=False, method="first").astype(int)
  ws = weight_stats(weights)
  df["l2_penalty"], df["vocab_var"] = ws["l2_penalty"].values, ws["vocab_var"].values
  return df


CONTROL_FILTERS = {"original": ("l2_penalty", "vocab_var"), "w_out": ("w_out_norm", "logit_var")}


def random_control_neurons(cands: pd.DataFrame, n: int = 20, last_layers: int = 2,
                           seed: int = 0, exclude=(), control_filter: str = "original") -> list:
  """n random neurons of the last `last_layers` layers, excluding (within those layers) the
  top decile of the filter's norm column and the bottom decile of its variance column
  (CONTROL_FILTERS) and `exclude`."""
  if control_filter not in CONTROL_FILTERS:
    raise UserError(f"entropy control_filter={control_filter!r}; choose one of "
                    f"{', '.join(CONTROL_FILTERS)}")
  norm_col, var_col = CONTROL_FILTERS[control_filter]
  layers = sorted(set(cands.index.get_level_values("layer")))[-last_layers:]
  sub = cands[cands.index.get_level_values("layer").isin(layers)]
  ok = ((sub[norm_col] < sub[norm_col].quantile(0.9)) &
        (sub[var_col] > sub[var_col].quantile(0.1)))
  pool = [i for i in sub.index[ok.values] if tuple(i) not in {tuple(e) for e in exclude}]
  rng = np.random.default_rng(seed)
  pick = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
  return [tuple(int(v) for v in pool[i]) for i in sorted(pick)]


@functools.partial(jax.jit)
def _metric_sums(logits, scale, tokens, mask):
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  tgt = tokens[:, 1:]
  lt = jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
  ent = -(jnp.exp(logp) * logp).sum(-1)
  rank = 1 + (logp > lt[..., None]).sum(-1)
  m = mask[:, :-1].astype(jnp.float32)
  return jnp.stack([(scale[:, :-1, 0] * m).sum(), (ent * m).sum(), ((1.0 / rank) * m).sum(),
                    (-lt * m).sum(), m.sum()])


def prediction_metrics(model, batches: Iterable, interventions=None) -> dict:
  """Mean over kept tokens (except each row's last position) of METRICS."""
  tot = np.zeros(5)
  for b in batches:
    logits, cache = model.run_with_cache(b.tokens, ["ln_final.hook_scale"],
                                         interventions=interventions)
    # host tokens and mask go straight into the jitted sums (jnp.asarray would compile a
    # staging program per shape)
    tot += np.asarray(_metric_sums(logits, cache["ln_final.hook_scale"], np.asarray(b.tokens),
                                   np.asarray(b.mask)), np.float64)
  if tot[4] == 0:
    raise UserError("no kept tokens to evaluate (rows too short or fully masked)")
  return dict(zip(METRICS, tot[:4] / tot[4]))


def fix_interventions(model, layer: int, neuron: int, value: float,
                      hook: str = "mlp.hook_post") -> dict:
  """Fixing one post-GELU activation to `value`, written as data that compiles once for every
  neuron, layer and value: scale each layer's activations by a 0/1 vector (0 at the neuron)
  and add value·w_out to blocks.{l}.hook_mlp_out. Same result as fix_neurons([neuron], value)
  (the MLP output is linear in the activation). Every layer gets the pair (all ones and a zero
  vector where nothing is fixed: x·1 + 0 = x exactly), so one compiled forward serves every
  layer and the clean run (identity_interventions)."""
  if hook != "mlp.hook_post":
    from ucore.interventions import fix_neurons
    return {f"blocks.{layer}.{hook}": fix_neurons([neuron], value)}
  w_out = np.asarray(model.params[f"h_{layer}"]["mlp"]["c_proj"]["kernel"], np.float32)[neuron]
  return identity_interventions(model, {layer: (neuron, np.float32(value) * w_out)})


def identity_interventions(model, fixed: Optional[dict] = None) -> dict:
  """The scale/add pair of fix_interventions on every layer; `fixed`: {layer: (neuron, vector
  added to hook_mlp_out)}; without it the forward is the clean one (x·1 + 0 = x)."""
  from ucore.interventions import add_vector, scale_neurons
  cfg, fixed = model.config, fixed or {}
  out = {}
  for l in range(cfg.n_layer):
    keep = np.ones(cfg.d_mlp, np.float32)
    add = np.zeros(cfg.n_embd, np.float32)
    if l in fixed:
      keep[fixed[l][0]] = 0
      add = fixed[l][1]
    out[f"blocks.{l}.mlp.hook_post"] = scale_neurons(None, keep)
    out[f"blocks.{l}.hook_mlp_out"] = add_vector(add)
  return out


def fixed_activation_sweep(model, batches: Sequence, neurons: Sequence, values=DEFAULT_VALUES,
                           hook: str = "mlp.hook_post") -> pd.DataFrame:
  """Rows (layer, neuron, value) with METRICS when the neuron's activation is fixed to value;
  plus one row per neuron with value NaN = the clean run."""
  batches = list(batches)
  # the clean run through the sweep's own compiled forward (identity interventions)
  clean = prediction_metrics(model, batches, identity_interventions(model)
                             if hook == "mlp.hook_post" else None)
  rows = []
  for (l, n) in neurons:
    if not (0 <= l < model.config.n_layer and 0 <= n < model.config.d_mlp):
      raise UserError(f"neuron L{l}.{n} is not in the model")
    rows.append(dict(layer=l, neuron=n, value=np.nan, **clean))
    for c in values:
      m = prediction_metrics(model, batches, fix_interventions(model, int(l), int(n), float(c),
                                                               hook))
      rows.append(dict(layer=int(l), neuron=int(n), value=float(c), **m))
  return pd.DataFrame(rows).set_index(["layer", "neuron", "value"])


def plot_sweep(sweep: pd.DataFrame, targets: Sequence, path: str) -> str:
  fig, axes = common.new_figure(1, 4, figsize=(14, 3.3))
  tset = {tuple(t) for t in targets}
  for (l, n), g in sweep.groupby(level=["layer", "neuron"]):
    g = g.dropna(subset=[]).reset_index()
    g = g[np.isfinite(g["value"])]
    is_t = (l, n) in tset
    for ax, m in zip(axes, METRICS):
      ax.plot(g["value"], g[m], "-o" if is_t else "-", color=None if is_t else "0.7",
              lw=2 if is_t else 0.8, ms=3, label=common.neuron_name(l, n) if is_t else None,
              zorder=3 if is_t else 1)
  for ax, m in zip(axes, METRICS):
    ax.set_title(m)
    ax.set_xlabel("fixed activation")
  axes[0].legend(fontsize=7)
  return common.save_figure(fig, path)


def plot_candidates(cands: pd.DataFrame, path: str, top: int = 5) -> str:
  fig, ax = common.new_figure(figsize=(5, 4))
  last = cands.index.get_level_values("layer") == cands.index.get_level_values("layer").max()
  ax.scatter(cands["w_out_norm"][~last], cands["rel_logit_var"][~last], s=4, c="0.7",
             label="earlier layers")
  ax.scatter(cands["w_out_norm"][last], cands["rel_logit_var"][last], s=6, c="tab:blue",
             label="last layer")
  for idx in cands.nsmallest(top, "rank").index:
    ax.annotate(common.neuron_name(*idx), (cands.loc[idx, "w_out_norm"],
                                          cands.loc[idx, "rel_logit_var"]), fontsize=7)
  ax.set_xlabel("‖w_out‖")
  ax.set_ylabel("relative logit variance of w_out")
  ax.set_yscale("symlog", linthresh=1e-3)
  ax.legend(fontsize=7)
  return common.save_figure(fig, path)


def run(model, batches: Sequence, out_dir: str, n_targets: int = 1, n_random: int = 20,
        last_layers: int = 2, values=DEFAULT_VALUES, seed: int = 0,
        targets: Optional[Sequence] = None, control_filter: str = "original") -> list:
  """Writes entropy_candidates.parquet, entropy_sweep.parquet and two PNGs."""
  os.makedirs(out_dir, exist_ok=True)
  cands = entropy_candidates(common.processed_weights(model))
  if targets is None:
    targets = [tuple(int(v) for v in i) for i in cands.nsmallest(n_targets, "rank").index]
  controls = random_control_neurons(cands, n_random, last_layers, seed, exclude=targets,
                                    control_filter=control_filter)
  sweep = fixed_activation_sweep(model, batches, list(targets) + controls, values)
  sweep["role"] = ["target" if (l, n) in set(map(tuple, targets)) else "random"
                   for l, n, _ in sweep.index]
  atomic.write_parquet(cands, os.path.join(out_dir, "entropy_candidates.parquet"))
  atomic.write_parquet(sweep, os.path.join(out_dir, "entropy_sweep.parquet"))
  names = ", ".join(common.neuron_name(*t) for t in targets)
  return [("Entropy-neuron candidates", plot_candidates(
              cands, os.path.join(out_dir, "entropy_candidates.png")),
           "‖w_out‖ against the variance of its direct logit effect relative to a random "
           "direction; entropy neurons sit at high norm, near-zero logit variance."),
          ("Fixed-activation sweep", plot_sweep(sweep, targets,
                                                os.path.join(out_dir, "entropy_sweep.png")),
           f"Final LayerNorm scale, entropy (nats), reciprocal rank and loss when {names} "
           f"(colour) or {len(controls)} random neurons of the last {last_layers} layers (gray) "
           "are fixed to c; controls exclude the top decile of "
           f"{CONTROL_FILTERS[control_filter][0]} and the bottom decile of "
           f"{CONTROL_FILTERS[control_filter][1]} ({control_filter} filter).")]
