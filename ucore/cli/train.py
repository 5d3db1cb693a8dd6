"""`python main.py train --config=configs/train_default.py --workdir=<dir> --config.data.store=<store>`.

Trains (or resumes — run the same command again) a seed family; see ucore/train/loop.py.
"""
from absl import logging

from ucore.cli import common


def run(argv):
  from ucore import tokenizer as tokmod
  from ucore.errors import UserError
  from ucore.train import train_family
  if argv:
    raise UserError(f"train takes no positional arguments; got {argv}")
  config = common.require_config()
  workdir = common.require_workdir()
  if "data" not in config or "seeds" not in config:
    raise UserError("--config is not a training config (no data / seeds); use "
                    "configs/train_default.py or configs/train_tiny.py")
  if not config.data.store:
    raise UserError("config.data.store is empty: pass --config.data.store=<token store "
                    "directory> (build one with `python main.py tokenize ...`)")
  from ucore.data.store import open_store
  store = open_store(config.data.store)
  vocab = int(store.manifest["tokenizer"]["vocab_size"])
  if int(config.model.vocab_size):
    store.check_vocab_size(int(config.model.vocab_size))
  files = tokmod.files_in_dir(store.tokenizer_dir)
  identity = {"kind": "store", "store_id": store.store_id, "num_rows": store.num_rows,
              "tokenizer_sha256": store.tokenizer_sha256}
  summary = train_family(config, workdir, store, vocab_size=vocab, tokenizer_files=files,
                         data_identity=identity)
  logging.info("family complete: %s", summary["final"])
  losses = " ".join(f"seed{s}={v:.4f}" for s, v in summary["final_heldout_loss"].items())
  print(f"trained {len(summary['seeds'])} seeds x {summary['num_steps']} steps -> {workdir} "
        f"(final held-out loss {losses}; models: {workdir}/seed<s>/final)")
