"""HF GPT-2 checkpoint -> ucore checkpoint directory (orbax params + config + tokenizer +
manifest). Every source tensor is consumed by the key map or explicitly ignored."""
import logging
import os
import time

import numpy as np

from converters import aliases, gpt2_keymap, hf_files
from ucore import tokenizer as tok
from ucore.errors import UserError
from ucore.gpt2_config import GPT2Config
from ucore.model import save_model

PROCESSING = ("none", "transformer_lens")


def _set(tree: dict, path: str, value):
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def expected_shapes(config: GPT2Config) -> dict:
  d, f, v, n = config.n_embd, config.d_mlp, config.vocab_size, config.n_positions
  per_layer = {
      "ln_1.weight": (d,), "ln_1.bias": (d,), "ln_2.weight": (d,), "ln_2.bias": (d,),
      "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
      "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
      "mlp.c_fc.weight": (d, f), "mlp.c_fc.bias": (f,),
      "mlp.c_proj.weight": (f, d), "mlp.c_proj.bias": (d,),
  }
  shapes = {"wte.weight": (v, d), "wpe.weight": (n, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
  for l in range(config.n_layer):
    shapes.update({f"h.{l}.{k}": s for k, s in per_layer.items()})
  return shapes


def params_from_hf(config: GPT2Config, tensors: dict) -> dict:
  """Declarative mapping with full accounting: unknown, missing and misshapen keys refused."""
  by_name = {}
  for key, value in tensors.items():
    if gpt2_keymap.is_ignored(key):
      continue
    name = gpt2_keymap.strip_prefix(key)
    if name in by_name:
      raise UserError(f"weights hold both {name} and transformer.{name}")
    by_name[name] = value
  shapes = expected_shapes(config)
  params = {}
  for hf_key, path in gpt2_keymap.table(config.n_layer):
    if hf_key not in by_name:
      raise UserError(f"weights are missing tensor {hf_key!r} required by the config "
                      f"(n_layer={config.n_layer}); the checkpoint is incomplete")
    value = by_name.pop(hf_key)
    if tuple(value.shape) != shapes[hf_key]:
      raise UserError(f"tensor {hf_key} has shape {tuple(value.shape)}, config implies "
                      f"{shapes[hf_key]}; config.json and weights disagree")
    _set(params, path, value)
  lm_head = by_name.pop(gpt2_keymap.LM_HEAD_KEY, None)
  if config.tie_word_embeddings:
    if lm_head is not None and not np.array_equal(lm_head, params["wte"]["embedding"]):
      raise UserError("config ties word embeddings but lm_head.weight differs from wte.weight")
  else:
    if lm_head is None:
      raise UserError("config unties word embeddings (tie_word_embeddings=false) but "
                      "lm_head.weight is missing")
    if lm_head.shape != (config.vocab_size, config.n_embd):
      raise UserError(f"lm_head.weight has shape {lm_head.shape}, expected "
                      f"{(config.vocab_size, config.n_embd)}")
    _set(params, gpt2_keymap.LM_HEAD_PATH, np.ascontiguousarray(lm_head.T))
  if by_name:
    raise UserError(f"weights hold tensors this GPT-2 does not use: {sorted(by_name)[:5]}; "
                    "not a GPT-2 language-model checkpoint, or a larger model than config.json")
  return params


def _tokenizer_for(files: hf_files.CheckpointFiles, config: GPT2Config):
  own = tok.files_in_dir(files.directory)
  if own is not None:
    n = tok.load(own).get_vocab_size()
    if n > config.vocab_size:
      raise UserError(f"the checkpoint's tokenizer has {n} tokens but the model only "
                      f"{config.vocab_size}")
    return own
  if config.vocab_size == 50257:
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
  config = GPT2Config.from_hf_dict(hf_config)
  logging.info("reading %s weights from %s", files.weight_format, files.directory)
  params = params_from_hf(config, hf_files.read_weights(files))
  tokenizer_files = _tokenizer_for(files, config)
  if process == "transformer_lens":
    from ucore.processing import process_transformer_lens
    config, params = process_transformer_lens(config, params)
  manifest = {
      "source": {"reference": model, "kind": ref.kind, "location": ref.location,
                 "alias": ref.alias, "revision": ref.revision,
                 "resolved_commit": files.resolved_revision,
                 "weight_format": files.weight_format},
      "sha256": hf_files.sha256_of(files),
      "processing": process,
      "hf_config": hf_config,
      "tokenizer_sha256": tokenizer_files.sha256() if tokenizer_files else None,
  }
  manifest["params_fingerprint"] = save_model(workdir, config, params, manifest=manifest,
                                              tokenizer_files=tokenizer_files)
  logging.info("converted %s -> %s in %.1fs (%d layers, %d neurons)", ref.describe(), workdir,
               time.time() - start, config.n_layer, config.n_neurons)
  return manifest
