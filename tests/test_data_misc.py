"""Token mask, embedded corpus, local file sources, trained byte-level BPE, config files."""
import hashlib
import importlib.util
import json
import os
import re

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest

from tests.test_data_store import REPO, default_config, make_config, random_corpus, write_jsonl
from ucore.models import tokenizer as tokmod
from ucore.data import build, sources
from ucore.data.mask import DEFAULT_EXCLUDE_IDS, exclude_ids_for, token_mask
from ucore.jobs.errors import UserError

CORPUS = os.path.join(REPO, "data", "corpus", "corpus.jsonl.zst")


# ---------------------------------------------------------------------------------- mask
def test_mask_drops_exactly_configured_ids_numpy_and_jax():
  import jax
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 300, (4, 33)).astype(np.int32)
  tokens[0, :5] = [50256, 198, 50256, 7, 198]
  tokens[1, 3] = 50256
  want = np.array([[t not in (50256, 198) for t in row] for row in tokens.tolist()])
  assert DEFAULT_EXCLUDE_IDS == (50256, 198)
  got = token_mask(tokens)
  assert isinstance(got, np.ndarray) and got.dtype == bool
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.asarray(token_mask(jnp.asarray(tokens))), want)
  jitted = jax.jit(lambda t: token_mask(t, exclude_ids=(7, 11), pad_id=-1))
  tokens2 = tokens.copy()
  tokens2[2, -4:] = -1
  want2 = np.array([[t not in (7, 11, -1) for t in row] for row in tokens2.tolist()])
  np.testing.assert_array_equal(np.asarray(jitted(jnp.asarray(tokens2))), want2)
  # configured ids only: 50256 and 198 are counted when not configured
  assert token_mask(np.array([50256, 198, 5]), exclude_ids=(5,)).tolist() == [True, True, False]
  assert token_mask(np.array([1, 2]), exclude_ids=()).all()
  assert exclude_ids_for({"mask_exclude_ids": [198, 50256]}) == (198, 50256)


# ------------------------------------------------------------------------ embedded corpus
def test_embedded_corpus_loads_offline_with_provenance():
  assert os.path.getsize(CORPUS) <= 5 * 1024 * 1024
  src = sources.resolve(make_config(CORPUS))
  counts, chars = {}, 0
  for text, label in sources.iter_documents(src):
    counts[label] = counts.get(label, 0) + 1
    chars += len(text)
  assert set(counts) == {"fiction", "technical", "glossary"}
  assert min(counts.values()) > 200 and chars > 10_000_000
  source_md = open(os.path.join(REPO, "data", "corpus", "SOURCE.md")).read()
  license_md = open(os.path.join(REPO, "data", "corpus", "LICENSE.md")).read()
  sha = hashlib.sha256(open(CORPUS, "rb").read()).hexdigest()
  assert sha in source_md                      # the notes describe this exact file
  for word in ("janeaustenr", "python3.11-doc", "jargon-text"):
    assert word in source_md and word in license_md
  assert "PSF LICENSE AGREEMENT" in license_md and "public domain" in license_md


def test_embedded_corpus_real_english():
  src = sources.resolve(make_config(CORPUS))
  docs = {}
  for text, label in sources.iter_documents(src):
    docs.setdefault(label, text) if len(text) > 2000 else None
  assert "Emma" in docs["fiction"] or "Mr." in docs["fiction"]
  words = re.findall(r"[a-z]+", docs["fiction"].lower())
  assert words.count("the") > 10 and words.count("and") > 5


# -------------------------------------------------------------------------- file sources
def test_txt_parquet_glob_sources(tmp_path):
  import pandas as pd
  (tmp_path / "t").mkdir()
  (tmp_path / "t" / "a.txt").write_text("first paragraph\n\nsecond paragraph\n")
  (tmp_path / "t" / "b.txt").write_text("another file\n")
  docs = lambda cfg: list(sources.iter_documents(sources.resolve(cfg)))
  got = docs(make_config(str(tmp_path / "t" / "*.txt"), label_field=""))
  assert [t.strip() for t, _ in got] == ["first paragraph\n\nsecond paragraph", "another file"]
  got = docs(make_config(str(tmp_path / "t" / "a.txt"), label_field="",
                         txt_sample_by="paragraph"))
  assert [t.strip() for t, _ in got] == ["first paragraph", "second paragraph"]
  pd.DataFrame({"body": ["p1", "p2"], "cat": ["u", "v"]}).to_parquet(tmp_path / "x.parquet")
  got = docs(make_config(str(tmp_path / "x.parquet"), text_field="body", label_field="cat"))
  assert got == [("p1", "u"), ("p2", "v")]
  import zstandard
  raw = "".join(json.dumps({"text": f"doc {i}", "label": "z"}) + "\n" for i in range(3))
  (tmp_path / "y.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw.encode()))
  got = docs(make_config(str(tmp_path / "y.jsonl.zst")))
  assert got == [("doc 0", "z"), ("doc 1", "z"), ("doc 2", "z")]
  with pytest.raises(UserError, match="matches no files"):
    sources.resolve(make_config(str(tmp_path / "none*.jsonl")))
  (tmp_path / "w.csv").write_text("a,b\n")
  with pytest.raises(UserError, match="unsupported file type"):
    sources.resolve(make_config(str(tmp_path / "w.csv")))


# ------------------------------------------------------------------------- trained BPE
def test_byte_level_bpe_trains_and_round_trips(tmp_path):
  texts = [d["text"] for d in random_corpus(80, seed=1)]
  files = tokmod.train_byte_level_bpe(texts, 300, str(tmp_path / "bpe"))
  tok = tokmod.load(files)
  assert tokmod.special_id(files) == 0 and tokmod.vocab_size(files) <= 300
  s = "the quick brown fox — naïve 数据\n"
  ids = tok.encode(s).ids
  assert tok.decode(ids) == s and max(ids) < 300
  assert len(tok.encode("river mountain").ids) < len("river mountain")   # merges learned
  again = tokmod.train_byte_level_bpe(texts, 300, str(tmp_path / "bpe2"))
  assert again.sha256() == files.sha256()                                 # deterministic
  with pytest.raises(UserError, match="too small"):
    tokmod.train_byte_level_bpe(texts, 100, str(tmp_path / "bpe3"))


def test_store_with_trained_bpe_resumes_identically(tmp_path):
  src = write_jsonl(tmp_path / "d.jsonl", random_corpus(60, seed=2))
  kw = dict(label_field="meta.set", tokenizer="bpe", bpe_vocab_size=400, ctx=12,
            num_tokens=0, shard_rows=4, encode_batch_docs=4)
  ref = build.build_store(make_config(src, **kw), str(tmp_path / "ref"))
  assert ref.manifest["tokenizer"]["kind"] == "bpe"
  rows = ref.read_rows(0, ref.num_rows)
  assert rows.max() < ref.manifest["tokenizer"]["vocab_size"] <= 400
  assert (rows[:, 0] == 0).all() and ref.bos_id == ref.eos_id == 0
  newline = ref.manifest["tokenizer"]["newline_id"]
  assert ref.mask_exclude_ids == tuple(sorted({0, newline}))
  tok = tokmod.load(tokmod.files_in_dir(ref.tokenizer_dir))
  assert tok.encode("\n").ids == [newline]
  ref.check_tokenizer(tokmod.files_in_dir(ref.tokenizer_dir).sha256())

  class Killed(BaseException):
    pass

  def hook(e, **info):
    if e == "progress_committed":
      raise Killed()
  wd = str(tmp_path / "run")
  with pytest.raises(Killed):
    build.build_store(make_config(src, **kw), wd, _hook=hook)
  got = build.build_store(make_config(src, **kw), wd)
  assert got.store_id == ref.store_id
  np.testing.assert_array_equal(got.read_rows(0, got.num_rows), rows)


# ---------------------------------------------------------------------------- configs
def test_every_tokenize_config_loads():
  for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
    if not (name.startswith("tokenize_") and name.endswith(".py")):
      continue
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO, "configs", name))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    c = m.get_config()
    assert set(default_config().keys()) <= set(c.keys())
    assert "python main.py tokenize --config=configs/" + name in m.__doc__
  pile = importlib.util.spec_from_file_location("p", os.path.join(REPO, "configs",
                                                                   "tokenize_pile.py"))
  m = importlib.util.module_from_spec(pile)
  pile.loader.exec_module(m)
  c = m.get_config()
  assert (c.source, c.split, c.label_field, c.num_tokens, c.ctx, c.min_chars) == (
      "monology/pile-uncopyrighted", "test", "meta.pile_set_name", 100_000_000, 512, 50)
  assert sources.resolve(c).kind == "hub"
  assert sources.resolve(default_config()).kind == "files"
  assert default_config("tiny").ctx == 128


def test_corrupt_source_file_is_a_user_error(tmp_path):
  good = json.dumps({"text": "a" * 80, "label": "q"})
  (tmp_path / "bad.jsonl").write_text(good + "\n{not json at all\n")
  wd = tmp_path / "w"
  with pytest.raises(UserError, match="cannot read document"):
    build.build_store(make_config(str(tmp_path / "bad.jsonl"), ctx=4), str(wd))
  assert not wd.exists()    # a refused first run leaves no workdir behind
  (tmp_path / "bad.jsonl.zst").write_bytes(b"this is not zstd data")
  with pytest.raises(UserError):
    build.build_store(make_config(str(tmp_path / "bad.jsonl.zst"), ctx=4), str(tmp_path / "w2"))
