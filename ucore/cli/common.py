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


def config_value():
  """--config's ConfigDict or None; a config file that failed to load is a UserError (the
  flag library reports that only when the value is first used)."""
  from ucore.errors import UserError
  try:
    config = CONFIG.value
    if config is not None:
      config.keys()   # a config file that failed to load raises here, not at parse time
    return config
  except OSError as e:
    raise UserError(f"--config: {str(e).strip().splitlines()[-1].strip()}") from e


def require_config():
  from ucore.errors import UserError
  config = config_value()
  if config is None:
    raise UserError("--config is required: pass one of configs/*.py (see README).")
  return config
