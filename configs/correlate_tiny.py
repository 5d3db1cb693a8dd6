"""Tiny correlate run on a planted synthetic family (no models or data needed; seconds on CPU).

  python main.py correlate --config=configs/correlate_tiny.py --workdir=/tmp/corr_tiny
  python main.py plan --config=configs/correlate_tiny.py
"""
from ucore.jobs import config_files


def get_config():
  c = config_files.load("correlate_default")
  c.synthetic.enabled = True     # planted family: 3 models × 2 layers × 128 neurons
  c.max_tokens = 0               # the whole synthetic store (64 rows × 16 tokens)
  c.batch_rows = 8               # rows per step
  c.top_k = 3                    # partners kept per neuron
  c.baseline.draws = 2           # two Haar draws (plus the paper's Gaussian mixing)
  c.intervals.blocks = 0         # no interval pass (seconds per run; test_corr_intervals turns it on)
  c.checkpoint.every_steps = 2   # commit often (resume tests)
  c.log_every = 2                # progress every 2 steps
  return c
