"""The one way this toolkit draws a PNG: matplotlib's Agg canvas on a bare Figure (no pyplot,
so no global backend or figure-manager state), saved atomically.

  fig = figure(width, height)                    one empty figure (dpi 110)
  fig, axes = subplots(nrows, ncols, figsize=...) like pyplot.subplots (dpi 100, as pyplot's)
  save(fig, path[, dpi])                         tight layout, write `path` atomically
Used by ucore.report.figures and the analyses' figures. Log axes spanning two decades or more
are drawn without minor ticks: matplotlib lays out every minor tick of a log axis, which made
most of a many-panel figure's drawing time (the cards' 20 log histograms: ~2x faster).
"""
import os


def figure(width: float = 6.0, height: float = 4.0, dpi: float = 110):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, dpi=None, **kwargs):
  """(fig, axes) as pyplot.subplots(nrows, ncols, figsize=..., **kwargs) gives them."""
  import matplotlib
  w, h = figsize or matplotlib.rcParams["figure.figsize"]
  fig = figure(w, h, dpi or matplotlib.rcParams["figure.dpi"])
  return fig, fig.subplots(nrows, ncols, **kwargs)


def save(fig, path: str, dpi=None) -> str:
  """Writes `fig` as PNG to `path` (via a temporary file, then rename); returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  tmp = path + ".tmp.png"
  _drop_log_minor_ticks(fig)
  fig.tight_layout()
  if dpi is None:
    fig.savefig(tmp, format="png")
  else:
    fig.savefig(tmp, format="png", dpi=dpi)
  os.replace(tmp, path)
  return path


def _drop_log_minor_ticks(fig) -> None:
  """Log axes spanning two decades or more lose their minor ticks (the major ticks still
  label at least three decades); narrower ones keep them, since matplotlib labels the minor
  ticks when fewer than two majors are in view."""
  from matplotlib.ticker import NullLocator
  for ax in fig.axes:
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
      lo, hi = sorted((lo, hi))
      if axis.get_scale() == "log" and lo > 0 and hi / lo >= 100:
        axis.set_minor_locator(NullLocator())
