"""A token store is complete or refused (issue 10 item 2): a deleted chunk file is refused
when the store is opened, a chunk deleted under an open store is never read as tokens (the
fill value -1), and a truncated chunk gives a one-line UserError."""
import glob
import os
import shutil

import pytest

from tests.test_analyses_cli import _store
from ucore.data.store import open_store
from ucore.jobs.errors import UserError


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
