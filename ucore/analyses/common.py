"""Shared plumbing of the analyses: neuron indices, weights, input checks, the correlation
table reader and figures (on ucore.analyses.canvas, like the report's).

Neuron ids are (layer, neuron), shown as L{layer}.{neuron}; flat index = layer * d_mlp +
neuron (the TransformerLens convention). Token batches are ucore.data.batches; parquet
tables are written with ucore.jobs.atomic.write_parquet.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from ucore.jobs.errors import UserError


# ---- neuron indices ------------------------------------------------------------------------
def neuron_index(n_layer: int, d_mlp: int) -> pd.MultiIndex:
  return pd.MultiIndex.from_product([range(n_layer), range(d_mlp)], names=["layer", "neuron"])


def neuron_name(layer: int, neuron: int) -> str:
  return f"L{int(layer)}.{int(neuron)}"


# ---- weights --------------------------------------------------------------------------------
@dataclasses.dataclass
class Weights:
  """Float64 numpy views of the weights the analyses use.

  w_in [L, D, F] (c_fc kernel), b_in [L, F], w_out [L, F, D] (c_proj kernel),
  w_u [D, V] (lm_head kernel, or wte^T when tied), processed: whether TransformerLens
  processing (fold LN, center writers, center W_U) has been applied."""
  w_in: np.ndarray
  b_in: np.ndarray
  w_out: np.ndarray
  w_u: np.ndarray
  processed: bool


def _np64(x):
  return np.asarray(x, np.float64)


def weights_of(config, params, processed: bool) -> Weights:
  L = config.n_layer
  w_in = np.stack([_np64(params[f"h_{l}"]["mlp"]["c_fc"]["kernel"]) for l in range(L)])
  b_in = np.stack([_np64(params[f"h_{l}"]["mlp"]["c_fc"]["bias"]) for l in range(L)])
  w_out = np.stack([_np64(params[f"h_{l}"]["mlp"]["c_proj"]["kernel"]) for l in range(L)])
  if "lm_head" in params and not config.tie_word_embeddings:
    w_u = _np64(params["lm_head"]["kernel"])
  else:
    w_u = _np64(params["wte"]["embedding"]).T
  return Weights(w_in, b_in, w_out, w_u, processed)


def is_processed(model) -> bool:
  """True when the checkpoint holds every TransformerLens processing step (checkpoints
  converted before value-bias folding existed lack it and are processed again in memory;
  every step leaves already-processed weights unchanged)."""
  from ucore.models.processing import TRANSFORMER_LENS_STEPS
  manifest = getattr(model, "manifest", None) or {}
  return (manifest.get("processing") == "transformer_lens"
          and set(TRANSFORMER_LENS_STEPS) <= set(manifest.get("processing_steps") or ()))


def processed_weights(model) -> Weights:
  """The paper's weight statistics use TransformerLens-processed weights: applies the
  processing in memory unless the checkpoint was converted with --process=transformer_lens."""
  if is_processed(model):
    return weights_of(model.config, model.params, True)
  from ucore.models.processing import process_transformer_lens
  config, params = process_transformer_lens(model.config, model.params)
  return weights_of(config, params, True)


def processed_model(model):
  """The model with processed weights (same function, different parametrisation)."""
  if is_processed(model):
    return model
  from ucore.models.hooked import HookedTransformer
  from ucore.models.processing import TRANSFORMER_LENS_STEPS, process_transformer_lens
  config, params = process_transformer_lens(model.config, model.params)
  return HookedTransformer(config, params,
                           manifest=dict(model.manifest or {}, processing="transformer_lens",
                                         processing_steps=list(TRANSFORMER_LENS_STEPS)),
                           path=getattr(model, "path", None))


# ---- inputs ---------------------------------------------------------------------------------
def vocab_file_of(model=None, store=None) -> str:
  """vocab.json of the model's tokenizer (else the store's, else GPT-2's offline copy)."""
  from ucore.models import tokenizer as tok
  for d in ([os.path.join(model.path, "tokenizer")] if model is not None and
            getattr(model, "path", None) else []) + (
            [store.tokenizer_dir] if store is not None else []):
    files = tok.files_in_dir(d)
    if files is not None:
      return files.vocab
  return tok.gpt2_files_offline().vocab


# ---- correlation results ---------------------------------------------------------------------
CORR_REQUIRED = ("excess_corr", "universal")


def read_corr_table(path: str, config, fingerprint: Optional[str] = None) -> pd.DataFrame:
  """Reads the correlation engine's per-neuron parquet; UserError if missing or if it does not
  describe this model (neuron count / layers / d_mlp, and — when `fingerprint` is given and the
  results carry a summary.json — the weights' fingerprint). `path` may be the tables directory:
  then the table of the model with this fingerprint is chosen (or the only one)."""
  from ucore.corr import tables
  if not path:
    raise UserError("no correlation results given: pass the neurons_<model>.parquet written by "
                    "`python main.py correlate` (config field corr_table)")
  if os.path.isdir(path):
    cands = tables.neuron_models(path)
    if not cands:
      raise UserError(f"correlation directory {path} holds no neurons_*.parquet; run "
                      "`python main.py correlate` first")
    summary = tables.read_summary(path)
    if fingerprint and summary:
      names = [m["name"] for m in summary.get("models", []) if m.get("fingerprint") == fingerprint]
      cands = [c for c in cands if c in names]
      if not cands:
        raise UserError(f"the correlation results in {path} are for models "
                        f"{[m['name'] for m in summary.get('models', [])]}, none with this "
                        f"model's weights (fingerprint {fingerprint[:12]}); pass the results of "
                        "this model")
    elif len(cands) > 1:
      raise UserError(f"correlation directory {path} holds tables for several models "
                      f"{[os.path.basename(tables.neurons_path(path, c)) for c in cands]}; "
                      "pass the file of the analysed model")
    path = tables.neurons_path(path, cands[0])
  if not os.path.isfile(path):
    raise UserError(f"correlation results {path} do not exist; run `python main.py correlate`")
  summary = tables.read_summary(os.path.dirname(os.path.abspath(path)))
  if fingerprint and summary:
    name = tables.model_of(path)
    fps = {m.get("name"): m.get("fingerprint") for m in summary.get("models", [])}
    if name in fps and fps[name] != fingerprint:
      raise UserError(f"correlation results {path} were computed on other weights (fingerprint "
                      f"{str(fps[name])[:12]}, this model {fingerprint[:12]}); pass the results "
                      "of this model or set corr_check_fingerprint=False")
  try:
    df = pd.read_parquet(path)
  except Exception as e:
    raise UserError(f"cannot read correlation results {path}: {e}") from e
  missing = [c for c in CORR_REQUIRED if c not in df.columns]
  if missing:
    raise UserError(f"correlation results {path} lack columns {missing}; expected the "
                    "neurons_<model>.parquet table of `python main.py correlate`")
  if list(df.index.names) != ["layer", "neuron"]:
    if {"layer", "neuron"} <= set(df.columns):
      df = df.set_index(["layer", "neuron"])
    else:
      raise UserError(f"correlation results {path} are not indexed by (layer, neuron)")
  n_expected = config.n_layer * config.d_mlp
  layers = df.index.get_level_values("layer")
  neurons = df.index.get_level_values("neuron")
  if (len(df) != n_expected or layers.max() >= config.n_layer or
      neurons.max() >= config.d_mlp):
    raise UserError(f"correlation results {path} describe {len(df)} neurons (layers up to "
                    f"{layers.max()}, neurons up to {neurons.max()}) but the model has "
                    f"{config.n_layer} layers × {config.d_mlp} neurons; pass the results of "
                    "this model")
  return df.sort_index()


# ---- output ---------------------------------------------------------------------------------


def new_figure(*args, **kwargs):
  """(fig, axes) like pyplot.subplots, on ucore.analyses.canvas (no pyplot state)."""
  from ucore.analyses import canvas
  return canvas.subplots(*args, **kwargs)


def save_figure(fig, path: str) -> str:
  """The analyses' PNGs: ucore.analyses.canvas.save at 110 dpi."""
  from ucore.analyses import canvas
  return canvas.save(fig, path, dpi=110)


def layer_percentiles(df: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
  """Each column as a percentile (0..1] within its layer."""
  cols = [c for c in columns if c in df.columns]
  return df[cols].groupby(level="layer").rank(pct=True)
