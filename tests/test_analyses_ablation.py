"""Ablations: loss and KL against an independent numpy computation; a neuron that writes nothing
changes nothing; matched random sets; universal vs random runner; bad input."""
import jax
import numpy as np
import pandas as pd
import pytest

from ucore.data import batches as batches_mod
from tests import planted
from ucore.analyses import ablation, common
from ucore.jobs.errors import UserError
from ucore.interventions import zero_neurons
from ucore.models.hooked import HookedTransformer


@pytest.fixture(scope="module")
def batches():
  return batches_mod.make_batches(planted.planted_tokens(6, 32, seed=7), 3)


def _logp(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_effects_match_numpy(model, batches):
  s = [(0, 5), (1, 9), (1, 20)]
  ivs = ablation.interventions_for(s, "zero")
  assert set(ivs) == {"blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"}
  res = ablation.ablation_effects(model, batches, {"z": ivs})
  kl, lc, la, n = 0.0, 0.0, 0.0, 0
  for b in batches:
    c = _logp(model(b.tokens))[:, :-1]
    a = _logp(model.run_with_hooks(b.tokens, {"blocks.0.mlp.hook_post": zero_neurons([5]),
                                              "blocks.1.mlp.hook_post": zero_neurons([9, 20])}))[:, :-1]
    m = b.mask[:, :-1]
    t = b.tokens[:, 1:, None]
    kl += (np.exp(c) * (c - a)).sum(-1)[m].sum()
    lc += -np.take_along_axis(c, t, -1)[..., 0][m].sum()
    la += -np.take_along_axis(a, t, -1)[..., 0][m].sum()
    n += m.sum()
  r = res.loc["z"]
  assert r["tokens"] == n
  assert r["kl"] == pytest.approx(kl / n, rel=1e-4)
  assert r["clean_loss"] == pytest.approx(lc / n, rel=1e-5)
  assert r["delta_loss"] == pytest.approx((la - lc) / n, rel=1e-3, abs=1e-6)
  assert r["kl"] > 1e-3     # the planted query neuron matters


def test_neuron_writing_nothing_changes_nothing(model, batches):
  # three silent neurons, as many per layer as test_effects_match_numpy's set (one compiled
  # ablated forward for both tests)
  silent = [(0, 4), (1, 4), (1, 6)]
  params = jax.tree_util.tree_map(np.array, model.params)
  for l, n in silent:
    params[f"h_{l}"]["mlp"]["c_proj"]["kernel"][n] = 0
  m2 = HookedTransformer(model.config, params)
  means = ablation.mean_activations(m2, batches)
  res = ablation.ablation_effects(m2, batches, {
      k: ablation.interventions_for(silent, k, means, 3.0) for k in ablation.MODES})
  np.testing.assert_allclose(res["kl"].values, 0, atol=1e-6)
  np.testing.assert_allclose(res["delta_loss"].values, 0, atol=1e-5)


def test_mean_activations_and_matched_sets(model, batches):
  means = ablation.mean_activations(model, batches)
  acts = np.concatenate([np.asarray(model.neuron_activations(b.tokens))[b.mask] for b in batches])
  np.testing.assert_allclose(means.reshape(-1), acts.astype(np.float64).mean(0), rtol=1e-6,
                             atol=1e-9)
  s = [(0, 1), (0, 2), (1, 3)]
  sets = ablation.matched_random_sets(s, 32, 4, seed=1)
  for r in sets:
    assert sorted(l for l, _ in r) == [0, 0, 1]
    assert not set(r) & set(s)
  assert sets[0] != sets[1]


def test_runner_universal_vs_random(model, batches, tmp_path):
  idx = common.neuron_index(2, 32)
  corr = pd.DataFrame({"excess_corr": 0.0, "universal": False}, index=idx)
  corr.loc[[planted.PLANTED["query"], planted.PLANTED["entropy"]], "universal"] = True
  figs = ablation.run(model, batches, str(tmp_path), corr, n_random=3)
  res = pd.read_parquet(tmp_path / "ablation.parquet")
  assert len(res) == 4 * 2
  assert set(res["set"]) == {"universal", "random"} and (res["n_neurons"] == 2).all()
  # the planted neurons matter more than random ones under zero ablation
  z = res[res["mode"] == "zero"]
  assert z[z["set"] == "universal"]["kl"].iloc[0] > z[z["set"] == "random"]["kl"].max()
  assert len(figs) == 1
  # no universal neuron: the top-k by excess stand in, and the caption says so
  corr["universal"] = False
  corr.loc[planted.PLANTED["query"], "excess_corr"] = 0.3
  corr.loc[planted.PLANTED["entropy"], "excess_corr"] = 0.2
  figs = ablation.run(model, batches, str(tmp_path / "fb"), corr, n_random=1, fallback_k=2)
  res = pd.read_parquet(tmp_path / "fb" / "ablation.parquet")
  assert set(res["set"]) == {"focus", "random"} and (res["n_neurons"] == 2).all()
  assert "No neuron is universal" in figs[0][2] and "top-2" in figs[0][0]
  with pytest.raises(UserError, match="empty"):
    ablation.universal_vs_random(model, batches, [])
  with pytest.raises(UserError, match="mode"):
    ablation.interventions_for([(0, 1)], "shuffle")
