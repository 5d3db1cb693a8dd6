"""Converted Flax GPT-2 vs transformers' PyTorch GPT-2 (eager attention, float32)."""
import numpy as np
import pytest

import jax

from converters.convert import convert
from tests import hf_fixtures
from ucore import load_model

TOL = 1e-5  # float32 parity; 1e-2 would hide an attention-scale bug
HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
         "attn.hook_pattern", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out")


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _assert_parity(model_dir, hf_model, tokens):
  model = load_model(model_dir)
  names = [f"blocks.{l}.{h}" for l in range(model.config.n_layer) for h in HOOKS]
  logits, cache = model.run_with_cache(tokens, names_filter=names)   # what is compared below
  ref_logits, ref_cache = hf_fixtures.reference_activations(hf_model, tokens)
  np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=0, atol=TOL)
  np.testing.assert_allclose(_log_softmax(logits), _log_softmax(ref_logits), rtol=0, atol=TOL)
  for l in range(model.config.n_layer):
    for h in HOOKS:
      name = f"blocks.{l}.{h}"
      np.testing.assert_allclose(np.asarray(cache[name]), ref_cache[name], rtol=0, atol=TOL,
                                 err_msg=name)
  return model


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded", "sharded_bin"])
@pytest.mark.parametrize("inverse_layer_idx", [False, True])
@pytest.mark.parametrize("upcast", [False, True])
def test_parity_over_attention_flags_and_formats(tmp_path, fmt, inverse_layer_idx, upcast):
  cfg = hf_fixtures.hf_config(scale_attn_by_inverse_layer_idx=inverse_layer_idx,
                              reorder_and_upcast_attn=upcast)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=1)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model, fmt)
  convert(src, str(tmp_path / "out"))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 32), dtype=np.int32)
  model = _assert_parity(str(tmp_path / "out"), hf_model, tokens)
  assert model.config.scale_attn_by_inverse_layer_idx == inverse_layer_idx
  assert model.config.reorder_and_upcast_attn == upcast


@pytest.mark.parametrize("activation", ["gelu_new", "gelu", "relu", "quick_gelu", "silu",
                                        "gelu_pytorch_tanh"])
def test_parity_activation_functions(tmp_path, activation):
  cfg = hf_fixtures.hf_config(activation_function=activation, n_layer=2, n_head=2, n_embd=48,
                              n_inner=None, scale_attn_by_inverse_layer_idx=True)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=2)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model)
  convert(src, str(tmp_path / "out"))
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (3, 17), dtype=np.int32)
  model = _assert_parity(str(tmp_path / "out"), hf_model, tokens)
  assert model.config.d_mlp == 4 * 48


def test_parity_untied_head_and_unscaled_attention(tmp_path):
  cfg = hf_fixtures.hf_config(tie_word_embeddings=False, scale_attn_weights=False)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=3)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model, "bin")
  convert(src, str(tmp_path / "out"))
  tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 9), dtype=np.int32)
  _assert_parity(str(tmp_path / "out"), hf_model, tokens)


@pytest.mark.slow("the exact full-size Mistral GPT-2 shapes (124M/355M parameters) are the claim")
@pytest.mark.parametrize("size,n_tokens", [("small", 64), ("medium", 8)])
def test_stanford_crfm_full_size_configs(tmp_path, size, n_tokens):
  """The exact Mistral GPT-2 configurations (random weights, full size)."""
  dims = {"small": (12, 768, 12), "medium": (24, 1024, 16)}[size]
  cfg = hf_fixtures.hf_config(
      n_layer=dims[0], n_embd=dims[1], n_head=dims[2], n_inner=None, n_positions=1024,
      n_ctx=1024, vocab_size=50257, activation_function="gelu_new", layer_norm_epsilon=1e-5,
      scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
      bos_token_id=50256, eos_token_id=50256)
  ref = hf_fixtures.random_hf_model_direct(cfg, seed=4)
  # The converter reads the file; the reference is the model that wrote it (torch.save keeps
  # float32 tensors bit for bit, so no second 0.5-1.4 GB load of the same weights).
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), ref, "bin")
  convert(src, str(tmp_path / "out"))
  tokens = np.random.default_rng(3).integers(0, 50257, (1, n_tokens), dtype=np.int32)
  model = _assert_parity(str(tmp_path / "out"), ref, tokens)
  assert model.config.n_neurons == {"small": 36864, "medium": 98304}[size]


def test_processed_weights_keep_log_probs(tmp_path):
  cfg = hf_fixtures.hf_config(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=5)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model)
  convert(src, str(tmp_path / "raw"))
  convert(src, str(tmp_path / "tl"), process="transformer_lens")
  raw, tl = load_model(str(tmp_path / "raw")), load_model(str(tmp_path / "tl"))
  tokens = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 32), dtype=np.int32)
  # raw's logits from the program of the parity test's [True-True] cases (same config, hook
  # set and token shape: compiled once per session)
  names = [f"blocks.{l}.{h}" for l in range(cfg.n_layer) for h in HOOKS]
  raw_logits = raw.run_with_cache(tokens, names_filter=names)[0]
  np.testing.assert_allclose(_log_softmax(tl(tokens)), _log_softmax(raw_logits), rtol=0,
                             atol=TOL)
  # Processing really happened: LayerNorms are identity, writing weights centered.
  p = tl.params
  np.testing.assert_allclose(np.asarray(p["h_0"]["ln_1"]["scale"]), 1.0)
  w_out = np.asarray(p["h_1"]["mlp"]["c_proj"]["kernel"])
  np.testing.assert_allclose(w_out.mean(axis=1), 0.0, atol=1e-6)
  w_u = np.asarray(p["lm_head"]["kernel"])
  np.testing.assert_allclose(w_u.mean(axis=1), 0.0, atol=1e-6)
  assert tl.manifest["processing"] == "transformer_lens"
  assert tl.manifest["processing_steps"][-1] == "fold_value_biases"
  d = cfg.n_embd   # value biases folded into the output bias
  np.testing.assert_array_equal(np.asarray(p["h_0"]["attn"]["c_attn"]["bias"])[2 * d:], 0.0)
  # Neuron activations (what the correlations use) are unchanged by processing.
  np.testing.assert_allclose(np.asarray(tl.neuron_activations(tokens)),
                             np.asarray(raw.neuron_activations(tokens)), rtol=0, atol=TOL)


def test_forward_sharded_over_8_devices_equals_single_device(tmp_path):
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  assert jax.device_count() == 8, "tests run with 8 virtual CPU devices (conftest)"
  cfg = hf_fixtures.hf_config()
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_fixtures.random_hf_model(cfg))
  convert(src, str(tmp_path / "out"))
  model = load_model(str(tmp_path / "out"))
  tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, (16, 32), dtype=np.int32)
  single_logits, single_cache = model.run_with_cache(tokens, names_filter="blocks.2.mlp.hook_post")
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharded_tokens = jax.device_put(tokens, NamedSharding(mesh, P("data")))
  logits, cache = model.run_with_cache(sharded_tokens, names_filter="blocks.2.mlp.hook_post")
  assert len(logits.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(logits), np.asarray(single_logits), rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(cache["blocks.2.mlp.hook_post"]),
                             np.asarray(single_cache["blocks.2.mlp.hook_post"]), rtol=0,
                             atol=1e-6)


def test_manifest_records_sources_and_hashes(tmp_path):
  import hashlib
  cfg = hf_fixtures.hf_config(vocab_size=50257, n_layer=1)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_fixtures.random_hf_model(cfg))
  manifest = convert(src, str(tmp_path / "out"))
  with open(tmp_path / "hf" / "model.safetensors", "rb") as f:
    assert manifest["sha256"]["model.safetensors"] == hashlib.sha256(f.read()).hexdigest()
  model = load_model(str(tmp_path / "out"))
  assert model.manifest["source"]["kind"] == "local"
  assert model.fingerprint == manifest["params_fingerprint"]
  # GPT-2 vocabulary: the offline tokenizer files are written beside the params.
  from ucore.models import tokenizer
  files = tokenizer.files_in_dir(str(tmp_path / "out" / "tokenizer"))
  assert tokenizer.load(files).encode("Hello world").ids == [15496, 995]
