"""A card per neuron of the focus set (ucore.analyses.focus), top k by excess correlation:
its top-activating held-out contexts, its activation histogram, the tokens its output most
promotes / suppresses (W_U·w_out, processed weights, W_U centered), its best partner in every
other seed with the correlation (corr__<m>, max_sim_layer__<m>, max_sim_neuron__<m> of the
neuron table) and its family label with VR (families.parquet, when given).
"""
from __future__ import annotations

import html as htmlmod
import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.analyses import common

PARTNER_PREFIX = "corr__"


def partners(corr: pd.DataFrame, neuron) -> list:
  """[(model, corr, 'L{l}.{n}')] of the neuron's best partner in every other seed."""
  row = corr.loc[tuple(neuron)]
  out = []
  for c in corr.columns:
    if c.startswith(PARTNER_PREFIX):
      m = c[len(PARTNER_PREFIX):]
      pl, pn = row.get(f"max_sim_layer__{m}"), row.get(f"max_sim_neuron__{m}")
      who = (common.neuron_name(pl, pn) if pl is not None and pn is not None and
             np.isfinite(pl) and pl >= 0 else "—")
      out.append((m, float(row[c]), who))
  return out


def logit_effects(weights: common.Weights, neurons: Sequence, texts: list, k: int = 8) -> dict:
  """{(l, n): (promoted [(text, value)], suppressed [(text, value)])} from W_U·w_out."""
  w_u = weights.w_u - weights.w_u.mean(axis=1, keepdims=True)
  out = {}
  for l, n in neurons:
    eff = weights.w_out[l, n] @ w_u
    order = np.argsort(eff)
    out[(l, n)] = ([(texts[i], float(eff[i])) for i in order[::-1][:k]],
                   [(texts[i], float(eff[i])) for i in order[:k]])
  return out


def activations(model, batches, neurons: Sequence) -> dict:
  """{(l, n): 1-D float array} post-activations over the kept tokens."""
  layers = sorted({l for l, _ in neurons})
  d = model.config.d_mlp
  cols = [layers.index(l) * d + n for l, n in neurons]
  got = [[] for _ in neurons]
  for b in batches:
    a = np.asarray(model.neuron_activations(b.tokens, layers=layers))[..., cols]
    keep = np.asarray(b.mask)
    for j in range(len(neurons)):
      got[j].append(a[..., j][keep])
  return {tuple(nr): np.concatenate(g) if g else np.zeros(0) for nr, g in zip(neurons, got)}


def plot_histograms(acts: dict, path: str) -> str:
  keys = list(acts)
  ncol = min(4, len(keys))
  nrow = -(-len(keys) // ncol)
  fig, axes = common.new_figure(nrow, ncol, figsize=(3 * ncol, 2.2 * nrow), squeeze=False)
  for i, k in enumerate(keys):
    ax = axes[i // ncol, i % ncol]
    a = acts[k]
    ax.hist(a if len(a) else [0.0], bins=50, color="tab:red", alpha=0.8, histtype="stepfilled")
    ax.set_yscale("log")
    ax.set_title(common.neuron_name(*k), fontsize=8)
    ax.tick_params(labelsize=6)
  for j in range(len(keys), nrow * ncol):
    axes[j // ncol, j % ncol].axis("off")
  fig.suptitle("post-activation histograms over held-out tokens (log count)", fontsize=9)
  return common.save_figure(fig, path)


def _esc(x) -> str:
  return htmlmod.escape(str(x))


def _tokens(pairs) -> str:
  return ", ".join(f"<code>{_esc(repr(t))}</code> ({v:+.2f})" for t, v in pairs)


def card_html(neuron, excess: float, fam: Optional[pd.Series], part: list, effects,
              examples: Optional[pd.DataFrame], acts) -> str:
  from ucore.report.html import context_html
  name = common.neuron_name(*neuron)
  famtxt = (f"family <b>{_esc(fam['family'])}</b>, best label <code>{_esc(fam['best_label'])}"
            f"</code> (VR {fam['best_vr']:.2f})" if fam is not None else "family: not computed")
  rows = "".join(f"<tr><td>{_esc(m)}</td><td>{_esc(w)}</td><td>{c:.3f}</td></tr>"
                 for m, c, w in part) or "<tr><td colspan=3>no partner columns</td></tr>"
  ex = ("<br>".join(context_html(e) for _, e in examples.iterrows())
        if examples is not None and len(examples) else "—")
  a = np.asarray(acts)
  act = (f"mean {a.mean():.3f}, share > 0: {np.mean(a > 0):.3f}, max {a.max():.3f}"
         if a.size else "no tokens")
  return (f'<div class="card" id="card-{name}"><h3>{name} — excess {excess:.3f}</h3>'
          f"<p>{famtxt}; activations: {act}</p>"
          f"<p>promotes: {_tokens(effects[0])}<br>suppresses: {_tokens(effects[1])}</p>"
          f'<table class="grid"><tr><th>seed</th><th>best partner</th><th>corr</th></tr>{rows}'
          f"</table><p>top-activating contexts:<br>{ex}</p></div>")


def run(model, batches, out_dir: str, corr: pd.DataFrame, focus, texts: list, k: int = 12,
        families: Optional[pd.DataFrame] = None, per_neuron: int = 3) -> list:
  """Writes cards.parquet (one row per card: excess, family, best_vr, partners as
  partner_<m>/partner_corr_<m>, top promoted/suppressed token) and card_histograms.png;
  returns one section (4-tuple) whose HTML holds the cards."""
  from ucore.analyses.top_examples import top_activating_examples
  os.makedirs(out_dir, exist_ok=True)
  neurons = focus.top(k)
  batches = list(batches)
  decode = lambda ids: "".join(texts[int(i)] for i in ids)
  ex = top_activating_examples(model, batches, neurons, decode, per_neuron=per_neuron)
  acts = activations(model, batches, neurons)
  eff = logit_effects(common.processed_weights(model), neurons, texts)
  cards, rows = [], []
  for nr in neurons:
    fam = families.loc[nr] if families is not None and nr in families.index else None
    part = partners(corr, nr)
    exc = float(corr.loc[nr, "excess_corr"])
    e = ex[(ex["layer"] == nr[0]) & (ex["neuron"] == nr[1])] if len(ex) else None
    cards.append(card_html(nr, exc, fam, part, eff[nr], e, acts[nr]))
    row = {"layer": nr[0], "neuron": nr[1], "excess_corr": exc,
           "family": fam["family"] if fam is not None else None,
           "best_vr": float(fam["best_vr"]) if fam is not None else np.nan,
           "top_promoted": eff[nr][0][0][0], "top_suppressed": eff[nr][1][0][0],
           "examples": int(len(e)) if e is not None else 0, "tokens": int(acts[nr].size)}
    for m, c, w in part:
      row[f"partner_{m}"], row[f"partner_corr_{m}"] = w, c
    rows.append(row)
  atomic.write_parquet(pd.DataFrame(rows).set_index(["layer", "neuron"]),
                       os.path.join(out_dir, "cards.parquet"))
  png = plot_histograms(acts, os.path.join(out_dir, "card_histograms.png"))
  caption = (f"{focus.note} One card per neuron (top {len(neurons)} by excess correlation): "
             "family label with its variance reduction, tokens its output most promotes and "
             "suppresses (W_U·w_out), its best partner in every other seed with the "
             "correlation, and its top-activating held-out contexts; histograms above.")
  return [(f"Neuron cards ({focus.label})", png, caption, "".join(cards))]
