"""A token store is complete or refused (issue 10 item 2): a deleted chunk file is refused
when the store is opened, a chunk deleted under an open store is never read as tokens (the
fill value -1), and a truncated chunk gives a one-line UserError. Its contents are verified
(issue 21 item 2): a chunk replaced by a valid copy of another, or edited, is refused when
read, by correlate and analyze too (one line, exit 2); a store from before the checksums is
still read."""
import glob
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from benchmarks.config_sweep import run_argv
from tests import planted
from tests.test_analyses_cli import _store
from ucore.data import store as storemod
from ucore.data.store import open_store
from ucore.jobs.errors import UserError
from ucore.models import tokenizer as tokmod
from ucore.models.hooked import save_model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return _store(tmp_path_factory.mktemp("st")).path


@pytest.fixture
def store_dir(built, tmp_path):
  d = str(tmp_path / "copy")
  shutil.copytree(built, d)
  return d


def _chunks(d):
  return sorted(glob.glob(os.path.join(d, "tokens", "c", "**", "*"), recursive=True))


def test_missing_chunk_is_refused_on_open(store_dir):
  files = [f for f in _chunks(store_dir) if os.path.isfile(f)]
  assert files
  os.unlink(files[-1])
  with pytest.raises(UserError, match="incomplete: 1 chunk file"):
    open_store(store_dir)


def test_fill_value_is_never_a_token(store_dir):
  store = open_store(store_dir)
  for f in _chunks(store_dir):
    if os.path.isfile(f):
      os.unlink(f)
  with pytest.raises(UserError, match="holds the fill value -1"):
    store.read_rows(0, store.num_rows)


def test_truncated_chunk_is_one_line(store_dir):
  store = open_store(store_dir)
  f = [f for f in _chunks(store_dir) if os.path.isfile(f)][0]
  with open(f, "r+b") as fh:
    fh.truncate(max(os.path.getsize(f) // 2, 1))
  with pytest.raises(UserError, match="is corrupt: rows") as e:
    store.read_rows(0, store.num_rows)
  assert "\n" not in str(e.value)


def _swap_first_chunks(d):
  """Chunk 1 of the tokens replaced by a byte copy of chunk 0: both valid zarr chunks."""
  c0, c1 = (os.path.join(d, "tokens", "c", str(i), "0") for i in (0, 1))
  assert os.path.isfile(c1), "the test store needs at least two chunks"
  shutil.copyfile(c0, c1)


def test_checksums_are_sha256_of_each_chunks_rows(built):
  """The manifest's checksums, recomputed here from the arrays read with tensorstore alone."""
  manifest = json.load(open(os.path.join(built, "manifest.json")))
  for name in ("tokens", "labels"):
    spec = manifest["arrays"][name]
    rows = np.asarray(storemod.open_array(os.path.join(built, name)).read().result())
    n = spec["chunk_rows"]
    want = [hashlib.sha256(rows[i:i + n].astype("<i4").tobytes()).hexdigest()
            for i in range(0, rows.shape[0], n)]
    assert spec["chunk_sha256"] == want and len(want) == -(-rows.shape[0] // n)
  assert len(manifest["arrays"]["tokens"]["chunk_sha256"]) >= 2


def test_swapped_chunk_is_refused_when_read(store_dir):
  rows = open_store(store_dir).read_rows(0, 64)
  _swap_first_chunks(store_dir)
  store = open_store(store_dir)   # every chunk file is there and decodes
  np.testing.assert_array_equal(store.read_rows(0, 64), rows)   # chunk 0 is intact
  with pytest.raises(UserError, match="chunk 1 of tokens .* does not match its recorded "
                     "checksum") as e:
    store.read_rows(60, 70)
  assert "\n" not in str(e.value)
  with pytest.raises(UserError, match="does not match"):
    list(store.iter_batches(8))


def test_edited_chunk_is_refused_when_read(store_dir):
  arr = storemod.open_array(os.path.join(store_dir, "tokens"), write=True)
  row = np.asarray(arr[5].read().result())
  arr[5].write(row[::-1].copy()).result()   # a valid chunk with other tokens
  with pytest.raises(UserError, match="chunk 0 of tokens"):
    open_store(store_dir).read_rows(5, 6)


def test_swapped_labels_are_refused(store_dir):
  arr = storemod.open_array(os.path.join(store_dir, "labels"), write=True)
  labels = np.asarray(arr.read().result())
  arr.write(labels[::-1].copy()).result()
  assert (labels != labels[::-1]).any()
  with pytest.raises(UserError, match="chunk 0 of labels"):
    open_store(store_dir).row_labels(0, 1)


def test_store_without_checksums_is_still_read(store_dir):
  """Stores written before the checksums: read as before (missing chunks and the fill
  value still refused), with a warning that their contents are not verified."""
  want = open_store(store_dir).read_rows(0, 100)
  path = os.path.join(store_dir, "manifest.json")
  manifest = json.load(open(path))
  for spec in manifest["arrays"].values():
    spec.pop("chunk_sha256")
  json.dump(manifest, open(path, "w"))
  store = open_store(store_dir)   # store_id does not cover the checksums: still the same store
  assert not store.verified
  np.testing.assert_array_equal(store.read_rows(0, 100), want)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """The planted model (GPT-2 tokenizer, like the store) saved as a checkpoint."""
  m = planted.planted_model()
  files = tokmod.gpt2_files_offline()
  d = str(tmp_path_factory.mktemp("m") / "model")
  save_model(d, m.config, m.params, tokenizer_files=files,
             manifest={"processing": "none", "tokenizer_sha256": files.sha256()})
  return d


@pytest.mark.parametrize("command", ["correlate", "analyze"])
def test_correlate_and_analyze_refuse_a_swapped_chunk(store_dir, model_dir, tmp_path, command):
  _swap_first_chunks(store_dir)
  if command == "correlate":
    args = ["correlate", "--config=configs/correlate_default.py",
            f"--config.models={model_dir},{model_dir}", "--config.model_names=a,b",
            f"--config.token_store={store_dir}", "--config.batch_rows=8",
            "--config.selfcheck.sample=0"]
  else:
    args = ["analyze", "--config=configs/analyze_default.py:quick",
            f"--config.model_dir={model_dir}", f"--config.token_store={store_dir}",
            "--analysis=stats"]
  status, stderr, exc = run_argv(args + [f"--workdir={tmp_path / 'out'}"])
  assert exc is None and status == 2, stderr[-2000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: token store") and "does not match its recorded checksum" in last
