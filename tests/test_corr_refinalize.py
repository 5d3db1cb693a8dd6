"""Finished tables never go stale (issue 10 item 3): a finalize-only field (threshold,
top_k, baseline.*, dead_rel_std, fill_dead) changed after a finished run re-finalizes the
tables from the committed moments; without them it is refused, never 'nothing to do'."""
import shutil

import pandas as pd
import pytest

from ucore.jobs import atomic, config_files
from ucore.corr import driver
from ucore.jobs.errors import UserError


def test_changed_threshold_refinalizes(tmp_path):
  c = config_files.load("correlate_tiny")
  wd = tmp_path / "run"
  driver.run(c, str(wd))
  names = sorted(atomic.read_json(str(wd / "tables" / "summary.json"))["universal"])
  c.threshold = -1.0   # every neuron with a finite excess is universal now
  driver.run(c, str(wd))
  s = atomic.read_json(str(wd / "tables" / "summary.json"))
  assert s["threshold"] == -1.0 and s["finalize"]["threshold"] == -1.0
  df = pd.read_parquet(wd / "tables" / f"neurons_{names[0]}.parquet")
  assert int(df["universal"].sum()) == int(df["excess_corr"].notna().sum())
  assert not [p for p in wd.iterdir() if ".partial-" in p.name]
  shutil.rmtree(wd / "state")
  c.top_k = 2
  with pytest.raises(UserError, match="finalized with other settings"):
    driver.run(c, str(wd))
