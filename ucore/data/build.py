"""The token recipe of the paper (§3), resumable: text -> token rows + labels -> token store.

  1. stream documents (sources.iter_documents); drop those of <= min_chars characters;
  2. per label group, in source order: join the documents' tokens with EOS, cut pieces of
     ctx - 1 tokens, prepend BOS -> rows of ctx tokens (a group's last incomplete piece is
     dropped);
  3. pre-shuffle order: groups by sorted label name, each group's rows in creation order;
     then a seeded shuffle (numpy default_rng(seed).permutation), keep the first
     ceil(num_tokens / ctx) rows (all rows if there are fewer), each with its label.

Resumability. Stage A (tokenize) commits shards of complete rows plus the per-group carry
(the tokens not yet in a row) under <workdir>/.build/, then atomically rewrites
progress.json with the number of source documents consumed; a resumed job skips that many
documents and continues from the carry. Stage B (shuffle + write) writes the zarr3 arrays in
blocks, each block followed by an atomic write.json marker. The manifest is written last,
atomically: it alone means "complete". Progress is never inferred from array contents.
Neither shard boundaries nor encode batch sizes change the result (step 3 orders rows by
group and creation order), so a killed and resumed job writes the identical store.
"""
import os
import shutil
import time

import numpy as np
from absl import logging

from ucore.jobs import atomic, identity, schema, workdir_lock
from ucore.models import tokenizer as tokmod
from ucore.jobs.atomic import read_json, write_json
from ucore.data import mask, sources, store as storemod
from ucore.jobs.errors import UserError

BUILD_DIR = ".build"
JOB = "job.json"
PROGRESS = "progress.json"
WRITE = "write.json"
TOKENIZER_DONE = "tokenizer.json"


def _noop_hook(event, **info):
  del event, info


# ---------------------------------------------------------------- config and identity
def _validated(config) -> dict:
  """Plain dict of the recipe fields, checked with the whole config (ucore.jobs.schema)."""
  schema.check(config, "tokenize")
  return {
      "ctx": int(config.ctx), "min_chars": int(config.min_chars),
      "num_tokens": int(config.num_tokens), "seed": int(config.seed),
      "shuffle": bool(config.get("shuffle", True)),
      "max_documents": int(config.get("max_documents", 0) or 0),
  }


def _tokenizer_spec(config):
  spec = str(config.tokenizer).strip()
  if spec == "gpt2":
    return {"kind": "gpt2"}, tokmod.gpt2_files_offline()
  if spec == "bpe":
    return {"kind": "bpe", "vocab_size": int(config.bpe_vocab_size),
            "train_documents": int(config.bpe_train_documents)}, None
  files = tokmod.files_in_dir(spec) if os.path.isdir(spec) else None
  if files is None:
    raise UserError(f"config.tokenizer={spec!r}: use 'gpt2', 'bpe' (train one on the source) "
                    "or a directory holding vocab.json + merges.txt or a HF tokenizer.json")
  return {"kind": "files"}, files


# ---------------------------------------------------------------- workdir state
class _Workdir:
  def __init__(self, path):
    self.path = os.path.abspath(path)
    self.build = os.path.join(self.path, BUILD_DIR)

  def b(self, *names):
    return os.path.join(self.build, *names)

  def shard(self, i, kind):
    return self.b(f"shard-{i:06d}.{kind}")


def _claim_workdir(wd: _Workdir, job: dict) -> str:
  """Returns 'complete', 'resume' or 'fresh'; refuses foreign or mismatching workdirs."""
  manifest_path = os.path.join(wd.path, storemod.MANIFEST)
  if os.path.exists(manifest_path):
    manifest = storemod.read_manifest(wd.path)
    identity.check_same(manifest.get("job") or {}, job, f"{wd.path} holds a finished token store "
                    "built from a different config", "; use a new --workdir", limit=3)
    return "complete"
  if not os.path.exists(wd.b(JOB)):
    if os.path.isdir(wd.path) and os.listdir(wd.path) == [BUILD_DIR]:
      shutil.rmtree(wd.build)   # no job.json: killed between creating .build and writing it
    if os.path.isdir(wd.path) and os.listdir(wd.path):
      raise UserError(f"--workdir {wd.path} is not empty and holds no token job; "
                      "use a new or empty directory")
    os.makedirs(wd.build, exist_ok=True)
  resumed = identity.claim(wd.b(JOB), job, f"{wd.path} holds an unfinished token job with a "
                       "different config or source",
                       "; rerun with the original config, or use a new --workdir")
  return "resume" if resumed else "fresh"


# ---------------------------------------------------------------- tokenizer setup
_READ = {}   # sha256 of the tokenizer files -> what _read_tokenizer returned for them


def _read_tokenizer(files):
  """(tokenizers.Tokenizer, vocabulary size, id of <|endoftext|> or None) of the files, read
  once per content in a process: loading GPT-2's BPE and parsing its vocabulary twice cost
  ~0.5 s per build, paid again by every further store a process builds (encoding does not
  change the tokenizer)."""
  key = files.sha256()
  if key not in _READ:
    if len(_READ) >= 4:
      _READ.clear()
    _READ[key] = (tokmod.load(files), tokmod.vocab_size(files), tokmod.special_id(files))
  return _READ[key]


def _prepare_tokenizer(config, wd: _Workdir, src, tok_spec, files, recipe):
  """Copies (or trains) the tokenizer into <workdir>/tokenizer; returns its description."""
  tdir = os.path.join(wd.path, storemod.TOKENIZER_DIR)
  if tok_spec["kind"] == "bpe":
    if os.path.exists(wd.b(TOKENIZER_DONE)):
      files = tokmod.files_in_dir(tdir)
      if files is None or files.sha256() != read_json(wd.b(TOKENIZER_DONE))["sha256"]:
        raise UserError(f"trained tokenizer in {tdir} was changed or removed; delete "
                        f"{wd.path} and start again")
    else:
      logging.info("training a byte-level BPE (vocab %d) on up to %d documents of %s",
                   tok_spec["vocab_size"], tok_spec["train_documents"], src.name)
      texts = sources.kept_texts(src, recipe["min_chars"], tok_spec["train_documents"])
      staging = wd.b("tokenizer-train")
      shutil.rmtree(staging, ignore_errors=True)
      tokmod.train_byte_level_bpe(texts, tok_spec["vocab_size"], staging)
      shutil.rmtree(tdir, ignore_errors=True)
      files = tokmod.copy_files(tokmod.files_in_dir(staging), tdir)
      shutil.rmtree(staging, ignore_errors=True)
      write_json(wd.b(TOKENIZER_DONE), {"sha256": files.sha256()})
  else:
    files = tokmod.copy_files(files, tdir)
  tok, vsize, endoftext = _read_tokenizer(files)
  eos = int(config.eos_id) if int(config.eos_id) >= 0 else endoftext
  bos = int(config.bos_id) if int(config.bos_id) >= 0 else eos
  if eos is None or bos is None:
    raise UserError(f"tokenizer {config.tokenizer!r} has no {tokmod.ENDOFTEXT} token: set "
                    "config.eos_id and config.bos_id")
  # token-id fields against the tokenizer now read (a directory's size is known only here)
  schema.check(config, "tokenize", vocab_size=(vsize, f"tokenizer {config.tokenizer!r}"))
  for name, i in (("bos_id", bos), ("eos_id", eos)):
    if not 0 <= i < vsize:
      raise UserError(f"config.{name}={i} is outside the tokenizer's vocabulary [0, {vsize})")
  model_vocab = int(config.get("model_vocab_size", 0) or 0)
  if model_vocab and vsize > model_vocab:
    raise UserError(f"tokenizer {config.tokenizer!r} has {vsize} ids but the model's "
                    f"vocabulary (config.model_vocab_size) has {model_vocab}: they do not match")
  nl = tok.encode("\n").ids
  newline = int(nl[0]) if len(nl) == 1 else None
  if tuple(config.get("mask_exclude_ids", ())):
    exclude = sorted({int(i) for i in config.mask_exclude_ids})
  else:
    exclude = mask.recommended_exclude_ids(bos, eos, newline)
  desc = {"kind": tok_spec["kind"], "sha256": files.sha256(), "vocab_size": vsize,
          "bos_id": bos, "eos_id": eos, "newline_id": newline}
  if tok_spec["kind"] == "bpe":
    desc.update(bpe_vocab_size=tok_spec["vocab_size"],
                train_documents=tok_spec["train_documents"])
  return tok, desc, exclude


# ---------------------------------------------------------------- stage A: tokenize
class _Progress:
  def __init__(self, every_s, total_docs):
    self.every_s, self.total, self.t0, self.last = float(every_s), total_docs, time.time(), 0.0
    self.tokens0 = None

  def maybe_log(self, p, force=False):
    now = time.time()
    if not force and now - self.last < self.every_s:
      return
    self.last = now
    if self.tokens0 is None:
      self.tokens0, self.docs0 = p["tokens_total"], p["docs_consumed"]
      self.t0 = now
      return
    dt = max(now - self.t0, 1e-9)
    tps = (p["tokens_total"] - self.tokens0) / dt
    dps = (p["docs_consumed"] - self.docs0) / dt
    eta = "unknown"
    if self.total and dps > 0:
      eta = f"{max(self.total - p['docs_consumed'], 0) / dps:.0f}s"
    logging.info("tokenize: %d docs, %d rows, %.0f tokens/s, ETA %s", p["docs_consumed"],
                 p["rows_total"], tps, eta)


def _fresh_progress():
  return {"docs_consumed": 0, "num_shards": 0, "shard_rows": [], "labels": [],
          "docs_kept": {}, "docs_dropped": {}, "tokens": {}, "rows": {}, "rows_total": 0,
          "tokens_total": 0, "done": False}


def _load_carry(wd, p):
  """Per discovered label id: (carry tokens, started flag) as of the last committed shard."""
  n = len(p["labels"])
  carry = [np.zeros((0,), np.int32) for _ in range(n)]
  started = [False] * n
  if p["num_shards"]:
    with np.load(wd.shard(p["num_shards"] - 1, "meta.npz")) as meta:
      lens, flat = meta["carry_lens"], meta["carry"]
      offs = np.concatenate([[0], np.cumsum(lens)])
      for g in range(n):
        carry[g] = flat[offs[g]:offs[g + 1]].astype(np.int32)
      started = [bool(x) for x in meta["started"]]
  return carry, started


def _save_npy(path, arr):
  atomic.write_buffered(path, lambda f: np.save(f, arr))


def _save_npz(path, **arrays):
  atomic.write_buffered(path, lambda f: np.savez(f, **arrays))


def _tokenize_stage(config, wd, src, recipe, tok, tdesc, hook):
  p = read_json(wd.b(PROGRESS)) if os.path.exists(wd.b(PROGRESS)) else _fresh_progress()
  if p["done"]:
    return p
  ctx, piece = recipe["ctx"], recipe["ctx"] - 1
  bos, eos = tdesc["bos_id"], tdesc["eos_id"]
  carry, started = _load_carry(wd, p)
  label_index = {name: i for i, name in enumerate(p["labels"])}
  pending_rows, pending_labels = [], []
  batch_docs = int(config.encode_batch_docs)
  shard_rows = int(config.shard_rows)
  max_docs = recipe["max_documents"]
  total_hint = max_docs or sources.num_documents_hint(src)
  prog = _Progress(config.get("log_every_s", 30), total_hint)
  encode = getattr(tok, "encode_batch_fast", tok.encode_batch)

  def commit(final):
    rows = (np.concatenate(pending_rows) if pending_rows
            else np.zeros((0, ctx), np.int32))
    labels = (np.concatenate(pending_labels) if pending_labels
              else np.zeros((0,), np.int32))
    i = p["num_shards"]
    lens = np.array([len(c) for c in carry], np.int64)
    flat = np.concatenate(carry) if carry else np.zeros((0,), np.int32)
    _save_npy(wd.shard(i, "rows.npy"), rows)
    _save_npz(wd.shard(i, "meta.npz"), labels=labels, carry=flat.astype(np.int32),
              carry_lens=lens, started=np.array(started, bool))
    hook("shard_written", shard=i)
    p["num_shards"] = i + 1
    p["shard_rows"].append(int(rows.shape[0]))
    p["done"] = bool(final)
    write_json(wd.b(PROGRESS), p)
    hook("progress_committed", shard=i)
    pending_rows.clear()
    pending_labels.clear()

  def process(batch):
    keep = [(t, l) for t, l in batch if len(t) > recipe["min_chars"]]
    for t, l in batch:
      if len(t) <= recipe["min_chars"]:
        p["docs_dropped"][l] = p["docs_dropped"].get(l, 0) + 1
    encodings = encode([t for t, _ in keep]) if keep else []
    parts = {}
    for (_, label), enc in zip(keep, encodings):
      g = label_index.get(label)
      if g is None:
        g = label_index[label] = len(p["labels"])
        p["labels"].append(label)
        carry.append(np.zeros((0,), np.int32))
        started.append(False)
      ids = np.asarray(enc.ids, dtype=np.int32)
      lst = parts.setdefault(g, [carry[g]])
      if started[g]:
        lst.append(np.array([eos], np.int32))
      lst.append(ids)
      started[g] = True
      p["docs_kept"][label] = p["docs_kept"].get(label, 0) + 1
      p["tokens"][label] = p["tokens"].get(label, 0) + int(ids.shape[0])
      p["tokens_total"] += int(ids.shape[0])
    for g, lst in parts.items():
      stream = np.concatenate(lst)
      n = stream.shape[0] // piece
      carry[g] = stream[n * piece:].copy()
      if n:
        rows = np.empty((n, ctx), np.int32)
        rows[:, 0] = bos
        rows[:, 1:] = stream[:n * piece].reshape(n, piece)
        pending_rows.append(rows)
        pending_labels.append(np.full((n,), g, np.int32))
        name = p["labels"][g]
        p["rows"][name] = p["rows"].get(name, 0) + n
        p["rows_total"] += n
    p["docs_consumed"] += len(batch)

  batch = []
  pending = 0
  for text, label in sources.iter_documents(src, skip=p["docs_consumed"]):
    if max_docs and p["docs_consumed"] + len(batch) >= max_docs:
      break
    batch.append((text, label))
    if len(batch) >= batch_docs:
      before = p["rows_total"]
      process(batch)
      batch = []
      pending += p["rows_total"] - before
      prog.maybe_log(p)
      if pending >= shard_rows:
        commit(final=False)
        pending = 0
  if batch:
    process(batch)
  commit(final=True)
  prog.maybe_log(p, force=True)
  return p


def _check_input(p, src, recipe):
  if p["docs_consumed"] == 0:
    raise UserError(f"source {src.name!r} (split {src.split!r}) has no documents")
  kept = sum(p["docs_kept"].values())
  if kept == 0:
    raise UserError(f"all {p['docs_consumed']} documents of {src.name!r} are <= "
                    f"{recipe['min_chars']} characters (config.min_chars); nothing to tokenize")
  if p["rows_total"] == 0:
    raise UserError(f"{kept} documents ({p['tokens_total']} tokens) give no complete row of "
                    f"{recipe['ctx']} tokens in any label group; lower config.ctx or add text")


# ---------------------------------------------------------------- stage B: shuffle + write
def selected_rows(shard_labels, label_names_discovered, recipe):
  """(source row index per output row, sorted label id per output row, sorted label names).

  Source rows are numbered in shard order (= creation order); the pre-shuffle order is by
  sorted label name, then creation order; then default_rng(seed).permutation; first K kept.
  """
  names = sorted(label_names_discovered)
  remap = np.array([names.index(n) for n in label_names_discovered], np.int32)
  disc = np.concatenate(shard_labels) if shard_labels else np.zeros((0,), np.int32)
  lab = remap[disc] if disc.size else disc
  order = np.argsort(lab, kind="stable")
  if recipe["shuffle"]:
    order = order[np.random.default_rng(recipe["seed"]).permutation(order.shape[0])]
  k = order.shape[0]
  if recipe["num_tokens"]:
    k = min(k, storemod.ceil_rows(recipe["num_tokens"], recipe["ctx"]))
  sel = order[:k]
  return sel, lab[sel].astype(np.int32), names


def _write_stage(config, wd, p, recipe, hook):
  shard_labels = []
  for i in range(p["num_shards"]):
    with np.load(wd.shard(i, "meta.npz")) as meta:
      shard_labels.append(meta["labels"])
  sel, labels, names = selected_rows(shard_labels, p["labels"], recipe)
  k, ctx = int(sel.shape[0]), recipe["ctx"]
  if k < storemod.ceil_rows(recipe["num_tokens"], ctx):
    logging.warning("source gives only %d rows of %d tokens (%d requested); keeping all",
                    k, ctx, storemod.ceil_rows(recipe["num_tokens"], ctx))
  chunk = int(config.chunk_rows)
  block = max(chunk, int(config.write_block_rows) // chunk * chunk)
  tpath, lpath = os.path.join(wd.path, storemod.TOKENS), os.path.join(wd.path, storemod.LABELS)
  w = read_json(wd.b(WRITE)) if os.path.exists(wd.b(WRITE)) else None
  chunk = min(chunk, max(k, 1))
  if w is None or (w["num_rows"], w["block_rows"], w["chunk_rows"]) != (k, block, chunk) or \
      "chunk_sha256" not in w:   # (a write stage begun before checksums: begun again)
    tokens = storemod.create_array(tpath, (k, ctx), (chunk, ctx))
    label_chunk = max(1, min(k, storemod.LABEL_CHUNK_ROWS))
    lab_arr = storemod.create_array(lpath, (k,), (label_chunk,))
    lab_arr.write(labels).result()
    # content checksums of every chunk, from the rows as written (ucore.data.store CHECKSUMS)
    w = {"num_rows": k, "block_rows": block, "chunk_rows": chunk, "blocks_done": 0,
         "label_chunk_rows": label_chunk,
         "label_sha256": storemod.chunk_digests(labels, label_chunk), "chunk_sha256": []}
    write_json(wd.b(WRITE), w)
  else:
    tokens = storemod.open_array(tpath, write=True)
  starts = np.concatenate([[0], np.cumsum(p["shard_rows"])]).astype(np.int64)
  mm = {}
  nblocks = -(-k // block)
  t0, last = time.time(), time.time()
  done0 = w["blocks_done"]
  for bi in range(w["blocks_done"], nblocks):
    idx = sel[bi * block:(bi + 1) * block]
    shard = np.searchsorted(starts, idx, side="right") - 1
    off = idx - starts[shard]
    out = np.empty((idx.shape[0], ctx), np.int32)
    for s in np.unique(shard):
      if s not in mm:
        mm[s] = np.load(wd.shard(int(s), "rows.npy"), mmap_mode="r")
      m = shard == s
      out[m] = mm[s][off[m]]
    tokens[bi * block:bi * block + idx.shape[0]].write(out).result()
    hook("block_written", block=bi)
    del w["chunk_sha256"][bi * block // chunk:]   # a block redone after a kill
    w["chunk_sha256"] += storemod.chunk_digests(out, chunk)   # blocks hold whole chunks
    w["blocks_done"] = bi + 1
    write_json(wd.b(WRITE), w)
    hook("block_committed", block=bi)
    now = time.time()
    if now - last >= float(config.get("log_every_s", 30)) or bi + 1 == nblocks:
      last = now
      rate = (bi + 1 - done0) * block / max(now - t0, 1e-9)
      logging.info("write: %d / %d rows, %.0f rows/s, ETA %.0fs", min((bi + 1) * block, k), k,
                   rate, (nblocks - bi - 1) * block / max(rate, 1e-9))
  return k, labels, names, w


# ---------------------------------------------------------------- entry point
@workdir_lock.locked
def build_store(config, workdir: str, _hook=None):
  """Builds (or resumes, or finds complete) the token store in `workdir`; returns it opened.

  `config`: an ml_collections ConfigDict with the fields of configs/tokenize_default.py.
  `_hook(event, **info)`: test-only callback at each crash-sensitive point.
  """
  hook = _hook or _noop_hook
  if not workdir:
    raise UserError("--workdir is required: the directory of the token store")
  recipe = _validated(config)
  src = sources.resolve(config)
  tok_spec, files = _tokenizer_spec(config)
  if files is not None:
    tok_spec["sha256"] = files.sha256()
  for key in ("bos_id", "eos_id", "model_vocab_size"):
    tok_spec[key] = int(config.get(key, -1))
  tok_spec["mask_exclude_ids"] = [int(i) for i in config.get("mask_exclude_ids", ())]
  job = identity.normalize({"source": src.identity(), "recipe": recipe, "tokenizer": tok_spec})
  wd = _Workdir(workdir)
  state = _claim_workdir(wd, job)
  if state == "complete":
    logging.info("token store %s is already complete", wd.path)
    shutil.rmtree(wd.build, ignore_errors=True)   # left by a kill right after the manifest
    return storemod.open_store(wd.path)
  logging.info("%s token job in %s: source %s", "resuming" if state == "resume" else "starting",
               wd.path, src.name)
  try:
    tok, tdesc, exclude = _prepare_tokenizer(config, wd, src, tok_spec, files, recipe)
    p = _tokenize_stage(config, wd, src, recipe, tok, tdesc, hook)
    _check_input(p, src, recipe)
  except UserError:
    if state == "fresh":   # bad input on a first run: leave the workdir as it was (empty)
      for name in (BUILD_DIR, storemod.TOKENIZER_DIR):
        shutil.rmtree(os.path.join(wd.path, name), ignore_errors=True)
    raise
  k, labels, names, w = _write_stage(config, wd, p, recipe, hook)
  kept = np.bincount(labels, minlength=len(names)) if k else np.zeros(len(names), np.int64)
  counts = {}
  for i, name in enumerate(names):
    counts[name] = {"documents": p["docs_kept"].get(name, 0),
                    "documents_dropped": p["docs_dropped"].get(name, 0),
                    "tokens": p["tokens"].get(name, 0), "rows_built": p["rows"].get(name, 0),
                    "rows": int(kept[i])}
  manifest = {
      "format": storemod.FORMAT, "version": storemod.VERSION,
      "source": dict(src.identity(), resolved_revision=sources.resolved_revision(src)),
      "recipe": dict(recipe, join="eos", remainder="dropped",
                     order="label groups by sorted name, rows in creation order; then "
                           "numpy default_rng(seed).permutation; first ceil(num_tokens/ctx)"),
      "tokenizer": tdesc, "mask_exclude_ids": exclude,
      "num_rows": k, "num_tokens_stored": k * recipe["ctx"], "label_names": names,
      "counts": counts,
      "totals": {"documents_read": p["docs_consumed"],
                 "documents": sum(p["docs_kept"].values()),
                 "documents_dropped": sum(p["docs_dropped"].values()),
                 "tokens": p["tokens_total"], "rows_built": p["rows_total"], "rows": k},
      "arrays": {"tokens": {"path": storemod.TOKENS, "dtype": "int32", "shape": [k, recipe["ctx"]],
                            "chunk_rows": w["chunk_rows"], storemod.CHECKSUMS: w["chunk_sha256"]},
                 "labels": {"path": storemod.LABELS, "dtype": "int32", "shape": [k],
                            "chunk_rows": w["label_chunk_rows"],
                            storemod.CHECKSUMS: w["label_sha256"]}},
      "job": job,
  }
  # the store_id must not depend on where resolved_revision could be looked up
  if manifest["source"]["resolved_revision"] is None:
    manifest["source"].pop("resolved_revision")
  manifest["store_id"] = storemod.store_id_of(manifest)
  hook("before_manifest")
  write_json(os.path.join(wd.path, storemod.MANIFEST), manifest)
  hook("manifest_written")
  shutil.rmtree(wd.build, ignore_errors=True)
  logging.info("token store %s complete: %d rows x %d tokens, labels %s", wd.path, k,
               recipe["ctx"], {n: c["rows"] for n, c in counts.items()})
  return storemod.open_store(wd.path)
