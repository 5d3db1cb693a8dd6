"""Issue 13 items 1-2 on CPU: precision modes, the float64 self-check, the overlapped loop.

The self-check's reference is itself checked against numpy's float64 corrcoef on the same
sampled activations, and it must catch a corrupted accumulator."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from ucore.jobs import atomic, config_files
from ucore.corr import driver, finalize as F, moments as M, selfcheck as SC
from ucore.corr import precision
from ucore.jobs.errors import UserError


def _tables(wd):
  t = os.path.join(wd, "tables")
  return {os.path.relpath(os.path.join(d, n), t): pd.read_parquet(os.path.join(d, n))
          for d, _, names in os.walk(t) for n in names if n.endswith(".parquet")}


def _family(seed, n_models=3, L=2, d=48, T=600, offset=50.0):
  """Correlated activations with an offset (float32), [T, L*d] per model."""
  rng = np.random.default_rng(seed)
  base = rng.standard_normal((T, L * d))
  return [(offset + 0.7 * base + 0.5 * rng.standard_normal((T, L * d))).astype(np.float32)
          for _ in range(n_models)]


def _run_engine(acts, mask, sample, batches=3, corrupt=None):
  mesh = M.make_mesh(1, -1)
  n_models, L, d = len(acts), 2, acts[0].shape[1] // 2
  spec = M.make_spec([f"m{i}" for i in range(n_models)], [range(L)] * n_models, d, mesh)
  acc = M.Accumulator(spec, mesh)
  chk = SC.SelfCheck(spec, sample, seed=3)
  for part in np.array_split(np.arange(acts[0].shape[0]), batches):
    a = [x[part] for x in acts]
    acc.update(a, mask[part])
    chk.add(chk.gather(acc_inputs(a)), mask[part])
  state = dict(acc.state)
  if corrupt:
    state = corrupt(state)
  _, moms = F.moments_host(spec, state, 1e-6)
  return spec, chk, chk.measure(state, moms)


def acc_inputs(a):
  return [jnp.asarray(x) for x in a]



def _stop_at_step(config, workdir, n):
  """Runs correlate into `workdir` and interrupts it as the n-th step finishes."""
  class Stop(Exception):
    pass

  def hook(phase, seen=[0]):
    if phase == "step":
      seen[0] += 1
      if seen[0] == n:
        raise Stop()

  with pytest.raises(Stop):
    driver.run(config, workdir, _hook=hook)

def test_reference_matches_numpy_corrcoef_and_engine():
  acts = _family(0)
  mask = np.random.default_rng(1).random(acts[0].shape[0]) > 0.1
  spec, chk, res = _run_engine(acts, mask, sample=20)
  # the float64 reference equals numpy's corrcoef on the sampled columns of masked tokens
  x = acts[0][mask][:, chk.ids[0]].astype(np.float64)
  y = acts[1][mask][:, chk.ids[1]].astype(np.float64)
  want = np.corrcoef(x.T, y.T)[:20, 20:]
  got, _, _ = chk._ref_corr("x0", "x1", "xy/0_1")
  np.testing.assert_allclose(got, want, atol=1e-12)
  # rotated units: rows of an orthogonal matrix applied to the layer's activations
  lay, rows = chk.rot[1]
  a1 = acts[1][mask].astype(np.float64).reshape(-1, 2, acts[1].shape[1] // 2)
  u = np.stack([a1[:, l, :] @ r for l, r in zip(lay, rows.astype(np.float64))], axis=1)
  want_u = np.corrcoef(x.T, u.T)[:20, 20:]
  got_u, _, _ = chk._ref_corr("x0", "u1", "xu/0_1")
  np.testing.assert_allclose(got_u, want_u, atol=1e-6)   # u rotated on device in float32
  for l in np.unique(lay):
    r = rows[lay == l].astype(np.float64)
    np.testing.assert_allclose(r @ r.T, np.eye(len(r)), atol=1e-6)
  # the fp32 engine agrees with it on every checked entry, offset 50 notwithstanding
  assert res["entries_checked"] == 2 * 20 * 20 and res["rotated_checked"] == 2 * 20 * 20
  assert res["max_abs_corr"] < 2e-6 and res["max_abs_rotated"] < 2e-6, res


def test_selfcheck_catches_a_corrupted_accumulator():
  acts = _family(2)
  mask = np.ones(acts[0].shape[0], bool)

  def bump_c(state):
    c = np.asarray(state["C/0_2"]).copy()
    c[0, 1, 7, 0, :] *= 1.02          # 2% error in one neuron's row of co-moments
    return dict(state, **{"C/0_2": jnp.asarray(c)})

  def bump_s(state):
    s = np.asarray(state["S/1"]).copy()
    s[0] *= 1.05                      # 5% error in model 1's within-layer co-moments
    return dict(state, **{"S/1": jnp.asarray(s)})

  d = acts[0].shape[1] // 2
  sample = 2 * d                      # every neuron: the corrupted row is in the sample
  _, _, clean = _run_engine(acts, mask, sample)
  _, _, bad_c = _run_engine(acts, mask, sample, corrupt=bump_c)
  _, _, bad_s = _run_engine(acts, mask, sample, corrupt=bump_s)
  assert clean["max_abs_corr"] < 2e-6 and clean["max_abs_rotated"] < 2e-6
  assert bad_c["max_abs_corr"] > 1e-3 and bad_c["max_abs_rotated"] > 1e-3
  assert bad_s["max_abs_rotated"] > 1e-3
  assert bad_s["max_abs_corr"] == clean["max_abs_corr"]   # S is not used by correlations


def test_failed_selfcheck_writes_no_tables(tmp_path):
  c = config_files.load("correlate_tiny")
  c.selfcheck.fail_above = 1e-9       # float32 cannot meet this: the check must refuse
  wd = str(tmp_path / "run")
  with pytest.raises(UserError, match="self-check failed"):
    driver.run(c, wd)
  assert not os.path.exists(os.path.join(wd, "tables"))
  c.selfcheck.fail_above = 1e-3       # the moments are committed: tables without a new pass
  driver.run(c, wd)
  s = atomic.read_json(os.path.join(wd, "tables", "summary.json"))
  assert s["selfcheck"]["status"] == "ok" and s["selfcheck"]["max_abs_corr"] < 1e-5


def test_overlapped_loop_equals_sequential_and_resume_keeps_the_check(tmp_path):
  c = config_files.load("correlate_tiny")
  c.overlap = False
  driver.run(c, str(tmp_path / "seq"))
  c.overlap = True
  driver.run(c, str(tmp_path / "ovl"))
  seq, ovl = _tables(str(tmp_path / "seq")), _tables(str(tmp_path / "ovl"))
  assert seq.keys() == ovl.keys() and len(seq) >= 3
  for k in seq:
    pd.testing.assert_frame_equal(seq[k], ovl[k], check_exact=True)
  s_seq = atomic.read_json(str(tmp_path / "seq" / "tables" / "summary.json"))["selfcheck"]
  s_ovl = atomic.read_json(str(tmp_path / "ovl" / "tables" / "summary.json"))["selfcheck"]
  assert s_seq == s_ovl and s_seq["status"] == "ok" and s_seq["tokens"] > 0

  # interrupted after the step-4 commit, resumed: the same check over the same tokens
  wd = str(tmp_path / "resumed")
  _stop_at_step(c, wd, 5)
  assert not os.path.exists(os.path.join(wd, "tables"))
  driver.run(c, wd)
  s_res = atomic.read_json(os.path.join(wd, "tables", "summary.json"))["selfcheck"]
  assert s_res == s_ovl
  for k, df in _tables(wd).items():
    pd.testing.assert_frame_equal(df, ovl[k], check_exact=True)


def test_precision_modes(tmp_path):
  mesh = M.make_mesh(1, -1)
  for name in ("highest", "bf16_3x"):   # CPU runs bf16 presets as float32
    spec = M.make_spec(["a", "b"], [[0], [0]], 8, mesh, precision=name)
    assert spec.precision == name
  with pytest.raises(UserError, match="not available on cpu"):
    M.make_spec(["a", "b"], [[0], [0]], 8, mesh, precision="tf32")
  with pytest.raises(UserError, match="not one of"):
    M.make_spec(["a", "b"], [[0], [0]], 8, mesh, precision="fp8")
  # old runs' identity (no precision key) is unchanged at the default
  assert "precision" not in M.make_spec(["a", "b"], [[0], [0]], 8, mesh).to_json()

  c = config_files.load("correlate_tiny")
  c.precision = "bf16_3x"
  wd = str(tmp_path / "bf16")
  driver.run(c, wd)
  s = atomic.read_json(os.path.join(wd, "tables", "summary.json"))
  assert s["precision"] == "bf16_3x" and "BF16_BF16_F32_X3" in s["numerics"]
  assert s["selfcheck"]["precision"] == "bf16_3x" and s["selfcheck"]["status"] == "ok"
  assert s["identity"]["spec"]["precision"] == "bf16_3x"
  c.precision = "highest"             # the accumulated moments were made at bf16_3x
  with pytest.raises(UserError, match="inputs changed"):
    driver.run(c, wd)


def test_resume_from_a_checkpoint_without_reference_sums_says_so(tmp_path):
  """A checkpoint committed without the self-check (older versions, or sample=0) resumes; the
  summary says the check is unavailable instead of reporting a partial reference."""
  c = config_files.load("correlate_tiny")
  c.selfcheck.sample = 0
  wd = str(tmp_path / "run")
  _stop_at_step(c, wd, 3)
  c.selfcheck.sample = 256
  driver.run(c, wd)
  s = atomic.read_json(os.path.join(wd, "tables", "summary.json"))["selfcheck"]
  assert s["status"].startswith("unavailable (resumed from") and "max_abs_corr" not in s
  assert SC.describe(s).startswith("unavailable")
