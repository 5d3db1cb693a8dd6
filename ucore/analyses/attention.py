"""Attention (de)activation neurons (paper §7, Fig. 8).

Weight score of a neuron (layer l) for a head (layer L > l, head h), processed weights:
  score       = ŵ_outᵀ W_Q^h k_BOS^h / sqrt(d_head)    the paper's score (pairs are ranked by it)
  score_model = score / (L+1) where the model scales attention by the inverse layer index
                (the Stanford CRFM GPT-2s), else = score: the logit change the model really sees
with k_BOS the head's key for the BOS-only input. Positive: the neuron's output pushes the
head's query towards the BOS key (more attention to BOS, the head switches off). The baseline
replaces ŵ_out by random unit vectors (seeded); `z` = (score − baseline mean) / baseline sd
(the same for both scores: they differ by a per-head-layer constant). `rank_by="model"` ranks
pairs by score_model instead (the model-faithful variant).
Rotary models (GPT-NeoX): k_BOS is `hook_k` at position 0, before rotary, which leaves
position 0 unchanged, and the query direction W_Q ŵ_out is taken unrotated, so the score is the
logit change for a query at zero distance from BOS; in the rotary dims the real change depends
on the destination position. Path ablation needs no such caveat: it patches `hook_q`, before
rotary, and the model applies rotary to the patched query.

Path ablation: remove the neuron's output (activation × w_out) from the head's *query input
only* — the residual stream entering layer L minus the neuron's direct contribution, through
the head's LayerNorm and W_Q, patched into `blocks.{L}.attn.hook_q` at destination positions
[start, stop) of that head; keys and values keep their clean values. Measured per position:
ΔBOS = BOS attention clean − ablated; Δnorm = (‖o‖ − ‖o_abl‖) / ‖o‖, the paper's relative
change of the head output o = W_O z (delta_norm_abs keeps ‖o‖ − ‖o_abl‖).

BOS value norms: BOS is the token at position 0 when it is the BOS id (a mid-row EOS with the
same id is an ordinary token and is neither BOS nor "other"); ratio = mean over other kept
tokens of ‖W_O v‖ / mean at BOS (paper); ratio_median uses the median over other tokens.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.analyses import common
from ucore.jobs.errors import UserError


def _qkv_bias(attn, width: int) -> np.ndarray:
  """The packed q/k/v bias; zeros for models without attention biases (GPT-NeoX
  attention_bias=false)."""
  return np.asarray(attn["c_attn"].get("bias", np.zeros(width)), np.float64)


def _wq(params, config, layer):
  D, H, dh = config.n_embd, config.n_head, config.d_head
  attn = params[f"h_{layer}"]["attn"]
  k = np.asarray(attn["c_attn"]["kernel"], np.float64)
  b = _qkv_bias(attn, k.shape[1])
  return k[:, :D].reshape(D, H, dh), b[:D].reshape(H, dh)


def _score_scale(cfg, layer: int, model_faithful: bool = False) -> float:
  """The score divisor: sqrt(d_head) (the paper's score); with model_faithful, the model's own
  attention-score divisor: sqrt(d_head) if scale_attn_weights, times layer+1 where
  scale_attn_by_inverse_layer_idx (set in the Stanford CRFM GPT-2s)."""
  if not model_faithful:
    return float(np.sqrt(cfg.d_head))
  s = float(np.sqrt(cfg.d_head)) if cfg.scale_attn_weights else 1.0
  return s * (layer + 1) if cfg.scale_attn_by_inverse_layer_idx else s


def bos_keys(model, bos_id: int) -> np.ndarray:
  """[n_layer, n_head, d_head] keys of every head for the input [BOS]."""
  names = [f"blocks.{l}.attn.hook_k" for l in range(model.config.n_layer)]
  _, cache = model.run_with_cache(np.array([[bos_id]], np.int32), names)
  return np.stack([np.asarray(cache[n], np.float64)[0, 0] for n in names])


def attention_scores(model, bos_id: int, n_random: int = 1000, seed: int = 0) -> pd.DataFrame:
  """Long table indexed by (layer, neuron, head_layer, head) with score (paper), score_model
  (the model's divisor) and z for every neuron of an earlier layer than the head (processed
  weights)."""
  pm = common.processed_model(model)
  cfg = pm.config
  if not 0 <= bos_id < cfg.vocab_size:
    raise UserError(f"BOS id {bos_id} is outside the vocabulary")
  w = common.weights_of(cfg, pm.params, True)
  k_bos = bos_keys(pm, bos_id)                                      # [L, H, dh]
  rand = _random_unit_vectors(n_random, cfg.n_embd, seed)
  frames = []
  for L in range(1, cfg.n_layer):
    qk = _bos_score_directions(pm, L, k_bos)                         # [D, H]
    base = rand @ qk                                                 # [n_random, H]
    mu, sd = base.mean(0), base.std(0)
    for l in range(L):
      w_out = w.w_out[l]
      w_hat = w_out / np.maximum(np.linalg.norm(w_out, axis=1, keepdims=True), 1e-30)
      s = w_hat @ qk                                                 # [F, H]
      s_model = s * (_score_scale(cfg, L) / _score_scale(cfg, L, model_faithful=True))
      idx = pd.MultiIndex.from_product([[l], range(cfg.d_mlp), [L], range(cfg.n_head)],
                                       names=["layer", "neuron", "head_layer", "head"])
      frames.append(pd.DataFrame({
          "score": s.reshape(-1), "score_model": s_model.reshape(-1),
          "z": ((s - mu) / np.where(sd > 0, sd, np.nan)).reshape(-1),
          "baseline_mean": np.tile(mu, cfg.d_mlp), "baseline_sd": np.tile(sd, cfg.d_mlp)},
          index=idx))
  if not frames:
    raise UserError("attention scores need at least 2 layers")
  return pd.concat(frames)


def random_baseline_scores(model, bos_id: int, n_random: int = 1000, seed: int = 0):
  """Scores of random unit vectors for every head of layers >= 1: [n_random * heads]."""
  pm = common.processed_model(model)
  cfg = pm.config
  k_bos = bos_keys(pm, bos_id)
  rand = _random_unit_vectors(n_random, cfg.n_embd, seed)
  return np.concatenate([(rand @ _bos_score_directions(pm, L, k_bos)).ravel()
                         for L in range(1, cfg.n_layer)])


def _random_unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
  rand = np.random.default_rng(seed).normal(size=(n, d))
  return rand / np.linalg.norm(rand, axis=1, keepdims=True)


def _bos_score_directions(pm, layer: int, k_bos) -> np.ndarray:
  """[D, H]: a residual direction's attention score to BOS for every head of `layer`
  (W_Q^T k_BOS over the model's score divisor)."""
  wq, _ = _wq(pm.params, pm.config, layer)
  return np.einsum("dhe,he->dh", wq, k_bos[layer]) / _score_scale(pm.config, layer)


def bos_value_norms(model, batches, bos_id: int) -> pd.DataFrame:
  """Per head (head_layer, head): mean ‖W_O v‖ at BOS (position 0 holding the BOS id; a mid-row
  EOS of the same id is not BOS) and the mean and median over the other kept tokens (position
  > 0); ratio = mean other / mean BOS (the paper's: 19.4 for the median head of medium-a),
  ratio_median = median other / mean BOS. Large ratio: attending to BOS switches the head off."""
  cfg = model.config
  D, H, dh = cfg.n_embd, cfg.n_head, cfg.d_head
  names = [f"blocks.{l}.attn.hook_v" for l in range(cfg.n_layer)]
  bos_n, other = [[] for _ in range(cfg.n_layer)], [[] for _ in range(cfg.n_layer)]
  for b in batches:
    _, c = model.run_with_cache(b.tokens, names)
    toks = np.asarray(b.tokens)
    is_bos = np.zeros(toks.shape, bool)
    is_bos[:, 0] = toks[:, 0] == bos_id
    keep = np.asarray(b.mask).copy()
    keep[:, 0] = False
    for l in range(cfg.n_layer):
      w_o = np.asarray(model.params[f"h_{l}"]["attn"]["c_proj"]["kernel"], np.float64)
      v = np.asarray(c[names[l]], np.float64)                          # [B, P, H, dh]
      out = np.einsum("bphe,hed->bphd", v, w_o.reshape(H, dh, D))
      nrm = np.linalg.norm(out, axis=-1)                               # [B, P, H]
      bos_n[l].append(nrm[is_bos])
      other[l].append(nrm[keep & ~is_bos])
  rows = []
  for l in range(cfg.n_layer):
    nb = np.concatenate(bos_n[l]) if bos_n[l] else np.zeros((0, H))
    no = np.concatenate(other[l]) if other[l] else np.zeros((0, H))
    if not len(nb) or not len(no):
      raise UserError("BOS value norms need rows containing the BOS token and other tokens")
    for h in range(H):
      mb, mo, md = float(nb[:, h].mean()), float(no[:, h].mean()), float(np.median(no[:, h]))
      rows.append(dict(head_layer=l, head=h, norm_bos=mb, norm_other_mean=mo,
                       norm_other_median=md, ratio=mo / mb if mb > 0 else np.inf,
                       ratio_median=md / mb if mb > 0 else np.inf))
  return pd.DataFrame(rows).set_index(["head_layer", "head"])


def _layer_norm(x, scale, bias, eps):
  mu = x.mean(-1, keepdims=True)
  c = x - mu
  return c / jnp.sqrt((c * c).mean(-1, keepdims=True) + eps) * scale + bias


def path_ablation(model, batches, neuron: tuple, head: tuple, positions=(64, 256)) -> pd.DataFrame:
  """One row per (kept) destination position in [start, stop): activation, bos_clean,
  bos_ablated, delta_bos, norm_clean, norm_ablated, delta_norm."""
  from ucore.interventions import patch_from
  cfg = model.config
  l, n = map(int, neuron)
  L, h = map(int, head)
  if not (0 <= l < L < cfg.n_layer and 0 <= n < cfg.d_mlp and 0 <= h < cfg.n_head):
    raise UserError(f"path ablation needs a neuron in an earlier layer than the head; got "
                    f"neuron L{l}.{n}, head L{L}.H{h} in a {cfg.n_layer}-layer model")
  p = model.params
  D, dh = cfg.n_embd, cfg.d_head
  # float32 host arrays: JAX ops take them as operands as they are (jnp.asarray would compile
  # a staging or conversion program per shape)
  w_out = np.asarray(p[f"h_{l}"]["mlp"]["c_proj"]["kernel"][n], np.float32)
  ln = {k: np.asarray(v, np.float32) for k, v in p[f"h_{L}"]["ln_1"].items()}
  wq = np.asarray(p[f"h_{L}"]["attn"]["c_attn"]["kernel"][:, :D], np.float32)
  bq = np.asarray(_qkv_bias(p[f"h_{L}"]["attn"], wq.shape[1] * 3)[:D], np.float32)
  w_o = np.asarray(p[f"h_{L}"]["attn"]["c_proj"]["kernel"], np.float64)[h * dh:(h + 1) * dh]
  names = [f"blocks.{l}.mlp.hook_post", f"blocks.{L}.hook_resid_pre",
           f"blocks.{L}.attn.hook_q", f"blocks.{L}.attn.hook_pattern",
           f"blocks.{L}.attn.hook_z"]
  # the clean run also reads hook_post of every other layer before L (reading a hook changes
  # no value): every pair with head layer L shares one compiled forward
  others = [f"blocks.{j}.mlp.hook_post" for j in range(L) if j != l]
  rows = []
  for b in batches:
    P = b.tokens.shape[1]
    start, stop = min(positions[0], P), min(positions[1], P)
    if start >= stop:
      raise UserError(f"destination positions [{positions[0]}, {positions[1]}) are empty for "
                      f"rows of {P} tokens")
    _, c = model.run_with_cache(b.tokens, names + others)
    # Slicing, the float32 product/difference and the query splice on the host: numpy's
    # elementwise float32 arithmetic rounds as XLA's separate ops do, and each eager op on a
    # device array would compile a program per shape. The LayerNorm and W_Q stay in JAX (its
    # reductions and matmul round differently from numpy's).
    act = np.asarray(c[names[0]])[..., n]                            # [B, P]
    resid = np.asarray(c[names[1]]) - act[..., None] * w_out
    x = _layer_norm(jnp.asarray(resid.astype(np.float32)), ln["scale"], ln["bias"],
                    cfg.layer_norm_epsilon)
    q_new = np.asarray(jnp.einsum("bpd,de->bpe", x, wq, precision=jax.lax.Precision.HIGHEST)
                       + bq).reshape(x.shape[0], P, cfg.n_head, dh)
    q = np.array(c[names[2]])
    q[:, start:stop, h] = q_new[:, start:stop, h]
    _, ca = model.run_with_cache(b.tokens, names[3:], stop_at_layer=None,
                                 interventions={names[2]: patch_from(q)})
    sl = np.s_[:, start:stop]
    bos_c = np.asarray(c[names[3]])[:, h, start:stop, 0]
    bos_a = np.asarray(ca[names[3]])[:, h, start:stop, 0]
    nc = np.linalg.norm(np.asarray(c[names[4]], np.float64)[:, start:stop, h] @ w_o, axis=-1)
    na = np.linalg.norm(np.asarray(ca[names[4]], np.float64)[:, start:stop, h] @ w_o, axis=-1)
    keep = np.asarray(b.mask)[sl]
    a = np.asarray(act)[sl]
    rows.append(pd.DataFrame({
        "activation": a[keep], "bos_clean": bos_c[keep], "bos_ablated": bos_a[keep],
        "delta_bos": (bos_c - bos_a)[keep], "norm_clean": nc[keep], "norm_ablated": na[keep],
        "delta_norm": relative_norm_change(nc, na)[keep], "delta_norm_abs": (nc - na)[keep]}))
  return pd.concat(rows, ignore_index=True)


def relative_norm_change(norm_clean, norm_ablated) -> np.ndarray:
  """The paper's Δnorm: (‖o‖ − ‖o_abl‖) / ‖o‖ (NaN where ‖o‖ = 0)."""
  nc, na = np.asarray(norm_clean, np.float64), np.asarray(norm_ablated, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(nc > 0, (nc - na) / nc, np.nan)


def path_summary(points: pd.DataFrame) -> dict:
  def corr(a, b):
    a, b = points[a].values, points[b].values
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 \
        else float("nan")
  return {"corr_activation_delta_bos": corr("activation", "delta_bos"),
          "corr_delta_bos_delta_norm": corr("delta_bos", "delta_norm"),
          "corr_delta_bos_delta_norm_abs": corr("delta_bos", "delta_norm_abs"),
          "mean_delta_bos": float(points["delta_bos"].mean()),
          "mean_delta_norm": float(np.nanmean(points["delta_norm"])), "points": len(points)}


def plot_scores(scores: pd.DataFrame, baseline: np.ndarray, path: str) -> str:
  fig, ax = common.new_figure(figsize=(6, 4))
  s = scores["score"].values
  bins = np.linspace(min(s.min(), baseline.min()), max(s.max(), baseline.max()), 80)
  ax.hist(baseline, bins=bins, density=True, alpha=0.5, color="0.5", label="random directions",
          histtype="stepfilled")
  ax.hist(s, bins=bins, density=True, alpha=0.5, color="tab:blue", label="neuron w_out",
          histtype="stepfilled")
  ax.set_yscale("log")
  ax.set_xlabel("ŵ_outᵀ W_Q k_BOS / √d_head")
  ax.legend(fontsize=7)
  ax.set_title("attention (de)activation scores, all (neuron, later head) pairs")
  return common.save_figure(fig, path)


def plot_path(points: pd.DataFrame, title: str, path: str) -> str:
  fig, axes = common.new_figure(1, 2, figsize=(9, 3.5))
  axes[0].scatter(points["activation"], points["delta_bos"], s=3)
  axes[0].set_xlabel("neuron activation")
  axes[0].set_ylabel("Δ BOS attention (clean − ablated)")
  axes[1].scatter(points["delta_bos"], points["delta_norm"], s=3)
  axes[1].set_xlabel("Δ BOS attention")
  axes[1].set_ylabel("Δ head output norm (relative)")
  fig.suptitle(title)
  return common.save_figure(fig, path)


RANK_BY = {"paper": "score", "model": "score_model"}


def run(model, batches: Sequence, out_dir: str, bos_id: int, pairs: Optional[Sequence] = None,
        top_pairs: int = 3, positions=(64, 256), n_random: int = 1000, seed: int = 0,
        rank_by: str = "paper") -> list:
  """Writes attention_scores.parquet (every pair), head_bos_norms.parquet (per head),
  path_ablation.parquet (per pair),
  path_ablation_points.parquet and figures. `pairs`: [((layer, neuron), (head_layer, head))];
  default: the top_pairs highest-scoring pairs by `rank_by` ("paper": score, "model":
  score_model)."""
  if rank_by not in RANK_BY:
    raise UserError(f"attention rank_by={rank_by!r}; choose one of {', '.join(RANK_BY)}")
  os.makedirs(out_dir, exist_ok=True)
  batches = list(batches)
  # processed once for both weight scores: processed_model returns an already processed
  # model as it is, so the BOS-key forward is traced and compiled once
  pm = common.processed_model(model)
  scores = attention_scores(pm, bos_id, n_random, seed)
  atomic.write_parquet(scores, os.path.join(out_dir, "attention_scores.parquet"))
  baseline = random_baseline_scores(pm, bos_id, n_random, seed)
  figs = [("Attention deactivation scores", plot_scores(
      scores, baseline, os.path.join(out_dir, "attention_scores.png")),
      "Weight score of every (earlier-layer neuron, head) pair against random unit vectors "
      "(paper Fig. 8a); positive = the neuron moves the head's query towards the BOS key. "
      "Shown: the paper's score ŵ_outᵀW_Q k_BOS/√d_head" + (
          "; this model also divides attention scores by layer+1, so score_model = score/(L+1) "
          "is stored beside it" if model.config.scale_attn_by_inverse_layer_idx else "") +
      f"; pairs ranked by {RANK_BY[rank_by]} ({rank_by}).")]
  heads = bos_value_norms(model, batches, bos_id)
  atomic.write_parquet(heads, os.path.join(out_dir, "head_bos_norms.parquet"))
  figs[0] = (figs[0][0], figs[0][1], figs[0][2] + f" Median head: ‖W_O v‖ is "
             f"{np.median(heads['ratio']):.3g}× smaller at BOS than its mean over other tokens "
             f"(paper's ratio; with the median over other tokens: "
             f"{np.median(heads['ratio_median']):.3g}×).")
  if pairs is None:
    top = scores.nlargest(top_pairs, RANK_BY[rank_by]).index
    pairs = [((int(l), int(n)), (int(L), int(h))) for l, n, L, h in top]
  summ, pts = [], []
  for i, (neu, hd) in enumerate(pairs):
    points = path_ablation(model, batches, neu, hd, positions)
    s = path_summary(points)
    s.update(layer=neu[0], neuron=neu[1], head_layer=hd[0], head=hd[1],
             score=float(scores.loc[(neu[0], neu[1], hd[0], hd[1]), "score"]),
             score_model=float(scores.loc[(neu[0], neu[1], hd[0], hd[1]), "score_model"]))
    summ.append(s)
    points.insert(0, "pair", i)
    pts.append(points)
    if i == 0:
      figs.append((f"Path ablation {common.neuron_name(*neu)} → head L{hd[0]}.H{hd[1]}",
                   plot_path(points, f"{common.neuron_name(*neu)} → L{hd[0]}.H{hd[1]}",
                             os.path.join(out_dir, "path_ablation.png")),
                   f"Removing the neuron from the head's query only: ρ(activation, ΔBOS) = "
                   f"{s['corr_activation_delta_bos']:.2f}, ρ(ΔBOS, Δnorm) = "
                   f"{s['corr_delta_bos_delta_norm']:.2f} (paper Fig. 8b, c; Δnorm is the "
                   "relative change (‖o‖ − ‖o_abl‖)/‖o‖ of the head output)."))
  if summ:
    atomic.write_parquet(pd.DataFrame(summ).set_index(["layer", "neuron", "head_layer", "head"]),
                         os.path.join(out_dir, "path_ablation.parquet"))
    atomic.write_parquet(pd.concat(pts, ignore_index=True),
                         os.path.join(out_dir, "path_ablation_points.parquet"))
  return figs
