"""`python main.py correlate --config=configs/correlate_*.py --workdir=DIR`.

Multi-process (one process per host; see BUILD.md):
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   (explicit), or
  --distributed_auto                                                  (TPU pods, SLURM, MPI)
calls jax.distributed.initialize before any device is touched. Re-running the same command
resumes from the last committed checkpoint in DIR/state.
"""
from absl import flags

from ucore.cli import common

COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "correlate: host:port of process 0 for "
    "jax.distributed.initialize (multi-process runs only).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "correlate: total processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "correlate: this process's index.")
DISTRIBUTED_AUTO = flags.DEFINE_bool(
    "distributed_auto", False, "correlate: call jax.distributed.initialize() with the "
    "cluster auto-detected (TPU pod slices, SLURM, Open MPI) instead of the three flags.")


def init_distributed():
  import jax
  from ucore.jobs.errors import UserError
  given = [v is not None for v in (COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)]
  if DISTRIBUTED_AUTO.value:
    if any(given):
      raise UserError("--distributed_auto excludes --coordinator_address/--num_processes/"
                      "--process_id.")
    jax.distributed.initialize()
    return
  if any(given) and not all(given):
    raise UserError("multi-process runs need all of --coordinator_address, --num_processes "
                    "and --process_id.")
  if all(given) and NUM_PROCESSES.value > 1:
    if jax.config.jax_platforms in (None, "", "cpu") and \
        jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
      # CPU processes need a collectives backend (GPU/TPU bring their own).
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=COORDINATOR.value,
                               num_processes=NUM_PROCESSES.value,
                               process_id=PROCESS_ID.value)


def run(argv):
  from ucore.jobs.errors import UserError
  if argv:
    raise UserError(f"correlate takes no positional arguments, got {argv}.")
  config = common.require_config()
  workdir = common.require_workdir()
  init_distributed()
  from ucore.corr import driver
  driver.run(config, workdir)
  _seed_matrix_figures(config, workdir)


def _seed_matrix_figures(config, workdir):
  """An all_pairs run's seed × seed heatmap and k-of-M histogram in <workdir>/figures/ (the
  engine writes tables only: figures belong to the report layer)."""
  import os

  import jax
  from ucore.corr import tables
  if config.get("mode") != "all_pairs" or jax.process_index() != 0:
    return
  from ucore.report import seed_matrix
  section = seed_matrix.seed_matrix_section(os.path.join(workdir, tables.TABLES_DIR),
                                            os.path.join(workdir, "figures"))
  print(f"{section['title']}: {', '.join(section['figures'])}")
