"""A seconds-long seed family for tests and smoke runs (2 seeds, 1 layer, d_model 32).

  python main.py train --config=configs/train_tiny.py --workdir=runs/train_tiny \
      --config.data.store=runs/tok_tiny

(build the store with `python main.py tokenize --config=configs/tokenize_default.py:tiny
--config.tokenizer=bpe --config.bpe_vocab_size=512 --workdir=runs/tok_tiny`). It shrinks the
default family config (configs/train_default.py) rather than keeping a second list of fields.
"""
from ucore.jobs import config_files


def get_config(arg: str = ""):
  c = config_files.load("train_default")
  c.seeds = (0, 1)              # two members are enough to see seeds differ
  c.model.n_layer = 1           # one block
  c.model.n_embd = 32           # residual width
  c.model.n_head = 2            # heads of 16 dims
  c.model.d_mlp = 64            # 64 neurons
  c.batch_rows = 4              # rows per update per seed
  c.num_steps = 20              # updates
  c.optim.warmup_steps = 2      # short warmup
  c.optim.lr = 3e-3             # a tiny model tolerates a larger step
  c.heldout_rows = 8            # held-out rows
  c.eval_every = 5              # held-out loss every 5 steps
  c.state_every = 5             # resumable state every 5 steps
  c.log_every = 5               # log every 5 steps
  c.eval_batch_rows = 8         # one held-out batch
  c.checkpoint_steps = (0, 10, 20)  # kept model checkpoints
  if arg:
    raise ValueError(f"configs/train_tiny.py takes no variant; got {arg!r}")
  return c
