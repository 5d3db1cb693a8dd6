"""`python main.py train --config=configs/train_default.py --workdir=<dir> --config.data.store=<store>`.

Trains (or resumes — run the same command again) a seed family; see ucore/train/loop.py.
"""
from absl import logging

from ucore.cli import common


def run(argv):
  from ucore.jobs.errors import UserError
  from ucore.train.store_input import train_from_store
  if argv:
    raise UserError(f"train takes no positional arguments; got {argv}")
  workdir = common.require_workdir()
  summary = train_from_store(common.require_config(), workdir)
  logging.info("family complete: %s", summary["final"])
  losses = " ".join(f"seed{s}={v:.4f}" for s, v in summary["final_heldout_loss"].items())
  print(f"trained {len(summary['seeds'])} seeds x {summary['num_steps']} steps -> {workdir} "
        f"(final held-out loss {losses}; models: {workdir}/seed<s>/final)")
