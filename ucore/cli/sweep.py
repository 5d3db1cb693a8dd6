"""`python main.py sweep --config=configs/sweep_default.py --workdir=DIR`: a family at a list
of checkpoints -> converted (cached) -> correlated per checkpoint -> universality over
training (ucore/sweep.py). The same command resumes a killed sweep."""
from ucore.cli import common


def run(argv):
  from ucore import sweep
  from ucore.jobs.errors import UserError
  if argv:
    raise UserError(f"sweep takes no positional arguments; got {argv}")
  config = common.require_config()
  if "checkpoints" not in config or "correlate" not in config:
    raise UserError("--config is not a sweep config; use configs/sweep_default.py")
  r = sweep.run(config, common.require_workdir())
  per_step = ", ".join(f"step {s}: {n}" for s, n in zip(r["steps"], r["n_universal"]))
  print(f"\nUniversal neurons of {r['reference']} per checkpoint: {per_step}\n"
        f"the final {r['focus']['label']} set ({r['focus']['n']} neurons) followed back: "
        f"{r['out_dir']}")
