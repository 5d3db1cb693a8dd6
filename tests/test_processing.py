"""TransformerLens weight processing with value biases folded (TransformerLens's default), for
GPT-2 and GPT-NeoX, against an independent numpy computation from the raw weights."""
import numpy as np
import pytest

from tests import hf_fixtures
from tests.random_params import random_params
from ucore.models.hooked import HookedTransformer
from ucore.models.registry import config_from_hf_dict
from ucore.models.processing import process_transformer_lens

TOL = 1e-5


def _random_model(hf_cfg, seed):
  """A HookedTransformer with random weights and non-trivial LayerNorms and biases."""
  config = config_from_hf_dict(hf_cfg.to_dict())
  rng = np.random.default_rng(seed)
  params = {}

  def fill(tree):  # default init has zero biases and unit LayerNorms: randomize them
    return {k: fill(v) if isinstance(v, dict) else np.asarray(
        v + 0.1 * rng.standard_normal(v.shape) if k in ("scale", "bias") else v, np.float32)
        for k, v in tree.items()}
  params = fill(random_params(config, seed))   # init_params' distribution, no eager init
  return HookedTransformer(config, params)


CASES = {
    "gpt2": lambda: hf_fixtures.hf_config(n_layer=2, scale_attn_by_inverse_layer_idx=True),
    "gpt2_untied": lambda: hf_fixtures.hf_config(n_layer=2, tie_word_embeddings=False),
    "neox_parallel": lambda: hf_fixtures.neox_config(num_hidden_layers=2),
    "neox_sequential_no_bias_tied": lambda: hf_fixtures.neox_config(
        num_hidden_layers=2, use_parallel_residual=False, attention_bias=False,
        tie_word_embeddings=True, rotary_pct=1.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_processing_with_folded_value_biases_matches_numpy(case):
  raw = _random_model(CASES[case](), seed=3)
  cfg = raw.config
  d = cfg.n_embd
  pcfg, pparams = process_transformer_lens(cfg, raw.params)
  proc = HookedTransformer(pcfg, pparams)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12), dtype=np.int32)
  raw_logits, rc = raw.run_with_cache(tokens)
  logits, pc = proc.run_with_cache(tokens)
  # Log-probs unchanged.
  lsm = lambda x: np.asarray(x, np.float64) - np.log(np.exp(np.asarray(x, np.float64)).sum(
      -1, keepdims=True))
  np.testing.assert_allclose(lsm(logits), lsm(raw_logits), rtol=0, atol=TOL)
  for l in range(cfg.n_layer):
    p = {k: {kk: {kkk: np.asarray(vvv, np.float64) for kkk, vvv in vv.items()}
             if isinstance(vv, dict) else np.asarray(vv, np.float64) for kk, vv in v.items()}
         for k, v in raw.params[f"h_{l}"].items()}
    w_v = p["attn"]["c_attn"]["kernel"][:, 2 * d:]
    b_v = p["attn"]["c_attn"].get("bias", np.zeros(3 * d))[2 * d:]
    w_o = p["attn"]["c_proj"]["kernel"]
    b_o = p["attn"]["c_proj"].get("bias", np.zeros(d))
    # Independent: the value bias seen from the normalized stream is ln_bias @ W_V + b_V;
    # TransformerLens's processed hook_v / hook_z lack it.
    b_v_eff = p["ln_1"]["bias"] @ w_v + b_v
    shape = (cfg.n_head, cfg.d_head)
    name = f"blocks.{l}.attn."
    np.testing.assert_allclose(pc[name + "hook_v"], np.asarray(rc[name + "hook_v"]) -
                               b_v_eff.reshape(shape), rtol=0, atol=TOL)
    np.testing.assert_allclose(pc[name + "hook_z"], np.asarray(rc[name + "hook_z"]) -
                               b_v_eff.reshape(shape), rtol=0, atol=TOL)
    # Processed weights: b_V = 0, b_O = centred b_O + b_V_eff @ (W_O centred over d_model).
    pa = pparams[f"h_{l}"]["attn"]
    np.testing.assert_array_equal(np.asarray(pa["c_attn"]["bias"])[2 * d:], 0.0)
    w_o_c = w_o - w_o.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(pa["c_proj"]["bias"], b_o - b_o.mean() + b_v_eff @ w_o_c,
                               rtol=0, atol=TOL)
    np.testing.assert_allclose(pa["c_proj"]["kernel"], w_o_c, rtol=0, atol=TOL)
    # Writers centred: attention output = raw output minus its mean over d_model.
    attn_out = np.asarray(rc[f"blocks.{l}.hook_attn_out"], np.float64)
    np.testing.assert_allclose(pc[f"blocks.{l}.hook_attn_out"],
                               attn_out - attn_out.mean(-1, keepdims=True), rtol=0, atol=TOL)
    # Neuron activations unchanged.
    np.testing.assert_allclose(pc[f"blocks.{l}.mlp.hook_post"], rc[f"blocks.{l}.mlp.hook_post"],
                               rtol=0, atol=TOL)
  assert pcfg.unembed_bias and not pcfg.tie_word_embeddings
  if cfg.architecture == "gpt_neox":
    assert pcfg.attention_bias and "wpe" not in pparams


def test_value_bias_folding_can_be_turned_off():
  raw = _random_model(CASES["gpt2"](), seed=4)
  d = raw.config.n_embd
  _, folded = process_transformer_lens(raw.config, raw.params)
  _, kept = process_transformer_lens(raw.config, raw.params, fold_value_biases=False)
  assert np.abs(np.asarray(kept["h_0"]["attn"]["c_attn"]["bias"])[2 * d:]).max() > 0.1
  np.testing.assert_array_equal(np.asarray(folded["h_0"]["attn"]["c_attn"]["bias"])[2 * d:], 0)


def test_is_processed_requires_every_transformer_lens_step():
  """A checkpoint converted before value-bias folding existed ("transformer_lens" without the
  step list) is processed again in memory; one holding every step is used as it is."""
  import types
  from ucore.analyses.common import is_processed
  from ucore.models.processing import TRANSFORMER_LENS_STEPS
  def model(manifest):
    return types.SimpleNamespace(manifest=manifest)
  assert not is_processed(model({"processing": "transformer_lens"}))
  assert not is_processed(model({"processing": "transformer_lens",
                                 "processing_steps": list(TRANSFORMER_LENS_STEPS[:-1])}))
  assert not is_processed(model({"processing": None,
                                 "processing_steps": list(TRANSFORMER_LENS_STEPS)}))
  assert is_processed(model({"processing": "transformer_lens",
                             "processing_steps": list(TRANSFORMER_LENS_STEPS)}))
