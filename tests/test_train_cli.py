"""`python main.py train`: configs load, a token store trains end to end through the CLI,
the same command resumes/returns, changed configs and bad inputs are one-line errors (exit 2)."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import job_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "train_*.py"))))
def test_every_train_config_loads(path):
  mod = _load(path)
  c = mod.get_config()
  assert "python main.py train" in mod.__doc__
  default = _load(os.path.join(ROOT, "configs", "train_default.py")).get_config()
  assert sorted(c.keys()) == sorted(default.keys())   # tiny shrinks the default, same fields
  assert len(set(c.seeds)) == len(c.seeds) >= 2
  assert 0 in c.checkpoint_steps and max(c.checkpoint_steps) == c.num_steps
  if path.endswith("train_default.py"):
    # a reference seed and at least two partners; attention analyses need a later layer
    assert len(c.seeds) >= 3 and c.model.n_layer >= 2


def _main(*args):
  # the session's device count (XLA_FLAGS) as well as its compilation cache: a program's
  # cache key holds the device count, so the training run loads the programs that
  # test_cli_errors' and test_export_hf's train_tiny runs compiled (or compiles them for them)
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=170)


@pytest.fixture(scope="module")
def bpe_store(tmp_path_factory):
  from tests.bpe_store import build_bpe_store
  return build_bpe_store(str(tmp_path_factory.mktemp("corpus")))


@pytest.mark.slow("trains a family through the CLI, then reruns it with changed flags")
def test_cli_trains_from_a_token_store_and_refuses_changes(bpe_store, tmp_path):
  import ucore
  wd = str(tmp_path / "family")
  args = ["train", "--config=configs/train_tiny.py", f"--workdir={wd}",
          f"--config.data.store={bpe_store.path}"]
  r = _main(*args)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "trained 2 seeds x 20 steps" in r.stdout
  family = json.load(open(os.path.join(wd, "family.json")))
  assert family["seeds"] == [0, 1] and family["checkpoint_steps"] == [0, 10, 20]
  for seed in (0, 1):
    m = ucore.load_model(os.path.join(wd, f"seed{seed}", "final"))
    assert m.manifest["source"] == "trained" and m.manifest["step"] == 20
    assert m.manifest["data"]["store_id"] == bpe_store.store_id
    assert m.config.vocab_size == bpe_store.manifest["tokenizer"]["vocab_size"]
    assert m.config.n_positions == bpe_store.ctx
    # The store's tokenizer travels with the checkpoint (same files, same sha256).
    from ucore.models import tokenizer as tokmod
    files = tokmod.files_in_dir(os.path.join(m.path, "tokenizer"))
    assert files is not None and files.sha256() == bpe_store.tokenizer_sha256
    logits = np.asarray(m(bpe_store.read_rows(0, 2)))
    assert logits.shape == (2, bpe_store.ctx, m.config.vocab_size) and np.isfinite(logits).all()
  # The same command on a complete run returns without training.
  status, stdout, _ = job_runs.main_in_process(*args)
  assert status == 0 and "trained 2 seeds x 20 steps" in stdout
  # A changed config for this workdir is refused with one line naming the field.
  status, _, stderr = job_runs.main_in_process(*args, "--config.optim.lr=0.5")
  assert status == 2
  err = [l for l in stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "different config" in err[0] and "optim.lr" in err[0], stderr[-2000:]


def test_cli_bad_inputs_are_one_line_errors(tmp_path):
  r = _main("train", "--config=configs/train_tiny.py", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2 and "config.data.store is empty" in r.stderr
  # the same kind of exit (a UserError's line, status 2) in this process
  status, _, stderr = job_runs.main_in_process("train", "--config=configs/train_tiny.py",
                                               f"--workdir={tmp_path / 'w'}",
                                               f"--config.data.store={tmp_path / 'nope'}")
  assert status == 2 and "does not exist" in stderr
  status, _, stderr = job_runs.main_in_process("train", f"--workdir={tmp_path / 'w'}")
  assert status == 2 and "--config is required" in stderr


def test_flag_of_another_subcommand_is_refused(tmp_path):
  r = _main("train", "--config=configs/train_tiny.py", f"--workdir={tmp_path / 'w'}",
            "--plan_devices=3")
  assert r.returncode == 2 and "--plan_devices is a flag of `plan`, not of `train`" in r.stderr
  assert not (tmp_path / "w").exists()
