"""`python main.py analyze --config=configs/analyze_default.py --workdir=DIR [--analysis=...]`

The paper's neuron analyses (ucore.analyze.run_all): statistics, families, vocabulary
roles, entropy neurons, attention deactivation, ablations. Inputs are config fields
(--config.model_dir, --config.token_store, --config.corr_table).
"""
from absl import flags

from ucore.cli import common

ANALYSIS = flags.DEFINE_string(
    "analysis", "all", "analyze: comma list of stats, families, prediction, entropy, "
    "attention, ablation, or all.")


def run(argv):
  from ucore.jobs.errors import UserError
  if argv:
    raise UserError(f"analyze takes no positional arguments, got {argv}; use --config.field=value")
  config = common.require_config()
  workdir = common.require_workdir()
  from ucore import analyze as runner
  r = runner.run(config, workdir, ANALYSIS.value)
  html = runner.report(config, workdir, r) if config.get("report", True) else None
  if r.complete:
    print(f"analyses in {workdir} are already complete for these inputs; nothing written"
          + (f" (report {html})" if html else ""))
    return
  print(f"analyses written to {workdir}: {len(r.sections)} figures (sections.json)"
        + (f"; report {html}" if html else ""))
