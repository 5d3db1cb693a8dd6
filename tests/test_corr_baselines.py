"""One-pass rotation baselines vs a brute-force pass over explicitly rotated activations."""
import jax
import numpy as np
import pytest

from tests.corr_ref import adversarial, corr64, rotate, rowmax
from tests.test_corr_moments import _flat, _run
from ucore.corr import baselines as BL
from ucore.corr import finalize as F


def test_haar_is_orthogonal_and_seeded():
  r = BL.mixing_matrix("haar", 32, seed=3, draw=1, model=2, layer=5)
  np.testing.assert_allclose(r @ r.T, np.eye(32), atol=1e-12)
  np.testing.assert_array_equal(r, BL.mixing_matrix("haar", 32, seed=3, draw=1, model=2, layer=5))
  assert not np.allclose(r, BL.mixing_matrix("haar", 32, seed=3, draw=2, model=2, layer=5))
  g = BL.mixing_matrix("gaussian_rows", 32, seed=3, draw=1, model=2, layer=5)
  np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-12)
  # Haar: the distribution of R @ e is uniform on the sphere -> mean of entries ~ 0
  cols = np.stack([BL.mixing_matrix("haar", 8, seed=s, draw=0, model=0, layer=0)[:, 0]
                   for s in range(400)])
  assert abs(cols.mean()) < 0.03 and abs((cols ** 2).mean() - 1 / 8) < 0.01
  with pytest.raises(ValueError):
    BL.mixing_matrix("permutation", 4, seed=0, draw=0, model=0, layer=0)


def _brute(acts, mask, own, part, kind, draw, seed=0, layers_part=None, far=None):
  L = acts[part].shape[1]
  mats = np.stack([BL.mixing_matrix(kind, acts[part].shape[2], seed=seed, draw=draw,
                                    model=part, layer=l) for l in range(L)])
  yr = rotate(acts[part][mask], mats)
  c = corr64(_flat(acts[own], mask), yr.reshape(yr.shape[0], -1))
  if far is not None:
    d = acts[own].shape[2]
    c = np.where(far[:, None, :, None], np.nan,
                 c.reshape(acts[own].shape[1], d, L, d)).reshape(c.shape)
  return rowmax(c)[0]


@pytest.mark.parametrize("mode", ["reference", "all_pairs"])
def test_one_pass_baseline_equals_brute_force(mode):
  acts, mask = adversarial(K=3, L=2, d=6, T=400, seed=4)
  spec, mesh, acc = _run(acts, mask, mode=mode)
  kinds = ("haar", "gaussian_rows")
  for x, y in spec.pairs[:2]:
    for orient in (("fwd", "bwd") if mode == "all_pairs" else ("fwd",)):
      own, part = (x, y) if orient == "fwd" else (y, x)
      res = F.pair_result(spec, mesh, acc.state, x, y, orient, baseline_kinds=kinds, draws=2,
                          seed=7)
      for kind in kinds:
        for draw in range(2):
          ref = _brute(acts, mask, own, part, kind, draw, seed=7)
          got = res.baselines[kind][draw].reshape(-1)
          assert np.isnan(ref).sum() == 1                  # the dead reference neuron only
          np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, equal_nan=True)


def test_one_pass_baseline_adjacent_mode():
  acts, mask = adversarial(K=2, L=3, d=4, T=300, seed=5)
  spec, mesh, acc = _run(acts, mask, layer_mode="adjacent", batches=(150, 150))
  res = F.pair_result(spec, mesh, acc.state, 0, 1, "fwd", baseline_kinds=("haar",))
  far = np.abs(np.arange(3)[:, None] - np.arange(3)[None, :]) > 1
  ref = _brute(acts, mask, 0, 1, "haar", 0, far=far)
  np.testing.assert_allclose(res.baselines["haar"][0].reshape(-1), ref, atol=1e-5,
                             equal_nan=True)


def test_run_uses_the_float32_rounding_of_mixing_matrix():
  """mixing_stack (what pair_result rotates with) is mixing_matrix rounded to float32, zero-
  padded, the same on a 1- and an 8-device mesh, drawn once per (kind, model, draw, seed)."""
  from ucore.corr import moments as M
  meshes = [M.make_mesh(1, 1, jax.devices()[:1])]
  if jax.device_count() >= 8:
    meshes.append(M.make_mesh(2, 4, jax.devices()[:8]))
  stacks = []
  for mesh in meshes:
    for kind in BL.KINDS:
      s = BL.mixing_stack(kind, 6, 8, (0, 2), seed=7, draw=1, model=3, mesh=mesh)
      assert s.dtype == np.float32 and s.shape == (2, 8, 8)
      assert s.sharding.is_fully_replicated
      assert BL.mixing_stack(kind, 6, 8, (0, 2), seed=7, draw=1, model=3, mesh=mesh) is s
      h = np.asarray(s)
      for pos, layer in enumerate((0, 2)):
        r = BL.mixing_matrix(kind, 6, seed=7, draw=1, model=3, layer=layer)
        np.testing.assert_array_equal(h[pos, :6, :6], r.astype(np.float32))
      assert not h[:, 6:].any() and not h[:, :, 6:].any()
      stacks.append(h)
  for a, b in zip(stacks[:2], stacks[2:]):
    np.testing.assert_array_equal(a, b)
  BL.clear_cache()
  assert not BL._cache


def test_one_compilation_per_shape():
  """Pairs of the same shape share one corr and one baseline program (no per-pair compile)."""
  acts, mask = adversarial(K=3, L=2, d=6, T=400, seed=4)
  spec, mesh, acc = _run(acts, mask, mode="reference")
  F._corr_fn.cache_clear()
  F._baseline_fn.cache_clear()
  for x, y in spec.pairs:
    F.pair_result(spec, mesh, acc.state, x, y, "fwd", baseline_kinds=BL.KINDS, draws=2)
  assert F._corr_fn.cache_info().currsize == 1
  assert F._baseline_fn.cache_info().currsize == 1
  assert F._baseline_fn.cache_info().hits == len(spec.pairs) - 1


def test_baseline_argmax_unit_is_brute_force_argmax():
  """pair_result also says which rotated unit gave each draw's max (the interval pass
  re-reads that unit): the brute-force argmax over explicitly rotated activations."""
  from ucore.corr import moments as M
  acts, mask = adversarial(K=2, L=2, d=6, T=400, seed=4)
  spec, mesh, acc = _run(acts, mask, mode="all_pairs", mesh=M.make_mesh(2, 4),  # sharded max
                         batches=(200, 200))   # one batch shape: one compile of the step
  assert spec.d_pad == 8
  for orient in ("fwd", "bwd"):
    own, part = (0, 1) if orient == "fwd" else (1, 0)
    res = F.pair_result(spec, mesh, acc.state, 0, 1, orient, baseline_kinds=("haar",),
                        draws=2, seed=7)
    for draw in range(2):
      mats = np.stack([BL.mixing_matrix("haar", 6, seed=7, draw=draw, model=part, layer=l)
                       for l in range(2)])
      yr = rotate(acts[part][mask], mats)
      c = corr64(_flat(acts[own], mask), yr.reshape(yr.shape[0], -1))
      units = res.baseline_units["haar"][draw].reshape(-1)
      live = ~np.isnan(res.baselines["haar"][draw].reshape(-1))
      assert (units[~live] == -1).all() and live.sum() == 11
      flat = units[live] // spec.d_pad * 6 + units[live] % spec.d_pad
      np.testing.assert_array_equal(flat, np.nanargmax(c[live], axis=1))
