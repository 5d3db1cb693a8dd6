"""Attention runs fused (jax.nn.dot_product_attention) unless its pattern or scores are hooked;
both paths match transformers' eager float32 forward to 1e-5 (issue 13 item 5)."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from converters.convert import convert
from tests import hf_fixtures
from tests.test_convert_parity import TOL
from ucore import load_model

SEQ = ("hook_resid_pre", "hook_attn_out", "mlp.hook_post", "hook_resid_post")


@pytest.fixture
def fused_calls(monkeypatch):
  """Counts traced calls of jax.nn.dot_product_attention (each layer of each compile)."""
  calls = []
  real = jax.nn.dot_product_attention

  def spy(*a, **kw):
    calls.append(kw)
    return real(*a, **kw)

  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  return calls


CASES = {
    "gpt2": lambda: hf_fixtures.hf_config(),
    "gpt2 inverse-layer scale, upcast": lambda: hf_fixtures.hf_config(
        scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
    "gpt2 unscaled": lambda: hf_fixtures.hf_config(scale_attn_weights=False),
    "neox parallel": lambda: hf_fixtures.neox_config(),
    "neox sequential": lambda: hf_fixtures.neox_config(use_parallel_residual=False,
                                                       rotary_pct=1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_and_explicit_attention_match_transformers(tmp_path, case, fused_calls):
  cfg = CASES[case]()
  hf_model = hf_fixtures.random_hf_model(cfg, seed=7)
  convert(hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model), str(tmp_path / "out"))
  model = load_model(str(tmp_path / "out"))
  n_layer = model.config.n_layer
  tokens = np.random.default_rng(3).integers(0, model.config.vocab_size, (2, 29), dtype=np.int32)
  ref_logits, ref = hf_fixtures.reference_activations(hf_model, tokens)

  fused_calls.clear()                                    # (convert runs a forward)
  logits = model(tokens)                                 # no hooks: fused in every layer
  assert len(fused_calls) == n_layer
  np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=0, atol=TOL)
  acts = model.neuron_activations(tokens)                # the correlation engine's capture
  want = np.concatenate([ref[f"blocks.{l}.mlp.hook_post"] for l in range(n_layer)], axis=-1)
  np.testing.assert_allclose(np.asarray(acts), want, rtol=0, atol=TOL)

  # the pattern of layer 1 hooked: that layer explicit, the others fused, all exact
  fused_calls.clear()
  names = [f"blocks.{l}.{h}" for l in range(n_layer) for h in SEQ] + [
      "blocks.1.attn.hook_pattern"]
  logits, cache = model.run_with_cache(tokens, names_filter=names)
  assert len(fused_calls) == n_layer - 1
  np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=0, atol=TOL)
  for name in names:
    np.testing.assert_allclose(np.asarray(cache[name]), ref[name], rtol=0, atol=TOL,
                               err_msg=name)


def test_an_intervention_on_the_scores_keeps_the_explicit_path(tmp_path, fused_calls):
  """Replacing attn_scores (not caching it) must reach the softmax: ablating every score but
  the diagonal makes each position attend to itself only."""
  cfg = hf_fixtures.hf_config(n_layer=1)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=8)
  convert(hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model), str(tmp_path / "out"))
  model = load_model(str(tmp_path / "out"))
  tokens = np.arange(12, dtype=np.int32)[None]
  fused_calls.clear()
  eye = np.where(np.eye(12, dtype=bool), 0.0, -np.inf).astype(np.float32)
  _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_z",
                                                        "blocks.0.attn.hook_v"],
                                  interventions={"blocks.0.attn.hook_attn_scores":
                                                 lambda s: jnp.broadcast_to(eye, s.shape)})
  assert fused_calls == []
  np.testing.assert_allclose(np.asarray(cache["blocks.0.attn.hook_z"]),
                             np.asarray(cache["blocks.0.attn.hook_v"]), rtol=0, atol=1e-6)


def test_fused_float32_attention_stays_at_highest_precision(tmp_path):
  """No TF32 / bf16 passes inside the library call: every dot of the fused forward is HIGHEST."""
  cfg = hf_fixtures.hf_config(n_layer=1)
  convert(hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_fixtures.random_hf_model(cfg)),
          str(tmp_path / "out"))
  model = load_model(str(tmp_path / "out"))
  closed = jax.make_jaxpr(lambda p, t: model.module.apply({"params": p}, t))(
      model.params, np.zeros((1, 8), np.int32))
  precisions = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        precisions.append(eqn.params["precision"])
      for v in eqn.params.values():
        for sub in (v if isinstance(v, (list, tuple)) else [v]):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub)

  walk(closed.jaxpr)
  assert len(precisions) >= 7   # q/k/v, scores, values, out-projection, MLP ×2, unembedding
  highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
  assert all(p == highest for p in precisions), precisions


def test_placed_weights_give_the_same_activations_on_sharded_rows(tmp_path):
  """place(): weights replicated on the local devices once; a forward on rows sharded over
  them reads those copies and gives the host-weight results (to GEMM blocking: 1e-6)."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  cfg = hf_fixtures.hf_config()
  convert(hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_fixtures.random_hf_model(cfg)),
          str(tmp_path / "out"))
  model = load_model(str(tmp_path / "out"))
  tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, (8, 16), dtype=np.int32)
  want = np.asarray(model.neuron_activations(tokens))
  fp = model.fingerprint
  devices = jax.local_devices()
  assert model.place() is model and model.fingerprint == fp
  leaves = jax.tree_util.tree_leaves(model.params)
  assert all(isinstance(l, jax.Array) and l.sharding.device_set == set(devices) and
             l.sharding.is_fully_replicated for l in leaves)
  rows = jax.device_put(tokens, NamedSharding(Mesh(np.array(devices), ("rows",)),
                                              PartitionSpec("rows", None)))
  np.testing.assert_allclose(np.asarray(model.neuron_activations(rows)), want, rtol=0, atol=1e-6)
