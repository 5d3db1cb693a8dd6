"""Flags every subcommand shares."""
from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Python config file (configs/*.py), optionally `file.py:arg`; "
    "fields can be overridden as --config.field=value.", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this job's outputs and state.")


def require_workdir() -> str:
  from ucore.errors import UserError
  if not WORKDIR.value:
    raise UserError("--workdir is required: pass the directory where outputs and state go.")
  return WORKDIR.value


def require_config():
  from ucore.errors import UserError
  if CONFIG.value is None:
    raise UserError("--config is required: pass one of configs/*.py (see README).")
  return CONFIG.value
