"""The architectures this toolkit runs, and config.json -> the right architecture's config.

A converted checkpoint's config.json without `architecture` is a GPT-2 (written before NeoX).
Add an architecture by writing its config class (a subclass of ucore.models.config.LMConfig)
and listing it in ARCHITECTURES.
"""
from ucore.jobs.errors import UserError
from ucore.models.config import LMConfig
from ucore.models.gpt2 import GPT2Config
from ucore.models.neox import NeoXConfig

ARCHITECTURES = (GPT2Config, NeoXConfig)


def _registry() -> dict:
  return {c.ARCHITECTURE: c for c in ARCHITECTURES}


def config_from_dict(d: dict) -> LMConfig:
  """config.json of a converted/trained checkpoint -> the architecture's config."""
  arch = d.get("architecture", "gpt2")
  classes = _registry()
  if arch not in classes:
    raise UserError(f"model config has unknown architecture {arch!r}; known: "
                    f"{', '.join(sorted(classes))}")
  return classes[arch].from_dict(d)


def config_from_hf_dict(hf: dict) -> LMConfig:
  """A HuggingFace config.json -> the config of the architecture its model_type names."""
  model_type = hf.get("model_type", "gpt2")
  for cls in _registry().values():
    if model_type in cls.MODEL_TYPES:
      return cls.from_hf_dict(hf)
  supported = sorted(t for c in _registry().values() for t in c.MODEL_TYPES)
  raise UserError(f"config.json has model_type={model_type!r}; supported: "
                  f"{', '.join(supported)} (GPT-2 and GPT-NeoX/Pythia checkpoints)")
