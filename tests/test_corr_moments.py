"""Streaming co-moments and finalize vs float64 numpy on adversarial activations."""
import jax
import numpy as np
import pytest

from tests.corr_ref import adversarial, corr64, rowmax
from ucore.corr import finalize as F
from ucore.corr import moments as M

from tests.corr_ref import accumulate

# Uneven batches (a large one, a 1-token one merged into a large state, an empty one, another
# 1-token one, a large one; sum 400) in two shapes only: each distinct batch size compiles
# the step once per spec, and the merge is exercised the same way by any sizes.
BATCHES = (199, 1, 0, 1, 199)


def _run(acts, mask, **kw):
  kw.setdefault("batches", BATCHES)
  return accumulate(acts, mask, **kw)


def _flat(a, mask, layers=None):
  a = a[mask] if layers is None else a[mask][:, list(layers)]
  return a.reshape(a.shape[0], -1).astype(np.float64)


def test_reference_helper_is_np_corrcoef():
  acts, mask = adversarial()
  x, y = _flat(acts[0], mask), _flat(acts[1], mask)
  with np.errstate(all="ignore"):
    ref = np.corrcoef(x.T, y.T)[:x.shape[1], x.shape[1]:]
  np.testing.assert_allclose(corr64(x, y), ref, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("compensated", [True, False])
def test_full_matrix_matches_float64(compensated):
  acts, mask = adversarial(offset=1e3)
  spec, mesh, acc = _run(acts, mask, compensated=compensated)
  assert acc.count == int(mask.sum())
  n, moms = F.moments_host(spec, acc.state, 1e-6)
  for m in range(3):
    x = _flat(acts[m], mask)
    np.testing.assert_allclose(moms[m]["mean"][:, :6].reshape(-1), x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(moms[m]["std"][:, :6].reshape(-1), x.std(0), rtol=1e-5,
                               atol=1e-6)
  for y in (1, 2):
    got = np.asarray(F.full_corr_blocks(spec, acc.state, 0, y))[:, :6, :, :6].reshape(12, 12)
    ref = corr64(_flat(acts[0], mask), _flat(acts[y], mask))
    assert np.array_equal(np.isnan(got), np.isnan(ref))      # dead neurons are NaN, not 0
    assert np.isnan(ref).any()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, equal_nan=True)


def test_dead_neurons_reported_not_zero():
  acts, mask = adversarial()
  spec, mesh, acc = _run(acts, mask)
  res = F.pair_result(spec, mesh, acc.state, 0, 1, "fwd", baseline_kinds=())
  # reference model 0: neuron (layer 0, 1) is constant.
  assert np.isnan(res.corr[0, 1, 0]) and res.layer[0, 1, 0] == -1
  assert np.isfinite(np.delete(res.corr[..., 0].reshape(-1), 1)).all()
  # the partner's dead neuron (model 1: layer 1, neuron 1) is never chosen as a partner
  assert not np.any((res.layer == 1) & (res.neuron == 1))


@pytest.mark.parametrize("mode", ["reference", "all_pairs"])
def test_row_stats_match_float64(mode):
  acts, mask = adversarial(K=3, L=2, d=6, T=400, seed=1)   # the shapes of the tests above
  spec, mesh, acc = _run(acts, mask, mode=mode)
  for x, y in spec.pairs:
    for orient in (("fwd", "bwd") if mode == "all_pairs" else ("fwd",)):
      res = F.pair_result(spec, mesh, acc.state, x, y, orient, top_k=4, baseline_kinds=())
      own, part = (x, y) if orient == "fwd" else (y, x)
      c = corr64(_flat(acts[own], mask), _flat(acts[part], mask))
      mx, am = rowmax(c)
      got = res.corr[..., 0].reshape(-1)
      np.testing.assert_allclose(got, mx, rtol=0, atol=1e-5, equal_nan=True)
      srt = -np.sort(-np.where(np.isnan(c), -np.inf, c), axis=1)[:, :4]
      srt = np.where(np.isfinite(srt), srt, np.nan)
      srt[np.isnan(mx)] = np.nan
      np.testing.assert_allclose(res.corr.reshape(-1, 4), srt, atol=1e-5, equal_nan=True)
      gap = srt[:, 0] - srt[:, 1]
      clear = np.isfinite(mx) & (gap > 1e-4)
      flat_partner = res.layer[..., 0].reshape(-1) * 6 + res.neuron[..., 0].reshape(-1)
      assert np.array_equal(flat_partner[clear], am[clear])
      # every reported top-k partner really has the reported correlation
      lay, neu = res.layer.reshape(-1, 4), res.neuron.reshape(-1, 4)
      ok = lay >= 0
      rows = np.nonzero(ok)[0]
      np.testing.assert_allclose(res.corr.reshape(-1, 4)[ok], c[rows, (lay * 6 + neu)[ok]],
                                 atol=1e-5)


def test_adjacent_layers_and_chosen_layers():
  acts, mask = adversarial(K=2, L=4, d=4, seed=2)
  spec, mesh, acc = _run(acts, mask, layer_mode="adjacent")
  res = F.pair_result(spec, mesh, acc.state, 0, 1, "fwd", top_k=2, baseline_kinds=())
  c = corr64(_flat(acts[0], mask), _flat(acts[1], mask)).reshape(4, 4, 4, 4)
  far = np.abs(np.arange(4)[:, None] - np.arange(4)[None, :]) > 1   # [layer_a, layer_b]
  c = np.where(far[:, None, :, None], np.nan, c)
  mx, _ = rowmax(c.reshape(16, 16))
  np.testing.assert_allclose(res.corr[..., 0].reshape(-1), mx, atol=1e-5, equal_nan=True)
  assert np.all(np.abs(res.layer[..., 0] - np.arange(4)[:, None])[res.layer[..., 0] >= 0] <= 1)
  # chosen layers: model 0 keeps layers (1, 3), model 1 keeps (0, 2, 3)
  layer_ids = [(1, 3), (0, 2, 3)]
  spec, mesh, acc = _run(acts, mask, layer_ids=layer_ids)
  res = F.pair_result(spec, mesh, acc.state, 0, 1, "fwd", baseline_kinds=())
  c = corr64(_flat(acts[0], mask, layer_ids[0]), _flat(acts[1], mask, layer_ids[1]))
  mx, am = rowmax(c)
  np.testing.assert_allclose(res.corr[..., 0].reshape(-1), mx, atol=1e-5, equal_nan=True)
  ok = np.isfinite(mx)
  assert np.array_equal(res.layer[..., 0].reshape(-1)[ok], np.array(layer_ids[1])[am[ok] // 4])


def test_step_pins_highest_precision():
  acts, mask = adversarial(K=2, L=1, d=4, T=16)
  mesh = M.make_mesh(1, 1, jax.devices()[:1])
  spec = M.make_spec(["a", "b"], [(0,), (0,)], 4, mesh)
  acc = M.Accumulator(spec, mesh)
  xs, w = acc.prepare([a for a in acts], mask)
  fn = jax.shard_map(lambda s, x, w: M._local_step(spec, s, x, w), mesh=mesh,
                     in_specs=({k: p for k, (_, _, p) in M.state_shapes(spec).items()},
                               [M.X_SPEC] * 2, jax.sharding.PartitionSpec((M.TOK, M.NEU))),
                     out_specs={k: p for k, (_, _, p) in M.state_shapes(spec).items()},
                     check_vma=False)
  text = str(jax.make_jaxpr(fn)(acc.state, xs, w))
  n_dots = text.count("dot_general[")
  assert n_dots >= 2
  assert text.count("precision=(Precision.HIGHEST, Precision.HIGHEST)") == n_dots


def test_bad_activation_shape_is_refused():
  acts, mask = adversarial(T=200)   # the shapes above: no compile of its own
  spec, mesh, acc = _run(acts, mask, batches=(199, 1))
  with pytest.raises(ValueError, match="do not match"):
    acc.update([acts[0][:, :, :5], acts[1], acts[2]], mask)
