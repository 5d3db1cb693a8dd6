"""Bad input to the converter: one-line error, exit status 2, nothing that looks converted.
Also the hub path, exercised offline against a hand-built HF cache."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from converters.convert import convert
from tests import hf_fixtures
from ucore import load_model
from ucore.jobs.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("good")
  cfg = hf_fixtures.hf_config(n_layer=2)
  model = hf_fixtures.random_hf_model(cfg, seed=11)
  return hf_fixtures.write_checkpoint(str(tmp / "hf"), model), model


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def _run_cli(*args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def _assert_no_result(out_dir):
  assert not os.path.exists(os.path.join(out_dir, "manifest.json"))
  parent = os.path.dirname(out_dir)
  if os.path.isdir(parent):
    assert not [n for n in os.listdir(parent) if ".partial-" in n]


def _safetensors_header_keys(path):
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    return json.loads(f.read(n))


def _rewrite_safetensors(path, mutate):
  from safetensors.numpy import load_file, save_file
  tensors = load_file(path)
  mutate(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("case,match", [
    ("truncated", "not a readable safetensors"),
    ("missing_key", "missing tensor 'h.1.mlp.c_fc.bias'"),
    ("unknown_key", "does not use"),
    ("shape", "has shape"),
    ("cross_attention", "add_cross_attention"),
    ("bad_activation", "activation_function"),
    ("no_weights", "has no weights"),
    ("no_config", "no config.json"),
    ("corrupt_config", "cannot parse"),
    ("tied_mismatch", "lm_head.weight differs"),
    ("index_outside", "shard files outside the checkpoint directory"),
    ("index_absolute", "shard files outside the checkpoint directory"),
])
def test_bad_checkpoint_refused(tmp_path, good_checkpoint, case, match):
  src = _copy(good_checkpoint[0], tmp_path / "hf")
  st = os.path.join(src, "model.safetensors")
  cfg_path = os.path.join(src, "config.json")
  cfg = json.load(open(cfg_path))
  if case == "truncated":
    data = open(st, "rb").read()
    open(st, "wb").write(data[: len(data) // 2])
  elif case == "missing_key":
    _rewrite_safetensors(st, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
  elif case == "unknown_key":
    _rewrite_safetensors(st, lambda t: t.__setitem__("transformer.h.1.extra", np.ones(3,
                                                                                     np.float32)))
  elif case == "shape":
    _rewrite_safetensors(st, lambda t: t.__setitem__("transformer.ln_f.bias",
                                                     np.ones(5, np.float32)))
  elif case == "cross_attention":
    cfg["add_cross_attention"] = True
  elif case == "bad_activation":
    cfg["activation_function"] = "swiglu"
  elif case == "no_weights":
    os.unlink(st)
  elif case == "no_config":
    os.unlink(cfg_path)
  elif case == "corrupt_config":
    open(cfg_path, "w").write("{not json")
  elif case == "tied_mismatch":
    def add_head(t):
      t["lm_head.weight"] = t["transformer.wte.weight"] + 1.0
    _rewrite_safetensors(st, add_head)
  elif case in ("index_outside", "index_absolute"):   # issue 10 item 10: containment
    outside = str(tmp_path / "outside.safetensors")
    os.replace(st, outside)
    shard = "../outside.safetensors" if case == "index_outside" else outside
    keys = _safetensors_header_keys(outside)
    json.dump({"weight_map": {k: shard for k in keys if k != "__metadata__"}},
              open(os.path.join(src, "model.safetensors.index.json"), "w"))
  if case in ("cross_attention", "bad_activation"):
    json.dump(cfg, open(cfg_path, "w"))
  out = str(tmp_path / "out")
  with pytest.raises(UserError, match=match):
    convert(src, out)
  _assert_no_result(out)


def test_attention_mask_buffers_are_ignored(tmp_path, good_checkpoint):
  src = _copy(good_checkpoint[0], tmp_path / "hf")
  _rewrite_safetensors(os.path.join(src, "model.safetensors"), lambda t: t.update({
      "transformer.h.0.attn.bias": np.tril(np.ones((1, 1, 32, 32), np.float32)),
      "transformer.h.0.attn.masked_bias": np.array(-1e4, np.float32)}))
  convert(src, str(tmp_path / "out"))
  assert load_model(str(tmp_path / "out")).config.n_layer == 2


def test_cli_success_and_errors(tmp_path, good_checkpoint):
  # The conversion and a non-empty output directory in this process through main.py's
  # parser and dispatch; the bad alias and the hub errors through the real CLI (exit status,
  # last stderr line; the hub's environment is read at import).
  from tests import job_runs
  out = str(tmp_path / "ok")
  status, _, stderr = job_runs.main_in_process("convert", f"--model={good_checkpoint[0]}",
                                               f"--workdir={out}")
  assert status == 0, stderr
  assert os.path.isfile(os.path.join(out, "manifest.json"))
  # Non-empty output directory.
  status, _, stderr = job_runs.main_in_process("convert", f"--model={good_checkpoint[0]}",
                                               f"--workdir={out}")
  assert status == 2 and stderr.strip().splitlines()[-1].startswith("error: output directory")
  # Unknown alias: one line, exit 2, nothing written.
  bad = str(tmp_path / "bad")
  r = _run_cli("convert", "--model=stanford-gpt2-huge-z", f"--workdir={bad}")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("error: unknown model alias")
  assert not os.path.exists(bad)
  # A hub id with no network and no cache.
  r = _run_cli("convert", "--model=stanford-gpt2-small-a", f"--workdir={bad}",
               env_extra={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")})
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: cannot get stanford-gpt2-small-a") and "local" in last
  assert not os.path.exists(bad)


def _fake_hub_cache(cache, repo_id, revision_dirs):
  """HF cache layout: models--org--name/{refs/<rev>, snapshots/<sha>/<files>}."""
  repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
  for rev, (sha, src) in revision_dirs.items():
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    open(os.path.join(repo, "refs", rev), "w").write(sha)
    shutil.copytree(src, os.path.join(repo, "snapshots", sha))


def test_hub_alias_and_revision_from_offline_cache(tmp_path, good_checkpoint):
  cache = str(tmp_path / "hub")
  sha_main, sha_ck = "a" * 40, "b" * 40
  _fake_hub_cache(cache, "stanford-crfm/alias-gpt2-small-x21",
                  {"main": (sha_main, good_checkpoint[0]),
                   "checkpoint-100": (sha_ck, good_checkpoint[0])})
  env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache}
  out = str(tmp_path / "out")
  r = _run_cli("convert", "--model=stanford-gpt2-small-a@checkpoint-100", f"--workdir={out}",
               env_extra=env)
  assert r.returncode == 0, r.stderr
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  assert manifest["source"]["location"] == "stanford-crfm/alias-gpt2-small-x21"
  assert manifest["source"]["revision"] == "checkpoint-100"
  assert manifest["source"]["resolved_commit"] == sha_ck
  # A revision that is not there.
  bad = str(tmp_path / "bad")
  r = _run_cli("convert", "--model=stanford-gpt2-small-a@checkpoint-999", f"--workdir={bad}",
               env_extra=env)
  assert r.returncode == 2 and "checkpoint-999" in r.stderr.strip().splitlines()[-1]
  assert not os.path.exists(bad)
