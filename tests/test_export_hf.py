"""HF export (converters/export_hf.py): transformers' own PyTorch classes load the exported
directory and give the Flax model's logits (eager attention, float32); `convert` reads it back
into bit-identical weights; what transformers cannot express is refused."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from converters.convert import convert
from converters.export_hf import EXPORT_MANIFEST, export
from tests import hf_fixtures
from ucore import load_model
from ucore.jobs.errors import UserError

TOL = 1e-5   # float32 parity, as the converter's tests
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hf_logits(directory, tokens):
  import torch
  from transformers import AutoModelForCausalLM
  hf = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
  with torch.no_grad():
    out = hf(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()
  return hf, out


def _flat(params, prefix=""):
  out = {}
  for k, v in params.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = np.asarray(v)
  return out


def _assert_export_matches(model_dir, out, tokens, hf_class):
  """Exported -> transformers logits == Flax logits; exported -> convert == same weights."""
  export(model_dir, out)
  model = load_model(model_dir)
  hf, hf_logits = _hf_logits(out, tokens)
  assert type(hf).__name__ == hf_class
  np.testing.assert_allclose(np.asarray(model(tokens)), hf_logits, rtol=0, atol=TOL)
  back = out + "_back"
  manifest = convert(out, back)
  again = load_model(back)
  assert again.config == model.config
  ours, theirs = _flat(model.params), _flat(again.params)
  assert ours.keys() == theirs.keys()
  for k in ours:   # bit-identical, not close
    assert ours[k].dtype == theirs[k].dtype and np.array_equal(ours[k], theirs[k]), k
  assert manifest["params_fingerprint"] == model.fingerprint
  written = json.load(open(os.path.join(out, EXPORT_MANIFEST)))
  assert written["source"]["params_fingerprint"] == model.fingerprint
  assert set(written["sha256"]) == set(os.listdir(out)) - {EXPORT_MANIFEST}
  return model, hf


def _tokens(vocab, shape, seed):
  return np.random.default_rng(seed).integers(0, vocab, shape, dtype=np.int32)


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(activation_function="relu", tie_word_embeddings=False,
         scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
], ids=["gelu_new-tied", "relu-untied-inverse-layer-idx"])
def test_random_gpt2_exports_to_gpt2lmheadmodel(tmp_path, overrides):
  cfg = hf_fixtures.hf_config(**overrides)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=11)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model)
  convert(src, str(tmp_path / "ucore"))
  tokens = _tokens(cfg.vocab_size, (2, 32), 0)
  _, hf = _assert_export_matches(str(tmp_path / "ucore"), str(tmp_path / "out"), tokens,
                                 "GPT2LMHeadModel")
  # The exported tensors are the original HF tensors, bit for bit.
  original = hf_model.state_dict()
  for k, v in hf.state_dict().items():
    if k in original:
      assert np.array_equal(v.numpy(), original[k].numpy()), k
  assert hf.config.activation_function == cfg.activation_function


@pytest.mark.parametrize("overrides", [
    dict(use_parallel_residual=True, rotary_pct=0.25, rotary_emb_base=500),
    dict(use_parallel_residual=False, rotary_pct=1.0, tie_word_embeddings=True,
         attention_bias=False, hidden_act="gelu_new", layer_norm_eps=1e-3),
], ids=["parallel-partial-rotary", "sequential-tied-no-attn-bias"])
def test_random_neox_exports_to_gptneoxforcausallm(tmp_path, overrides):
  cfg = hf_fixtures.neox_config(vocab_size=300, **overrides)
  hf_model = hf_fixtures.random_hf_model(cfg, seed=12)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_model)
  hf_fixtures.write_tokenizer_json(src, ["hello world, hello there"] * 20)
  convert(src, str(tmp_path / "ucore"))
  tokens = _tokens(cfg.vocab_size, (2, 32), 1)
  model, hf = _assert_export_matches(str(tmp_path / "ucore"), str(tmp_path / "out"), tokens,
                                     "GPTNeoXForCausalLM")
  assert hf.config.use_parallel_residual == overrides["use_parallel_residual"]
  # AutoTokenizer reads the exported tokenizer.json and tokenizes as the toolkit does.
  from transformers import AutoTokenizer
  from ucore.models import tokenizer as tokmod
  ours = tokmod.load(tokmod.files_in_dir(os.path.join(model.path, "tokenizer")))
  theirs = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  text = "hello  world, hello there"
  assert theirs.encode(text, add_special_tokens=False) == ours.encode(text).ids


def test_gpt2_vocabulary_checkpoint_exports_an_autotokenizer(tmp_path):
  cfg = hf_fixtures.hf_config(vocab_size=50257, n_layer=1)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_fixtures.random_hf_model(cfg))
  convert(src, str(tmp_path / "ucore"))
  export(str(tmp_path / "ucore"), str(tmp_path / "out"))
  from transformers import AutoTokenizer
  t = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert t.encode("Hello world") == [15496, 995]
  assert t.eos_token == "<|endoftext|>" and t.eos_token_id == 50256
  assert json.load(open(tmp_path / "out" / "config.json"))["eos_token_id"] == 50256


@pytest.fixture(scope="module")
def trained_family(tmp_path_factory):
  """A tiny ReLU family (configs/train_tiny.py: the default pipeline's activation) trained
  through `main.py train`'s wiring on the CLI tests' 300-token BPE store, whose tokenizer it
  carries: test_train_cli's programs, compiled once per session."""
  from configs.train_tiny import get_config
  from tests.bpe_store import build_bpe_store
  from ucore.models import tokenizer as tokmod
  from ucore.train.store_input import train_from_store
  d = tmp_path_factory.mktemp("trained")
  store = build_bpe_store(str(d))
  c = get_config()
  assert c.model.activation_function == "relu"
  c.data.store = store.path
  # fewer evaluations and saves; what is compiled (model, batch, schedule) is unchanged
  c.checkpoint_steps, c.eval_every, c.state_every = (0, c.num_steps), c.num_steps, c.num_steps
  summary = train_from_store(c, str(d / "family"))
  return summary, store.read_rows(0, 64), tokmod.files_in_dir(store.tokenizer_dir)


def test_trained_model_exports_with_its_tokenizer(trained_family, tmp_path):
  summary, rows, files = trained_family
  model_dir = summary["final"][str(summary["seeds"][0])]
  model, hf = _assert_export_matches(model_dir, str(tmp_path / "out"), rows[:2],
                                     "GPT2LMHeadModel")
  assert hf.config.activation_function == "relu"
  from transformers import AutoTokenizer
  from ucore.models import tokenizer as tokmod
  t = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  text = "the dog 3 sat on the mat"
  assert t.encode(text, add_special_tokens=False) == tokmod.load(files).encode(text).ids


def test_processed_checkpoint_is_refused_before_writing(tmp_path):
  cfg = hf_fixtures.hf_config(n_layer=1)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_fixtures.random_hf_model(cfg))
  convert(src, str(tmp_path / "tl"), process="transformer_lens")
  with pytest.raises(UserError, match="unembedding bias"):
    export(str(tmp_path / "tl"), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_cli_exports_and_refuses_bad_input(tmp_path):
  cfg = hf_fixtures.hf_config(n_layer=1)
  src = hf_fixtures.write_checkpoint(str(tmp_path / "hf"), hf_fixtures.random_hf_model(cfg))
  convert(src, str(tmp_path / "ucore"))

  def cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "export", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  # the export in this process through main.py's parser and dispatch; one error of each
  # kind (a bad input's UserError, main.py's flag check) through the real CLI, exit status
  # and last stderr line, the others in this process
  from tests import job_runs
  status, stdout, stderr = job_runs.main_in_process(
      "export", f"--model={tmp_path / 'ucore'}", "--to=hf", f"--workdir={tmp_path / 'out'}")
  assert status == 0, stderr[-2000:]
  assert "GPT2LMHeadModel" in stdout and (tmp_path / "out" / EXPORT_MANIFEST).is_file()
  for args, message, real in (
      ([f"--model={tmp_path / 'ucore'}", f"--workdir={tmp_path / 'out'}"], "is not empty",
       True),
      ([f"--model={tmp_path / 'ucore'}", "--to=onnx", f"--workdir={tmp_path / 'o2'}"],
       "--to='onnx'", False),
      ([f"--model={tmp_path / 'nothing'}", f"--workdir={tmp_path / 'o3'}"], "does not exist",
       False),
      ([f"--model={tmp_path / 'ucore'}", f"--workdir={tmp_path / 'o4'}", "--process=none"],
       "--process is a flag of `convert`", True)):
    if real:
      r = cli(*args)
      status, stderr = r.returncode, r.stderr
    else:
      status, _, stderr = job_runs.main_in_process("export", *args)
    assert status == 2, (args, stderr[-2000:])
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, (args, last)
  assert not any(os.path.exists(tmp_path / o) for o in ("o2", "o3", "o4"))


def test_pipeline_family_exports_with_the_same_logits(pipeline_run, tmp_path):
  """The acceptance case: a seed trained by the default pipeline (its quick variant), exported,
  gives transformers the Flax model's logits on held-out rows of its own token store, and its
  tokenizer through AutoTokenizer."""
  from transformers import AutoTokenizer
  from ucore.data.store import open_store
  from ucore.models import tokenizer as tokmod
  workdir, _ = pipeline_run
  model_dir = os.path.join(workdir, "family", "seed0", "final")
  store = open_store(os.path.join(workdir, "tokens"))
  rows = store.read_rows(store.num_rows - 4, store.num_rows)
  _assert_export_matches(model_dir, str(tmp_path / "out"), rows, "GPT2LMHeadModel")
  ours = tokmod.load(tokmod.files_in_dir(store.tokenizer_dir))
  theirs = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  # held-out text without <|endoftext|> (the toolkit inserts BOS/EOS by id, never by text)
  text = ours.decode([int(t) for t in rows[0] if t not in (store.bos_id, store.eos_id)])
  assert theirs.encode(text, add_special_tokens=False) == ours.encode(text).ids
