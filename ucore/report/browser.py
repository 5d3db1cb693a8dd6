"""A neuron browser for every neuron of the reference model, and its bulk export.

Two steps, so the expensive one is cached with the analyses:
  neuron_data(...) / write_data(dir, ...)   per-neuron records for every neuron, one parquet per
      layer in the analysis directory (<analyses>/browser/layer{l}.parquet, summary.json last)
  write_pages(report_dir, data_dir)          static pages beside the report:
      <report>/neurons/index.html   search by L{layer}.{neuron}, family / label, universality
      <report>/neurons/index.js     a compact columnar index of every neuron (loaded at once)
      <report>/neurons/L{l}.js      one shard per layer, loaded when a card of that layer opens
      <report>/neurons/export/layer{l}.parquet|json   the bulk export (same fields)
Shards are script files, not fetched JSON, so the page works opened from disk (file://)
without a server or browser flags.

A record (one per neuron; fields absent from the run are left out):
  id, layer, neuron                     "L{l}.{n}" (TransformerLens), flat index l * d_mlp + n
  every scalar column of the correlation table (mean_corr, max_corr, min_corr, mean_baseline,
    excess_corr, universal, max_sim_layer, ... and any interval columns it carries)
  partners  [{model, partner, corr}]    best partner in every other seed (corr__<m>,
                                        max_sim_layer__<m>, max_sim_neuron__<m>)
  family, best_label, best_vr           ucore.analyses.families (families.parquet)
  the neuron statistics (ucore.analyses.stats ALL_COLUMNS: sparsity, kurt, w_out_norm, ...)
  contexts  [{activation, before, token, after}]   top-activating tokens, one per row
  hist_lo, hist_hi, hist_counts         post-activation histogram (equal bins over [lo, hi])
  act_mean, act_max, act_share_positive, tokens    over the same held-out tokens
  promotes, suppresses [{token, value}] W_U·w_out (processed weights, W_U centered), top k
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Optional

import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.analyses import common

PAGES_DIR = "neurons"
EXPORT_DIR = "export"
SUMMARY = "summary.json"
LAYER_FILE = "layer{}.parquet"
PARTNER_COLUMNS = ("corr__", "max_sim_layer__", "max_sim_neuron__")


# ---- data ----------------------------------------------------------------------------------
def activation_summaries(model, batches, per_neuron: int = 3, bins: int = 24):
  """For every neuron, over the batches' counted tokens: the `per_neuron` rows of largest
  activation (value, row, position; one per row), a histogram of `bins` equal bins over
  [min, max], mean, max and share > 0. Two passes (range, then counts).
  Returns (dict of arrays [.., n_neurons], list of token rows)."""
  batches = list(batches)
  n = model.config.n_neurons
  lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
  total, positive, count = np.zeros(n), np.zeros(n), 0
  best_val = np.full((per_neuron, n), -np.inf)
  best_row = np.zeros((per_neuron, n), np.int64)
  best_pos = np.zeros((per_neuron, n), np.int64)
  rows, offset = [], 0
  for b in batches:
    acts = np.asarray(model.neuron_activations(b.tokens), np.float64)   # [B, P, N]
    mask = np.asarray(b.mask, bool)
    kept = acts[mask]                                                   # [T, N]
    if len(kept):
      lo, hi = np.minimum(lo, kept.min(0)), np.maximum(hi, kept.max(0))
      total += kept.sum(0)
      positive += (kept > 0).sum(0)
      count += len(kept)
    masked = np.where(mask[..., None], acts, -np.inf)
    row_max, row_arg = masked.max(axis=1), masked.argmax(axis=1)        # [B, N]
    vals = np.concatenate([best_val, row_max])
    ids = np.concatenate([best_row, offset + np.arange(len(acts))[:, None].repeat(n, 1)])
    pos = np.concatenate([best_pos, row_arg])
    order = np.argsort(-vals, axis=0, kind="stable")[:per_neuron]
    best_val, best_row, best_pos = (np.take_along_axis(a, order, 0) for a in (vals, ids, pos))
    rows.extend(np.asarray(b.tokens))
    offset += len(acts)
  counts = np.zeros(n * bins, np.int64)
  span = np.where(hi > lo, hi - lo, 1.0)
  # np.histogram's bins, edges and edge rounding, per neuron at once
  edges = np.arange(bins + 1)[:, None] * (span / bins) + np.where(np.isfinite(lo), lo, 0.0)
  edges[-1] = np.where(hi > lo, hi, edges[-1])
  cols = np.arange(n)
  for b in batches:
    kept = np.asarray(model.neuron_activations(b.tokens), np.float64)[np.asarray(b.mask, bool)]
    if len(kept):
      idx = np.clip(((kept - edges[0]) * (bins / span)).astype(np.int64), 0, bins - 1)
      idx -= kept < edges[idx, cols]
      idx += (kept >= edges[np.minimum(idx + 1, bins), cols]) & (idx != bins - 1)
      counts += np.bincount((idx + cols * bins).ravel(), minlength=n * bins)
  empty = count == 0
  return {
      "best_val": best_val, "best_row": best_row, "best_pos": best_pos,
      "hist_lo": np.where(empty, np.nan, lo), "hist_hi": np.where(empty, np.nan, hi),
      "hist_counts": counts.reshape(n, bins),
      "act_mean": total / max(count, 1) if count else np.full(n, np.nan),
      "act_max": np.where(empty, np.nan, hi),
      "act_share_positive": positive / count if count else np.full(n, np.nan),
      "tokens": count}, rows


def logit_effects(weights: common.Weights, texts: list, k: int = 5, chunk: int = 1024):
  """[(promoted [(text, value)], suppressed [(text, value)])] per flat neuron index, from
  W_U·w_out with W_U centered over the vocabulary (as ucore.report.cards)."""
  w_u = weights.w_u - weights.w_u.mean(axis=1, keepdims=True)
  w_out = weights.w_out.reshape(-1, weights.w_out.shape[-1])
  out = []
  for s in range(0, len(w_out), chunk):
    eff = w_out[s:s + chunk] @ w_u                                     # [c, V]
    top = np.argpartition(-eff, k - 1, axis=1)[:, :k]
    bot = np.argpartition(eff, k - 1, axis=1)[:, :k]
    for e, t, b in zip(eff, top, bot):
      t, b = t[np.argsort(-e[t])], b[np.argsort(e[b])]
      out.append(([(texts[i], float(e[i])) for i in t], [(texts[i], float(e[i])) for i in b]))
  return out


def _scalar(v):
  if isinstance(v, (bool, np.bool_)):
    return bool(v)
  if isinstance(v, (int, np.integer)):
    return int(v)
  if isinstance(v, (float, np.floating)):
    return None if not math.isfinite(v) else float(v)
  return None if v is None else str(v)


def neuron_records(model, batches, corr: pd.DataFrame, texts: list, decode,
                   stats: Optional[pd.DataFrame] = None,
                   families: Optional[pd.DataFrame] = None, per_neuron: int = 3,
                   context: int = 12, bins: int = 24, k_tokens: int = 5) -> list:
  """One record (module docstring) per neuron, in flat order (layer * d_mlp + neuron)."""
  cfg = model.config
  index = common.neuron_index(cfg.n_layer, cfg.d_mlp)
  act, rows = activation_summaries(model, batches, per_neuron, bins)
  effects = logit_effects(common.processed_weights(model), texts, k_tokens)
  corr = corr.reindex(index)
  # columns as numpy arrays once (per-element pandas access is ~100x slower at 36,864 neurons)
  columns = lambda df, names: {c: df[c].to_numpy() for c in names if c in df.columns}
  corr_cols = columns(corr, [c for c in corr.columns if not c.startswith(PARTNER_COLUMNS)])
  models = [c[len("corr__"):] for c in corr.columns if c.startswith("corr__")]
  partner_cols = {m: [corr[f"{p}{m}"].to_numpy() if f"{p}{m}" in corr.columns else None
                      for p in PARTNER_COLUMNS] for m in models}
  fam_cols = ({} if families is None else
              columns(families.reindex(index), ("family", "best_label", "best_vr")))
  stat_cols = {}
  if stats is not None:
    from ucore.analyses.stats import ALL_COLUMNS
    stat_cols = columns(stats.reindex(index), ALL_COLUMNS)
  records = []
  for i, (layer, neuron) in enumerate(index):
    r = {"id": common.neuron_name(layer, neuron), "layer": int(layer), "neuron": int(neuron)}
    r.update({c: _scalar(v[i]) for c, v in corr_cols.items()})
    partners = []
    for m in models:
      c, pl, pn = (None if a is None else a[i] for a in partner_cols[m])
      who = (common.neuron_name(pl, pn) if pl is not None and pn is not None and
             np.isfinite(pl) and pl >= 0 else None)
      partners.append({"model": m, "partner": who, "corr": _scalar(c)})
    r["partners"] = partners
    r.update({c: _scalar(v[i]) for c, v in fam_cols.items()})
    r.update({c: _scalar(v[i]) for c, v in stat_cols.items()})
    ctx = []
    for j in range(per_neuron):
      v = act["best_val"][j, i]
      if np.isfinite(v):
        row, p = rows[act["best_row"][j, i]], int(act["best_pos"][j, i])
        ctx.append({"activation": float(v), "before": decode(row[max(0, p - context):p]),
                    "token": decode(row[p:p + 1]), "after": decode(row[p + 1:p + 1 + context])})
    r["contexts"] = ctx
    r.update(hist_lo=_scalar(act["hist_lo"][i]), hist_hi=_scalar(act["hist_hi"][i]),
             hist_counts=[int(c) for c in act["hist_counts"][i]],
             act_mean=_scalar(act["act_mean"][i]), act_max=_scalar(act["act_max"][i]),
             act_share_positive=_scalar(act["act_share_positive"][i]), tokens=int(act["tokens"]))
    r["promotes"] = [{"token": t, "value": v} for t, v in effects[i][0]]
    r["suppresses"] = [{"token": t, "value": v} for t, v in effects[i][1]]
    records.append(r)
  return records


def write_data(out_dir: str, records: list, n_layer: int) -> list:
  """One parquet per layer (the bulk export's source), summary.json last; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for l in range(n_layer):
    df = pd.DataFrame([r for r in records if r["layer"] == l])
    paths.append(atomic.write_parquet(df, os.path.join(out_dir, LAYER_FILE.format(l))))
  atomic.write_json(os.path.join(out_dir, SUMMARY), {
      "n_layer": n_layer, "neurons": len(records),
      "d_mlp": len(records) // n_layer if n_layer else 0})
  return paths


def read_layer(data_dir: str, layer: int) -> list:
  """The records of one layer as plain Python (lists and dicts)."""
  import pyarrow.parquet as pq
  return pq.read_table(os.path.join(data_dir, LAYER_FILE.format(layer))).to_pylist()


def run(model, batches, out_dir: str, corr: pd.DataFrame, texts: list, decode,
        stats=None, families=None, per_neuron: int = 3) -> list:
  """The analysis step: writes the per-layer records; returns a report section linking the
  pages (write_pages puts them beside the report)."""
  records = neuron_records(model, batches, corr, texts, decode, stats=stats, families=families,
                           per_neuron=per_neuron)
  write_data(out_dir, records, model.config.n_layer)
  link = (f'<p><a href="{PAGES_DIR}/index.html">Open the neuron browser</a> — every one of the '
          f'{len(records):,} neurons, searchable by id (L{{layer}}.{{neuron}}), family, label '
          f'and universality, each with its card; bulk export (one parquet and one JSON per '
          f'layer) in <a href="{PAGES_DIR}/{EXPORT_DIR}/">{PAGES_DIR}/{EXPORT_DIR}/</a>.</p>')
  return [("Neuron browser", None, "", link)]


# ---- pages ---------------------------------------------------------------------------------
def _json(obj) -> str:
  return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _rounded(x, digits=4):
  if isinstance(x, float):
    return float(f"{x:.{digits}g}")
  if isinstance(x, list):
    return [_rounded(v, digits) for v in x]
  if isinstance(x, dict):
    return {k: _rounded(v, digits) for k, v in x.items()}
  return x


def _index(records_by_layer: list) -> dict:
  """Columnar arrays over every neuron in flat order: what search needs, nothing more."""
  flat = [r for layer in records_by_layer for r in layer]
  families = sorted({r.get("family") or "" for r in flat})
  labels = sorted({r.get("best_label") or "" for r in flat})
  fi, li = {f: i for i, f in enumerate(families)}, {x: i for i, x in enumerate(labels)}
  excess = [r.get("excess_corr") for r in flat]
  return {"n_layer": len(records_by_layer),
          "d_mlp": len(records_by_layer[0]) if records_by_layer else 0,
          "excess": [None if e is None else round(e, 3) for e in excess],
          "universal": [1 if r.get("universal") else 0 for r in flat],
          "family": [fi[r.get("family") or ""] for r in flat],
          "label": [li[r.get("best_label") or ""] for r in flat],
          "families": families, "labels": labels}


def write_pages(report_dir: str, data_dir: str) -> str:
  """Writes <report_dir>/neurons/ (staged, then renamed into place); returns index.html."""
  summary = atomic.read_json(os.path.join(data_dir, SUMMARY))
  layers = [read_layer(data_dir, l) for l in range(int(summary["n_layer"]))]
  final = os.path.join(os.path.abspath(report_dir), PAGES_DIR)
  with atomic.staged_dir(final, replace=True) as staging:
    export = os.path.join(staging, EXPORT_DIR)
    os.makedirs(export)
    for l, recs in enumerate(layers):
      shutil.copyfile(os.path.join(data_dir, LAYER_FILE.format(l)),
                      os.path.join(export, LAYER_FILE.format(l)))
      with open(os.path.join(export, f"layer{l}.json"), "w", encoding="utf-8") as f:
        f.write(_json(recs))
      with open(os.path.join(staging, f"L{l}.js"), "w", encoding="utf-8") as f:
        f.write(f"ucoreShard({l},{_json(_rounded(recs))});\n")
    with open(os.path.join(staging, "index.js"), "w", encoding="utf-8") as f:
      f.write(f"ucoreIndex({_json(_index(layers))});\n")
    with open(os.path.join(staging, "index.html"), "w", encoding="utf-8") as f:
      f.write(_PAGE)
  return os.path.join(final, "index.html")


def write_beside_report(html_path: Optional[str], data_dir: str) -> Optional[str]:
  """write_pages beside the report `html_path` when the browser analysis left its data in
  `data_dir` (an older run's analyses may lack it); returns `html_path` unchanged."""
  if html_path and os.path.isfile(os.path.join(data_dir, SUMMARY)):
    write_pages(os.path.dirname(html_path), data_dir)
  return html_path


def pages_size(report_dir: str) -> dict:
  """Bytes of the browser's files: the page (index.html), the search index (index.js), the
  per-layer shards and the bulk export."""
  root = os.path.join(report_dir, PAGES_DIR)
  out = {"page": 0, "index": 0, "shards": 0, "largest_shard": 0, "export": 0}
  for name in os.listdir(root):
    p = os.path.join(root, name)
    if name == EXPORT_DIR:
      out["export"] = sum(os.path.getsize(os.path.join(p, x)) for x in os.listdir(p))
    elif name.startswith("L"):
      out["shards"] += os.path.getsize(p)
      out["largest_shard"] = max(out["largest_shard"], os.path.getsize(p))
    elif name == "index.js":
      out["index"] = os.path.getsize(p)
    else:
      out["page"] += os.path.getsize(p)
  return out


_PAGE = r"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Neuron browser</title>
<style>
body{font-family:sans-serif;max-width:1100px;margin:1.5em auto;color:#222}
input{font-size:1em;padding:.2em .4em} table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}
tr.hit{cursor:pointer} tr.hit:hover{background:#f3f3f3} mark{background:#ffd54f}
.ctx{font-family:monospace;white-space:pre-wrap} .muted{color:#777;font-size:.85em}
#card{border:1px solid #ccc;border-radius:4px;padding:.3em 1em;margin:1em 0}
</style></head><body>
<h1>Neuron browser</h1>
<p><a href="../index.html">back to the report</a> · bulk export: <a href="export/">export/</a>
(one parquet and one JSON per layer)</p>
<p><input id="q" size="36" placeholder="L1.23, or a family / label (e.g. unigram)">
<label><input type="checkbox" id="univ"> universal only</label>
<label>excess ≥ <input id="minex" size="5" value=""></label></p>
<p id="status" class="muted">loading the index…</p>
<div id="card" hidden></div>
<table id="results"></table>
<script>
const S = {index: null, shards: {}, waiting: {}};
const $ = id => document.getElementById(id);
const esc = s => String(s == null ? "" : s).replace(/[&<>"']/g,
  c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = v => v == null ? "—" : (typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(3)) : esc(v));
function ucoreShard(layer, records) {
  S.shards[layer] = records;
  (S.waiting[layer] || []).forEach(f => f(records));
  delete S.waiting[layer];
}
function loadShard(layer, done) {
  if (S.shards[layer]) return done(S.shards[layer]);
  const first = !S.waiting[layer];
  (S.waiting[layer] = S.waiting[layer] || []).push(done);
  if (first) { const s = document.createElement("script"); s.src = "L" + layer + ".js";
               document.head.appendChild(s); }
}
function name(i) { const d = S.index.d_mlp; return "L" + Math.floor(i / d) + "." + (i % d); }
function search(q, onlyUniversal, minExcess) {
  const ix = S.index, d = ix.d_mlp, n = ix.n_layer * d;
  q = q.trim();
  const m = q.match(/^L?(\d+)[.:](\d+)$/i);
  if (m) { const l = +m[1], k = +m[2];
           return (l < ix.n_layer && k < d) ? {exact: l * d + k, hits: [l * d + k]} : {hits: []}; }
  const needle = q.toLowerCase(), hits = [];
  for (let i = 0; i < n; i++) {
    if (onlyUniversal && !ix.universal[i]) continue;
    if (!isNaN(minExcess) && !(ix.excess[i] >= minExcess)) continue;
    if (needle && !(ix.families[ix.family[i]].toLowerCase().includes(needle) ||
                    ix.labels[ix.label[i]].toLowerCase().includes(needle))) continue;
    hits.push(i);
  }
  hits.sort((a, b) => (ix.excess[b] ?? -9) - (ix.excess[a] ?? -9));
  return {hits: hits};
}
function run() {
  const r = search($("q").value, $("univ").checked, parseFloat($("minex").value));
  const ix = S.index, shown = r.hits.slice(0, 200);
  $("status").textContent = r.hits.length + " neurons match" +
    (r.hits.length > shown.length ? " (first " + shown.length + " by excess shown)" : "");
  $("results").innerHTML = "<tr><th>neuron</th><th>excess corr</th><th>universal</th>" +
    "<th>family</th><th>best label</th></tr>" + shown.map(i =>
    `<tr class="hit" data-i="${i}"><td>${name(i)}</td><td>${fmt(ix.excess[i])}</td>` +
    `<td>${ix.universal[i] ? "yes" : ""}</td><td>${esc(ix.families[ix.family[i]])}</td>` +
    `<td>${esc(ix.labels[ix.label[i]])}</td></tr>`).join("");
  if (r.exact !== undefined) showCard(r.exact);
}
function histogram(r) {
  const c = r.hist_counts || [], w = 360, h = 90, mx = Math.max(1, ...c), bw = w / Math.max(1, c.length);
  const bars = c.map((v, j) => { const bh = v ? Math.max(1, h * Math.log1p(v) / Math.log1p(mx)) : 0;
    return `<rect x="${j * bw}" y="${h - bh}" width="${bw - 1}" height="${bh}" fill="#c62828"><title>${v}</title></rect>`; }).join("");
  return `<svg class="hist" width="${w}" height="${h + 14}">${bars}<text x="0" y="${h + 12}" font-size="10">${fmt(r.hist_lo)}</text>` +
    `<text x="${w}" y="${h + 12}" font-size="10" text-anchor="end">${fmt(r.hist_hi)}</text></svg>`;
}
const SKIP = new Set(["id", "layer", "neuron", "partners", "contexts", "hist_counts", "promotes",
                      "suppresses", "hist_lo", "hist_hi"]);
function renderCard(r) {
  const fields = Object.keys(r).filter(k => !SKIP.has(k));
  const toks = xs => (xs || []).map(t => `<code>${esc(JSON.stringify(t.token))}</code> (${fmt(t.value)})`).join(", ");
  $("card").innerHTML = `<h2 id="card-title">${esc(r.id)}</h2>` +
    `<p>excess correlation <b>${fmt(r.excess_corr)}</b>${r.universal ? " — <b>universal</b>" : ""};` +
    ` family <b>${fmt(r.family)}</b>, best label <code>${fmt(r.best_label)}</code> (VR ${fmt(r.best_vr)})</p>` +
    `<h3>Top-activating contexts</h3><p class="contexts">` + ((r.contexts || []).map(c =>
      `<span class="ctx">${esc(c.before)}<mark>${esc(c.token)}</mark>${esc(c.after)}</span> <span class="muted">(${fmt(c.activation)})</span>`).join("<br>") || "—") + `</p>` +
    `<h3>Activation histogram</h3>${histogram(r)}<p class="muted">${fmt(r.tokens)} held-out tokens; log-scaled bars</p>` +
    `<h3>Logit effects (W_U·w_out)</h3><p>promotes: ${toks(r.promotes)}<br>suppresses: ${toks(r.suppresses)}</p>` +
    `<h3>Best partner per seed</h3><table class="partners"><tr><th>seed</th><th>partner</th><th>corr</th></tr>` +
    (r.partners || []).map(p => `<tr><td>${esc(p.model)}</td><td>${fmt(p.partner)}</td><td>${fmt(p.corr)}</td></tr>`).join("") + `</table>` +
    `<h3>All fields</h3><table class="fields">` + fields.map(k => `<tr><th>${esc(k)}</th><td>${fmt(r[k])}</td></tr>`).join("") + `</table>`;
  $("card").dataset.id = r.id;
  $("card").hidden = false;
}
function showCard(i) {
  const d = S.index.d_mlp, layer = Math.floor(i / d);
  history.replaceState(null, "", "#" + name(i));
  loadShard(layer, recs => renderCard(recs[i % d]));
}
function ucoreIndex(ix) {
  S.index = ix;
  ["q", "univ", "minex"].forEach(id => $(id).addEventListener("input", run));
  $("results").addEventListener("click", e => { const tr = e.target.closest("tr.hit");
                                                if (tr) showCard(+tr.dataset.i); });
  if (location.hash.length > 1) $("q").value = decodeURIComponent(location.hash.slice(1));
  run();
}
</script>
<script src="index.js"></script>
</body></html>
"""
