"""A kill during the final table write leaves `tables.partial-<pid>`; the next run removes
it (issue 10 item 7), whether it recomputes the tables or finds them finished."""
import os

from ucore.jobs import config_files
from ucore.corr import driver


def _partial(wd):
  p = wd / "tables.partial-99999"
  p.mkdir(parents=True)
  (p / "neurons_a.parquet").write_bytes(b"half")
  return p


def test_stale_table_partials_are_removed(tmp_path):
  c = config_files.load("correlate_tiny")
  wd = tmp_path / "run"
  p = _partial(wd)
  driver.run(c, str(wd))
  assert not p.exists() and os.path.exists(wd / "tables" / "summary.json")
  p = _partial(wd)
  driver.run(c, str(wd))   # finished: nothing to do, but the partial goes
  assert not p.exists()
  assert not [n for n in os.listdir(wd) if ".partial-" in n]
