"""Load an ml_collections config file (configs/<name>.py) the way `--config=file.py:arg` does."""
import importlib.util
import os

# <repo>/configs (this file is <repo>/ucore/jobs/config_files.py).
CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def load(name_or_path: str, arg: str = ""):
  """`name_or_path`: a config name in configs/ ("train_default") or a file path."""
  path = name_or_path if name_or_path.endswith(".py") else os.path.join(
      CONFIG_DIR, name_or_path + ".py")
  spec = importlib.util.spec_from_file_location(
      "_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
