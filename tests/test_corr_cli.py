"""Correlate configs load; `plan` numbers; bad inputs give one-line errors (exit 2)."""
import glob
import importlib.util
import os
import subprocess
import sys

import pytest

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
  p = P.plan("small", 5, 12, 3072, 768, devices=8, device="h100", compensated=False)
  N = 12 * 3072
  assert p.state_gib_total * 2 ** 30 == 4 * N * N * 4 + 4 * 12 * 3072 ** 2 * 4
  assert p.corr_flops_per_token == 2.0 * 4 * N * N + 2.0 * 4 * 12 * 3072 ** 2
  assert p.pairs == 4 and abs(p.original_accum_gib / 4 * 2 ** 30 / 1e9 - 10.9) < 0.1  # paper §4
  pm = P.plan("medium", 5, 24, 4096, 1024, devices=8, device="h100", compensated=True)
  assert pm.state_gib_per_device == pytest.approx(pm.state_gib_total / 8)


def _main(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_plan_cli_and_bad_inputs(tmp_path):
  r = _main("plan", "--config=configs/correlate_gpt2_medium.py", "--plan_devices=32",
            "--plan_device=tpu-v5p")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "paper gpt2-small" in r.stdout and "paper gpt2-medium" in r.stdout
  assert "GiB/device" in r.stdout and " h at 70%" in r.stdout
  r = _main("plan", "--config=configs/correlate_tiny.py", "--plan_device=abacus")
  assert r.returncode == 2 and "unknown device kind" in r.stderr
  r = _main("correlate", "--config=configs/correlate_gpt2_small.py",
            f"--workdir={tmp_path}", f"--config.token_store={tmp_path}/missing")
  assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error:" in r.stderr
  r = _main("correlate", "--config=configs/correlate_tiny.py", f"--workdir={tmp_path}",
            "--config.mesh.tok=3")
  assert r.returncode == 2 and "mesh" in r.stderr
  r = _main("correlate", "--config=configs/correlate_tiny.py", f"--workdir={tmp_path}",
            "--config.layers=0,7")
  assert r.returncode == 2 and "out of range" in r.stderr
