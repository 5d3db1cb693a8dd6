"""run_with_cache / interventions: TransformerLens semantics, checked against transformers."""
import numpy as np
import pytest
import jax.numpy as jnp

from converters.convert import convert
from tests import hf_fixtures
from ucore import interventions as iv
from ucore import load_model
from ucore.jobs.errors import UserError


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("hooks")
  cfg = hf_fixtures.hf_config(scale_attn_by_inverse_layer_idx=True)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=7)
  src = hf_fixtures.write_checkpoint(str(tmp / "hf"), hf_model)
  convert(src, str(tmp / "out"))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16), dtype=np.int32)
  return load_model(str(tmp / "out")), hf_model, tokens


def test_names_filter_forms_keep_only_requested(converted):
  model, _, tokens = converted
  _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.mlp.hook_post"])
  assert set(cache) == {"blocks.1.mlp.hook_post"}
  _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
  assert set(cache) == {f"blocks.{l}.attn.hook_pattern" for l in range(3)}
  _, cache = model.run_with_cache(tokens)
  assert set(cache) == set(model.hook_names)
  assert cache["blocks.0.attn.hook_q"].shape == (2, 16, 4, 16)
  assert cache["ln_final.hook_scale"].shape == (2, 16, 1)
  with pytest.raises(UserError, match="unknown hook"):
    model.run_with_cache(tokens, names_filter=["blocks.9.mlp.hook_post"])


def test_ln_final_hooks_match_definition(converted):
  model, _, tokens = converted
  _, cache = model.run_with_cache(tokens)   # every hook: the program the first test compiled
  x = np.asarray(cache["blocks.2.hook_resid_post"], np.float64)
  centered = x - x.mean(-1, keepdims=True)
  scale = np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(cache["ln_final.hook_scale"], scale, rtol=1e-5)
  np.testing.assert_allclose(cache["ln_final.hook_normalized"], centered / scale, atol=1e-5)


def test_stop_at_layer_returns_residual_entering_that_block(converted):
  model, _, tokens = converted
  _, full = model.run_with_cache(tokens)   # every hook: the program the first test compiled
  resid, cache = model.run_with_cache(tokens, names_filter=["blocks.1.mlp.hook_post"],
                                      stop_at_layer=2)
  np.testing.assert_allclose(np.asarray(resid), np.asarray(full["blocks.2.hook_resid_pre"]),
                             atol=1e-6)
  assert "blocks.1.mlp.hook_post" in cache
  # stop_at_layer = n_layer: the stream after the last block, before ln_final.
  _, full = model.run_with_cache(tokens, names_filter=["blocks.2.hook_resid_post"])
  resid, _ = model.run_with_cache(tokens, names_filter=[], stop_at_layer=3)
  np.testing.assert_array_equal(np.asarray(resid), np.asarray(full["blocks.2.hook_resid_post"]))


def test_neuron_activations_flat_layout(converted):
  model, _, tokens = converted
  _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp.hook_post"))
  acts = np.asarray(model.neuron_activations(tokens, layers=[0, 2]))
  d = model.config.d_mlp
  assert acts.shape == (2, 16, 2 * d)
  np.testing.assert_array_equal(acts[..., :d], cache["blocks.0.mlp.hook_post"])
  np.testing.assert_array_equal(acts[..., d:], cache["blocks.2.mlp.hook_post"])


def test_zero_neuron_matches_torch_ablation(converted):
  """Zeroing neuron 5 of layer 1 in Flax equals zeroing it with a torch hook in HF."""
  import torch
  model, hf_model, tokens = converted
  logits = model.run_with_hooks(tokens, {"blocks.1.mlp.hook_post": iv.zero_neurons([5, 9])})

  def ablate(mod, inp, out):
    out = out.clone()
    out[..., [5, 9]] = 0
    return out
  h = hf_model.transformer.h[1].mlp.act.register_forward_hook(ablate)
  try:
    with torch.no_grad():
      ref = hf_model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  finally:
    h.remove()
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-5)
  clean = np.asarray(model.run_with_cache(tokens)[0])   # the every-hook program, compiled
  assert np.abs(clean - ref).max() > 1e-3  # the ablation did something


def test_fix_scale_add_patch_semantics(converted):
  model, _, tokens = converted
  name = "blocks.0.mlp.hook_post"
  _, clean = model.run_with_cache(tokens, names_filter=[name])
  clean = np.asarray(clean[name])
  for value in (0.0, 3.0):  # one compiled function serves every value
    _, c = model.run_with_cache(tokens, names_filter=[name],
                                interventions={name: iv.fix_neurons([3], value)})
    got = np.asarray(c[name])
    np.testing.assert_array_equal(got[..., 3], value)
    np.testing.assert_array_equal(np.delete(got, 3, -1), np.delete(clean, 3, -1))
  _, c = model.run_with_cache(tokens, names_filter=[name],
                              interventions={name: iv.scale_neurons([1, 2], 2.0)})
  np.testing.assert_allclose(np.asarray(c[name])[..., 1:3], 2 * clean[..., 1:3], rtol=1e-6)
  vec = np.arange(model.config.d_mlp, dtype=np.float32)
  _, c = model.run_with_cache(tokens, names_filter=[name],
                              interventions={name: iv.add_vector(vec)})
  np.testing.assert_allclose(np.asarray(c[name]), clean + vec, rtol=1e-6)
  other = np.random.default_rng(1).integers(0, 200, tokens.shape, dtype=np.int32)
  _, donor = model.run_with_cache(other, names_filter=[name])
  _, c = model.run_with_cache(tokens, names_filter=[name],
                              interventions={name: iv.patch_from(donor[name], [4])})
  np.testing.assert_array_equal(np.asarray(c[name])[..., 4], np.asarray(donor[name])[..., 4])
  # A plain callable works too.
  _, c = model.run_with_cache(tokens, names_filter=[name],
                              interventions={name: lambda x: -x})
  np.testing.assert_allclose(np.asarray(c[name]), -clean)


def test_bfloat16_option_close_to_float32(converted):
  model, _, tokens = converted
  from ucore.models.hooked import HookedTransformer
  bf16 = HookedTransformer(model.config, model.params, dtype=jnp.bfloat16)
  a = np.asarray(model.run_with_cache(tokens)[0])   # float32 (the every-hook program, compiled)
  b = np.asarray(bf16(tokens))
  assert b.dtype == np.float32
  # bfloat16 has an 8-bit mantissa: agreement to ~1e-2 relative is the expected precision.
  assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
  assert np.abs(a - b).max() > 0  # it really computed in bfloat16
  # Scores and softmax stay float32 in a bf16 forward: the pattern is a float32 distribution,
  # and the fused path (no attention hooks wanted) computes the same attention as the
  # explicit one up to bf16 rounding of its output.
  logits_hooked, cache = bf16.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_pattern"])
  pattern = np.asarray(cache["blocks.0.attn.hook_pattern"])
  assert pattern.dtype == np.float32
  np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-6)
  assert np.abs(np.asarray(logits_hooked) - b).max() < 0.02 * np.abs(a).max()


def test_bad_tokens_refused(converted):
  model, _, tokens = converted
  with pytest.raises(UserError, match="token ids"):
    model(np.full((1, 4), 10_000, np.int32))
  with pytest.raises(UserError, match="context"):
    model(np.zeros((1, 33), np.int32))
  with pytest.raises(UserError, match="integer"):
    model(np.zeros((1, 4), np.float32))
