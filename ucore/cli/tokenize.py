"""`python main.py tokenize --config=configs/tokenize_*.py --workdir=DIR [--config.field=value]`

Builds the token store in DIR (ucore.data.build.build_store); rerunning the same command after
a kill resumes and gives the identical store; a finished store is reported, not rebuilt.
"""
from absl import logging

from ucore.cli import common
from ucore.jobs.errors import UserError


def run(argv):
  if argv:
    raise UserError(f"tokenize takes no positional arguments, got {argv}; use --config.field=value")
  config = common.require_config()
  workdir = common.require_workdir()
  from ucore.data import build
  store = build.build_store(config, workdir)
  logging.info("%r", store)
  print(f"token store {store.path}: {store.num_rows} rows x {store.ctx} tokens, "
        f"labels {store.label_names}, id {store.store_id}")
