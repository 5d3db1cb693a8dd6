"""A finished token store: zarr3 arrays (tensorstore) + a manifest written last.

Layout of a store directory:
  manifest.json      the commit marker: written last, atomically; its presence means complete
  tokens/            zarr3 int32 [num_rows, ctx], chunks [chunk_rows, ctx], zstd
  labels/            zarr3 int32 [num_rows]: index into manifest["label_names"]
  tokenizer/         vocab.json + merges.txt the rows were made with
  .build/            (only while building) resumable progress; removed when done

Readers open only what they read: `read_rows(a, b)` touches the chunks of rows [a, b);
`iter_batches(..., process_index, process_count)` reads only this process's rows.

Content checksums (issue 21): the manifest records the sha256 of every chunk's rows
(manifest["arrays"][name]["chunk_sha256"], of the little-endian int32 bytes of the chunk's
rows), written by the builder from the rows it writes. Every chunk a reader touches is read
whole and checked before any of its rows is used, so a chunk replaced by another (valid)
chunk, truncated or edited is refused with one line. The cost is one sha256 pass over what is
read (BENCHMARKS.md "Reliability": a few percent of the read itself), so there is no cheaper
mode. Stores written before the checksums (no chunk_sha256) are still read, with their
missing-chunk and fill-value checks, and a warning that says their contents are not verified
and that a fresh `tokenize` records them.
"""
import hashlib
import json
import math
import os

import numpy as np
from absl import logging

from ucore.jobs.errors import UserError

FORMAT = "ucore.token_store"
VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens"
LABELS = "labels"
TOKENIZER_DIR = "tokenizer"
FILL_VALUE = -1   # never a token id: unwritten chunks read as -1 (and are never trusted)
CHECKSUMS = "chunk_sha256"   # per array in manifest["arrays"]: sha256 of each chunk's rows
LABEL_CHUNK_ROWS = 1 << 16   # rows per chunk of the labels array (fewer in a smaller store)
_CACHED_CHUNKS = 4           # verified chunks kept per array (a reader reads rows in order)


def _kvstore(path: str) -> dict:
  # The file kvstore needs the trailing '/' (else listing matches by prefix).
  return {"driver": "file", "path": os.path.abspath(path).rstrip("/") + "/"}


def zarr_spec(path: str, shape, chunks) -> dict:
  return {
      "driver": "zarr3",
      "kvstore": _kvstore(path),
      "metadata": {
          "shape": list(shape),
          "data_type": "int32",
          "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
          "chunk_key_encoding": {"name": "default"},
          "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                     {"name": "zstd", "configuration": {"level": 3, "checksum": False}}],
          "fill_value": FILL_VALUE,
          "dimension_names": ["row", "position"][:len(shape)],
      },
  }


def create_array(path: str, shape, chunks):
  import tensorstore as ts
  return ts.open(zarr_spec(path, shape, chunks), create=True, delete_existing=True).result()


def open_array(path: str, write: bool = False):
  import tensorstore as ts
  spec = {"driver": "zarr3", "kvstore": _kvstore(path)}
  return ts.open(spec, open=True, read=True, write=write).result()


def chunk_digest(rows: np.ndarray) -> str:
  """sha256 of one chunk's rows (its little-endian int32 bytes): the content checksum."""
  return hashlib.sha256(np.ascontiguousarray(rows, dtype="<i4").tobytes()).hexdigest()


def chunk_digests(rows: np.ndarray, chunk_rows: int) -> list:
  """chunk_digest of each run of `chunk_rows` rows of `rows` (the last may be shorter)."""
  return [chunk_digest(rows[i:i + chunk_rows]) for i in range(0, rows.shape[0], chunk_rows)]


class _VerifiedArray:
  """Reads rows of a zarr array a whole chunk at a time, each chunk checked against its
  recorded sha256 before use; the last few verified chunks are kept (sequential readers read
  every chunk once). Without recorded digests it reads rows as they are."""

  def __init__(self, path, name, arr, chunk_rows, digests):
    self.path, self.name, self.arr = path, name, arr
    self.chunk_rows, self.digests = int(chunk_rows), digests
    self._cache = {}

  def _chunk(self, i: int) -> np.ndarray:
    if i not in self._cache:
      a = i * self.chunk_rows
      b = min(a + self.chunk_rows, int(self.arr.shape[0]))
      rows = _read(self.arr, a, b, self.path)
      if rows.size and rows.min() < 0:   # the fill value of a chunk that is not there
        raise UserError(f"token store {self.path} is incomplete: chunk {i} of {self.name} "
                        f"holds the fill value {FILL_VALUE} (a chunk file is missing); rebuild it")
      if chunk_digest(rows) != self.digests[i]:
        raise UserError(f"token store {self.path} is corrupt: chunk {i} of {self.name} (rows "
                        f"[{a}, {b})) does not match its recorded checksum (replaced, edited "
                        "or damaged); rebuild the store with `python main.py tokenize`")
      if len(self._cache) >= _CACHED_CHUNKS:
        self._cache.pop(next(iter(self._cache)))
      self._cache[i] = rows
    return self._cache[i]

  def read(self, start: int, stop: int) -> np.ndarray:
    if self.digests is None:
      return _read(self.arr, start, stop, self.path)
    c = self.chunk_rows
    parts = [self._chunk(i)[max(start - i * c, 0):stop - i * c]
             for i in range(start // c, (stop - 1) // c + 1)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _read(arr, start, stop, path) -> np.ndarray:
  try:
    return np.asarray(arr[start:stop].read().result(), dtype=np.int32)
  except Exception as e:   # tensorstore: a truncated or damaged chunk file
    raise UserError(f"token store {path} is corrupt: rows [{start}, {stop}) are "
                    f"unreadable ({' '.join(str(e).split())[:200]}); rebuild it") from e


def store_id_of(manifest: dict) -> str:
  """sha256 of the identifying content: what was built from what (not timings, not paths)."""
  ident = {k: manifest[k] for k in ("format", "version", "source", "recipe", "tokenizer",
                                    "num_rows", "label_names")}
  if ident["source"].get("kind") == "files":   # files are identified by content, not location
    ident["source"] = dict(ident["source"], files=[f["sha256"] for f in ident["source"]["files"]])
  return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def process_rows(g: int, batch_rows: int, stop_row: int, process_index: int = 0,
                 process_count: int = 1) -> tuple:
  """Rows [a, b) that process `process_index` of `process_count` reads of the global batch
  starting at row g: k = batch_rows // process_count rows from g + process_index * k, cut at
  stop_row (possibly empty). The one row-to-process layout of every token source."""
  k = batch_rows // process_count
  a = min(g + process_index * k, stop_row)
  return a, min(a + k, stop_row)


class TokenStore:
  """A complete store. Attributes: path, num_rows, ctx, store_id, manifest, tokenizer_sha256,
  label_names, bos_id, eos_id, mask_exclude_ids."""

  def __init__(self, path: str, manifest: dict, tokens, labels):
    self.path = path
    self.manifest = manifest
    self.num_rows = int(manifest["num_rows"])
    self.ctx = int(manifest["recipe"]["ctx"])
    self.store_id = manifest["store_id"]
    self.tokenizer_sha256 = manifest["tokenizer"]["sha256"]
    self.label_names = list(manifest["label_names"])
    self.bos_id = int(manifest["tokenizer"]["bos_id"])
    self.eos_id = int(manifest["tokenizer"]["eos_id"])
    self.mask_exclude_ids = tuple(manifest["mask_exclude_ids"])
    arrays = manifest.get("arrays") or {}
    self.verified = all(CHECKSUMS in (arrays.get(n) or {}) for n in (TOKENS, LABELS))
    if not self.verified:
      logging.warning("token store %s has no chunk checksums (written before they were "
                      "recorded): its chunk contents are not verified; `python main.py "
                      "tokenize` into a new workdir records them", path)

    def verified(name, arr):
      spec = arrays.get(name) or {}
      return _VerifiedArray(path, name, arr, spec.get("chunk_rows") or arr.chunk_layout.read_chunk.shape[0],
                            spec.get(CHECKSUMS) if self.verified else None)
    self._tokens = verified(TOKENS, tokens)
    self._labels = verified(LABELS, labels)

  def __repr__(self):
    return (f"TokenStore({self.path!r}, rows={self.num_rows}, ctx={self.ctx}, "
            f"labels={len(self.label_names)}, id={self.store_id[:12]})")

  @property
  def tokenizer_dir(self) -> str:
    return os.path.join(self.path, TOKENIZER_DIR)

  def _check_range(self, start, stop):
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= self.num_rows:
      raise ValueError(f"row range [{start}, {stop}) outside [0, {self.num_rows})")
    return start, stop

  def read_rows(self, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as int32 [stop - start, ctx]."""
    start, stop = self._check_range(start, stop)
    if start == stop:
      return np.zeros((0, self.ctx), np.int32)
    rows = self._tokens.read(start, stop)
    if rows.size and rows.min() < 0:   # the fill value of a chunk that is not there
      bad = start + int(np.nonzero((rows < 0).any(axis=1))[0][0])
      raise UserError(f"token store {self.path} is incomplete: row {bad} holds the fill value "
                      f"{FILL_VALUE} (a chunk file is missing); rebuild it")
    return rows

  def row_labels(self, start: int, stop: int) -> np.ndarray:
    """Label ids (index into label_names) of rows [start, stop), int32."""
    start, stop = self._check_range(start, stop)
    if start == stop:
      return np.zeros((0,), np.int32)
    return self._labels.read(start, stop)

  def iter_batches(self, batch_rows: int, start_row: int = 0, stop_row: int | None = None,
                   process_index: int = 0, process_count: int = 1, pad_id: int | None = None):
    """Yields (global_row_start, rows) for global batches of `batch_rows` rows over
    [start_row, stop_row); `rows` is int32 [batch_rows // process_count, ctx]: process p gets
    rows [g + p*k, g + (p+1)*k) of the batch starting at g (k = batch_rows // process_count),
    and reads nothing else.

    The final short batch (fewer than batch_rows rows left) is yielded, not dropped, with the
    same row-to-process layout cut at stop_row: leading processes get their full k rows, the
    rest fewer, possibly zero (an empty [0, ctx] array — still yielded, so every process runs
    the same number of steps). With `pad_id` set, every slice is padded up to k rows with
    pad_id, so shapes never change; `mask.token_mask(..., pad_id=pad_id)` then drops them.
    """
    batch_rows, process_count, process_index = int(batch_rows), int(process_count), int(process_index)
    if batch_rows <= 0 or process_count <= 0 or not 0 <= process_index < process_count:
      raise ValueError(f"bad batch_rows={batch_rows} / process {process_index} of {process_count}")
    if batch_rows % process_count:
      raise UserError(f"batch_rows={batch_rows} is not divisible by process_count="
                      f"{process_count}; choose a multiple")
    stop_row = self.num_rows if stop_row is None else int(stop_row)
    start_row, stop_row = self._check_range(start_row, stop_row)
    k = batch_rows // process_count
    for g in range(start_row, stop_row, batch_rows):
      a, b = process_rows(g, batch_rows, stop_row, process_index, process_count)
      rows = self.read_rows(a, b)
      if pad_id is not None and rows.shape[0] < k:
        pad = np.full((k - rows.shape[0], self.ctx), int(pad_id), np.int32)
        rows = np.concatenate([rows, pad], axis=0)
      yield g, rows

  def check_tokenizer(self, tokenizer_sha256: str) -> None:
    """UserError unless the rows were made with the tokenizer whose files hash to this."""
    if tokenizer_sha256 != self.tokenizer_sha256:
      raise UserError(f"token store {self.path} was made with tokenizer {self.tokenizer_sha256[:12]} "
                      f"but the model's tokenizer is {tokenizer_sha256[:12]}; re-tokenize with "
                      "the model's tokenizer")

  def check_vocab_size(self, model_vocab_size: int) -> None:
    """UserError if a token id of this store's tokenizer would fall outside the model's
    embedding (vocab_size bigger than the model's d_vocab)."""
    if int(self.manifest["tokenizer"]["vocab_size"]) > int(model_vocab_size):
      raise UserError(f"token store {self.path} uses a {self.manifest['tokenizer']['vocab_size']}"
                      f"-token vocabulary but the model has {model_vocab_size}; re-tokenize with "
                      "the model's tokenizer")


def model_tokenizer_sha256(model) -> str | None:
  """sha256 of the tokenizer a model was made with: its manifest's record, else the files in
  <model dir>/tokenizer, else None (unknown)."""
  from ucore.models import tokenizer as tok
  sha = (getattr(model, "manifest", None) or {}).get("tokenizer_sha256")
  if sha:
    return sha
  path = getattr(model, "path", None)
  files = tok.files_in_dir(os.path.join(path, "tokenizer")) if path else None
  return files.sha256() if files else None


def check_store_matches_model(store, model, name: str = "") -> None:
  """The one check that a token store may feed a model (correlate, analyze, the pipeline):
  UserError if both tokenizers are known and differ (naming both), if the store's tokenizer
  vocabulary exceeds the model's vocab_size (a token id could fall outside the embedding) or
  if its rows are longer than the model's context. Stores without a manifest (synthetic
  token sources) are checked by the model's own token range check."""
  if not isinstance(store, TokenStore):
    return
  who = f"model {name}" if name else "the model"
  sha = model_tokenizer_sha256(model)
  if sha is not None and sha != store.tokenizer_sha256:
    raise UserError(f"token store {store.path} was made with tokenizer "
                    f"{store.tokenizer_sha256[:12]} but {who}'s tokenizer is {sha[:12]}; "
                    "re-tokenize with the model's tokenizer")
  vocab = int(store.manifest["tokenizer"]["vocab_size"])
  if vocab > int(model.config.vocab_size):
    raise UserError(f"token store {store.path} uses a {vocab}-token vocabulary but {who} has "
                    f"vocab_size {model.config.vocab_size}; re-tokenize with the model's "
                    "tokenizer")
  if store.ctx > model.config.n_positions:
    raise UserError(f"token store rows have {store.ctx} tokens but {who}'s context is "
                    f"{model.config.n_positions}")


def read_manifest(path: str) -> dict:
  mpath = os.path.join(path, MANIFEST)
  try:
    with open(mpath, "r", encoding="utf-8") as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"token store manifest {mpath} is unreadable ({e}); rebuild the store") from e
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise UserError(f"{path} is not a token store (manifest format is not {FORMAT!r})")
  if manifest.get("version") != VERSION:
    raise UserError(f"token store {path} has version {manifest.get('version')}, this code reads "
                    f"version {VERSION}; rebuild it")
  return manifest


def _missing_chunks(array_path: str, arr) -> list:
  """Chunk files of the zarr3 array `arr` (default chunk keys c/i/j) absent from disk: a
  complete store wrote every one (a missing chunk would read back as the fill value)."""
  import itertools
  chunk = arr.chunk_layout.read_chunk.shape
  grid = [range(-(-int(n) // int(c))) for n, c in zip(arr.shape, chunk)]
  keys = ("/".join(["c", *map(str, idx)]) for idx in itertools.product(*grid))
  return [os.path.join(os.path.basename(array_path), k) for k in keys
          if not os.path.isfile(os.path.join(array_path, k))]


def open_store(path: str) -> TokenStore:
  """Opens a complete store; UserError if missing, incomplete, foreign or corrupt."""
  if not path or not os.path.isdir(path):
    raise UserError(f"token store {path!r} does not exist; build it with "
                    "`python main.py tokenize --config=... --workdir=...`")
  if not os.path.exists(os.path.join(path, MANIFEST)):
    if os.path.isdir(os.path.join(path, ".build")):
      raise UserError(f"token store {path} is incomplete (no {MANIFEST}); rerun the same "
                      "tokenize command to finish it")
    raise UserError(f"{path} is not a token store (no {MANIFEST})")
  manifest = read_manifest(path)
  try:
    required = ("store_id", "num_rows", "recipe", "tokenizer", "label_names", "mask_exclude_ids")
    missing = [k for k in required if k not in manifest]
    if missing:
      raise ValueError(f"manifest lacks {missing}")
    if store_id_of(manifest) != manifest["store_id"]:
      raise ValueError("store_id does not match the manifest's content (edited by hand?)")
    num_rows, ctx = int(manifest["num_rows"]), int(manifest["recipe"]["ctx"])
    tokens = open_array(os.path.join(path, TOKENS))
    labels = open_array(os.path.join(path, LABELS))
    if tuple(tokens.shape) != (num_rows, ctx) or tokens.dtype.numpy_dtype != np.int32:
      raise ValueError(f"tokens array is {tokens.dtype}{list(tokens.shape)}, manifest says "
                       f"int32[{num_rows}, {ctx}]")
    if tuple(labels.shape) != (num_rows,):
      raise ValueError(f"labels array has shape {list(labels.shape)}, expected [{num_rows}]")
    for name, arr in ((TOKENS, tokens), (LABELS, labels)):
      spec = (manifest.get("arrays") or {}).get(name) or {}
      if CHECKSUMS in spec:
        rows = int(arr.chunk_layout.read_chunk.shape[0])
        if int(spec.get("chunk_rows", rows)) != rows or \
            len(spec[CHECKSUMS]) != -(-num_rows // rows):
          raise ValueError(f"the {name} array's chunks ({rows} rows) do not match the "
                           f"manifest's {len(spec[CHECKSUMS])} chunk checksums")
    missing = _missing_chunks(os.path.join(path, TOKENS), tokens) + \
        _missing_chunks(os.path.join(path, LABELS), labels)
    if missing:
      raise UserError(f"token store {path} is incomplete: {len(missing)} chunk file(s) are "
                      f"missing ({', '.join(missing[:3])}); rebuild it")
  except UserError:
    raise
  except Exception as e:  # tensorstore / json / key errors: a damaged store
    raise UserError(f"token store {path} is corrupt: {' '.join(str(e).split())[:300]}; "
                    "rebuild it") from e
  return TokenStore(os.path.abspath(path), manifest, tokens, labels)


def ceil_rows(num_tokens: int, ctx: int) -> int:
  return int(math.ceil(int(num_tokens) / int(ctx)))
