"""Steady-state figures from a `main.py correlate` log (benchmarks/gpu_paper_run.sh):

  python benchmarks/progress_rate.py runs/x/correlate.log

Prints one JSON object: the progress lines' "since the last line" rates without the first line
(which carries the compile), their median, the last forward/accumulate/host-wait split, and the
commit, self-check and finalize lines as logged.
"""
import json
import re
import statistics
import sys

PROGRESS = re.compile(r"correlate: step (\d+) row (\d+)/(\d+) \| (\d+) tokens/s \((\d+) since "
                      r"the last line\) \| ([\d.]+) GFLOP/s of correlation \| forward (\d+)s, "
                      r"accumulate (\d+)s, host wait (\d+)s")
NOTES = ("committed step", "self-check", "tables computed", "wrote ", "error:", "Error")


def summarize(lines):
  steps, notes = [], []
  for line in lines:
    m = PROGRESS.search(line)
    if m:
      steps.append([float(g) for g in m.groups()])
    elif any(k in line for k in NOTES):
      notes.append(line.strip()[-300:])
  steady = [s[4] for s in steps[1:]]
  out = {"progress_lines": len(steps), "notes": notes}
  if steps:
    last = steps[-1]
    out.update(rows=int(last[1]), overall_tokens_per_s=last[3], gflops_overall=last[5],
               split_s={"forward": last[6], "accumulate": last[7], "host wait": last[8]})
  if steady:
    out.update(steady_tokens_per_s_median=statistics.median(steady),
               steady_tokens_per_s=steady)
  return out


if __name__ == "__main__":
  with open(sys.argv[1], errors="replace") as f:
    print(json.dumps(summarize(f), indent=1))
