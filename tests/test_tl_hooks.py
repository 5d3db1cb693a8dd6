"""TransformerLens conventions on both architectures: unembed/token hooks, [batch, pos, d]
hook_pos_embed, -inf masked scores, fwd_hooks=[(name, fn(x, hook))], cache["pattern", 0]."""
import numpy as np
import pytest

from tests.random_params import random_params
from ucore import interventions as iv
from ucore.jobs.errors import UserError
from ucore.models.gpt2 import GPT2Config
from ucore.models.hooked import HookedTransformer
from ucore.models.neox import NeoXConfig

CONFIGS = {
    "gpt2": GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, d_mlp=48, vocab_size=97),
    "neox": NeoXConfig(n_layer=2, n_embd=32, n_head=2, n_positions=16, d_mlp=48, vocab_size=97),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
  cfg = CONFIGS[request.param]
  return HookedTransformer(cfg, random_params(cfg, seed=1))   # init_params' distribution


TOKENS = np.random.default_rng(0).integers(0, 97, (3, 10), dtype=np.int32)


def test_unembed_token_and_embedding_hooks(model):
  logits, cache = model.run_with_cache(TOKENS)
  np.testing.assert_array_equal(cache["hook_tokens"], TOKENS)
  np.testing.assert_array_equal(cache["unembed.hook_out"], logits)
  p = model.params["ln_f"]
  np.testing.assert_allclose(cache["unembed.hook_in"],
                             np.asarray(cache["ln_final.hook_normalized"]) * p["scale"] +
                             p["bias"], rtol=0, atol=1e-6)
  if model.config.positional == "learned":
    assert cache["hook_pos_embed"].shape == (3, 10, 32)
  else:
    assert "hook_pos_embed" not in model.hook_names
    assert cache["blocks.0.attn.hook_rot_q"].shape == cache["blocks.0.attn.hook_q"].shape
  scores = np.asarray(cache["blocks.1.attn.hook_attn_scores"])
  upper = np.triu(np.ones((10, 10), bool), 1)
  assert np.all(scores[..., upper] == -np.inf) and np.all(np.isfinite(scores[..., ~upper]))
  assert np.all(np.isfinite(cache["blocks.1.attn.hook_pattern"]))


def test_fwd_hooks_match_interventions(model):
  name = "blocks.0.mlp.hook_post"
  want = model.run_with_hooks(TOKENS, {name: iv.zero_neurons([3, 5])})
  seen = []

  def zero(x, hook):
    seen.append(hook.name)
    return x.at[..., np.array([3, 5])].set(0)

  got = model.run_with_hooks(TOKENS, fwd_hooks=[(name, zero)])
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert seen == [name]
  # A name filter, and a hook returning None (observe only) which changes nothing.
  recorded = []
  got = model.run_with_hooks(TOKENS, fwd_hooks=[
      (lambda n: n.endswith("mlp.hook_post"), lambda x, hook: recorded.append(hook.name))])
  np.testing.assert_array_equal(np.asarray(got), np.asarray(model(TOKENS)))
  assert recorded == [f"blocks.{l}.mlp.hook_post" for l in range(2)]
  with pytest.raises(UserError, match="both"):
    model.run_with_hooks(TOKENS, {name: iv.zero_neurons()}, fwd_hooks=[(name, zero)])


def test_cache_tuple_keys(model):
  _, cache = model.run_with_cache(TOKENS)
  assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
  assert cache["resid_pre", -1] is cache["blocks.1.hook_resid_pre"]
  assert cache["post", 1] is cache["blocks.1.mlp.hook_post"]
  assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
  assert cache["scale"] is cache["ln_final.hook_scale"]
  assert cache["q", 1] is cache["blocks.1.attn.hook_q"]
  assert ("z", 0) in cache and ("z", 5) not in cache


def test_opt_in_hooks_match_definitions_and_leave_outputs_unchanged(model):
  cfg = model.config
  H, D = cfg.n_head, cfg.n_embd
  want_logits, want = model.run_with_cache(TOKENS)
  for setter in ("set_use_attn_result", "set_use_attn_in", "set_use_split_qkv_input",
                 "set_use_hook_mlp_in"):
    getattr(model, setter)(True)
  try:
    logits, cache = model.run_with_cache(TOKENS)
    np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-5)
    for l in range(cfg.n_layer):
      p = f"blocks.{l}."
      resid_pre = np.asarray(want[p + "hook_resid_pre"])
      for name in ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input"):
        assert cache[p + name].shape == (3, 10, H, D)
        np.testing.assert_allclose(cache[p + name], np.repeat(resid_pre[:, :, None], H, 2),
                                   rtol=0, atol=1e-5)
      mlp_in = resid_pre if cfg.parallel_residual else want[p + "hook_resid_mid"]
      # per-head attention sums the heads in another order: float32 rounding differs
      np.testing.assert_allclose(cache[p + "hook_mlp_in"], mlp_in, rtol=0, atol=1e-5)
      # Each head's result = z_h @ W_O^h; their sum + b_O = hook_attn_out.
      w_o = np.asarray(model.params[f"h_{l}"]["attn"]["c_proj"]["kernel"], np.float64)
      z = np.asarray(want[p + "attn.hook_z"], np.float64)
      result = np.einsum("bphe,hed->bphd", z, w_o.reshape(H, cfg.d_head, D))
      np.testing.assert_allclose(cache[p + "attn.hook_result"], result, rtol=0, atol=1e-5)
      b_o = np.asarray(model.params[f"h_{l}"]["attn"]["c_proj"]["bias"])
      np.testing.assert_allclose(result.sum(2) + b_o, want[p + "hook_attn_out"], rtol=0,
                                 atol=1e-5)
    # Editing one head's query input changes only that head's queries.
    name = "blocks.0.hook_q_input"
    _, c2 = model.run_with_cache(TOKENS, names_filter=["blocks.0.attn.hook_q",
                                                       "blocks.0.attn.hook_k"],
                                 fwd_hooks=[(name, lambda x, hook: x.at[:, :, 1].mul(2.0))])
    q, q2 = np.asarray(cache["blocks.0.attn.hook_q"]), np.asarray(c2["blocks.0.attn.hook_q"])
    np.testing.assert_allclose(q2[:, :, 0], q[:, :, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(c2["blocks.0.attn.hook_k"], cache["blocks.0.attn.hook_k"],
                               rtol=0, atol=1e-6)
  finally:
    for setter in ("set_use_attn_result", "set_use_attn_in", "set_use_split_qkv_input",
                   "set_use_hook_mlp_in"):
      getattr(model, setter)(False)
  assert "blocks.0.attn.hook_result" not in model.hook_names
