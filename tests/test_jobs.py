"""ucore.jobs.identity: one normalisation, diff and claim for every resumable stage."""
import numpy as np
import pytest

from ucore.jobs import atomic, identity
from ucore.jobs.errors import UserError


def test_normalize_is_what_json_reads_back(tmp_path):
  job = {"a": (1, 2), 3: np.int64(4), "f": np.float32(0.5), "nested": {"t": [np.int32(7)]}}
  atomic.write_json(str(tmp_path / "j.json"), identity.normalize(job))
  assert atomic.read_json(str(tmp_path / "j.json")) == identity.normalize(job) == {
      "a": [1, 2], "3": 4, "f": 0.5, "nested": {"t": [7]}}


def test_diff_names_nested_keys():
  assert identity.diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": "x"}) == [
      "a.c: 2 -> 3", 'd: null -> "x"']
  with pytest.raises(UserError, match=r"^changed \(a\.c: 2 -> 3\); hint$"):
    identity.check_same({"a": {"c": 2}}, {"a": {"c": 3}}, "changed", "; hint")


def test_claim_starts_resumes_and_refuses(tmp_path):
  path = str(tmp_path / "job.json")
  assert identity.claim(path, {"x": 1}, "other job") is False
  assert identity.claim(path, {"x": 1}, "other job") is True
  with pytest.raises(UserError, match=r"other job \(x: 1 -> 2\)"):
    identity.claim(path, {"x": 2}, "other job")
  open(path, "w").write("{")
  with pytest.raises(UserError, match="unreadable"):
    identity.claim(path, {"x": 1}, "other job")
