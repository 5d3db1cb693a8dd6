"""The small BPE token store that `configs/train_tiny.py` trains on in the CLI tests: 80
documents over a 15-word vocabulary, a 300-token byte-level BPE, 32-token rows. Every test that
trains train_tiny on it as is runs the same programs (model shape, batch, optimizer schedule),
so the training step compiles once per session (the persistent compilation cache)."""
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the cat sat on a mat while neurons fire and tokens flow through every layer".split()


def build_bpe_store(directory: str):
  """The store (a ucore.data.store.TokenStore) built in `directory`/store."""
  from ucore.data import build
  from ucore.jobs import config_files
  rng = np.random.default_rng(0)
  os.makedirs(directory, exist_ok=True)
  src = os.path.join(directory, "docs.jsonl")
  with open(src, "w") as f:
    for i in range(80):
      text = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 60))
      f.write(json.dumps({"text": text, "label": "ab"[i % 2]}) + "\n")
  c = config_files.load("tokenize_default")
  c.source, c.tokenizer, c.bpe_vocab_size, c.ctx, c.num_tokens = src, "bpe", 300, 32, 0
  c.log_every_s = 0.0
  return build.build_store(c, os.path.join(directory, "store"))
