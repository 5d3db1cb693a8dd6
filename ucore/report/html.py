"""One self-contained HTML report: summary table, figures (PNG files linked relatively from
`<out_dir>/figures/`), top universal neurons with example contexts, and any extra sections.

  html = write_report("runs/report", {"small-a": table},
                      partner_layers={"small-a": hist}, summary={"tokens": 1e7},
                      examples={"small-a": examples_df}, persistence={"small-a": persist},
                      figures_extra=[("Weight norms", "runs/w.png", "w_out norm by class")])

Later analyses add sections through `figures_extra`: (title, png_path[, caption[, html]])
tuples or `Section` objects (which may also carry an HTML fragment instead of / besides a figure).
PNGs outside `<out_dir>/figures/` are copied there, so the folder can be moved as a whole.
"""
import dataclasses
import datetime
import html as htmlmod
import os
import re
import shutil
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from ucore.jobs import atomic
from ucore.jobs.errors import UserError
from ucore.report import figures as F

FIGURES_DIR = "figures"
REPORT_FILE = "index.html"


@dataclasses.dataclass
class Section:
  """One report section: a title, optionally a PNG, a caption and an HTML fragment."""
  title: str
  png_path: Optional[str] = None
  caption: str = ""
  html: str = ""


SectionLike = Union[Section, tuple]


def _as_section(x: SectionLike) -> Section:
  if isinstance(x, Section):
    return x
  if isinstance(x, (tuple, list)) and 2 <= len(x) <= 4:
    return Section(str(x[0]), x[1], str(x[2]) if len(x) > 2 else "",
                   str(x[3]) if len(x) > 3 else "")
  raise UserError(f"extra report section {x!r} must be a Section or (title, png_path[, caption"
                  "[, html]])")


def _slug(name: str) -> str:
  s = re.sub(r"[^A-Za-z0-9]+", "-", str(name)).strip("-").lower()
  return s or "table"


def _esc(x) -> str:
  return htmlmod.escape(str(x))


def _fmt(v) -> str:
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  if isinstance(v, (int, np.integer)):
    return f"{int(v):,}"
  if isinstance(v, (float, np.floating)):
    if not np.isfinite(v):
      return "nan"
    return f"{v:.4g}"
  return str(v)


def table_summary(table: pd.DataFrame, threshold: Optional[float] = None) -> dict:
  """Headline numbers of one neuron table (the paper's §1 / §4 quantities)."""
  F.check_table(table)
  u = table["universal"].astype(bool)
  spread = (table["max_corr"] - table["min_corr"])
  out = {
      "neurons": int(len(table)), "layers": int(F.layers_of(table).max()) + 1,
      "universal": int(u.sum()), "universal share": float(u.mean()),
      "median mean_corr (all)": float(np.nanmedian(table["mean_corr"])),
      "median excess_corr (all)": float(np.nanmedian(table["excess_corr"])),
      "mean (max - min over seeds) of max_corr (all)": float(np.nanmean(spread)),
  }
  if u.any():
    t = table[u.values]
    for col in ("max_corr", "mean_corr", "min_corr", "mean_baseline", "excess_corr"):
      out[f"median {col} (universal)"] = float(np.nanmedian(t[col]))
    out["mean (max - min over seeds) of max_corr (universal)"] = float(np.nanmean(spread[u]))
  if threshold is not None:
    out["threshold (excess_corr >)"] = float(threshold)
  return out


def _kv_table(d: Mapping) -> str:
  rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in d.items())
  return f'<table class="kv">{rows}</table>'


def _summary_grid(summaries: Mapping[str, dict]) -> str:
  keys = []
  for s in summaries.values():
    keys += [k for k in s if k not in keys]
  head = "".join(f"<th>{_esc(name)}</th>" for name in summaries)
  body = "".join(
      "<tr><th>" + _esc(k) + "</th>" +
      "".join(f"<td>{_esc(_fmt(s.get(k, '')))}</td>" for s in summaries.values()) + "</tr>"
      for k in keys)
  return f'<table class="grid"><tr><th></th>{head}</tr>{body}</table>'


def context_html(row) -> str:
  """One example (token, activation, optional context_before / context_after) as HTML."""
  before = _esc(row.get("context_before", "") if hasattr(row, "get") else "")
  after = _esc(row.get("context_after", "") if hasattr(row, "get") else "")
  return (f'<span class="ctx">{before}<mark>{_esc(row["token"])}</mark>{after}</span>'
          f' <span class="act">({_fmt(float(row["activation"]))})</span>')


EXAMPLE_COLUMNS = ("layer", "neuron", "activation", "token")


def _check_examples(examples: pd.DataFrame, name: str) -> pd.DataFrame:
  if not isinstance(examples, pd.DataFrame):
    raise UserError(f"examples for {name} must be a DataFrame; got {type(examples).__name__}")
  ex = examples.reset_index() if "layer" not in examples.columns else examples
  missing = [c for c in EXAMPLE_COLUMNS if c not in ex.columns]
  if missing:
    raise UserError(f"examples for {name} lack columns {missing} (need {list(EXAMPLE_COLUMNS)}"
                    ", optional context_before / context_after)")
  return ex


def top_universal_html(table: pd.DataFrame, k: int = 20, examples: Optional[pd.DataFrame] = None,
                       per_neuron: int = 3, name: str = "table") -> str:
  """The k universal neurons of largest excess correlation, with their top-activating tokens
  in context when an examples table (columns layer, neuron, activation, token, optional
  context_before / context_after) is given."""
  u = table[table["universal"].astype(bool).values]
  if u.empty:
    return "<p>No universal neurons.</p>"
  top = u.sort_values("excess_corr", ascending=False).head(int(k))
  groups = {}
  if examples is not None:
    ex = _check_examples(examples, name)
    for key, g in ex.groupby(["layer", "neuron"]):
      groups[(int(key[0]), int(key[1]))] = g.sort_values("activation", ascending=False)
  cols = ["excess_corr", "mean_corr", "min_corr", "mean_baseline"]
  head = "<tr><th>neuron</th>" + "".join(f"<th>{c}</th>" for c in cols) + \
      ("<th>top-activating tokens in context</th>" if examples is not None else "") + "</tr>"
  rows = []
  for (layer, neuron), r in top.iterrows():
    cells = "".join(f"<td>{_fmt(float(r[c]))}</td>" for c in cols)
    ctx = ""
    if examples is not None:
      g = groups.get((int(layer), int(neuron)))
      ctx = "<td>" + ("<br>".join(context_html(e) for _, e in g.head(per_neuron).iterrows())
                      if g is not None else "—") + "</td>"
    rows.append(f"<tr><td>L{int(layer)}.{int(neuron)}</td>{cells}{ctx}</tr>")
  return f'<table class="grid">{head}{"".join(rows)}</table>'


def _figure_html(rel_path: str, caption: str) -> str:
  return (f'<figure><img src="{_esc(rel_path)}" alt="{_esc(caption or rel_path)}">'
          f'<figcaption>{_esc(caption)}</figcaption></figure>')


_CSS = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
table.grid td{text-align:right} figure{margin:1em 0} img{max-width:100%}
figcaption{font-size:.85em;color:#555} mark{background:#ffd54f}
.ctx{font-family:monospace;white-space:pre-wrap} .act{color:#777;font-size:.8em}
.card{border:1px solid #ddd;border-radius:4px;padding:.3em .8em;margin:.8em 0}
"""


def _read_table(t, name):
  if isinstance(t, (str, os.PathLike)):
    from ucore.corr.tables import read_neuron_table
    return read_neuron_table(os.fspath(t), name)
  return t


def write_report(out_dir: str, tables: Mapping[str, pd.DataFrame], *,
                 figures_extra: Sequence[SectionLike] = (),
                 summary: Optional[Mapping] = None,
                 partner_layers: Optional[Mapping[str, np.ndarray]] = None,
                 examples: Optional[Mapping[str, pd.DataFrame]] = None,
                 persistence: Optional[Mapping[str, pd.DataFrame]] = None,
                 title: str = "Universal neurons report", threshold: float = 0.5,
                 top_k: int = 20) -> str:
  """Renders figures for every neuron table and writes `<out_dir>/index.html`; returns its path.

  tables: {name: neuron table} (one per reference model / comparison), each indexed by
    (layer, neuron) with mean_corr, max_corr, min_corr, mean_baseline, excess_corr, universal;
    a value may also be the path of such a table saved as parquet.
  partner_layers: {name: counts [n_layer_ref, n_layer_other]} for Fig. 2c (when absent and the
    table has max_sim_layer, the counts are taken from it).
  examples: {name: DataFrame(layer, neuron, activation, token[, context_before, context_after])}.
  persistence: {name: persistence_table(...) result} (index step; share_of_final,
    share_still_universal) for the over-training figure.
  figures_extra: extra sections, (title, png_path[, caption]) or Section, in order.
  summary: run-level facts (models, tokens, ...) shown first.
  """
  if not tables:
    raise UserError("write_report needs at least one neuron table")
  partner_layers, examples, persistence = partner_layers or {}, examples or {}, persistence or {}
  for label, d in (("partner_layers", partner_layers), ("examples", examples),
                   ("persistence", persistence)):
    unknown = set(d) - set(tables)
    if unknown:
      raise UserError(f"{label} names tables {sorted(unknown)} that are not in tables "
                      f"{sorted(tables)}")
  tables = {name: _read_table(t, name) for name, t in tables.items()}
  out_dir = os.path.abspath(out_dir)
  fig_dir = os.path.join(out_dir, FIGURES_DIR)
  os.makedirs(fig_dir, exist_ok=True)
  # figures of an earlier report here are rewritten or stale: removed, so that a rerun's
  # copies keep their names (no name-1.png beside name.png) and no orphan lingers
  sources = {os.path.abspath(sec.png_path) for sec in map(_as_section, figures_extra)
             if sec.png_path}
  for name in os.listdir(fig_dir):
    path = os.path.join(fig_dir, name)
    if os.path.isfile(path) and path not in sources:
      os.unlink(path)
  rel = lambda p: os.path.relpath(p, out_dir).replace(os.sep, "/")

  summaries = {name: table_summary(F.check_table(t, f"table {name!r}"), threshold)
               for name, t in tables.items()}
  body = [f"<h1>{_esc(title)}</h1>",
          f'<p class="meta">written {_esc(datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))}</p>']
  if summary:
    body += ["<h2>Run</h2>", _kv_table(summary)]
  body += ["<h2>Summary</h2>", _summary_grid(summaries)]

  slugs = {}
  for name, table in tables.items():
    slug = _slug(name)
    while slug in slugs.values():
      slug += "-x"
    slugs[name] = slug
    p = lambda fig: os.path.join(fig_dir, f"{slug}_{fig}.png")
    body.append(f"<h2>{_esc(name)}</h2>")
    body.append(_figure_html(rel(F.corr_distributions(table, p("corr_dist"), threshold)),
                             "Fig. 2a — distributions of mean max correlation, mean baseline "
                             f"and excess correlation (dashed: universal threshold {threshold})."))
    body.append(_figure_html(rel(F.max_vs_min(table, p("max_vs_min"))),
                             "Fig. 2b — max vs min over seeds of each neuron's max correlation."))
    hist = partner_layers.get(name)
    if hist is None and "max_sim_layer" in table.columns:
      hist = F.partner_layer_hist_from_table(table)
    if hist is not None:
      body.append(_figure_html(rel(F.partner_layer_heatmap(hist, p("partner_layers"))),
                               "Fig. 2c — for each layer of the reference model, share of its "
                               "neurons whose best partner lies in each layer of the other model."))
    body.append(_figure_html(rel(F.universal_by_layer(table, p("universal_by_layer"))),
                             "Universal neurons per layer (bar: share, label: count)."))
    if name in persistence:
      per = persistence[name]
      body.append(_figure_html(rel(F.persistence(per, p("persistence"))),
                               "Persistence over training: share of the final universal set "
                               "already universal at step s, and share of step s's universal "
                               "set that is still universal at the end."))
      body.append(per.reset_index().to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                            classes="grid", border=0))
    body.append(f"<h3>Top universal neurons (by excess correlation)</h3>")
    body.append(top_universal_html(table, top_k, examples.get(name), name=name))
    per_layer = F.per_layer_stats(table).reset_index()
    body.append("<details><summary>per-layer counts</summary>" +
                per_layer.to_html(index=False, float_format=lambda v: f"{v:.4f}",
                                  classes="grid", border=0) + "</details>")

  used = {os.path.basename(x) for x in os.listdir(fig_dir)}
  for sec in map(_as_section, figures_extra):
    body.append(f"<h2>{_esc(sec.title)}</h2>")
    if sec.png_path:
      src = os.path.abspath(sec.png_path)
      if not os.path.isfile(src):
        raise UserError(f"report section {sec.title!r}: figure {sec.png_path} does not exist")
      if os.path.dirname(src) != fig_dir:
        base = os.path.basename(src)
        stem, ext = os.path.splitext(base)
        i = 1
        while base in used:
          base, i = f"{stem}-{i}{ext}", i + 1
        dst = os.path.join(fig_dir, base)
        shutil.copyfile(src, dst)
        used.add(base)
        src = dst
      body.append(_figure_html(rel(src), sec.caption))
    elif sec.caption:
      body.append(f"<p>{_esc(sec.caption)}</p>")
    if sec.html:
      body.append(sec.html)

  page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
          f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n"
          + "\n".join(body) + "\n</body></html>\n")
  path = os.path.join(out_dir, REPORT_FILE)
  atomic.write_text(path, page)
  return path
