"""Test setup: 8 virtual CPU devices (multi-device code is tested on them), offline hubs."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def model():
  """The planted tiny GPT-2 of tests/planted.py (one per test module: tests may not
  share a mutated model across modules)."""
  from tests import planted
  return planted.planted_model()
