"""Token datasets: the recipe against hand-computed rows, shuffle, resume after a kill, readers,
and bad input. All on small local corpora, offline."""
import json
import os
import signal
import subprocess
import sys

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest

from ucore.jobs import config_files
from ucore.models import tokenizer as tokmod
from ucore.data import build, store as storemod
from ucore.data.mask import GPT2_EOS_ID
from ucore.data.store import open_store
from ucore.jobs.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E = GPT2_EOS_ID


def default_config(arg=""):
  return config_files.load("tokenize_default", arg)


def make_config(source, **overrides):
  """The real default config, shrunk for tests."""
  c = default_config()
  c.source = str(source)
  c.log_every_s = 0.0
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def write_jsonl(path, docs):
  with open(path, "w", encoding="utf-8") as f:
    for d in docs:
      f.write(json.dumps(d) + "\n")
  return str(path)


WORDS = ("alpha beta gamma delta river mountain quick brown fox jumps over lazy dog "
         "tensor neuron model token\n data the of and to in").split(" ")


def random_corpus(n=60, seed=0):
  """Documents with labels a/b/c, varied lengths, some at or under 50 characters."""
  rng = np.random.default_rng(seed)
  docs = []
  for i in range(n):
    length = int(rng.integers(1, 120))
    text = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), length))
    if i % 11 == 3:
      text = "x" * 50          # exactly the threshold: dropped
    if i % 13 == 5:
      text = "short doc"
    docs.append({"text": text, "meta": {"set": "abc"[int(rng.integers(0, 3))]}, "id": i})
  return docs


def hand_rows(docs, ctx, min_chars=50):
  """The recipe written out with plain Python lists (independent of ucore.data.build)."""
  tok = tokmod.load(tokmod.gpt2_files_offline())
  groups = {}
  for d in docs:
    if len(d["text"]) > min_chars:
      groups.setdefault(d["meta"]["set"], []).append(tok.encode(d["text"]).ids)
  names = sorted(groups)
  rows, labels = [], []
  for li, name in enumerate(names):
    stream = []
    for i, ids in enumerate(groups[name]):
      if i:
        stream.append(E)
      stream.extend(ids)
    for s in range(0, len(stream) - (ctx - 1) + 1, ctx - 1):
      rows.append([E] + stream[s:s + ctx - 1])
      labels.append(li)
  return np.array(rows, np.int32), np.array(labels, np.int32), names


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  docs = random_corpus()
  return docs, write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", docs)


def test_literal_rows_bos_eos_labels(tmp_path):
  docs = [{"text": "Hello world", "l": "x"}, {"text": "One two three four five.", "l": "y"},
          {"text": "Hi", "l": "x"}, {"text": "The cat sat on the mat.", "l": "x"}]
  src = write_jsonl(tmp_path / "d.jsonl", docs)
  cfg = make_config(src, label_field="l", ctx=4, min_chars=5, shuffle=False, num_tokens=0)
  s = build.build_store(cfg, str(tmp_path / "store"))
  # x: Hello world | EOS | The cat sat on the mat.  ("Hi" <= 5 chars dropped; last "." cut)
  # y: One two three four five.
  want = [[E, 15496, 995, E], [E, 464, 3797, 3332], [E, 319, 262, 2603],
          [E, 3198, 734, 1115], [E, 1440, 1936, 13]]
  np.testing.assert_array_equal(s.read_rows(0, 5), np.array(want, np.int32))
  np.testing.assert_array_equal(s.row_labels(0, 5), [0, 0, 0, 1, 1])
  assert s.label_names == ["x", "y"]
  assert s.manifest["counts"]["x"]["documents"] == 2
  assert s.manifest["counts"]["x"]["documents_dropped"] == 1
  assert s.manifest["mask_exclude_ids"] == [198, E]


def test_rows_equal_hand_computed_unshuffled(corpus, tmp_path):
  docs, src = corpus
  want, want_labels, names = hand_rows(docs, ctx=16)
  cfg = make_config(src, label_field="meta.set", ctx=16, shuffle=False, num_tokens=0,
                    encode_batch_docs=7, shard_rows=5)
  s = build.build_store(cfg, str(tmp_path / "s"))
  assert s.num_rows == len(want) and s.ctx == 16 and s.label_names == names == ["a", "b", "c"]
  np.testing.assert_array_equal(s.read_rows(0, s.num_rows), want)
  np.testing.assert_array_equal(s.row_labels(0, s.num_rows), want_labels)
  assert (s.read_rows(0, s.num_rows)[:, 0] == E).all()
  for name, li in zip(names, range(3)):
    assert s.manifest["counts"][name]["rows"] == int((want_labels == li).sum())


def test_shuffle_is_seeded_and_truncates(corpus, tmp_path):
  docs, src = corpus
  want, want_labels, _ = hand_rows(docs, ctx=16)
  n_keep = -(-1000 // 16)   # ceil(num_tokens / ctx)
  stores = []
  for i, seed in enumerate((3, 3, 4)):
    cfg = make_config(src, label_field="meta.set", ctx=16, seed=seed, num_tokens=1000,
                      encode_batch_docs=5 + 4 * i, shard_rows=3 + i, chunk_rows=8)
    stores.append(build.build_store(cfg, str(tmp_path / f"s{i}")))
  a, b, c = stores
  perm = np.random.default_rng(3).permutation(len(want))[:n_keep]
  assert a.num_rows == n_keep
  np.testing.assert_array_equal(a.read_rows(0, n_keep), want[perm])
  np.testing.assert_array_equal(a.row_labels(0, n_keep), want_labels[perm])
  # same seed, different batching/sharding: identical store and fingerprint
  np.testing.assert_array_equal(a.read_rows(0, n_keep), b.read_rows(0, n_keep))
  assert a.store_id == b.store_id
  # another seed: another order
  assert c.store_id != a.store_id
  assert not np.array_equal(a.read_rows(0, n_keep), c.read_rows(0, n_keep))


class _Killed(BaseException):
  pass


EVENTS = ("shard_written", "progress_committed", "block_written", "block_committed",
          "before_manifest", "manifest_written")
# The resumed builds' config (many shards, chunks and blocks: a kill lands mid-stage).
RESUME_KW = dict(label_field="meta.set", ctx=16, seed=1, num_tokens=2000, encode_batch_docs=4,
                 shard_rows=4, chunk_rows=4, write_block_rows=8)


@pytest.fixture(scope="module")
def resume_ref(corpus, tmp_path_factory):
  """The uninterrupted build of RESUME_KW, which every killed-and-resumed build must equal."""
  _, src = corpus
  return build.build_store(make_config(src, **RESUME_KW), str(tmp_path_factory.mktemp("ref")))


@pytest.mark.parametrize("event", EVENTS)
def test_resume_after_kill_is_identical(corpus, resume_ref, tmp_path, event):
  _, src = corpus
  kw, ref = RESUME_KW, resume_ref
  seen = {"n": 0}

  def kill_at_second(e, **info):
    if e == event:
      seen["n"] += 1
      if seen["n"] == (1 if event in ("before_manifest", "manifest_written") else 2):
        raise _Killed(e)

  wd = str(tmp_path / "run")
  with pytest.raises(_Killed):
    build.build_store(make_config(src, **kw), wd, _hook=kill_at_second)
  if event != "manifest_written":
    with pytest.raises(UserError, match="incomplete"):
      open_store(wd)
  got = build.build_store(make_config(src, **kw), wd)
  assert got.store_id == ref.store_id
  assert got.manifest == ref.manifest
  np.testing.assert_array_equal(got.read_rows(0, got.num_rows), ref.read_rows(0, ref.num_rows))
  np.testing.assert_array_equal(got.row_labels(0, got.num_rows),
                                ref.row_labels(0, ref.num_rows))
  assert not os.path.exists(os.path.join(wd, build.BUILD_DIR))


def test_sigkill_then_rerun_same_command(corpus, resume_ref, tmp_path):
  """A real SIGKILL (no cleanup code runs) in the middle of stage A, then the same command."""
  _, src = corpus
  kw = RESUME_KW
  wd = str(tmp_path / "run")
  script = f"""
import os, signal, sys
sys.path.insert(0, {REPO!r})
from tests.test_data_store import make_config
from ucore.data import build
n = [0]
def hook(e, **info):
  if e == "shard_written":
    n[0] += 1
    if n[0] == 3:
      os.kill(os.getpid(), signal.SIGKILL)
build.build_store(make_config({src!r}, **{kw!r}), {wd!r}, _hook=hook)
"""
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                     timeout=120, env=dict(os.environ, HF_DATASETS_OFFLINE="1"))
  assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
  progress = json.load(open(os.path.join(wd, build.BUILD_DIR, build.PROGRESS)))
  assert progress["num_shards"] == 2 and not progress["done"]
  got = build.build_store(make_config(src, **kw), wd)
  ref = resume_ref
  assert got.store_id == ref.store_id
  np.testing.assert_array_equal(got.read_rows(0, got.num_rows), ref.read_rows(0, ref.num_rows))


def test_changed_config_is_refused_and_complete_store_is_reused(corpus, tmp_path):
  _, src = corpus
  kw = dict(label_field="meta.set", ctx=16, num_tokens=500, shard_rows=4, encode_batch_docs=4)
  wd = str(tmp_path / "w")
  with pytest.raises(_Killed):
    build.build_store(make_config(src, **kw), wd, _hook=_raise_on("progress_committed"))
  with pytest.raises(UserError, match="unfinished token job with a different config.*seed"):
    build.build_store(make_config(src, seed=9, **kw), wd)
  s1 = build.build_store(make_config(src, **kw), wd)
  s2 = build.build_store(make_config(src, **kw), wd)   # complete: opened, not rebuilt
  assert s1.store_id == s2.store_id
  with pytest.raises(UserError, match="finished token store built from a different config"):
    build.build_store(make_config(src, **dict(kw, ctx=32)), wd)


def _raise_on(event):
  def hook(e, **info):
    if e == event:
      raise _Killed(e)
  return hook


def test_changed_source_file_is_refused(tmp_path):
  docs = random_corpus(20)
  src = write_jsonl(tmp_path / "d.jsonl", docs)
  kw = dict(label_field="meta.set", ctx=8, shard_rows=2, encode_batch_docs=2)
  wd = str(tmp_path / "w")
  with pytest.raises(_Killed):
    build.build_store(make_config(src, **kw), wd, _hook=_raise_on("progress_committed"))
  write_jsonl(tmp_path / "d.jsonl", docs[:-1])
  with pytest.raises(UserError, match="different config or source"):
    build.build_store(make_config(src, **kw), wd)


# ------------------------------------------------------------------------------- readers
@pytest.fixture(scope="module")
def small_store(corpus, tmp_path_factory):
  _, src = corpus
  cfg = make_config(src, label_field="meta.set", ctx=16, num_tokens=0, chunk_rows=4)
  return build.build_store(cfg, str(tmp_path_factory.mktemp("st") / "s"))


def test_iter_batches_processes_partition_rows(small_store):
  s = small_store
  all_rows = s.read_rows(0, s.num_rows)
  n, P, B = s.num_rows, 3, 12
  assert n % B != 0   # the final batch is short
  seen = []
  for p in range(P):
    batches = list(s.iter_batches(B, process_index=p, process_count=P))
    assert len(batches) == -(-n // B)    # every process runs the same number of steps
    for g, rows in batches:
      a = min(g + p * (B // P), n)
      b = min(a + B // P, n)
      np.testing.assert_array_equal(rows, all_rows[a:b])
      seen.extend(range(a, b))
  assert sorted(seen) == list(range(n))   # nothing dropped, nothing twice
  # padded: constant shapes, pad rows at the end of short slices
  for g, rows in s.iter_batches(B, process_index=P - 1, process_count=P, pad_id=-7):
    assert rows.shape == (B // P, 16)
  g, rows = list(s.iter_batches(B, start_row=2, stop_row=9, pad_id=-7))[-1]
  assert g == 2
  np.testing.assert_array_equal(rows[:7], all_rows[2:9])
  assert (rows[7:] == -7).all()
  with pytest.raises(UserError, match="divisible"):
    next(s.iter_batches(10, process_count=3))


def test_process_reads_only_its_rows(small_store, monkeypatch):
  calls = []
  real = storemod.TokenStore.read_rows
  monkeypatch.setattr(storemod.TokenStore, "read_rows",
                      lambda self, a, b: calls.append((a, b)) or real(self, a, b))
  list(small_store.iter_batches(8, process_index=1, process_count=2))
  assert calls and all((a - 4) % 8 == 0 and b - a <= 4 for a, b in calls)


# ----------------------------------------------------------------------------- bad input
def test_empty_dataset(tmp_path):
  src = tmp_path / "empty.jsonl"
  src.write_text("")
  wd = tmp_path / "w"
  with pytest.raises(UserError):
    build.build_store(make_config(str(src), label_field=""), str(wd))
  assert not wd.exists() or os.listdir(wd) == []   # nothing left that could look like a store


def test_missing_text_field(tmp_path):
  src = write_jsonl(tmp_path / "d.jsonl", [{"body": "x" * 100}])
  with pytest.raises(UserError, match="no text field 'text'.*body"):
    build.build_store(make_config(src, label_field=""), str(tmp_path / "w"))
  with pytest.raises(UserError, match="no label field 'meta.set'"):
    build.build_store(make_config(src, text_field="body", label_field="meta.set"),
                      str(tmp_path / "w2"))


def test_every_document_too_short(tmp_path):
  src = write_jsonl(tmp_path / "d.jsonl", [{"text": "y" * 50}] * 5)
  wd = tmp_path / "w"
  with pytest.raises(UserError, match="all 5 documents .* <= 50 characters"):
    build.build_store(make_config(src, label_field=""), str(wd))
  assert not wd.exists() or os.listdir(wd) == []   # a refused first run leaves nothing
  # the user fixes the config and reruns in the same workdir
  s = build.build_store(make_config(src, label_field="", min_chars=10, ctx=4), str(wd))
  assert s.num_rows > 0 and s.label_names == ["all"]


def test_tokenizer_not_matching_model_vocab(corpus, tmp_path):
  _, src = corpus
  with pytest.raises(UserError, match="50257 ids but the model's vocabulary"):
    build.build_store(make_config(src, model_vocab_size=1000), str(tmp_path / "w"))


def test_store_checks_tokenizer(small_store):
  small_store.check_tokenizer(tokmod.gpt2_files_offline().sha256())
  small_store.check_vocab_size(50257)
  with pytest.raises(UserError, match="tokenizer"):
    small_store.check_tokenizer("0" * 64)
  with pytest.raises(UserError, match="vocabulary"):
    small_store.check_vocab_size(50000)


def test_open_store_refuses_missing_foreign_corrupt(corpus, tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    open_store(str(tmp_path / "nope"))
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "manifest.json").write_text('{"format": "something else"}')
  with pytest.raises(UserError, match="not a token store"):
    open_store(str(tmp_path / "foreign"))
  _, src = corpus
  wd = str(tmp_path / "s")
  build.build_store(make_config(src, label_field="", ctx=16, num_tokens=300), wd)
  m = json.load(open(os.path.join(wd, "manifest.json")))
  m["num_rows"] += 1       # edited: no longer matches its store_id
  json.dump(m, open(os.path.join(wd, "manifest.json"), "w"))
  with pytest.raises(UserError, match="corrupt"):
    open_store(wd)
  wd2 = str(tmp_path / "s2")
  build.build_store(make_config(src, label_field="", ctx=16, num_tokens=300), wd2)
  os.remove(os.path.join(wd2, "tokens", "zarr.json"))
  with pytest.raises(UserError, match="corrupt"):
    open_store(wd2)
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "x").write_text("x")
  with pytest.raises(UserError, match="not empty and holds no token job"):
    build.build_store(make_config(src), str(tmp_path / "junk"))


def test_cli_bad_input_one_line_exit_2(tmp_path):
  src = write_jsonl(tmp_path / "d.jsonl", [{"body": "x" * 100}])
  r = subprocess.run(
      [sys.executable, "main.py", "tokenize", "--config=configs/tokenize_default.py",
       f"--config.source={src}", f"--workdir={tmp_path / 'w'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, HF_DATASETS_OFFLINE="1"))
  assert r.returncode == 2
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "no text field 'text'" in errors[0]
  assert "Traceback" not in r.stderr


def test_cli_builds_embedded_corpus_then_reports_complete(tmp_path):
  wd = tmp_path / "tok"
  cmd = [sys.executable, "main.py", "tokenize", "--config=configs/tokenize_default.py:tiny",
         "--config.max_documents=100", "--config.num_tokens=20000", f"--workdir={wd}"]
  env = dict(os.environ, HF_DATASETS_OFFLINE="1")
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
  assert r.returncode == 0, r.stderr[-2000:]
  s = open_store(str(wd))
  assert (s.num_rows, s.ctx) == (-(-20000 // 128), 128)
  assert s.manifest["totals"]["documents_read"] == 100
  assert s.manifest["source"]["files"][0]["sha256"] == tokmod_sha(
      os.path.join(REPO, "data", "corpus", "corpus.jsonl.zst"))
  assert (s.read_rows(0, s.num_rows)[:, 0] == E).all()
  r2 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
  assert r2.returncode == 0 and "already complete" in r2.stderr
  assert open_store(str(wd)).store_id == s.store_id


def tokmod_sha(path):
  from ucore.jobs.atomic import sha256_file
  return sha256_file(path)
