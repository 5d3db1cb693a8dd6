"""Entropy neurons: the planted null-space neuron is the top candidate and raises entropy and
the final LayerNorm scale when fixed high; metrics match an independent numpy computation."""
import numpy as np
import pandas as pd
import pytest

from ucore.data import batches as batches_mod
from tests import planted
from ucore.analyses import common, entropy
from ucore.interventions import fix_neurons


@pytest.fixture(scope="module")
def batches():
  return batches_mod.make_batches(planted.planted_tokens(8, 32, seed=5), 4)


def test_planted_entropy_neuron_is_top_candidate(model):
  c = entropy.entropy_candidates(common.processed_weights(model))
  assert c["rank"].idxmin() == planted.PLANTED["entropy"]
  assert c.loc[planted.PLANTED["entropy"], "rel_logit_var"] < 1e-6
  # random directions have relative logit variance of order 1
  assert 0.2 < c["rel_logit_var"].median() < 5
  ctrl = entropy.random_control_neurons(c, 5, last_layers=1, exclude=[planted.PLANTED["entropy"]])
  assert len(ctrl) == 5 and all(l == 1 for l, _ in ctrl)
  assert planted.PLANTED["entropy"] not in ctrl


def test_metrics_match_numpy(model, batches):
  l, n = planted.PLANTED["entropy"]
  iv = {f"blocks.{l}.mlp.hook_post": fix_neurons([n], 3.0)}
  got = entropy.prediction_metrics(model, batches, iv)
  vals = {k: [] for k in entropy.METRICS}
  for b in batches:
    logits, cache = model.run_with_cache(b.tokens, ["ln_final.hook_scale"], interventions=iv)
    lg = np.asarray(logits, np.float64)[:, :-1]
    lp = lg - lg.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    tgt = b.tokens[:, 1:]
    lt = np.take_along_axis(lp, tgt[..., None], -1)[..., 0]
    m = b.mask[:, :-1]
    vals["ln_scale"] += list(np.asarray(cache["ln_final.hook_scale"])[:, :-1, 0][m])
    vals["entropy"] += list(-(np.exp(lp) * lp).sum(-1)[m])
    vals["loss"] += list(-lt[m])
    vals["reciprocal_rank"] += list(1.0 / (1 + (lp > lt[..., None]).sum(-1))[m])
  for k in entropy.METRICS:
    assert got[k] == pytest.approx(np.mean(vals[k]), rel=1e-4), k
  # the sweep's compile-once form (zero the unit, add value * w_out) gives the same metrics
  fast = entropy.prediction_metrics(model, batches, entropy.fix_interventions(model, l, n, 3.0))
  for k in entropy.METRICS:
    assert fast[k] == pytest.approx(got[k], rel=1e-4), k


def test_sweep_raises_entropy_for_planted_not_random(model, batches, tmp_path):
  figs = entropy.run(model, batches, str(tmp_path), n_random=4, last_layers=1,
                     values=(0.0, 6.0))
  sweep = pd.read_parquet(tmp_path / "entropy_sweep.parquet")
  l, n = planted.PLANTED["entropy"]
  t = sweep.xs((l, n), level=["layer", "neuron"])
  assert (t["role"] == "target").all()
  assert t.loc[6.0, "entropy"] > t.loc[0.0, "entropy"] + 0.5
  assert t.loc[6.0, "ln_scale"] > 1.5 * t.loc[0.0, "ln_scale"]
  rnd = sweep[sweep["role"] == "random"]
  d_rand = (rnd.xs(6.0, level="value")["entropy"] - rnd.xs(0.0, level="value")["entropy"]).abs()
  assert len(d_rand) == 4
  assert d_rand.max() < (t.loc[6.0, "entropy"] - t.loc[0.0, "entropy"]) / 3
  assert len(figs) == 2


def test_controls_filtered_on_l2_penalty_and_vocab_var_as_the_original(model):
  from ucore.analyses import stats
  w = common.processed_weights(model)
  c = entropy.entropy_candidates(w)
  ws = stats.weight_stats(w)
  np.testing.assert_allclose(c["l2_penalty"], ws["l2_penalty"])
  np.testing.assert_allclose(c["vocab_var"], ws["vocab_var"])
  last = c.xs(1, level="layer", drop_level=False)
  for flt, (norm, var) in entropy.CONTROL_FILTERS.items():
    picked = entropy.random_control_neurons(c, 40, last_layers=1, control_filter=flt)
    hi, lo = last[norm].quantile(0.9), last[var].quantile(0.1)
    allowed = {i for i in last.index if last.loc[i, norm] < hi and last.loc[i, var] > lo}
    assert picked and set(picked) == allowed        # n > pool: every allowed neuron, no other
  with pytest.raises(Exception, match="control_filter"):
    entropy.random_control_neurons(c, 4, control_filter="bogus")
