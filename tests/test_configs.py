"""Every config file in configs/ loads (with its documented variants) and documents its launch
command, as `--config=configs/<name>.py[:arg]` would load it."""
import glob
import os

import pytest

from ucore.jobs import config_files

VARIANTS = {"tokenize_default": ["tiny", "bpe", "tiny,bpe"], "tokenize_pile": ["1e7", "pythia", "pythia,1e7"],
            "pipeline_default": ["quick", "gpt2", "gpu", "gpu,quick"],
            "train_default": ["gpt2"], "analyze_default": ["quick"]}
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(config_files.CONFIG_DIR,
                                                                         "*.py")))


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_and_documents_its_command(name):
  text = open(os.path.join(config_files.CONFIG_DIR, name + ".py")).read()
  assert "python main.py" in text, f"configs/{name}.py must show its launch command"
  for arg in [""] + VARIANTS.get(name, []):
    config = config_files.load(name, arg)
    assert config.to_dict(), name


def test_unknown_variant_is_refused():
  with pytest.raises(ValueError, match="quick"):
    config_files.load("pipeline_default", "fast")


# The flags `main.py` parses, and the config the subcommand would get, printed as JSON.
_PARSED = """
import json, sys
from absl import flags
import main
from ucore.cli import common
flags.FLAGS(sys.argv)
print(json.dumps(common.require_config().to_dict()))
"""


def _parsed(*argv):
  import json
  import subprocess
  import sys
  root = os.path.dirname(config_files.CONFIG_DIR)
  r = subprocess.run([sys.executable, "-c", _PARSED, *argv], cwd=root, capture_output=True,
                     text=True, timeout=120, env=dict(os.environ, PYTHONPATH=root))
  assert r.returncode == 0, r.stderr[-2000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_list_fields_from_the_command_line():
  """Issue 10 item 8: comma-separated list/tuple overrides, typed like the default."""
  c = _parsed("--config=configs/correlate_default.py", "--config.models=ckpt/a,ckpt/b",
              "--config.model_names=x,y", "--config.baseline.kinds=haar",
              "--config.exclude_ids=1,2")
  assert c["models"] == ["ckpt/a", "ckpt/b"] and c["model_names"] == ["x", "y"]
  assert c["baseline"]["kinds"] == ["haar"] and c["exclude_ids"] == [1, 2]
  c = _parsed("--config=configs/correlate_default.py", "--config.models=only",
              "--config.exclude_ids=(7, 8)")
  assert c["models"] == ["only"] and c["exclude_ids"] == [7, 8]
  c = _parsed("--config=configs/train_default.py", "--config.seeds=4,5",
              "--config.checkpoint_steps=", "--config.optim.lr=0.5")
  assert c["seeds"] == [4, 5] and c["checkpoint_steps"] == [] and c["optim"]["lr"] == 0.5
  c = _parsed("--config=configs/analyze_default.py", "--config.entropy.fixed_values=1,2.5")
  assert c["entropy"]["fixed_values"] == [1.0, 2.5]
