"""Activation and token sources for the correlation driver.

An activation source has: name, fingerprint (identifies the weights), n_layer, d_mlp and
`acts(tokens int32 [b, ctx], layer_ids) -> float32 [b, ctx, len(layer_ids)*d_mlp]`.
A token source has: num_rows, ctx, store_id, iter_batches(...) as ucore.data.store.

`ModelSource` wraps ucore.model.load_model; `synthetic_family` builds a planted family
(models sharing known neurons) with deterministic per-row data, for tests and dry runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from ucore.errors import UserError

EOS, NEWLINE = 50256, 198


def token_mask(tokens, exclude_ids=(EOS, NEWLINE), pad_id=None):
  """True = counted. Delegates to ucore.data.mask when present (same contract)."""
  try:
    from ucore.data.mask import token_mask as tm
  except ImportError:
    tm = None
  if tm is not None:
    return np.asarray(tm(tokens, exclude_ids=tuple(exclude_ids), pad_id=pad_id), bool)
  t = np.asarray(tokens)
  keep = ~np.isin(t, np.asarray(exclude_ids, t.dtype))
  if pad_id is not None:
    keep &= t != pad_id
  return keep


def hook_suffix(hook: str) -> str:
  """'blocks.*.mlp.hook_post' -> 'mlp.hook_post'."""
  parts = hook.split(".")
  if len(parts) < 3 or parts[0] != "blocks" or parts[1] != "*":
    raise UserError(f"hook must look like 'blocks.*.mlp.hook_post', got {hook!r}.")
  return ".".join(parts[2:])


class ModelSource:
  def __init__(self, path: str, name: str, hook: str):
    try:
      from ucore.model import load_model
    except ImportError as e:
      raise UserError(f"cannot load models: ucore.model is unavailable ({e}).")
    if not os.path.exists(path):
      raise UserError(f"model {name}: path {path!r} does not exist; convert it first "
                      "(python main.py convert ...).")
    self.model = load_model(path)
    self.name, self.path, self.hook = name, path, hook_suffix(hook)
    self.fingerprint = str(self.model.fingerprint)
    self.n_layer = int(self.model.config.n_layer)
    self.d_mlp = int(self.model.config.d_mlp)

  def acts(self, tokens, layer_ids):
    return self.model.neuron_activations(tokens, layers=list(layer_ids), hook=self.hook)


# ----------------------------------------------------------------------------- synthetic


@dataclasses.dataclass
class SyntheticTokens:
  num_rows: int
  ctx: int
  seed: int = 0

  @property
  def store_id(self):
    return f"synthetic-tokens-{self.num_rows}x{self.ctx}-seed{self.seed}"

  def read_rows(self, start, stop):
    rows = []
    for r in range(start, stop):
      rng = np.random.default_rng([self.seed, 7, r])
      t = rng.integers(0, 1000, self.ctx).astype(np.int32)
      t[0] = EOS
      t[rng.random(self.ctx) < 0.08] = NEWLINE
      rows.append(t)
    return np.stack(rows) if rows else np.zeros((0, self.ctx), np.int32)

  def iter_batches(self, batch_rows, start_row=0, stop_row=None, process_index=0,
                   process_count=1):
    stop_row = self.num_rows if stop_row is None else min(stop_row, self.num_rows)
    per = batch_rows // process_count
    for s in range(start_row, stop_row, batch_rows):
      e = min(s + batch_rows, stop_row)
      a = min(s + process_index * per, e)
      b = min(a + per, e)
      yield s, self.read_rows(a, b)


class SyntheticFamily:
  """K models with L layers × d neurons. Row r's activations depend only on (seed, r).

  Planted universal neurons: latent k drives neuron P_m[k] of every model m (positions differ
  per model) at correlation ≈ 0.9 → universal. Decoys: a latent shared by the reference and
  one other model only, and a weakly shared latent (ρ ≈ 0.35) → not universal. The reference
  also has a dead (constant) neuron. All activations carry a large offset (GELU-like shape
  plus `offset`).
  """

  def __init__(self, n_models=3, n_layers=2, d_mlp=128, n_planted=4, seed=0, offset=100.0,
               ctx=16):
    self.K, self.L, self.d, self.seed, self.offset, self.ctx = (
        n_models, n_layers, d_mlp, seed, offset, ctx)
    N = n_layers * d_mlp
    rng = np.random.default_rng([seed, 1])
    self.n_planted = n_planted
    n_lat = n_planted + 2
    self.pos = []           # pos[m][k] = flat neuron driven by latent k in model m
    for m in range(n_models):
      self.pos.append(np.random.default_rng([seed, 2, m]).permutation(N)[:n_lat + 1])
    self.dead_ref = int(self.pos[0][n_lat])
    del rng

  def planted_reference(self):
    """Set of (layer, neuron) of the reference that are universal by construction."""
    return {(int(p) // self.d, int(p) % self.d) for p in self.pos[0][:self.n_planted]}

  def row_acts(self, m, r):
    N = self.L * self.d
    lat = np.random.default_rng([self.seed, 3, r]).standard_normal((self.ctx, self.n_planted + 2))
    noise = np.random.default_rng([self.seed, 4, m, r]).standard_normal((self.ctx, N))
    x = noise.copy()
    P = self.pos[m]
    x[:, P[:self.n_planted]] = 2.0 * lat[:, :self.n_planted] + 0.2 * noise[:, P[:self.n_planted]]
    k = self.n_planted
    if m in (0, 1):      # decoy 1: shared by the reference and model 1 only
      x[:, P[k]] = 2.0 * lat[:, k] + 0.2 * noise[:, P[k]]
    x[:, P[k + 1]] = 0.6 * lat[:, k + 1] + noise[:, P[k + 1]]   # decoy 2: weak
    y = x * (x > 0) + 0.05 * x                                  # GELU-ish skew
    y = y + self.offset
    if m == 0:
      y[:, self.dead_ref] = self.offset + 0.1
    return y.astype(np.float32)

  def source(self, m):
    fam = self

    class _S:
      name = f"synth{m}"
      fingerprint = hashlib.sha256(
          f"synthetic:{fam.seed}:{m}:{fam.K}:{fam.L}:{fam.d}:{fam.n_planted}:"
          f"{fam.offset}:{fam.ctx}".encode()
      ).hexdigest()
      n_layer, d_mlp = fam.L, fam.d
      synthetic = True

      def acts(self, tokens, layer_ids, rows=None):
        assert rows is not None
        out = np.stack([fam.row_acts(m, r) for r in rows]) if len(rows) else np.zeros(
            (0, fam.ctx, fam.L * fam.d), np.float32)
        out = out.reshape(len(rows), fam.ctx, fam.L, fam.d)[:, :, list(layer_ids), :]
        return out.reshape(len(rows), fam.ctx, -1)

    return _S()
