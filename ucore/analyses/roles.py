"""What the universal neurons are (paper §4.3, §5): for each neuron of the focus set
(ucore.analyses.focus) its family by variance reduction, its vocabulary role, its entropy-neuron
rank and its strongest attention-deactivation score — joined from the tables the families,
prediction, entropy and attention analyses wrote — and per layer the share of each family and
role in the focus set against all neurons.

Thresholds (stated in every caption): family member VR > 0.5 and alphabet VR > 0.35 (the
authors' notebooks); prediction/suppression vocab_kurt > 10 (the authors' notebooks); position
neurons MI/H > 0.2 and partition neurons vocab_var > 4 × median are this project's own (the
paper states none); no part-of-speech / dependency labels (spaCy is not installed), so the
paper's syntax family cannot be found here.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.analyses import common

THRESHOLD_NOTE = (
    "Thresholds: family member best-label VR > {vr:g} and alphabet > 0.35 (authors' notebooks); "
    "prediction/suppression vocab_kurt > {kurt:g} (authors' notebooks); position neuron "
    "MI/H(activation) > {mi:g} and partition neuron vocab_var > {part:g} × median are this "
    "project's own thresholds (the paper states none). No part-of-speech or dependency labels "
    "(spaCy is not installed): the paper's syntax family is not searched.")


def threshold_note(vr=0.5, kurt=10.0, mi=0.2, part=4.0) -> str:
  return THRESHOLD_NOTE.format(vr=vr, kurt=kurt, mi=mi, part=part)


def _read(path: Optional[str]):
  return pd.read_parquet(path) if path and os.path.isfile(path) else None


def neuron_roles(focus, families=None, vocab_roles=None, entropy=None,
                 attention=None) -> pd.DataFrame:
  """One row per focus neuron (index layer, neuron) with whichever of these are given:
  family, best_label, best_vr (families.parquet); role, vocab_kurt, vocab_skew
  (vocab_roles.parquet); entropy_rank, rel_logit_var (entropy_candidates.parquet);
  max_attn_score, max_attn_z, max_attn_head (attention_scores.parquet, paper score)."""
  idx = pd.MultiIndex.from_tuples(list(focus.ids), names=["layer", "neuron"])
  out = pd.DataFrame(index=idx)
  if families is not None:
    out = out.join(families[["family", "best_label", "best_vr"]])
  if vocab_roles is not None:
    out = out.join(vocab_roles[["role", "vocab_kurt", "vocab_skew"]])
  if entropy is not None:
    out = out.join(entropy[["rank", "rel_logit_var"]].rename(columns={"rank": "entropy_rank"}))
  if attention is not None and len(attention):
    a = attention.reset_index()
    a = a[a.set_index(["layer", "neuron"]).index.isin(idx)]
    if len(a):
      best = a.loc[a.groupby(["layer", "neuron"])["score"].idxmax()].set_index(
          ["layer", "neuron"])
      out["max_attn_score"] = best["score"]
      out["max_attn_z"] = best["z"]
      out["max_attn_head"] = [f"L{int(r.head_layer)}.H{int(r.head)}" if np.isfinite(
          r.head_layer) else "" for r in best.reindex(out.index).itertuples()]
  return out


def shares(column: pd.Series, focus_mask: np.ndarray) -> pd.DataFrame:
  """Per (layer, value): share of the focus set and of all neurons with that value."""
  layer = column.index.get_level_values("layer")
  df = pd.DataFrame({"layer": layer, "value": column.values,
                     "focus": np.asarray(focus_mask, bool)})
  rows = []
  for l, g in df.groupby("layer"):
    nf = max(int(g["focus"].sum()), 1)
    for v, gv in g.groupby("value"):
      rows.append({"layer": int(l), "value": v, "n_focus": int(gv["focus"].sum()),
                   "share_focus": gv["focus"].sum() / nf if g["focus"].any() else np.nan,
                   "share_all": len(gv) / len(g)})
  return pd.DataFrame(rows).set_index(["layer", "value"])


def plot_shares(tables: dict, path: str, label: str) -> str:
  """tables: {title: shares(...)}; one panel each, grouped bars (focus vs all) per value,
  values of all layers pooled by neuron counts."""
  fig, axes = common.new_figure(1, len(tables), figsize=(5 * len(tables), 3.6), squeeze=False)
  for ax, (title, t) in zip(axes[0], tables.items()):
    g = t.reset_index().groupby("value")
    nf = g["n_focus"].sum()
    fshare = nf / max(nf.sum(), 1)
    # share_all pooled over layers (layers have equal sizes)
    ashare = g["share_all"].mean()
    x = np.arange(len(fshare))
    ax.bar(x - 0.2, fshare.values, 0.4, color="tab:red", label=label)
    ax.bar(x + 0.2, ashare.values, 0.4, color="0.6", label="all neurons")
    ax.set_xticks(x)
    ax.set_xticklabels([str(v) for v in fshare.index], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share")
    ax.set_title(title, fontsize=9)
  axes[0, 0].legend(fontsize=7)
  return common.save_figure(fig, path)


def run(focus, out_dir: str, paths: dict, thresholds: dict) -> list:
  """paths: {families, vocab_roles, entropy, attention} parquet paths (missing ones skipped);
  thresholds: vr, kurt, mi, part for the caption. Writes universal_roles.parquet,
  universal_role_shares.parquet and universal_roles.png; returns one section (4-tuple)."""
  os.makedirs(out_dir, exist_ok=True)
  fam, voc = _read(paths.get("families")), _read(paths.get("vocab_roles"))
  per = neuron_roles(focus, fam, voc, _read(paths.get("entropy")), _read(paths.get("attention")))
  atomic.write_parquet(per, os.path.join(out_dir, "universal_roles.parquet"))
  panels = {}
  if fam is not None:
    panels["family (variance reduction)"] = shares(fam["family"], focus.mask(fam.index))
  if voc is not None:
    panels["vocabulary role (W_U·w_out)"] = shares(voc["role"], focus.mask(voc.index))
  if not panels:   # neither table: the per-layer membership itself
    idx = pd.MultiIndex.from_tuples(list(focus.ids), names=["layer", "neuron"])
    panels["layer"] = shares(pd.Series("focus", index=idx), np.ones(len(idx), bool))
  both = pd.concat(panels, names=["kind"])
  atomic.write_parquet(both.reset_index().astype({"value": str}),
                       os.path.join(out_dir, "universal_role_shares.parquet"))
  png = plot_shares(panels, os.path.join(out_dir, "universal_roles.png"), focus.label)
  html = per.reset_index().assign(
      neuron=lambda d: [common.neuron_name(l, n) for l, n in zip(d.layer, d.neuron)]).drop(
      columns="layer").to_html(index=False, float_format=lambda v: f"{v:.3g}", classes="grid",
                               border=0)
  caption = (f"{focus.note} Families (unigram, alphabet, previous-token, position, context …), "
             "vocabulary roles (prediction / suppression / partition), entropy-neuron rank "
             "(1 = strongest candidate) and the strongest attention-deactivation score (paper "
             "score, z against random directions) of each neuron; bars: share of the set vs of "
             "all neurons. " + threshold_note(**thresholds))
  return [(f"Families and roles of the {focus.label} neurons", png, caption, html)]
