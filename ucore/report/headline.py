"""The universal count as one line, with its intervals (summary.json's "intervals" entry of a
model, ucore.corr.intervals.annotate): '86 of 3072 (2.80%, 95% interval 2.51–3.09%; leaving
one seed out 2.41–3.26%)'. One home for the report, the pipeline summary and the README."""


def universal_line(entry: dict, decimals: int = 2) -> str:
  pct = lambda v: f"{100 * v:.{decimals}f}"   # noqa: E731
  s = f"{entry['count']} of {entry['of']} ({pct(entry['share'])}%"
  if "share_ci95" in entry:
    lo, hi = entry["share_ci95"]
    s += f", 95% interval {pct(lo)}–{pct(hi)}%"
  seeds = entry.get("leave_one_seed_out")
  if seeds:
    s += f"; leaving one seed out {pct(seeds['share_min'])}–{pct(seeds['share_max'])}%"
  return s + ")"


def run_universal_line(interval, count: int, of: int) -> str:
  """universal_line of a run's interval entry, or of its bare count where it has none."""
  return universal_line(interval or {"count": count, "of": of, "share": count / max(of, 1)})
