"""Converted Flax GPT-NeoX vs transformers' GPTNeoXForCausalLM (eager attention, float32)."""
import json
import os

import numpy as np
import pytest

from converters.convert import convert
from tests import hf_fixtures
from tests.test_convert_parity import TOL, _log_softmax
from ucore import load_model

SEQ_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
             "attn.hook_pattern", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out")


def _max_diffs(model_dir, hf_model, tokens, relative=()):
  """{name: max |ours - transformers|} over logits, log-probs and every captured hook; hooks
  whose name ends with one of `relative` are divided by the reference's largest |value|."""
  model = load_model(model_dir)
  # every hook compared below that the model has (a parallel block has no hook_resid_mid)
  names = [n for n in (f"blocks.{l}.{h}" for l in range(model.config.n_layer) for h in SEQ_HOOKS)
           if n in model.hook_names]
  logits, cache = model.run_with_cache(tokens, names_filter=names)
  ref_logits, ref_cache = hf_fixtures.reference_activations(hf_model, tokens)
  diffs = {"logits": np.abs(np.asarray(logits) - ref_logits).max(),
           "log_softmax": np.abs(_log_softmax(logits) - _log_softmax(ref_logits)).max()}
  parallel = model.config.parallel_residual
  assert set(ref_cache) <= set(cache), set(ref_cache) - set(cache)
  for l in range(model.config.n_layer):
    for h in SEQ_HOOKS:
      name = f"blocks.{l}.{h}"
      if parallel and h == "hook_resid_mid":
        assert name not in cache and name not in model.hook_names
        continue
      diffs[name] = np.abs(np.asarray(cache[name]) - ref_cache[name]).max()
      if name.endswith(tuple(relative)):
        diffs[name] /= np.abs(ref_cache[name]).max()
  return model, diffs


def _assert_parity(model_dir, hf_model, tokens, relative=()):
  model, diffs = _max_diffs(model_dir, hf_model, tokens, relative)
  bad = {k: float(v) for k, v in diffs.items() if not v <= TOL}
  assert not bad, bad
  return model


def _tokens(cfg, shape, seed):
  return np.random.default_rng(seed).integers(0, cfg.vocab_size, shape, dtype=np.int32)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("rotary_pct", [0.25, 1.0])
def test_parity_residual_and_rotary(tmp_path, parallel, rotary_pct):
  cfg = hf_fixtures.neox_config(use_parallel_residual=parallel, rotary_pct=rotary_pct,
                                rotary_emb_base=500)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=1)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model)
  convert(src, str(tmp_path / "out"))
  model = _assert_parity(str(tmp_path / "out"), hf_model, _tokens(cfg, (2, 32), 0))
  assert model.config.architecture == "gpt_neox"
  assert model.config.parallel_residual == parallel
  assert model.config.rotary_dim == int(16 * rotary_pct)
  assert model.config.rotary_base == 500.0
  assert "wpe" not in model.params


@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_parity_tied_no_attention_bias_and_activation(tmp_path, activation):
  cfg = hf_fixtures.neox_config(tie_word_embeddings=True, attention_bias=False,
                                hidden_act=activation, layer_norm_eps=1e-3,
                                use_parallel_residual=False, num_hidden_layers=2)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=2)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model)
  convert(src, str(tmp_path / "out"))
  model = _assert_parity(str(tmp_path / "out"), hf_model, _tokens(cfg, (3, 17), 1))
  assert model.config.tie_word_embeddings and "lm_head" not in model.params
  assert "bias" not in model.params["h_0"]["attn"]["c_attn"]
  assert model.config.layer_norm_epsilon == 1e-3


def test_parity_float16_legacy_bin_with_old_buffers(tmp_path):
  """Pythia's hub files: float16 .bin, embed_out, old buffers, rotary_pct/rotary_emb_base."""
  # test_parity_residual_and_rotary[1.0-True]'s config (one compiled program for both);
  # rotary_pct and the base differ from the defaults, so the legacy keys must be read
  cfg = hf_fixtures.neox_config(rotary_pct=1.0, rotary_emb_base=500)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=3)
  src = hf_fixtures.write_neox_legacy_bin(str(tmp_path / "hf"), hf_model)
  keys = __import__("torch").load(os.path.join(src, "pytorch_model.bin"))
  assert "embed_out.weight" in keys and "gpt_neox.layers.0.attention.rotary_emb.inv_freq" in keys
  assert "rotary_pct" in json.load(open(os.path.join(src, "config.json")))
  manifest = convert(src, str(tmp_path / "out"))
  assert manifest["source"]["weight_format"] == "pytorch"
  hf_fixtures.float16_rounded(hf_model)  # the reference holds what the file holds
  model = _assert_parity(str(tmp_path / "out"), hf_model, _tokens(cfg, (2, 32), 2))
  assert model.config.rotary_dim == 16 and model.config.rotary_base == 500.0


def test_parity_sharded_safetensors_and_tokenizer_json_copied(tmp_path):
  cfg = hf_fixtures.neox_config(use_parallel_residual=False, vocab_size=300)  # >= 256 bytes
  hf_model = hf_fixtures.random_hf_model(cfg, seed=4)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model, "sharded")
  tj = _write_tokenizer_json(src)
  manifest = convert(src, str(tmp_path / "out"))
  assert manifest["architecture"] == "gpt_neox"
  model = _assert_parity(str(tmp_path / "out"), hf_model, _tokens(cfg, (2, 32), 3))
  from ucore.models import tokenizer
  files = tokenizer.files_in_dir(os.path.join(model.path, "tokenizer"))
  assert files.tokenizer_json and open(files.tokenizer_json).read() == open(tj).read()
  assert model.manifest["tokenizer_sha256"] == tokenizer.TokenizerFiles(None, None, tj).sha256()
  enc = tokenizer.load(files).encode("hello  world")
  assert enc.ids == tokenizer.load(tokenizer.TokenizerFiles(None, None, tj)).encode(
      "hello  world").ids
  assert tokenizer.vocab_size(files) <= cfg.vocab_size


def _write_tokenizer_json(directory):
  return hf_fixtures.write_tokenizer_json(directory, ["hello world, hello there"] * 20)


@pytest.mark.slow("pythia-160m's exact full-size configuration is the claim")
def test_pythia_160m_full_size_config(tmp_path):
  """EleutherAI/pythia-160m's exact configuration (random weights, full size), as the hub
  serves it: float16 pytorch_model.bin with legacy buffers and config keys."""
  cfg = hf_fixtures.neox_config(
      num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
      max_position_embeddings=2048, vocab_size=50304, rotary_pct=0.25, rotary_emb_base=10000,
      use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5)
  hf_model = hf_fixtures.random_hf_model_direct(cfg, seed=5)
  src = hf_fixtures.write_neox_legacy_bin(str(tmp_path / "hf"), hf_model)
  convert(src, str(tmp_path / "out"))
  hf_fixtures.float16_rounded(hf_model)
  # Residual-stream hooks only: 12 layers of 768/3072-wide float32 sums, reduced in another
  # order by XLA than by torch, accumulate ~1e-5 absolute at |x| ~ 6 (measured 1.05e-5, i.e.
  # 1.7e-6 of the stream's largest value), so they are compared relative to that value (1e-5
  # of it). Logits, log-probs, patterns and every mlp hook stay at 1e-5 absolute (~5e-6).
  model = _assert_parity(str(tmp_path / "out"), hf_model, _tokens(cfg, (1, 64), 5),
                         relative=("hook_resid_pre", "hook_resid_post", "hook_resid_mid"))
  assert model.config.n_neurons == 36864 and model.config.rotary_dim == 16
