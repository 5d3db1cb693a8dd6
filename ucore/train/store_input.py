"""Train a family on a token store: the wiring shared by `main.py train` and the pipeline."""
from ucore.models import tokenizer as tokmod
from ucore.jobs import workdir_lock
from ucore.jobs.errors import UserError


@workdir_lock.locked
def train_from_store(config, workdir: str) -> dict:
  """Opens config.data.store, checks it against the model config, trains (or resumes, or
  returns the finished summary of) the family in `workdir`."""
  from ucore.data.store import open_store
  from ucore.train import train_family
  if "data" not in config or "seeds" not in config:
    raise UserError("the config is not a training config (no data / seeds); use "
                    "configs/train_default.py or configs/train_tiny.py")
  if not config.data.store:
    raise UserError("config.data.store is empty: pass --config.data.store=<token store "
                    "directory> (build one with `python main.py tokenize ...`)")
  store = open_store(config.data.store)
  if int(config.model.vocab_size):
    store.check_vocab_size(int(config.model.vocab_size))
  vocab = int(store.manifest["tokenizer"]["vocab_size"])
  files = tokmod.files_in_dir(store.tokenizer_dir)
  # config.data.max_rows is part of the config, which job.json records beside this.
  identity = {"kind": "store", "store_id": store.store_id, "num_rows": store.num_rows,
              "tokenizer_sha256": store.tokenizer_sha256}
  return train_family(config, workdir, store, vocab_size=vocab, tokenizer_files=files,
                      data_identity=identity)
