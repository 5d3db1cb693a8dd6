"""The paper's data (§3): 100M tokens of the Pile test split, labelled by Pile subset.

  python main.py tokenize --config=configs/tokenize_pile.py --workdir=runs/tok_pile100m

Needs the HF hub (streams `monology/pile-uncopyrighted`, the copyright-cleaned Pile that later
work uses; it lacks a few subsets such as Books3). Smaller sets as in the paper:
`--config.num_tokens=10_000_000` (every analysis after correlations), 100_000 ... 50_000_000.
Every row keeps its subset name (`meta.pile_set_name`) as its label.
"""
import importlib.util
import os


def _default_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenize_default.py")
  spec = importlib.util.spec_from_file_location("_tokenize_default", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg: str = ""):
  c = _default_config()
  # Streamed from the hub (≈ 214k documents in the test split).
  c.source = "monology/pile-uncopyrighted"
  # The paper uses the test split.
  c.split = "test"
  # Pin a commit sha here for a bit-exact rebuild; "" = the default branch (recorded).
  c.revision = ""
  c.text_field = "text"
  # Pile subset name: each subset is tokenized separately, and rows keep it.
  c.label_field = "meta.pile_set_name"
  # 100M tokens = ceil(1e8 / 512) = 195,313 rows of 512.
  c.num_tokens = 100_000_000
  c.ctx = 512
  c.min_chars = 50
  c.tokenizer = "gpt2"
  # GPT-2 small/medium embeddings have 50257 rows.
  c.model_vocab_size = 50257
  # Bigger shards and progress lines every minute for the long run.
  c.shard_rows = 32768
  c.log_every_s = 60.0
  if arg:
    c.num_tokens = int(float(arg))   # e.g. `configs/tokenize_pile.py:1e7`
  return c
