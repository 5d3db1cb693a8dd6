"""HookedTransformer: a converted (or trained) GPT-2 or GPT-NeoX with TransformerLens-style
activation access. The same class serves every architecture; `model.config.architecture`
says which one it holds.

  model = ucore.load_model("ckpt/small-a")
  logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_post"))
  logits = model.run_with_hooks(tokens, {"blocks.3.mlp.hook_post": zero_neurons([7])})

A checkpoint directory holds config.json (ucore.models.config), params/ (orbax), tokenizer/ and
manifest.json, which is written last and marks the directory complete.
"""
import dataclasses
import functools
import hashlib
import os
from typing import Callable, Iterable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ucore.jobs import atomic
from ucore.jobs.errors import UserError
from ucore.models.config import LMConfig
from ucore.models.registry import config_from_dict
from ucore.models.transformer import HookOptions, TransformerLM, hook_names
from ucore.models.activation_cache import ActivationCache
from ucore.interventions import Intervention, from_fwd_hooks

MANIFEST = "manifest.json"
CONFIG = "config.json"
PARAMS = "params"
TOKENIZER = "tokenizer"
FORMAT = "ucore-gpt2/1"   # the directory layout (any architecture; config.json says which)

NamesFilter = Union[None, str, Iterable[str], Callable[[str], bool]]


def params_fingerprint(params) -> str:
  """sha256 over every parameter's path, dtype, shape and bytes (identifies the weights)."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    arr = np.ascontiguousarray(np.asarray(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(arr.reshape(-1).view(np.uint8))   # the bytes of tobytes(), without a copy
  return h.hexdigest()


def init_params(config: LMConfig, seed: int = 0):
  module = TransformerLM(config)
  tokens = jnp.zeros((1, min(8, config.n_positions)), jnp.int32)
  return module.init(jax.random.PRNGKey(seed), tokens)["params"]


def abstract_params(config: LMConfig):
  return jax.eval_shape(lambda: init_params(config))


class HookedTransformer:
  """Params + config + a cache of compiled forward functions."""

  def __init__(self, config: LMConfig, params, *, dtype=jnp.float32,
               fingerprint: Optional[str] = None, manifest: Optional[dict] = None,
               path: Optional[str] = None):
    self.config = config
    self.params = params
    self.dtype = jnp.dtype(dtype)
    self._set_options(HookOptions())
    self._fingerprint = fingerprint
    self.manifest = manifest or {}
    self.path = path

  @property
  def fingerprint(self) -> str:
    if self._fingerprint is None:
      self._fingerprint = params_fingerprint(self.params)
    return self._fingerprint

  def place(self, devices=None) -> "HookedTransformer":
    """Puts the weights on `devices` (default: every local device), replicated, once. A
    loaded model's weights are numpy: without this every jitted forward copies them from the
    host again (GPT-2 small: 0.5 GB per call). Returns self."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    devices = list(jax.local_devices() if devices is None else devices)
    sharding = NamedSharding(Mesh(np.array(devices), ("d",)), PartitionSpec())
    self.fingerprint   # from the host copy, before it is replaced
    self.params = jax.device_put(self.params, sharding)
    return self

  @property
  def hook_names(self) -> list[str]:
    return list(self._hook_names)

  # ---- TransformerLens's opt-in hooks (ucore.models.transformer.HookOptions) --------------------
  def _set_options(self, options: HookOptions):
    self.options = options
    self.module = TransformerLM(self.config, dtype=self.dtype, options=options)
    self._hook_names = hook_names(self.config, options)
    self._hook_name_set = frozenset(self._hook_names)

  def set_use_attn_result(self, use: bool):
    """blocks.L.attn.hook_result: each head's output [batch, pos, head, d_model]."""
    self._set_options(dataclasses.replace(self.options, attn_result=bool(use)))

  def set_use_attn_in(self, use: bool):
    """blocks.L.hook_attn_in: resid_pre per head [batch, pos, head, d_model]."""
    self._set_options(dataclasses.replace(self.options, attn_in=bool(use)))

  def set_use_split_qkv_input(self, use: bool):
    """blocks.L.hook_q_input / hook_k_input / hook_v_input, [batch, pos, head, d_model]."""
    self._set_options(dataclasses.replace(self.options, split_qkv_input=bool(use)))

  def set_use_hook_mlp_in(self, use: bool):
    """blocks.L.hook_mlp_in: the stream entering ln2."""
    self._set_options(dataclasses.replace(self.options, mlp_in=bool(use)))

  # ---- input checks -------------------------------------------------------------------
  def _check_tokens(self, tokens):
    if not hasattr(tokens, "shape") or len(tokens.shape) != 2:
      raise UserError(f"tokens must be an integer array [batch, pos]; got shape "
                      f"{getattr(tokens, 'shape', None)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise UserError(f"tokens must be integers; got dtype {tokens.dtype}")
    if tokens.shape[1] > self.config.n_positions:
      raise UserError(f"sequence length {tokens.shape[1]} exceeds the model's context "
                      f"{self.config.n_positions}")
    if isinstance(tokens, np.ndarray) and tokens.size:
      lo, hi = int(tokens.min()), int(tokens.max())
      if lo < 0 or hi >= self.config.vocab_size:
        raise UserError(f"token ids must lie in [0, {self.config.vocab_size}); got "
                        f"[{lo}, {hi}] — is the token store from another tokenizer?")

  def _resolve_names(self, names_filter: NamesFilter) -> frozenset:
    if names_filter is None:
      return self._hook_name_set
    if isinstance(names_filter, str):
      names_filter = [names_filter]
    if callable(names_filter):
      return frozenset(n for n in self._hook_names if names_filter(n))
    names = frozenset(names_filter)
    unknown = names - self._hook_name_set
    if unknown:
      raise UserError(f"unknown hook names {sorted(unknown)[:5]}; see model.hook_names")
    return names

  def _split_interventions(self, interventions, fwd_hooks=None):
    interventions = dict(interventions or {})
    if fwd_hooks:
      tl = from_fwd_hooks(fwd_hooks, self._hook_names)
      both = set(tl) & set(interventions)
      if both:
        raise UserError(f"hooks {sorted(both)[:3]} are given both as interventions and as "
                        "fwd_hooks; pass each hook point one way")
      interventions.update(tl)
    unknown = set(interventions) - self._hook_name_set
    if unknown:
      raise UserError(f"interventions name unknown hooks {sorted(unknown)[:5]}")
    data = {k: v for k, v in interventions.items() if isinstance(v, Intervention)}
    funcs = tuple(sorted(((k, v) for k, v in interventions.items()
                          if not isinstance(v, Intervention)), key=lambda kv: kv[0]))
    for name, fn in funcs:
      if not callable(fn):
        raise UserError(f"intervention for {name} is neither an Intervention nor a callable")
    return data, funcs

  # ---- forward ------------------------------------------------------------------------
  def run_with_cache(self, tokens, names_filter: NamesFilter = None,
                     stop_at_layer: Optional[int] = None,
                     interventions: Optional[Mapping] = None, fwd_hooks=None):
    """Returns (logits, cache). With stop_at_layer=l, the first value is the residual stream
    entering block l. `cache` maps hook name -> array for the requested hooks only (an
    ActivationCache: cache["pattern", 0] works as in TransformerLens).

    interventions: {hook name: Intervention | fn(x) -> x'}; fwd_hooks (TransformerLens style):
    [(hook name | name filter, fn(x, hook) -> x' or None)]."""
    self._check_tokens(tokens)
    if stop_at_layer is not None and not 0 <= stop_at_layer <= self.config.n_layer:
      raise UserError(f"stop_at_layer={stop_at_layer} outside [0, {self.config.n_layer}]")
    names = self._resolve_names(names_filter)
    data, funcs = self._split_interventions(interventions, fwd_hooks)
    fn = _compiled_forward(self.config, self.dtype, names, stop_at_layer, funcs, self.options)
    out, cache = fn(self.params, _host_tokens(tokens), data)
    return out, ActivationCache(cache, self.config.n_layer)

  def run_with_hooks(self, tokens, interventions: Optional[Mapping] = None,
                     stop_at_layer=None, *, fwd_hooks=None):
    """Logits with interventions ({name: Intervention | fn(x)}) and/or TransformerLens
    fwd_hooks=[(name | name filter, fn(x, hook))] applied."""
    return self.run_with_cache(tokens, names_filter=(), stop_at_layer=stop_at_layer,
                               interventions=interventions, fwd_hooks=fwd_hooks)[0]

  def __call__(self, tokens):
    return self.run_with_cache(tokens, names_filter=())[0]

  def neuron_activations(self, tokens, layers: Optional[Iterable[int]] = None,
                         hook: str = "mlp.hook_post", interventions=None):
    """[batch, pos, len(layers) * d_mlp] float32; flat index = layer_position*d_mlp + neuron.
    Stops the forward pass after the last requested layer."""
    layers = list(range(self.config.n_layer)) if layers is None else [int(l) for l in layers]
    if not layers or any(not 0 <= l < self.config.n_layer for l in layers):
      raise UserError(f"layers {layers} must be non-empty and within [0, {self.config.n_layer})")
    names = tuple(f"blocks.{l}.{hook}" for l in layers)
    self._check_tokens(tokens)
    self._resolve_names(names)
    data, funcs = self._split_interventions(interventions)
    fn = _compiled_activations(self.config, self.dtype, names, max(layers) + 1, funcs,
                               self.options)
    return fn(self.params, _host_tokens(tokens), data)


def _host_tokens(tokens):
  """Host tokens as int32 numpy, passed to the jitted forward as they are (jnp.asarray would
  compile a staging program per token shape); device arrays unchanged."""
  return np.asarray(tokens, np.int32) if isinstance(tokens, np.ndarray) else tokens


# ---- the compiled forwards ----------------------------------------------------------------
# Cached per (architecture config, dtype, hooks, interventions' callables, options), not per
# model object: the weights are arguments, so the seeds of one family (and a model loaded
# twice) share one traced and compiled program.
@functools.lru_cache(maxsize=64)
def _compiled_forward(config: LMConfig, dtype, names: frozenset, stop_at_layer, funcs: tuple,
                      options: HookOptions):
  module = TransformerLM(config, dtype=dtype, options=options)
  func_map = dict(funcs)

  def forward(params, tokens, data_interventions):
    cache = {}

    def hook(name, x):
      fn = data_interventions.get(name) or func_map.get(name)
      if fn is not None:
        x = fn(x)
      if name in names:
        cache[name] = x
      return x

    # attention runs fused unless its pattern or scores are cached or replaced
    hook.wants = lambda name: (name in names or name in data_interventions
                               or name in func_map)

    out = module.apply({"params": params}, tokens, hook, stop_at_layer)
    return out, cache

  return jax.jit(forward)


@functools.lru_cache(maxsize=64)
def _compiled_activations(config: LMConfig, dtype, names: tuple, stop_at_layer: int,
                          funcs: tuple, options: HookOptions):
  # Stops after the last requested block (never computes the unembedding) and concatenates
  # inside the compiled function, so no per-layer arrays round-trip through Python.
  forward = _compiled_forward(config, dtype, frozenset(names), stop_at_layer, funcs, options)

  def activations(params, tokens, data_interventions):
    _, cache = forward(params, tokens, data_interventions)
    return jnp.concatenate([cache[n].astype(jnp.float32) for n in names], axis=-1)

  return jax.jit(activations)


# ---- save / load -------------------------------------------------------------------------
class _WrittenInPlace(np.ndarray):
  """A host array orbax writes without its defensive copy: orbax deep-copies numpy arrays
  before an asynchronous write in case the caller changes them meanwhile; save_model waits for
  the write and changes nothing, so that copy (as large as the model) is skipped. The files
  are the same (orbax's numpy handler writes it, as any np.ndarray)."""

  def __deepcopy__(self, memo):
    return self


def save_model(directory: str, config: LMConfig, params, *, manifest: dict,
               tokenizer_files=None) -> str:
  """Writes a complete checkpoint directory atomically; returns the params fingerprint."""
  import orbax.checkpoint as ocp
  from ucore.models import tokenizer as tok
  from ucore import __version__
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory):
    raise UserError(f"output directory {directory} is not empty; choose a new --workdir "
                    "or remove it")
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32).view(_WrittenInPlace),
                                  params)
  fingerprint = params_fingerprint(params)
  with atomic.staged_dir(directory) as staging:
    atomic.write_json(os.path.join(staging, CONFIG), config.to_dict())
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(staging, PARAMS), params)
    ckptr.wait_until_finished()
    if tokenizer_files is not None:
      tok.copy_files(tokenizer_files, os.path.join(staging, TOKENIZER))
    full = dict(manifest, format=FORMAT, toolkit_version=__version__,
                params_fingerprint=fingerprint)
    atomic.write_json(os.path.join(staging, MANIFEST), full)
  return fingerprint


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.isdir(directory):
    raise UserError(f"model directory {directory} does not exist; convert one with "
                    "`python main.py convert --model=... --workdir=...`")
  if not os.path.isfile(path):
    raise UserError(f"{directory} is not a complete converted checkpoint (no {MANIFEST}); "
                    "re-run the conversion into an empty directory")
  try:
    manifest = atomic.read_json(path)
  except ValueError as e:
    raise UserError(f"{path} is corrupt ({e}); re-run the conversion") from e
  if manifest.get("format") != FORMAT:
    raise UserError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
  return manifest


def load_model(directory: str, *, dtype=jnp.float32, verify: bool = True) -> HookedTransformer:
  """Loads a checkpoint written by `save_model` (converter or trainer)."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  manifest = read_manifest(directory)
  try:
    config = config_from_dict(atomic.read_json(os.path.join(directory, CONFIG)))
  except (OSError, ValueError, TypeError) as e:
    raise UserError(f"cannot read {directory}/{CONFIG}: {e}") from e
  target = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract_params(config))
  try:
    params = ocp.StandardCheckpointer().restore(os.path.join(directory, PARAMS), target)
  except Exception as e:  # orbax raises many types for missing/corrupt files
    raise UserError(f"cannot restore params from {directory}/{PARAMS}: "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
  fingerprint = manifest["params_fingerprint"]
  if verify:
    actual = params_fingerprint(params)
    if actual != fingerprint:
      raise UserError(f"params in {directory} do not match the manifest's fingerprint "
                      "(corrupted or modified); re-run the conversion")
  return HookedTransformer(config, params, dtype=dtype, fingerprint=fingerprint, manifest=manifest,
                    path=directory)
