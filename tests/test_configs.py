"""Every config file in configs/ loads (with its documented variants) and documents its launch
command, as `--config=configs/<name>.py[:arg]` would load it."""
import glob
import os

import pytest

from ucore import config_files

VARIANTS = {"tokenize_default": ["tiny", "bpe", "tiny,bpe"], "tokenize_pile": ["1e7", "pythia", "pythia,1e7"],
            "pipeline_default": ["quick", "gpt2", "gpu", "gpu,quick"],
            "train_default": ["gpt2"], "analyze_default": ["planted"]}
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
