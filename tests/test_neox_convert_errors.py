"""Malformed GPT-NeoX checkpoints: one-line error, nothing that looks converted. Config
spellings (legacy and current) and the Pythia aliases/revisions."""
import json
import os
import shutil

import numpy as np
import pytest

from converters import aliases
from converters.convert import convert
from tests import hf_fixtures
from tests.test_convert_errors import (_assert_no_result, _fake_hub_cache, _rewrite_safetensors,
                                       _run_cli)
from ucore import load_model
from ucore.jobs.errors import UserError
from ucore.models.neox import NeoXConfig


@pytest.fixture(scope="module")
def good_neox(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("good_neox")
  cfg = hf_fixtures.neox_config(num_hidden_layers=2)
  model = hf_fixtures.random_hf_model(cfg, seed=12)
  return hf_fixtures.write_checkpoint(str(tmp / "hf"), model)


@pytest.mark.parametrize("case,match", [
    ("missing_key", "missing tensor 'layers.1.mlp.dense_h_to_4h.bias'"),
    ("unknown_key", "GPT-NeoX does not use"),
    ("shape", "has shape"),
    ("missing_head", "embed_out.weight / lm_head.weight is missing"),
    ("two_heads", "two output heads"),
    ("rope_scaling", "rope_scaling"),
    ("rope_type", "rope_type='linear'"),
    ("rope_extra", "rope_parameters set \\['factor'\\]"),
    ("conflicting_rotary", "rotary_pct twice"),
    ("odd_rotary", "is odd"),
    ("head_dim", "head_dim=8"),
    ("activation", "activation_function='swiglu'"),
    ("missing_dim", "lacks hidden_size"),
    ("cross_attention", "add_cross_attention"),
    ("unknown_model_type", "model_type='llama'"),
])
def test_bad_neox_checkpoint_refused(tmp_path, good_neox, case, match):
  src = str(tmp_path / "hf")
  shutil.copytree(good_neox, src)
  st = os.path.join(src, "model.safetensors")
  cfg_path = os.path.join(src, "config.json")
  cfg = json.load(open(cfg_path))
  if case == "missing_key":
    _rewrite_safetensors(st, lambda t: t.pop("gpt_neox.layers.1.mlp.dense_h_to_4h.bias"))
  elif case == "unknown_key":
    _rewrite_safetensors(st, lambda t: t.__setitem__("gpt_neox.layers.1.extra",
                                                     np.ones(3, np.float32)))
  elif case == "shape":
    _rewrite_safetensors(st, lambda t: t.__setitem__(
        "gpt_neox.layers.0.attention.query_key_value.weight", np.ones((64, 64), np.float32)))
  elif case == "missing_head":
    _rewrite_safetensors(st, lambda t: t.pop("embed_out.weight"))  # transformers 5 saves it so
  elif case == "two_heads":
    _rewrite_safetensors(st, lambda t: t.__setitem__("lm_head.weight", t["embed_out.weight"]))
  elif case == "rope_scaling":
    cfg["rope_scaling"] = {"type": "linear", "factor": 2.0}
  elif case == "rope_type":
    cfg["rope_parameters"]["rope_type"] = "linear"
  elif case == "rope_extra":
    cfg["rope_parameters"]["factor"] = 2.0
  elif case == "conflicting_rotary":
    cfg["rotary_pct"] = 0.5     # rope_parameters says 0.25
  elif case == "odd_rotary":
    cfg["rope_parameters"]["partial_rotary_factor"] = 0.0625 * 3   # 16 * 3/16 = 3 dims
  elif case == "head_dim":
    cfg["head_dim"] = 8
  elif case == "activation":
    cfg["hidden_act"] = "swiglu"
  elif case == "missing_dim":
    del cfg["hidden_size"]
  elif case == "cross_attention":
    cfg["add_cross_attention"] = True
  elif case == "unknown_model_type":
    cfg["model_type"] = "llama"
  json.dump(cfg, open(cfg_path, "w"))
  out = str(tmp_path / "out")
  with pytest.raises(UserError, match=match) as e:
    convert(src, out)
  assert "\n" not in str(e.value)
  _assert_no_result(out)


def test_legacy_and_current_config_spellings_agree():
  legacy = {"model_type": "gpt_neox", "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 50304,
            "max_position_embeddings": 2048, "rotary_pct": 0.25, "rotary_emb_base": 10000,
            "use_parallel_residual": True, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
            "tie_word_embeddings": False, "torch_dtype": "float16", "rope_scaling": None,
            "attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0}
  current = hf_fixtures.neox_config(
      hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
      vocab_size=50304, max_position_embeddings=2048).to_dict()
  a, b = NeoXConfig.from_hf_dict(legacy), NeoXConfig.from_hf_dict(current)
  assert a == b == NeoXConfig(n_layer=12, n_embd=768, n_head=12, d_mlp=3072)  # pythia-160m
  assert a.n_neurons == 36864 and a.rotary_dim == 16


def test_pythia_aliases_and_step_revisions():
  ref = aliases.parse("pythia-160m@step1000")
  assert (ref.location, ref.revision) == ("EleutherAI/pythia-160m", "step1000")
  for i in (1, 2, 3):
    assert aliases.parse(f"pythia-160m-seed{i}").location == f"EleutherAI/pythia-160m-seed{i}"
  assert aliases.pythia_revision(143000) == "step143000"


def test_cli_converts_pythia_alias_revision_from_offline_cache(tmp_path):
  """pythia-160m-seed1@step128 through the hub path (a hand-built offline HF cache holding a
  tiny legacy float16 .bin checkpoint)."""
  cfg = hf_fixtures.neox_config(num_hidden_layers=1)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=13)
  src = hf_fixtures.write_neox_legacy_bin(str(tmp_path / "legacy"), hf_model)
  cache = str(tmp_path / "hub")
  _fake_hub_cache(cache, "EleutherAI/pythia-160m-seed1", {"step128": ("c" * 40, src)})
  out = str(tmp_path / "out")
  r = _run_cli("convert", "--model=pythia-160m-seed1@step128", f"--workdir={out}",
               env_extra={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache})
  assert r.returncode == 0, r.stderr
  model = load_model(out)
  assert model.config.architecture == "gpt_neox"
  assert model.manifest["source"]["revision"] == "step128"
  assert model.manifest["source"]["resolved_commit"] == "c" * 40
  assert model.manifest["sha256"]["pytorch_model.bin"]
