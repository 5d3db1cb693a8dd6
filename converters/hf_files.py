"""Find and read a HF checkpoint's files: config.json and weights.

Weight formats: model.safetensors, sharded safetensors (model.safetensors.index.json),
pytorch_model.bin (torch needed only here), sharded .bin (pytorch_model.bin.index.json).
Hub downloads go through huggingface_hub (which also serves the HF cache offline).
"""
import dataclasses
import json
import os
import zipfile

import numpy as np

from converters.aliases import ModelRef
from ucore.jobs.atomic import sha256_file
from ucore.jobs.errors import UserError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
_TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer.json"]
_PATTERNS_ST = ["config.json", "*.safetensors", "model.safetensors.index.json"] + _TOKENIZER_FILES
_PATTERNS_BIN = (["config.json", "pytorch_model*.bin", "pytorch_model.bin.index.json"] +
                 _TOKENIZER_FILES)


@dataclasses.dataclass
class CheckpointFiles:
  directory: str
  config_path: str
  weight_files: list          # absolute paths, in load order
  weight_format: str          # "safetensors" | "pytorch"
  resolved_revision: str | None = None   # commit sha when downloaded from the hub


def _weights_in(directory: str):
  def index_files(index_name):
    path = os.path.join(directory, index_name)
    try:
      with open(path) as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path} is not a valid weight index ({e})") from e
    files = sorted(set(weight_map.values()))
    root = os.path.realpath(directory)
    outside = [f for f in files if not isinstance(f, str) or os.path.isabs(f) or
               os.path.commonpath([root, os.path.realpath(os.path.join(root, f))]) != root]
    if outside:
      raise UserError(f"{path} names shard files outside the checkpoint directory: "
                      f"{outside[:3]}; shards must lie inside {directory}")
    missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
    if missing:
      raise UserError(f"{path} lists shard files that are missing: {missing[:3]}")
    return [os.path.join(directory, f) for f in files]

  if os.path.isfile(os.path.join(directory, SAFETENSORS)):
    return [os.path.join(directory, SAFETENSORS)], "safetensors"
  if os.path.isfile(os.path.join(directory, SAFETENSORS_INDEX)):
    return index_files(SAFETENSORS_INDEX), "safetensors"
  if os.path.isfile(os.path.join(directory, TORCH_BIN)):
    return [os.path.join(directory, TORCH_BIN)], "pytorch"
  if os.path.isfile(os.path.join(directory, TORCH_BIN_INDEX)):
    return index_files(TORCH_BIN_INDEX), "pytorch"
  return None, None


def locate(ref: ModelRef) -> CheckpointFiles:
  if ref.kind == "local":
    directory, resolved = ref.location, None
  else:
    directory, resolved = _download(ref)
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise UserError(f"{directory} has no config.json; not a HF checkpoint directory")
  files, fmt = _weights_in(directory)
  if not files:
    raise UserError(f"{directory} has no weights ({SAFETENSORS}, {SAFETENSORS_INDEX}, "
                    f"{TORCH_BIN} or {TORCH_BIN_INDEX})")
  return CheckpointFiles(directory, config_path, files, fmt, resolved)


def _download(ref: ModelRef):
  """snapshot_download, safetensors first then .bin; offline it reads the HF cache."""
  try:
    import huggingface_hub as hub
  except ImportError as e:
    raise UserError("huggingface_hub is not installed: pip install -r requirements.txt") from e
  last_error = None
  for patterns in (_PATTERNS_ST, _PATTERNS_BIN):
    try:
      directory = hub.snapshot_download(ref.location, revision=ref.revision,
                                        allow_patterns=patterns)
    except Exception as e:  # network, auth, missing repo/revision: all end the same way
      last_error = e
      break
    if _weights_in(directory)[0]:
      return directory, os.path.basename(os.path.normpath(directory))
  msg = f"{type(last_error).__name__}: {str(last_error).splitlines()[0]}" if last_error else \
      "no weight files in the repository"
  if last_error is not None and "Revision" in type(last_error).__name__:
    raise UserError(f"revision {ref.revision!r} does not exist for {ref.location} ({msg})")
  raise UserError(f"cannot get {ref.describe()} from the hub or the local HF cache ({msg}); "
                  "when offline, pass a local checkpoint directory instead")


def read_config(path: str) -> dict:
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot parse {path}: {e}") from e
  if not isinstance(config, dict):
    raise UserError(f"{path} does not hold a JSON object")
  return config


def read_weights(files: CheckpointFiles) -> dict:
  """All tensors as float32 numpy arrays (float16/bfloat16 upcast), keyed by their HF names."""
  tensors = {}
  for path in files.weight_files:
    part = _read_safetensors(path) if files.weight_format == "safetensors" else _read_torch(path)
    overlap = set(part) & set(tensors)
    if overlap:
      raise UserError(f"tensor {sorted(overlap)[0]} appears in more than one weight file")
    tensors.update(part)
  return tensors


def _read_safetensors(path: str) -> dict:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    raw = load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise UserError(f"{path} is not a readable safetensors file ({e}); re-download it") from e
  except Exception as e:  # bf16 tensors are unreadable by numpy: go through torch
    raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from e
  return {k: np.asarray(v, np.float32) for k, v in raw.items()}


def _read_torch(path: str) -> dict:
  try:
    import torch
  except ImportError as e:
    raise UserError(f"{os.path.basename(path)} is a torch pickle and needs torch: "
                    "pip install torch==2.13.0 (CPU build)") from e
  # A zip-format file (every torch.save since torch 1.6) is memory-mapped: float32 tensors are
  # then read straight from the page cache instead of being copied into fresh memory first.
  mmap = zipfile.is_zipfile(path)
  try:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
  except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
    raise UserError(f"{path} is not a readable PyTorch checkpoint "
                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
  if not isinstance(state, dict):
    raise UserError(f"{path} does not hold a state dict")
  return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()
          if hasattr(v, "detach")}


def sha256_of(files: CheckpointFiles) -> dict:
  return {os.path.basename(p): sha256_file(p) for p in [files.config_path] + files.weight_files}
