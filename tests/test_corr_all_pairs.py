"""Issue 18 item 2 (engine): mode all_pairs on a 4-model synthetic family gives, for every
model, each neuron's max correlation with every other model and its rotation baseline, the
seed × seed share matrix and per neuron "universal against k of M-1 siblings" — all checked
against a brute-force float64 numpy computation on the same activations and the same
mixing matrices. The per-model tables keep the reference layout (same readers)."""
import os

import numpy as np
import pytest

from ucore.corr import baselines as BL
from ucore.corr import driver, moments as M, tables as TB
from ucore.corr.synthetic import SyntheticFamily, SyntheticTokens
from ucore.data.mask import token_mask
from ucore.jobs import config_files

K, L, D, ROWS, CTX = 4, 2, 48, 24, 16


def _config():
  c = config_files.load("correlate_default")
  c.synthetic.enabled = True
  c.synthetic.n_models, c.synthetic.n_layers, c.synthetic.d_mlp = K, L, D
  c.synthetic.rows, c.synthetic.ctx = ROWS, CTX
  c.mode = "all_pairs"
  c.max_tokens = 0
  c.batch_rows = 8
  c.baseline.kinds, c.baseline.primary, c.baseline.draws = ("haar",), "haar", 1
  c.threshold = 0.3            # low enough that k takes several values in this small family
  c.selfcheck.sample = 16
  return c


def _brute_force(c):
  """float64 numpy: max corr (over every partner neuron, all layers) and the Haar baseline
  (max over the engine's rotated units of the partner) per own neuron and partner."""
  fam = SyntheticFamily(n_models=K, n_layers=L, d_mlp=D, n_planted=c.synthetic.n_planted,
                        seed=c.synthetic.seed, offset=c.synthetic.offset, ctx=CTX)
  store = SyntheticTokens(num_rows=ROWS, ctx=CTX, seed=c.synthetic.seed)
  keep = np.asarray(token_mask(store.read_rows(0, ROWS), exclude_ids=store.mask_exclude_ids))
  keep = keep.reshape(-1)
  acts = [np.concatenate([fam.row_acts(m, r) for r in range(ROWS)]).astype(np.float64)[keep]
          for m in range(K)]
  z = []
  for a in acts:   # standardized; NaN for dead neurons (the engine's dead_rel_std rule)
    mu = a.mean(0)
    sd = np.sqrt(((a - mu) ** 2).mean(0))
    dead = (sd <= c.dead_rel_std * np.abs(mu)) | (sd == 0)
    z.append(np.where(dead, np.nan, (a - mu) / np.where(dead, 1.0, sd)))
  mesh = M.make_mesh(1, -1)
  d_pad = M.make_spec(["a", "b"], [range(L)] * 2, D, mesh).d_pad
  out = {}
  for own in range(K):
    for part in range(K):
      if part == own:
        continue
      n = z[own].shape[0]
      corr = np.nan_to_num(z[own]).T @ np.nan_to_num(z[part]) / n     # [L*D, L*D]
      rmat = np.asarray(BL.mixing_stack("haar", D, d_pad, tuple(range(L)), seed=0, draw=0,
                                        model=part, mesh=mesh), np.float64)[:, :D, :D]
      centred = acts[part] - acts[part].mean(0)
      rot = np.concatenate([centred[:, l * D:(l + 1) * D] @ rmat[l].T for l in range(L)], 1)
      rz = rot / np.sqrt((rot ** 2).mean(0))
      base = np.nan_to_num(z[own]).T @ rz / n
      dead = np.isnan(z[own][0])
      out[(own, part)] = (np.where(dead, np.nan, corr.max(1)), np.where(dead, np.nan, base.max(1)))
  return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  c = _config()
  wd = tmp_path_factory.mktemp("all_pairs")
  tables = driver.run(c, str(wd))
  return c, tables, _brute_force(c)


def test_max_corr_and_baselines_match_float64(run):
  c, tables, ref = run
  names = [f"synth{m}" for m in range(K)]
  assert TB.neuron_models(tables) == names   # every model has the reference-layout table
  for own in range(K):
    agg = TB.read_neurons(tables, names[own])
    for part in range(K):
      if part == own:
        continue
      mx, base = ref[(own, part)]
      np.testing.assert_allclose(agg[f"corr__{names[part]}"], mx, atol=2e-5, equal_nan=True)
      np.testing.assert_allclose(agg[f"baseline__{names[part]}"], base, atol=2e-5,
                                 equal_nan=True)


def test_seed_matrix_and_k_of_m_match_float64(run):
  c, tables, ref = run
  names = [f"synth{m}" for m in range(K)]
  mat = TB.read_seed_matrix(tables)
  assert list(mat.index) == names and list(mat.columns) == names + ["universal"]
  ks = set()
  for own in range(K):
    kt = TB.read_k_of_m(tables, names[own])
    live = ~kt["dead"].to_numpy()
    excess = np.stack([ref[(own, p)][0] - ref[(own, p)][1] for p in range(K) if p != own], 1)
    clear = np.all(np.abs(np.nan_to_num(excess, nan=-1) - c.threshold) > 1e-4, 1)
    want_k = np.sum(np.nan_to_num(excess, nan=-1) > c.threshold, 1)
    assert clear[live].mean() > 0.95   # almost no neuron sits on the threshold
    np.testing.assert_array_equal(kt["k"].to_numpy()[clear], want_k[clear])
    assert (kt["of"] == K - 1).all()
    ks.update(kt["k"][live].tolist())
    for j, p in enumerate(p for p in range(K) if p != own):
      hit = np.nan_to_num(excess[:, j], nan=-1) > c.threshold
      share = (hit & live).sum() / live.sum()
      assert abs(mat.loc[names[own], names[p]] - share) <= (~clear & live).sum() / live.sum()
    assert np.isnan(mat.loc[names[own], names[own]])
  assert len(ks) >= 2   # the counts are not all alike
  # planted neurons (shared by every model) are universal against most siblings
  fam = SyntheticFamily(n_models=K, n_layers=L, d_mlp=D, n_planted=c.synthetic.n_planted)
  kt = TB.read_k_of_m(tables, "synth0")
  for p in fam.pos[0][:c.synthetic.n_planted]:
    assert kt.loc[(int(p) // D, int(p) % D), "k"] >= K - 2


def test_seed_matrix_report_figures(run, tmp_path):
  from ucore.report import seed_matrix as SM
  c, tables, ref = run
  sec = SM.seed_matrix_section(tables, str(tmp_path / "fig"))
  assert len(sec["figures"]) == 2
  for png in sec["figures"]:
    with open(png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  counts = sec["k_counts"]
  for own in range(K):   # the k distribution is the float64 one (neurons off the threshold)
    excess = np.stack([ref[(own, p)][0] - ref[(own, p)][1] for p in range(K) if p != own], 1)
    live = np.isfinite(ref[(own, (own + 1) % K)][0])
    want = np.bincount(np.sum(np.nan_to_num(excess, nan=-1) > c.threshold, 1)[live],
                       minlength=K)
    got = counts.loc[f"synth{own}"].to_numpy()
    assert got.sum() == live.sum()
    near = np.sum(np.any(np.abs(np.nan_to_num(excess, nan=-1) - c.threshold) <= 1e-4, 1) & live)
    assert np.abs(got - want).sum() <= 2 * near
  from ucore.jobs.errors import UserError
  with pytest.raises(UserError, match="all_pairs"):
    SM.seed_matrix_figure(str(tmp_path), str(tmp_path / "x.png"))


def test_correlate_command_writes_the_seed_matrix_figures(run):
  """`main.py correlate` with mode all_pairs: the figures land in <workdir>/figures/."""
  from ucore.cli import correlate as cli
  c, tables, _ = run
  workdir = os.path.dirname(tables)
  cli._seed_matrix_figures(c, workdir)
  for name in ("seed_matrix.png", "k_of_m.png"):
    with open(os.path.join(workdir, "figures", name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
