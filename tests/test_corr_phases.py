"""The correlate driver's phases one at a time (ucore.corr.driver: prepare -> finished_tables ->
place_models -> plan_passes -> resume_or_start -> accumulate -> commit -> finalize), each held
to its own contract, and the phases called by hand giving the tables `driver.run` gives."""
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from ucore.corr import driver, passes as PS, state as ST, tables as TB
from ucore.jobs import config_files
from ucore.jobs.errors import UserError


def _config():
  c = config_files.load("correlate_tiny")   # planted synthetic family, 64 rows × 16 tokens
  c.checkpoint.every_steps = 1000           # commits only where a test calls commit()
  c.checkpoint.every_minutes = 1000.0
  c.selfcheck.sample = 16
  return c


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, n), root)
                for d, _, names in os.walk(root) for n in names)


def _tables(tables_dir):
  return {n: pd.read_parquet(os.path.join(tables_dir, n)) for n in _files(tables_dir)
          if n.endswith(".parquet")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The tables of one uninterrupted `driver.run` of the same config."""
  return driver.run(_config(), str(tmp_path_factory.mktemp("run")))


def test_prepare_resolves_the_job_and_writes_nothing(tmp_path):
  job = driver.prepare(_config(), str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()
  assert job.stop_row == 64 and job.spec.n_models == 3
  assert job.state_dir == str(tmp_path / "wd" / "state")
  assert job.identity == driver.prepare(_config(), str(tmp_path / "wd")).identity
  c = _config()
  c.start_row = 64   # past the store's last row
  with pytest.raises(UserError, match="no rows to read"):
    driver.prepare(c, str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()


def test_phases_by_hand_give_the_run_s_tables(reference, tmp_path):
  wd = str(tmp_path / "wd")
  job = driver.prepare(_config(), wd)
  assert driver.finished_tables(job) is None            # nothing finalized yet
  driver.place_models(job)                               # synthetic sources: nothing to place
  units = driver.plan_passes(job)
  assert [(u.index, u.count, u.state_dir, u.label) for u in units] == [
      (0, 1, job.state_dir, "")]
  unit = units[0]
  prog = driver.resume_or_start(job, unit)
  assert (prog.cursor, prog.step, prog.saved_step) == (0, 0, -1)
  driver.accumulate(job, unit, prog, overlap=False)
  assert prog.cursor == job.stop_row and prog.step == 64 // job.config.batch_rows
  assert ST.latest(job.state_dir)[0] is None             # accumulate alone committed nothing
  driver.commit(job, unit, prog)
  manifest, path = ST.latest(job.state_dir)
  assert manifest["cursor"]["row"] == job.stop_row and prog.saved_step == prog.step
  driver.commit(job, unit, prog)                         # the same step is never rewritten
  assert ST.latest(job.state_dir)[1] == path
  assert driver.pass_complete(job, unit)

  resumed = driver.resume_or_start(job, unit)            # what a rerun would pick up
  assert (resumed.cursor, resumed.step, resumed.saved_step) == (prog.cursor, prog.step,
                                                                prog.step)
  for key in prog.acc.state:
    np.testing.assert_array_equal(np.asarray(resumed.acc.state[key]),
                                  np.asarray(prog.acc.state[key]), err_msg=key)
  if resumed.worker is not None:
    resumed.worker.close()

  tables = driver.finalize(job, units, {unit.index: prog})
  assert tables == job.tables_dir
  want, got = _tables(reference), _tables(tables)
  assert sorted(got) == sorted(want) and len(got) >= 4
  for name in want:
    pd.testing.assert_frame_equal(got[name], want[name], check_exact=True, obj=name)
  # finished: the next call's finished_tables says so and touches nothing
  before = {n: os.stat(os.path.join(tables, n)).st_mtime_ns for n in _files(tables)}
  again = driver.prepare(_config(), wd)
  assert driver.finished_tables(again) == tables
  assert {n: os.stat(os.path.join(tables, n)).st_mtime_ns for n in _files(tables)} == before


def test_finished_tables_refinalizes_only_finalize_fields(reference, tmp_path):
  c = _config()
  c.threshold = 0.05                                     # a finalize-only field
  wd = os.path.dirname(reference)
  copy = str(tmp_path / "copy")
  shutil.copytree(wd, copy)
  job = driver.prepare(c, copy)
  tables = driver.finished_tables(job)                  # re-finalized from state/, no pass
  assert tables == job.tables_dir
  assert TB.read_summary(tables)["threshold"] == 0.05
  c = _config()
  c.synthetic.seed = 1                                   # the data changed: not finalize-only
  with pytest.raises(UserError):
    driver.finished_tables(driver.prepare(c, copy))


def test_plan_passes_records_tiles_and_a_started_run_keeps_them(tmp_path):
  c = _config()
  wd = str(tmp_path / "wd")
  job = driver.prepare(c, wd)
  from ucore.corr import memory as MEM
  need = MEM.step_need(job.spec, job.mesh, driver._tokens_per_step(job))
  c.memory.device_gib = 0.5 * need / MEM.GIB             # half of one step's need
  job = driver.prepare(c, wd)
  units = driver.plan_passes(job)
  assert len(units) >= 2 and all(u.count == len(units) for u in units)
  assert [u.state_dir for u in units] == [PS.pass_dir(job.state_dir, k, len(units))
                                          for k in range(len(units))]
  assert os.path.isfile(os.path.join(job.state_dir, PS.RECORD))
  c.memory.device_gib = 0.0                              # more memory later: the record holds
  again = driver.plan_passes(driver.prepare(c, wd))
  assert [u.spec.to_json() for u in again] == [u.spec.to_json() for u in units]
