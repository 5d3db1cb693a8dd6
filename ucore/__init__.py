"""ucore: the JAX/Flax toolkit for neuron-universality research (Gurnee et al. 2024)."""
__version__ = "0.1.0"


def load_model(path, **kwargs):
  """Load a converted or trained GPT-2 / GPT-NeoX checkpoint directory ->
  ucore.model.HookedTransformer."""
  from ucore.model import load_model as _load
  return _load(path, **kwargs)
