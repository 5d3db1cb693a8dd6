"""`python main.py [pipeline] [--config=configs/pipeline_default.py] [--workdir=runs/default]`:
the default study, offline, end to end (see ucore/pipeline.py)."""
from ucore.cli import common

DEFAULT_CONFIG = "pipeline_default"   # configs/pipeline_default.py
DEFAULT_WORKDIR = "runs/default"


def run(argv):
  from ucore.jobs import config_files
  from ucore import pipeline
  from ucore.jobs.errors import UserError
  if argv:
    raise UserError(f"pipeline takes no positional arguments; got {argv}")
  config = common.config_value()
  if config is None:
    config = config_files.load(DEFAULT_CONFIG)
  if "train" not in config or "correlate" not in config:
    raise UserError("--config is not a pipeline config; use configs/pipeline_default.py")
  workdir = common.WORKDIR.value or DEFAULT_WORKDIR
  r = pipeline.run(config, workdir)
  from ucore.report.headline import run_universal_line
  layers = " ".join(str(v) for v in r["universal_per_layer"])
  line = run_universal_line(r.get("universal_interval"), r["n_universal"], r["n_neurons"])
  print(f"\nUniversal neurons of {r['reference']} (excess correlation over the rotation "
        f"baseline > {config.correlate.threshold}): {line}; per layer: {layers}\n"
        f"medians: mean max corr {r['mean_corr_median']:.3f}, mean baseline "
        f"{r['mean_baseline_median']:.3f}, excess {r['excess_corr_median']:.3f}\n"
        f"report: {r['report']}\n(total {r['seconds']:.0f}s; stages {r['stage_seconds']})")
