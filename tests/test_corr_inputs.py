"""Correlate verifies its inputs against each other (issue 10 item 1): a token store made
with a bigger vocabulary than the models' (GPT-2 BPE against 512-token models), or with
another tokenizer than the one the models record, is refused before anything is written."""
import os

import pytest

from tests.test_analyses_cli import _store
from ucore.jobs import config_files
from ucore.models import tokenizer as tokmod
from ucore.corr import driver
from ucore.jobs.errors import UserError
from ucore.models.gpt2 import GPT2Config
from ucore.models.hooked import init_params, save_model


@pytest.fixture(scope="module")
def gpt2_store(tmp_path_factory):
  return _store(tmp_path_factory.mktemp("st"))


def _models(tmp, vocab, sha=None):
  cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, d_mlp=16, vocab_size=vocab)
  paths = []
  for seed in range(2):
    p = str(tmp / f"m{vocab}_{seed}")
    save_model(p, cfg, init_params(cfg, seed=seed),
               manifest={"source": "test", "tokenizer_sha256": sha})
    paths.append(p)
  return paths


def _run(paths, store, wd):
  c = config_files.load("correlate_default")
  c.models, c.model_names, c.token_store = paths, ["a", "b"], store.path
  c.max_tokens, c.batch_rows = 0, 8
  driver.run(c, str(wd))


def test_store_vocabulary_larger_than_models_is_refused(gpt2_store, tmp_path):
  paths = _models(tmp_path, 512)
  with pytest.raises(UserError, match=r"50257-token vocabulary but model a has vocab_size 512"):
    _run(paths, gpt2_store, tmp_path / "run")
  assert not os.path.exists(tmp_path / "run" / "state")


def test_other_tokenizer_is_refused_naming_both(gpt2_store, tmp_path):
  other = "f" * 64
  paths = _models(tmp_path, 50304, sha=other)
  mine = gpt2_store.tokenizer_sha256
  assert mine == tokmod.gpt2_files_offline().sha256()
  with pytest.raises(UserError, match=f"tokenizer {mine[:12]} but model a's tokenizer is ffffff"):
    _run(paths, gpt2_store, tmp_path / "run")


@pytest.mark.parametrize("names,match", [(["../up", "b"], "not a safe name"),
                                         (["a", "/abs"], "not a safe name"),
                                         (["a", "a"], "repeat")])
def test_model_names_must_be_safe_file_names(tmp_path, names, match):
  c = config_files.load("correlate_default")
  c.models, c.model_names = [str(tmp_path / "m0"), str(tmp_path / "m1")], names
  with pytest.raises(UserError, match=match):
    driver.run(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_device_tokens_are_checked_like_host_tokens(tmp_path):
  """Tokens go to the device before the forward, where the model's own host-side range check
  does not run: the driver checks them (a source without a manifest: synthetic rows with ids
  up to 50256 against 512-token models)."""
  from ucore.corr.synthetic import SyntheticTokens
  c = config_files.load("correlate_default")
  c.models, c.model_names = _models(tmp_path, 512), ["a", "b"]
  c.max_tokens, c.batch_rows = 0, 8
  with pytest.raises(UserError, match=r"outside every model's vocabulary \[0, 512\)"):
    driver.run(c, str(tmp_path / "run"), store=SyntheticTokens(num_rows=8, ctx=16, seed=1))
