"""A planted synthetic family for the correlation driver (tests and dry runs, no models or
data needed): token rows and K "models" whose activations are pure functions of (seed, row).

`build(config.synthetic)` returns (activation sources, token source) that the driver uses like
real ones: the sources follow ucore.corr.activations' interface (they read `rows`, not the
tokens) and the token source follows ucore.data.store.TokenStore's (num_rows, ctx, store_id,
mask_exclude_ids, read_rows, iter_batches with the same row-to-process layout).
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ucore.data.mask import DEFAULT_EXCLUDE_IDS, GPT2_EOS_ID, GPT2_NEWLINE_ID
from ucore.data.store import process_rows


@dataclasses.dataclass
class SyntheticTokens:
  """GPT-2-like rows: <|endoftext|> first, ~8% newlines, other ids < 1000."""
  num_rows: int
  ctx: int
  seed: int = 0
  mask_exclude_ids = DEFAULT_EXCLUDE_IDS

  @property
  def store_id(self):
    return f"synthetic-tokens-{self.num_rows}x{self.ctx}-seed{self.seed}"

  def read_rows(self, start, stop):
    rows = []
    for r in range(start, stop):
      rng = np.random.default_rng([self.seed, 7, r])
      t = rng.integers(0, 1000, self.ctx).astype(np.int32)
      t[0] = GPT2_EOS_ID
      t[rng.random(self.ctx) < 0.08] = GPT2_NEWLINE_ID
      rows.append(t)
    return np.stack(rows) if rows else np.zeros((0, self.ctx), np.int32)

  def iter_batches(self, batch_rows, start_row=0, stop_row=None, process_index=0,
                   process_count=1):
    stop_row = self.num_rows if stop_row is None else min(stop_row, self.num_rows)
    for s in range(start_row, stop_row, batch_rows):
      yield s, self.read_rows(*process_rows(s, batch_rows, stop_row, process_index,
                                            process_count))


class SyntheticFamily:
  """K models with L layers × d neurons. Row r's activations depend only on (seed, r).

  Planted universal neurons: latent k drives neuron P_m[k] of every model m (positions differ
  per model) at correlation ≈ 0.9 → universal. Decoys: a latent shared by the reference and
  one other model only, and a weakly shared latent (ρ ≈ 0.35) → not universal. The reference
  also has a dead (constant) neuron. All activations carry a large offset (GELU-like shape
  plus `offset`).
  Graded neurons (n_graded, default none): latent g drives neuron G_m[g] of every model with
  a coupling rising from weak to strong (cross-model correlation ≈ 0.45 … 0.95), so some sit
  near the universality threshold (interval coverage, benchmarks/interval_coverage.py).
  """

  def __init__(self, n_models=3, n_layers=2, d_mlp=128, n_planted=4, seed=0, offset=100.0,
               ctx=16, n_graded=0):
    self.K, self.L, self.d, self.seed, self.offset, self.ctx = (
        n_models, n_layers, d_mlp, seed, offset, ctx)
    N = n_layers * d_mlp
    self.n_planted, self.n_graded = n_planted, n_graded
    n_lat = n_planted + 2
    self.pos = []           # pos[m][k] = flat neuron driven by latent k in model m
    for m in range(n_models):   # graded neurons after the dead one: earlier positions unchanged
      self.pos.append(np.random.default_rng([seed, 2, m]).permutation(N)[:n_lat + 1 + n_graded])
    self.dead_ref = int(self.pos[0][n_lat])
    rho = np.linspace(0.45, 0.95, n_graded) if n_graded else np.zeros(0)
    self.graded_coupling = np.sqrt(rho / (1 - rho))   # a: corr(a·z + e, a·z + e') = a²/(a²+1)

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
    if self.n_graded:
      g = np.random.default_rng([self.seed, 5, r]).standard_normal((self.ctx, self.n_graded))
      G = P[n_lat_of(self) + 1:]
      a = self.graded_coupling   # unit variance, like the noise neurons: a large variance
      x[:, G] = (a * g + noise[:, G]) / np.sqrt(a * a + 1)   # would dominate the rotations
    y = x * (x > 0) + 0.05 * x                                  # GELU-ish skew
    y = y + self.offset
    if m == 0:
      y[:, self.dead_ref] = self.offset + 0.1
    return y.astype(np.float32)

  def source(self, m):
    return _Source(self, m)


def n_lat_of(fam) -> int:
  """Latents before the dead neuron's position (planted + the two decoys)."""
  return fam.n_planted + 2


class _Source:
  """Model m of a SyntheticFamily as an activation source (ucore.corr.activations)."""

  def __init__(self, fam: SyntheticFamily, m: int):
    self.fam, self.m = fam, m
    self.name = f"synth{m}"
    self.fingerprint = hashlib.sha256(
        f"synthetic:{fam.seed}:{m}:{fam.K}:{fam.L}:{fam.d}:{fam.n_planted}:"
        f"{fam.offset}:{fam.ctx}".encode()
        + (f":graded{fam.n_graded}".encode() if fam.n_graded else b"")).hexdigest()
    self.n_layer, self.d_mlp = fam.L, fam.d

  def acts(self, tokens, layer_ids, rows):
    """Activations of store rows `rows`, zero-padded to the batch's len(tokens) rows."""
    fam = self.fam
    out = np.zeros((tokens.shape[0], fam.ctx, fam.L * fam.d), np.float32)
    if len(rows):
      out[:len(rows)] = np.stack([fam.row_acts(self.m, r) for r in rows])
    out = out.reshape(-1, fam.ctx, fam.L, fam.d)[:, :, list(layer_ids), :]
    return out.reshape(tokens.shape[0], fam.ctx, -1)


def build(syn):
  """(activation sources, token source, family) of a `config.synthetic` ConfigDict."""
  fam = SyntheticFamily(n_models=syn.n_models, n_layers=syn.n_layers, d_mlp=syn.d_mlp,
                        n_planted=syn.n_planted, seed=syn.seed, offset=syn.offset, ctx=syn.ctx,
                        n_graded=int(syn.get("n_graded", 0)))
  store = SyntheticTokens(num_rows=syn.rows, ctx=syn.ctx, seed=syn.seed)
  return [fam.source(m) for m in range(syn.n_models)], store, fam
