"""Correlate configs load; `plan` numbers; bad inputs give one-line errors (exit 2)."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests import job_runs
from ucore.corr import plan as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "correlate_*.py"))))
def test_every_correlate_config_loads(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  assert c.hook == "blocks.*.mlp.hook_post" and c.threshold == 0.5
  assert "python main.py correlate" in mod.__doc__
  if "gpt2" in path:
    assert len(c.models) == 5 and c.max_tokens == 100_000_000


def test_plan_numbers_match_paper_sizes():
  p = P.plan("small", 5, P.ARCHS["gpt2-small"], devices=8, device="h100", compensated=False)
  N = 12 * 3072
  assert p.state_gib_total * 2 ** 30 == 4 * N * N * 4 + 4 * 12 * 3072 ** 2 * 4
  assert p.corr_flops_per_token == 2.0 * 4 * N * N + 2.0 * 4 * 12 * 3072 ** 2
  assert p.pairs == 4 and abs(p.original_accum_gib / 4 * 2 ** 30 / 1e9 - 10.9) < 0.1  # paper §4
  pm = P.plan("medium", 5, P.ARCHS["gpt2-medium"], devices=8, device="h100", compensated=True)
  assert pm.state_gib_per_device == pytest.approx(pm.state_gib_total / 8)
  # weights: GPT-2 small without LayerNorms and biases (124,439,808 with them)
  assert p.params_per_model == 124_439_808 - 12 * (2304 + 768 + 3072 + 768 + 4 * 768) - 2 * 768
  pp = P.plan("pythia", 4, P.ARCHS["pythia-160m"], devices=8)
  # pythia-160m: 162,322,944 weights with LayerNorms and biases; untied W_U, no position table
  assert pp.params_per_model == 162_322_944 - 12 * (2304 + 768 + 3072 + 768 + 4 * 768) - 2 * 768
  assert pp.weights_gib_per_device == pytest.approx(4 * pp.params_per_model * 4 / 2 ** 30)


def test_plan_reads_the_weight_terms_from_the_model_config(tmp_path):
  from ucore.jobs import config_files
  from ucore.jobs.errors import UserError
  from ucore.models.gpt2 import GPT2Config
  from ucore.models.neox import NeoXConfig
  assert P.Arch.of_model_config(GPT2Config()) == P.ARCHS["gpt2-small"]
  assert P.Arch.of_model_config(NeoXConfig()) == P.ARCHS["pythia-160m"]
  c = config_files.load("correlate_default")
  c.models = [str(tmp_path / "m")]
  os.makedirs(c.models[0])
  path = os.path.join(c.models[0], "config.json")
  neox = NeoXConfig(n_layer=3, n_embd=64, n_head=4, n_positions=96, d_mlp=200, vocab_size=333,
                    tie_word_embeddings=True)
  with open(path, "w") as f:
    json.dump(neox.to_dict(), f)
  assert P.arch_of(c) == P.Arch(3, 200, 64, vocab_size=333, n_positions=96,
                                tie_word_embeddings=True, learned_positions=False)
  gpt2 = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=40, d_mlp=50, vocab_size=77,
                    tie_word_embeddings=False)
  with open(path, "w") as f:
    json.dump({k: v for k, v in gpt2.to_dict().items() if k != "architecture"}, f)  # pre-NeoX
  arch = P.arch_of(c)
  assert arch == P.Arch(2, 50, 32, vocab_size=77, n_positions=40, tie_word_embeddings=False)
  assert arch.n_params() == 2 * (4 * 32 ** 2 + 2 * 32 * 50) + 2 * 77 * 32 + 40 * 32
  with open(path, "w") as f:
    json.dump({"n_layer": 2, "hidden_size": 32}, f)
  with pytest.raises(UserError, match="is .* a converted model"):
    P.arch_of(c)


def _main(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_plan_cli_and_bad_inputs(tmp_path):
  """The real CLI for one bad input (its exit status and one-line stderr); the plan and the
  other bad inputs through main.py's flag parser and dispatch in this process."""
  run = job_runs.main_in_process
  status, out, err = run("plan", "--config=configs/correlate_gpt2_medium.py",
                         "--plan_devices=32", "--plan_device=tpu-v5p")
  assert status == 0, err[-2000:]
  assert "paper gpt2-small" in out and "paper gpt2-medium" in out
  assert "paper pythia-160m" in out
  assert "GiB/device" in out and " h at 70%" in out
  status, _, err = run("plan", "--config=configs/correlate_tiny.py", "--plan_device=abacus")
  assert status == 2 and "unknown device kind" in err
  r = _main("correlate", "--config=configs/correlate_gpt2_small.py",
            f"--workdir={tmp_path}", f"--config.token_store={tmp_path}/missing")
  assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error:" in r.stderr
  # 8 devices here: tok=3 leaves 2 of them out (1 device in the subprocess: 3 > 1)
  status, _, err = run("correlate", "--config=configs/correlate_tiny.py",
                       f"--workdir={tmp_path}", "--config.mesh.tok=3")
  assert status == 2 and "mesh" in err
  status, _, err = run("correlate", "--config=configs/correlate_tiny.py",
                       f"--workdir={tmp_path}", "--config.layers=0,7")
  assert status == 2 and "out of range" in err
