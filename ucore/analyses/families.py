"""Neuron families (paper §4.3): variance reduction for every neuron × every binary label in one
pass, position neurons by mutual information, the alphabet-neuron table.

VR of activation v by a binary label y (β = share of y=1), population variances:
  VR = 1 − [(1−β)Var(v|y=0) + β Var(v|y=1)] / Var(v) = SSB / SST,
  SSB = n1 n0 / n · (μ1 − μ0)²     (law of total variance)
so every label needs only n1 and Σ_{y=1} v. Those come from *grouped sums*: one pass
accumulates, in float64 and shifted by a per-neuron constant K (the first batch's mean),
Σ(v−K) grouped by current token id [V, N], by previous token id [V+1, N] (id V = no previous
token), by dataset label [D, N] and by position [P, N]. At the end one matrix product of the
label-indicator matrix [V, labels] with the grouped sums gives Σ_{y=1}(v−K) for every
vocabulary label and its previous-token version — no loop over labels or data.

Memory: 2·V·N float64 for the token-grouped sums; `run` splits the layers into passes that fit
`memory_gb` (GPT-2 small: 2.5 GB per layer).
"""
from __future__ import annotations

import os
import string
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.analyses import common
from ucore.analyses.moments import StreamingMoments
from ucore.analyses.vocab import LabelSet
from ucore.jobs.errors import UserError

FAMILIES = ("unigram", "alphabet", "previous_token", "token_feature", "context", "position",
            "none")


class GroupedSums:
  """One-pass accumulator of the grouped sums above, plus position × activation histograms for
  the mutual information with position."""

  def __init__(self, n_neurons: int, vocab_size: int, ctx: int, n_datasets: int = 0,
               act_bins: int = 10, pos_bins: int = 16):
    self.N, self.V, self.ctx, self.n_datasets = n_neurons, vocab_size, ctx, n_datasets
    self.total = StreamingMoments(n_neurons, count_positive=False)
    self.shift = None
    self.sum_total = np.zeros(n_neurons)
    self.g_cur = np.zeros((vocab_size, n_neurons))
    self.c_cur = np.zeros(vocab_size)
    self.g_prev = np.zeros((vocab_size + 1, n_neurons))
    self.c_prev = np.zeros(vocab_size + 1)
    self.g_data = np.zeros((max(n_datasets, 0), n_neurons))
    self.c_data = np.zeros(max(n_datasets, 0))
    self.g_pos = np.zeros((ctx, n_neurons))
    self.c_pos = np.zeros(ctx)
    self.act_bins, self.pos_bins = act_bins, min(pos_bins, ctx)
    self.edges = None
    self.hist = np.zeros((n_neurons, act_bins, self.pos_bins), np.int64)

  @staticmethod
  def _group(ids, values, n_groups, g, c):
    order = np.argsort(ids, kind="stable")
    sids = ids[order]
    uniq, starts = np.unique(sids, return_index=True)
    g[uniq] += np.add.reduceat(values[order], starts, axis=0)
    c[uniq] += np.diff(np.append(starts, len(sids)))

  def update(self, acts, tokens, mask, row_labels=None) -> None:
    """acts [B, P, N], tokens [B, P] int, mask [B, P] bool, row_labels [B] int or None."""
    acts = np.asarray(acts, np.float64)
    tokens = np.asarray(tokens)
    mask = np.asarray(mask, bool)
    B, P, N = acts.shape
    if N != self.N or P > self.ctx:
      raise ValueError(f"acts {acts.shape} do not fit N={self.N}, ctx={self.ctx}")
    keep = mask.reshape(-1)
    if not keep.any():
      return
    v = acts.reshape(-1, N)[keep]
    if self.shift is None:
      self.shift = v.mean(axis=0)
      qs = np.linspace(0, 1, self.act_bins + 1)[1:-1]
      self.edges = np.quantile(v, qs, axis=0).T.copy()         # [N, act_bins-1]
    self.total.update(v)
    d = v - self.shift
    self.sum_total += d.sum(axis=0)
    cur = tokens.reshape(-1)[keep]
    prev = np.concatenate([np.full((B, 1), self.V), tokens[:, :-1]], axis=1).reshape(-1)[keep]
    pos = np.broadcast_to(np.arange(P), (B, P)).reshape(-1)[keep]
    self._group(cur, d, self.V, self.g_cur, self.c_cur)
    self._group(prev, d, self.V + 1, self.g_prev, self.c_prev)
    self._group(pos, d, self.ctx, self.g_pos, self.c_pos)
    if self.n_datasets and row_labels is not None:
      rl = np.broadcast_to(np.asarray(row_labels)[:, None], (B, P)).reshape(-1)[keep]
      if rl.min() < 0 or rl.max() >= self.n_datasets:
        raise UserError(f"row label ids outside [0, {self.n_datasets})")
      self._group(rl, d, self.n_datasets, self.g_data, self.c_data)
    # mutual information histograms: activation bin × position bin per neuron
    abin = (v[:, :, None] > self.edges[None]).sum(-1)           # [T, N]
    pbin = (pos * self.pos_bins) // self.ctx                     # [T]
    flat = (np.arange(N)[None, :] * (self.act_bins * self.pos_bins) +
            abin * self.pos_bins + pbin[:, None])
    self.hist += np.bincount(flat.reshape(-1), minlength=self.hist.size).reshape(
        self.hist.shape)

  # ---- results ---------------------------------------------------------------------------
  def _vr(self, s1, n1):
    """s1 [k, N] = Σ_{y=1}(v−K), n1 [k] -> VR [k, N]."""
    n = float(self.total.n)
    sst = self.total.m2
    n1 = np.asarray(n1, np.float64)[:, None]
    n0 = n - n1
    with np.errstate(divide="ignore", invalid="ignore"):
      mu1 = s1 / n1
      mu0 = (self.sum_total[None] - s1) / n0
      ssb = n1 * n0 / n * (mu1 - mu0) ** 2
      vr = np.where((n1 > 0) & (n0 > 0), ssb, 0.0) / sst[None]
    return np.where(sst[None] > 0, vr, np.nan)

  def variance_reduction(self, labels: Optional[LabelSet] = None,
                         dataset_names: Optional[list] = None):
    """VR [labels, N] for every vocabulary label, its previous-token version and every dataset
    label. Returns (vr, names, kinds)."""
    if self.total.n == 0:
      raise UserError("no kept tokens seen: the token stream is empty or fully masked")
    blocks, names, kinds = [], [], []
    if labels is not None:
      if labels.matrix.shape[0] != self.V:
        raise UserError(f"labels cover a {labels.matrix.shape[0]}-token vocabulary but the "
                        f"model has {self.V}; build them from the model's tokenizer")
      m = labels.matrix.astype(np.float64)                     # [V, k]
      blocks.append(self._vr(m.T @ self.g_cur, m.T @ self.c_cur))
      names += list(labels.names)
      kinds += list(labels.kinds)
      mp = np.vstack([m, np.zeros((1, m.shape[1]))])
      blocks.append(self._vr(mp.T @ self.g_prev, mp.T @ self.c_prev))
      names += [f"prev:{n}" for n in labels.names]
      kinds += [f"prev_{k}" for k in labels.kinds]
    if self.n_datasets and self.c_data.sum() > 0:
      blocks.append(self._vr(self.g_data, self.c_data))
      dn = dataset_names or [str(i) for i in range(self.n_datasets)]
      names += [f"dataset:{d}" for d in dn]
      kinds += ["dataset"] * self.n_datasets
    if not blocks:
      raise ValueError("no labels")
    return np.concatenate(blocks, axis=0), names, kinds

  def position_vr(self) -> np.ndarray:
    """η² of activation by position (share of variance explained by position)."""
    n = float(self.total.n)
    with np.errstate(divide="ignore", invalid="ignore"):
      mu = self.sum_total / n
      mup = self.g_pos / self.c_pos[:, None]
      ssb = np.nansum(self.c_pos[:, None] * (mup - mu[None]) ** 2, axis=0)
      return np.where(self.total.m2 > 0, ssb / self.total.m2, np.nan)

  def position_mi(self) -> tuple:
    """(MI in nats, MI / H(activation bin)) per neuron from the binned joint histogram, with
    the Miller–Madow bias correction (A−1)(P−1)/(2T) subtracted (clipped at 0), so that an
    activation independent of position reads ≈ 0 even on few tokens."""
    h = self.hist.astype(np.float64)
    tot = h.sum(axis=(1, 2), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
      p = h / tot
      pa = p.sum(2, keepdims=True)
      pp = p.sum(1, keepdims=True)
      mi = np.nansum(np.where(p > 0, p * np.log(p / (pa * pp)), 0.0), axis=(1, 2))
      ha = -np.nansum(np.where(pa > 0, pa * np.log(pa), 0.0), axis=(1, 2))
      na = (pa[:, :, 0] > 0).sum(1)
      npos = (pp[:, 0, :] > 0).sum(1)
      mi = np.maximum(mi - (na - 1) * (npos - 1) / (2.0 * tot[:, 0, 0]), 0.0)
      return mi, np.where(ha > 0, mi / ha, 0.0)


_PRIORITY = {"unigram": 0, "alphabet": 1, "prev_unigram": 2, "prev_alphabet": 3, "token": 4,
             "prev_token": 5, "dataset": 6}


def family_of(kind: str) -> str:
  if kind.startswith("prev_"):
    return "previous_token"
  return {"unigram": "unigram", "alphabet": "alphabet", "token": "token_feature",
          "dataset": "context"}.get(kind, "token_feature")


def assign_families(vr: np.ndarray, names: list, kinds: list, position_vr: np.ndarray,
                    position_mi: np.ndarray, index: pd.MultiIndex, vr_threshold: float = 0.5,
                    alphabet_threshold: float = 0.35,
                    position_mi_threshold: float = 0.2) -> pd.DataFrame:
  """Best label per neuron and its family. A neuron is a position neuron when its normalized
  mutual information with position (MI / H(activation bin)) exceeds position_mi_threshold and
  position explains at least as much variance (η²) as its best label; otherwise its family is
  that of the best label if VR > vr_threshold (alphabet: > alphabet_threshold), else 'none'."""
  vr0 = np.where(np.isnan(vr), -np.inf, vr)
  # Ties (labels splitting the data identically, e.g. unigram:river and ends_with_er when
  # "river" is the only -er word seen): prefer the more specific kind.
  prio = np.array([_PRIORITY.get(k, len(_PRIORITY)) for k in kinds])
  near = vr0 >= vr0.max(axis=0, keepdims=True) - 1e-9
  best = np.where(near, prio[:, None], 10 ** 6).argmin(axis=0)
  best_vr = vr[best, np.arange(vr.shape[1])]
  second = np.sort(vr0, axis=0)[-2] if vr.shape[0] > 1 else np.full(vr.shape[1], np.nan)
  fam = []
  for j, b in enumerate(best):
    bv = best_vr[j]
    pv = position_vr[j]
    if (np.isfinite(pv) and position_mi[j] > position_mi_threshold and
        (not np.isfinite(bv) or pv >= bv)):
      fam.append("position")
      continue
    f = family_of(kinds[b])
    thr = alphabet_threshold if f == "alphabet" else vr_threshold
    fam.append(f if np.isfinite(bv) and bv > thr else "none")
  return pd.DataFrame({
      "best_label": [names[b] for b in best], "best_kind": [kinds[b] for b in best],
      "best_vr": best_vr, "second_vr": second, "position_vr": position_vr,
      "position_mi": position_mi, "family": fam}, index=index)


def family_counts(families: pd.DataFrame) -> pd.DataFrame:
  """Neurons per (layer, family)."""
  t = families.groupby([families.index.get_level_values("layer"), "family"]).size()
  return t.unstack(fill_value=0).reindex(columns=list(FAMILIES), fill_value=0)


def alphabet_table(vr: np.ndarray, names: list, index: pd.MultiIndex,
                   threshold: float = 0.35) -> pd.DataFrame:
  """Per letter: the neuron with the highest VR for is_letter_<x>, that VR, the same neuron's
  VR for starts_with_letter_<x>, and whether it passes the alphabet threshold."""
  pos = {n: i for i, n in enumerate(names)}
  rows = []
  for x in string.ascii_lowercase:
    i, j = pos.get(f"is_letter_{x}"), pos.get(f"starts_with_letter_{x}")
    if i is None:
      continue
    r = np.where(np.isnan(vr[i]), -np.inf, vr[i])
    k = int(r.argmax())
    layer, neuron = index[k]
    rows.append({"letter": x, "layer": int(layer), "neuron": int(neuron),
                 "vr_letter": float(vr[i, k]),
                 "vr_starts_with": float(vr[j, k]) if j is not None else np.nan,
                 "alphabet_neuron": bool(vr[i, k] > threshold)})
  return pd.DataFrame(rows).set_index("letter")


def top_labels(vr: np.ndarray, names: list, index: pd.MultiIndex, k: int = 5) -> pd.DataFrame:
  vr0 = np.where(np.isnan(vr), -np.inf, vr)
  order = np.argsort(-vr0, axis=0)[:k]
  cols = {}
  for r in range(order.shape[0]):
    cols[f"label_{r + 1}"] = [names[i] for i in order[r]]
    cols[f"vr_{r + 1}"] = vr[order[r], np.arange(vr.shape[1])]
  return pd.DataFrame(cols, index=index)


# ---- library entry point ------------------------------------------------------------------------
def token_counts(batches: Iterable, vocab_size: int) -> np.ndarray:
  counts = np.zeros(vocab_size, np.int64)
  for b in batches:
    t = np.asarray(b.tokens)[np.asarray(b.mask)]
    counts += np.bincount(t.reshape(-1), minlength=vocab_size)[:vocab_size]
  return counts


def neuron_families(model, batches: Iterable, labels: Optional[LabelSet],
                    dataset_names: Optional[list] = None, layers: Optional[list] = None,
                    hook: str = "mlp.hook_post", vr_threshold: float = 0.5,
                    alphabet_threshold: float = 0.35, act_bins: int = 10,
                    pos_bins: int = 16, position_mi_threshold: float = 0.2) -> dict:
  """One pass over `batches` for the neurons of `layers`. Returns dict with 'families'
  (per-neuron table), 'counts', 'alphabet', 'top_labels', 'vr' [labels, N], 'names', 'kinds'."""
  cfg = model.config
  layers = list(range(cfg.n_layer)) if layers is None else [int(l) for l in layers]
  acc = None
  for b in batches:
    acts = np.asarray(model.neuron_activations(b.tokens, layers=layers, hook=hook))
    if acc is None:
      acc = GroupedSums(acts.shape[-1], cfg.vocab_size, cfg.n_positions,
                        len(dataset_names or []), act_bins, pos_bins)
    acc.update(acts, b.tokens, b.mask, b.row_labels if dataset_names else None)
  if acc is None:
    raise UserError("the token stream is empty")
  vr, names, kinds = acc.variance_reduction(labels, dataset_names)
  index = pd.MultiIndex.from_product([layers, range(cfg.d_mlp)], names=["layer", "neuron"])
  mi, mi_norm = acc.position_mi()
  fam = assign_families(vr, names, kinds, acc.position_vr(), mi_norm, index, vr_threshold,
                        alphabet_threshold, position_mi_threshold)
  fam["position_mi_nats"] = mi
  return {"families": fam, "counts": family_counts(fam),
          "alphabet": alphabet_table(vr, names, index, alphabet_threshold),
          "top_labels": top_labels(vr, names, index), "vr": vr, "names": names,
          "kinds": kinds, "tokens": acc.total.n}


def plot_counts(counts: pd.DataFrame, path: str) -> str:
  fig, ax = common.new_figure(figsize=(7, 4))
  bottom = np.zeros(len(counts))
  for fam in counts.columns:
    if fam == "none":
      continue
    ax.bar(counts.index, counts[fam].values, bottom=bottom, label=fam)
    bottom += counts[fam].values
  ax.set_xticks(list(counts.index))
  ax.set_xlabel("layer")
  ax.set_ylabel("neurons")
  ax.legend(fontsize=7)
  ax.set_title("neuron families per layer (best label VR above threshold)")
  return common.save_figure(fig, path)


def plot_best_vr(fam: pd.DataFrame, path: str) -> str:
  fig, ax = common.new_figure(figsize=(6, 4))
  layers = sorted(set(fam.index.get_level_values("layer")))
  ax.boxplot([fam.xs(l, level="layer")["best_vr"].dropna().values for l in layers],
             positions=layers, showfliers=True)
  ax.set_xlabel("layer")
  ax.set_ylabel("best-label variance reduction")
  return common.save_figure(fig, path)


def layers_per_pass_for(config, memory_gb: float) -> int:
  """Layers whose grouped sums (2·(V+1)·d_mlp float64 + histograms) fit in memory_gb."""
  per_layer = 2 * (config.vocab_size + 1) * config.d_mlp * 8 + config.d_mlp * 160 * 8
  return int(max(1, min(config.n_layer, (memory_gb * 2 ** 30) // per_layer)))


def run(model, batches_factory, out_dir: str, labels_texts: list, dataset_names=None,
        n_unigrams: int = 200, layers_per_pass: Optional[int] = None,
        memory_gb: float = 8.0, **kw) -> list:
  """`batches_factory()` -> a fresh iterable of Batches (called once to count tokens, then once
  per pass). Writes families.parquet, family_counts.parquet, alphabet_neurons.parquet,
  top_labels.parquet and figures."""
  from ucore.analyses.vocab import vocab_labels
  os.makedirs(out_dir, exist_ok=True)
  V = model.config.vocab_size
  if len(labels_texts) != V:
    raise UserError(f"the tokenizer has {len(labels_texts)} ids but the model {V}; use the "
                    "model's tokenizer")
  counts = token_counts(batches_factory(), V)
  labels = vocab_labels(labels_texts, counts, n_unigrams=n_unigrams)
  L = model.config.n_layer
  step = int(layers_per_pass) if layers_per_pass else layers_per_pass_for(model.config, memory_gb)
  parts = [neuron_families(model, batches_factory(), labels, dataset_names,
                           layers=list(range(a, min(L, a + step))), **kw)
           for a in range(0, L, step)]
  fam = pd.concat([p["families"] for p in parts])
  top = pd.concat([p["top_labels"] for p in parts])
  vr = np.concatenate([p["vr"] for p in parts], axis=1)
  alpha = alphabet_table(vr, parts[0]["names"], fam.index, kw.get("alphabet_threshold", 0.35))
  del vr
  cnt = family_counts(fam)
  atomic.write_parquet(fam, os.path.join(out_dir, "families.parquet"))
  atomic.write_parquet(cnt, os.path.join(out_dir, "family_counts.parquet"))
  atomic.write_parquet(alpha, os.path.join(out_dir, "alphabet_neurons.parquet"))
  atomic.write_parquet(top, os.path.join(out_dir, "top_labels.parquet"))
  return [
      ("Neuron families per layer", plot_counts(cnt, os.path.join(out_dir, "families.png")),
       f"Best of {len(parts[0]['names'])} labels (vocabulary predicates, previous-token "
       "versions, dataset labels) by variance reduction; family member: VR > "
       f"{kw.get('vr_threshold', 0.5):g} (authors' notebooks); position neurons: MI/H(activation)"
       f" > {kw.get('position_mi_threshold', 0.2):g}, this project's own threshold (the paper "
       "states none). No part-of-speech or dependency labels: spaCy is not installed, so the "
       "paper's syntax family is not searched."),
      ("Best-label variance reduction", plot_best_vr(fam, os.path.join(out_dir, "best_vr.png")),
       "Distribution of each neuron's best-label VR per layer.")]
