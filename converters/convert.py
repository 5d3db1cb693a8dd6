"""HF GPT-2 or GPT-NeoX checkpoint (architecture from config.json's model_type) -> ucore
checkpoint directory (orbax params + config + tokenizer +
manifest). Every source tensor is consumed by the key map or explicitly ignored."""
import logging
import os
import time

import numpy as np

from converters import aliases, gpt2_keymap, hf_files, neox_keymap
from ucore.models import tokenizer as tok
from ucore.jobs.errors import UserError
from ucore.models.config import LMConfig
from ucore.models.registry import config_from_hf_dict
from ucore.models.hooked import save_model
from ucore.models.processing import TRANSFORMER_LENS_STEPS

PROCESSING = ("none", "transformer_lens")


def _set(tree: dict, path: str, value):
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def _get(tree: dict, path: str):
  for p in path.split("/"):
    tree = tree[p]
  return tree


KEYMAPS = {"gpt2": gpt2_keymap, "gpt_neox": neox_keymap}


def _qkv_order(config, value):
  """NeoX packs [head, (q, k, v), d_head] on the output axis; GPT-2 [(q, k, v), head, d_head]."""
  h, dh = config.n_head, config.d_head
  return value.reshape(h, 3, dh, *value.shape[1:]).swapaxes(0, 1).reshape(value.shape)


def _qkv_unorder(config, value):
  """The inverse of _qkv_order: GPT-2's [(q, k, v), head, d_head] -> NeoX's per-head packing."""
  h, dh = config.n_head, config.d_head
  return value.reshape(3, h, dh, *value.shape[1:]).swapaxes(0, 1).reshape(value.shape)


# The value transforms the key maps name: HF tensor -> Flax leaf ...
TRANSFORMS = {
    "copy": lambda config, v: v,
    "transpose": lambda config, v: np.ascontiguousarray(v.T),
    "qkv_kernel": lambda config, v: np.ascontiguousarray(_qkv_order(config, v).T),
    "qkv_bias": _qkv_order,
}
# ... and back, Flax leaf -> HF tensor (the HF export, converters/export_hf.py); every pair is
# a pure permutation, so a round trip is bit-identical.
INVERSE_TRANSFORMS = {
    "copy": lambda config, v: np.ascontiguousarray(v),
    "transpose": lambda config, v: np.ascontiguousarray(v.T),
    "qkv_kernel": lambda config, v: np.ascontiguousarray(_qkv_unorder(config, v.T)),
    "qkv_bias": lambda config, v: np.ascontiguousarray(_qkv_unorder(config, v)),
}


def shape_of(spec: str, config) -> tuple:
  """'3D,F' -> (3 * n_embd, d_mlp)."""
  dims = {"D": config.n_embd, "F": config.d_mlp, "V": config.vocab_size,
          "P": config.n_positions}
  return tuple(int(d[:-1] or 1) * dims[d[-1]] for d in spec.split(","))


def params_from_hf(config, tensors: dict) -> dict:
  """Declarative mapping with full accounting: unknown, missing and misshapen keys refused."""
  keymap = KEYMAPS[config.architecture]
  by_name = {}
  for key, value in tensors.items():
    if any(p.match(key) for p in keymap.IGNORED_PATTERNS):
      continue
    name = key[len(keymap.PREFIX):] if key.startswith(keymap.PREFIX) else key
    if name in by_name:
      raise UserError(f"weights hold both {name} and {keymap.PREFIX}{name}")
    by_name[name] = value
  params = {}
  for hf_key, path, spec, transform in keymap.table(config):
    if hf_key not in by_name:
      raise UserError(f"weights are missing tensor {hf_key!r} required by the config "
                      f"(n_layer={config.n_layer}); the checkpoint is incomplete")
    value = by_name.pop(hf_key)
    if tuple(value.shape) != shape_of(spec, config):
      raise UserError(f"tensor {hf_key} has shape {tuple(value.shape)}, config implies "
                      f"{shape_of(spec, config)}; config.json and weights disagree")
    _set(params, path, TRANSFORMS[transform](config, value))
  heads = [k for k in keymap.LM_HEAD_KEYS if k in by_name]
  if len(heads) > 1:
    raise UserError(f"weights hold two output heads {heads}; cannot tell which one is used")
  lm_head = by_name.pop(heads[0]) if heads else None
  head_name = heads[0] if heads else keymap.LM_HEAD_KEYS[0]
  embedding = _get(params, keymap.EMBEDDING_PATH)
  if config.tie_word_embeddings:
    if lm_head is not None and not np.array_equal(lm_head, embedding):
      raise UserError(f"config ties word embeddings but {head_name} differs from the input "
                      "embedding")
  else:
    if lm_head is None:
      raise UserError("config unties word embeddings (tie_word_embeddings=false) but "
                      f"{' / '.join(keymap.LM_HEAD_KEYS)} is missing")
    if lm_head.shape != (config.vocab_size, config.n_embd):
      raise UserError(f"{head_name} has shape {lm_head.shape}, expected "
                      f"{(config.vocab_size, config.n_embd)}")
    _set(params, "lm_head/kernel", np.ascontiguousarray(lm_head.T))
  if by_name:
    raise UserError(f"weights hold tensors this {keymap.NAME} does not use: "
                    f"{sorted(by_name)[:5]}; not a {keymap.NAME} language-model checkpoint, "
                    "or a larger model than config.json")
  return params


def _tokenizer_for(files: hf_files.CheckpointFiles, config: LMConfig):
  own = tok.files_in_dir(files.directory)
  if own is not None:
    n = tok.vocab_size(own)
    if n > config.vocab_size:
      raise UserError(f"the checkpoint's tokenizer has {n} tokens but the model only "
                      f"{config.vocab_size}")
    return own
  if config.architecture == "gpt2" and config.vocab_size == 50257:
    return tok.gpt2_files_offline()
  logging.warning("no tokenizer files and vocab_size=%d is not GPT-2's: none recorded",
                  config.vocab_size)
  return None


def convert(model: str, workdir: str, process: str = "none") -> dict:
  """Converts `model` (alias | hub id[@rev] | local dir) into `workdir`; returns the manifest."""
  if process not in PROCESSING:
    raise UserError(f"--process={process!r}; choose one of {', '.join(PROCESSING)}")
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise UserError(f"output directory {workdir} is not empty; choose a new --workdir or "
                    "remove it")
  ref = aliases.parse(model)
  start = time.time()
  files = hf_files.locate(ref)
  hf_config = hf_files.read_config(files.config_path)
  config = config_from_hf_dict(hf_config)
  logging.info("reading %s weights from %s", files.weight_format, files.directory)
  params = params_from_hf(config, hf_files.read_weights(files))
  tokenizer_files = _tokenizer_for(files, config)
  if process == "transformer_lens":
    from ucore.models.processing import process_transformer_lens
    config, params = process_transformer_lens(config, params)
  manifest = {
      "source": {"reference": model, "kind": ref.kind, "location": ref.location,
                 "alias": ref.alias, "revision": ref.revision,
                 "resolved_commit": files.resolved_revision,
                 "weight_format": files.weight_format},
      "architecture": config.architecture,
      "sha256": hf_files.sha256_of(files),
      "processing": process,
      # The TransformerLens defaults applied (checkpoints converted before value-bias folding
      # say "transformer_lens" without this list).
      "processing_steps": (list(TRANSFORMER_LENS_STEPS) if process == "transformer_lens"
                           else []),
      "hf_config": hf_config,
      "tokenizer_sha256": tokenizer_files.sha256() if tokenizer_files else None,
  }
  manifest["params_fingerprint"] = save_model(workdir, config, params, manifest=manifest,
                                              tokenizer_files=tokenizer_files)
  logging.info("converted %s -> %s in %.1fs (%d layers, %d neurons)", ref.describe(), workdir,
               time.time() - start, config.n_layer, config.n_neurons)
  return manifest
