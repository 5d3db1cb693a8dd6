"""Numbers are validated before anything is written (issue 10 item 5, correlate part)."""
import os

import pytest

from ucore import config_files
from ucore.corr import driver
from ucore.errors import UserError


@pytest.mark.parametrize("key,value", [("batch_rows", -8), ("batch_rows", 0), ("top_k", 0),
                                       ("start_row", -1), ("baseline.draws", 0)])
def test_bad_number_refused_before_writing(tmp_path, key, value):
  c = config_files.load("correlate_tiny")
  node, _, leaf = key.rpartition(".")
  setattr(c[node] if node else c, leaf, value)
  wd = tmp_path / "run"
  with pytest.raises(UserError, match=f"config.{key}={value} must be >="):
    driver.run(c, str(wd))
  assert not wd.exists() or os.listdir(wd) == []
