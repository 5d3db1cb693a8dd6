"""ucore: the JAX/Flax toolkit for neuron-universality research (Gurnee et al. 2024).

Layers, lowest first (a package imports only those before it):
  jobs           how a job survives a kill: errors, atomic writes, identity, workdir lock
  interventions  hook functions as data (zero / fix / scale / patch neurons)
  models         the Flax decoder (GPT-2, GPT-NeoX), hooks and cache, processing, tokenizer
  data           text -> token store (tensorstore zarr3)
  train          seed families trained here
  corr           all-pairs neuron correlations, sharded and resumable
  analyses       the paper's analyses on plain arrays and models
  report         figures and the HTML report
  analyze        runs the analyses from a config (model dir + token store + tables)
  sweep          universality over training: a family at many checkpoints (convert, correlate)
  pipeline       the default study end to end
  cli            main.py's subcommands
"""
__version__ = "0.1.0"


def load_model(path, **kwargs):
  """Load a converted or trained GPT-2 / GPT-NeoX checkpoint directory ->
  ucore.models.hooked.HookedTransformer."""
  from ucore.models.hooked import load_model as _load
  return _load(path, **kwargs)


def __getattr__(name):
  # `ucore.HookedTransformer` without importing JAX when only the version is read.
  if name == "HookedTransformer":
    from ucore.models.hooked import HookedTransformer
    return HookedTransformer
  raise AttributeError(f"module 'ucore' has no attribute {name!r}")
