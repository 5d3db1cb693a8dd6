"""The paper's data (§3): 100M tokens of the Pile test split, labelled by Pile subset.

  python main.py tokenize --config=configs/tokenize_pile.py --workdir=runs/tok_pile100m

Needs the HF hub (streams `monology/pile-uncopyrighted`, the copyright-cleaned Pile that later
work uses; it lacks a few subsets such as Books3). Smaller sets as in the paper:
`--config.num_tokens=10_000_000` (every analysis after correlations), 100_000 ... 50_000_000.
Variants: `:1e7` (token count), `:pythia` (Pythia's tokenizer.json from ckpt/pythia-160m;
combine as `:pythia,1e7`).
Every row keeps its subset name (`meta.pile_set_name`) as its label.
"""
from ucore.jobs import config_files


def get_config(arg: str = ""):
  c = config_files.load("tokenize_default")
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
  for part in filter(None, arg.split(",")):
    if part == "pythia":   # Pythia's tokenizer, from a converted checkpoint (convert first)
      c.tokenizer = "ckpt/pythia-160m/tokenizer"
      c.model_vocab_size = 50304   # Pythia-160m's embedding rows (tokenizer: 50277 ids)
    else:
      c.num_tokens = int(float(part))   # e.g. `configs/tokenize_pile.py:1e7`
  return c
