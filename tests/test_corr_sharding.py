"""1 device vs 8 virtual devices (several mesh shapes): same statistics to ≤ 1e-6.

The tokens stream in batches of one size (100: 8 devices pad each to 104), so each mesh
compiles its accumulator step once; the mask makes one batch count a single token and one
count none (what an uneven stream's 1-token and empty batches give the step).

Needs 8 devices: tests/conftest.py (and .ci/run) set
XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts; when the process has
fewer devices the comparison is re-run in a subprocess that has 8.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.corr_ref import accumulate as _run
from tests.corr_ref import adversarial
from ucore.corr import finalize as F
from ucore.corr import moments as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


BATCHES = (100,) * 6   # one shape: one compile of the step per mesh


def _stats(mesh, mode, layer_mode, acts, mask):
  spec, mesh, acc = _run(acts, mask, mode=mode, layer_mode=layer_mode, mesh=mesh,
                         batches=BATCHES)
  out = {"n": acc.count}
  for x, y in spec.pairs:
    orients = ("fwd", "bwd") if mode == "all_pairs" else ("fwd",)
    for o in orients:
      r = F.pair_result(spec, mesh, acc.state, x, y, o, top_k=3,
                        baseline_kinds=("haar", "gaussian_rows"), draws=1)
      out[(x, y, o)] = (r.corr, r.layer, r.neuron, r.baselines["haar"],
                        r.baselines["gaussian_rows"])
    full = np.asarray(F.full_corr_blocks(spec, acc.state, x, y))
    out[(x, y, "full")] = full[:, :spec.d_mlp, :, :spec.d_mlp]
  # per-device accumulator memory = total / devices
  c = acc.state[f"C/{spec.pairs[0][0]}_{spec.pairs[0][1]}"]
  out["shard_frac"] = c.addressable_shards[0].data.size / c.size
  return out


CASES = [((2, 4), "all_pairs", "all"), ((1, 8), "reference", "all"),
         ((8, 1), "reference", "adjacent")]


def _compare_all():
  assert jax.device_count() >= 8
  acts, mask = adversarial(K=3, L=3, d=6, T=sum(BATCHES), seed=11)
  mask[100:200] = False   # a batch that counts one token (its 8-device shards: 1 and none)
  mask[150] = True
  mask[200:300] = False   # a batch that counts none
  for (tok, neu), mode, layer_mode in CASES:
    one = _stats(M.make_mesh(1, 1, jax.devices()[:1]), mode, layer_mode, acts, mask)
    many = _stats(M.make_mesh(tok, neu, jax.devices()[:8]), mode, layer_mode, acts, mask)
    assert one["n"] == many["n"] == int(mask.sum())
    assert many["shard_frac"] == pytest.approx(1 / 8)
    for k, v in one.items():
      if k in ("n", "shard_frac"):
        continue
      w = many[k]
      if k[2] == "full":
        np.testing.assert_allclose(w, v, rtol=0, atol=1e-6, equal_nan=True)
        continue
      for a, b in zip(v, w):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, equal_nan=True)
      # partners: identical wherever the best is not a near-tie
      clear = np.isfinite(v[0][..., 0]) & (v[0][..., 0] - v[0][..., 1] > 1e-5)
      assert np.array_equal(v[1][..., 0][clear], w[1][..., 0][clear])
      assert np.array_equal(v[2][..., 0][clear], w[2][..., 0][clear])


def _on_eight_devices(name):
  """Runs this module's function `name` here when 8 devices exist, else in a subprocess
  with 8 virtual CPU devices."""
  if jax.device_count() >= 8:
    globals()[name]()
    return
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=ROOT)
  code = f"from tests.test_corr_sharding import {name}; {name}()"
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow("compiles accumulate/finalize for 1 and for 8 devices on three mesh "
                  "shapes: the time is compilation, not data")
def test_one_vs_eight_devices():
  _on_eight_devices("_compare_all")


def test_mesh_must_match_devices():
  from ucore.jobs.errors import UserError
  with pytest.raises(UserError, match="does not match"):
    M.make_mesh(3, 3, jax.devices()[:1])


def _collective_sizes(hlo_text):
  import re
  sizes = []
  for line in hlo_text.splitlines():
    m = re.search(r"\b(all-gather|all-to-all|all-reduce|reduce-scatter|collective-permute)"
                  r"(-start)?\(", line)
    if m and "=" in line[:m.start()]:
      lhs = line[line.index("=") + 1:m.start()]      # result type(s), tuples included
      for dims in re.findall(r"f32\[([0-9,]*)\]", lhs):
        n = 1
        for v in filter(None, dims.split(",")):
          n *= int(v)
        sizes.append(n)
  return sizes


def _check_step_communication():
  assert jax.device_count() >= 8
  mesh = M.make_mesh(2, 4, jax.devices()[:8])
  L, d, T = 2, 128, 16
  spec = M.make_spec(["a", "b", "c"], [range(L)] * 3, d, mesh)
  acc = M.Accumulator(spec, mesh)
  xs, w = acc.prepare([np.zeros((T, L, d), np.float32)] * 3, np.ones(T, bool))
  text = acc._step.lower(acc.state, xs, w).compile().as_text()
  sizes = _collective_sizes(text)
  assert sizes, "expected collectives in a sharded step"
  # every collective moves at most all tokens × one model's neurons; the co-moment blocks
  # (N² / devices per device, here 2× larger than T·N) never travel
  assert max(sizes) <= T * L * spec.d_pad
  assert max(sizes) < L * spec.d_pad * L * spec.d_pad // 8


def test_step_communication_is_tokens_times_neurons():
  _on_eight_devices("_check_step_communication")
