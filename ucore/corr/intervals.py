"""Uncertainty of the universal set from the data (blocks of token rows) and the draws.

After the tables pick each neuron's best partner (and, for draw 0 of the primary baseline,
the rotated partner unit that gave the max), the interval pass streams the same token rows
through the models once more (forwards only) and keeps, per block of contiguous rows, the
float64 moments of the 2·N selected pairs only: n, means, centred second moments and the
cross moment of (neuron, best partner) and (neuron, rotated unit). That is O(N) per token
(plus the rotation of the distinct selected units only: O(U·d), U ≈ 40% of the partner's
neurons on the default family), not the O(N²) of the main pass.

Leave-one-block-out (delete-1 block jackknife over `blocks` groups of rows) then gives:
  corr_se__<m>          SE of max_corr against partner m (the partner held fixed: the
                        selection is made once, on all rows)
  baseline_data_se__<m> SE of the baseline against m from the data (draw 0's argmax unit,
                        held fixed; the draws' own spread is baseline_se)
  excess_data_se        SE of excess_corr from the data (jackknife of the replicate excess)
  excess_se             √(excess_data_se² + mean_baseline_se²): data and draws together
The universal count's 95% interval combines blocks (jackknife of the count) and draws
(leave-one-draw-out jackknife of the count); the count jackknifed is the smoothed count
Σ Φ((excess - threshold)/excess_se) (an indicator's jackknife is zero unless a neuron flips,
which with 20 blocks it almost never does), centred on the plain count, and the interval is
of integers (continuity correction: k is in when |k - count| ≤ 1.96·SE + 0.5); plus, where
a model has ≥ 2 partners, the min / max of the count leaving one partner (seed) out.
Replicates move the table's values by the pass's own leave-one-out shift (replicate − the
pass's full-data value), so they agree with the tables at zero shift whatever the rounding.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr

Z95 = 1.959963984540054   # two-sided 95% normal quantile


def block_of_rows(rows, start_row: int, stop_row: int, blocks: int) -> np.ndarray:
  """Block index of store rows: `blocks` contiguous, near-equal groups of [start, stop)."""
  rows = np.asarray(rows, np.int64)
  return ((rows - start_row) * blocks) // max(stop_row - start_row, 1)


def slots_per_batch(batch_rows: int, n_rows: int, blocks: int) -> int:
  """Most distinct blocks one batch of rows can touch."""
  per_block = max(n_rows // blocks, 1)
  return min(blocks, -(-batch_rows // per_block) + 1)


def chunk_tokens(T: int, width: int, budget: int = 1 << 19) -> int:
  """Tokens per scan step of the batch function: the largest divisor of T whose [C, width]
  float32 slab stays within `budget` elements (cache-sized: the sums are memory-bound; 8 to
  16 tokens a step measured fastest on the default family, 3.5x the whole-batch sums), at
  least 8 where T allows (fewer makes the scan's own overhead dominate)."""
  target = max(8, budget // max(width, 1))
  return max(c for c in range(1, min(T, target) + 1) if T % c == 0)


def unit_bucket(n: int, d: int) -> int:
  """n rounded up to a number whose binary form is three leading bits then zeros (1, ..., 8,
  10, 12, 14, 16, 20, 24, 28, 32, 40, ...; at most d): < 25% more rotated units than n, and
  slab widths that repeat across runs, so each compiles once."""
  n = max(1, n)
  step = 1 << max(0, n.bit_length() - 3)
  return min(max(d, 1), -(-n // step) * step)


def distinct_units(unit_flat: list, d: int):
  """Rotated units one partner needs, per kept layer: unit_flat, one flat (layer position ·
  d + unit) int array per pair with that partner -> (rows [L, U] int32 of R's rows to keep,
  padded with row 0; positions: per pair, each own neuron's index into the [L·U] rotated
  slab). Only these units are rotated (a few hundred of d per layer in practice). U is the
  largest layer's count rounded up to its bucket (unit_bucket): runs whose selected units
  differ a little in number share one compiled pass; the padding rows are rotated and never
  read."""
  allu = np.unique(np.concatenate(unit_flat))   # sorted: layer by layer, units within
  lay, unit = allu // d, allu % d
  L = int(lay.max()) + 1 if len(allu) else 1
  first = np.searchsorted(allu, np.arange(L) * d)    # each layer's first entry in allu
  count = np.diff(np.append(first, len(allu)))
  U = unit_bucket(int(count.max()), d)
  rows = np.zeros((L, U), np.int32)
  rows[lay, np.arange(len(allu)) - first[lay]] = unit

  def position(fl):   # layer · U + rank of the unit within its layer
    i = np.searchsorted(allu, fl)
    return (lay[i] * U + i - first[lay[i]]).astype(np.int32)

  return rows, [position(np.asarray(fl)) for fl in unit_flat]


@functools.lru_cache(maxsize=8)   # one jitted pass per (pairs, chunk) in a process: not re-traced
def make_batch_fn(pairs, chunk: int):
  """jit f(acts, w, shifts, part_idx, unit_pos, rots) -> per-slot moments. pairs: ((own,
  part), ...). acts: tuple per model of float32 [T, N_m] (None where unused); w [S, T] the
  slots' token weights (0/1); shifts: {"x<o>": [N_o], "y<i>" / "u<i>": [N_own]} constants
  subtracted before summing (so float32 sums are of small numbers: the first batch's means);
  part_idx / unit_pos: tuple per pair of int32 [N_own] (flat into the partner's kept
  activations / into its rotated slab); rots: tuple per model of [L, U, d] (the rows of R
  for the units rotated) or None. Out: n [S]; per owner (mean, m2) of x [S, N]; per pair the
  same for y (best partner) and u (rotated unit) and the cross moments Σ(x-x̄)(y-ȳ),
  Σ(x-x̄)(u-ū). The T tokens are scanned `chunk` at a time (a cache-sized slab per step: the
  sums are memory-bound, and [T, N] temporaries cost more than the arithmetic)."""
  owners = sorted({o for o, _ in pairs})
  parts = sorted({p for _, p in pairs})
  hi = jax.lax.Precision.HIGHEST

  @jax.jit
  def f(acts, w, shifts, part_idx, unit_pos, rots):
    T, S = w.shape[1], w.shape[0]
    steps = T // chunk
    # The selected rotated units of every partner, for the whole batch (one GEMM per layer).
    rot = {}
    for p in parts:
      L, U, d = rots[p].shape
      rot[p] = jnp.einsum("tld,lud->tlu", acts[p].reshape(T, -1, d)[:, :L], rots[p],
                          precision=hi).reshape(steps, chunk, L * U)
    xs = ({m: acts[m].reshape(steps, chunk, -1) for m in set(owners) | set(parts)}, rot,
          w.reshape(S, steps, chunk).transpose(1, 0, 2))

    def sums(wc, v):
      return jnp.einsum("sc,cn->sn", wc, v, precision=hi)

    def step(acc, inp):
      a, r, wc = inp
      acc = dict(acc)
      xv = {}
      for o in owners:
        xv[o] = a[o] - shifts[f"x{o}"][None]
        acc[f"x{o}"] = (acc[f"x{o}"][0] + sums(wc, xv[o]), acc[f"x{o}"][1] + sums(wc, xv[o] ** 2))
      for i, (o, p) in enumerate(pairs):
        ys = jnp.take(a[p], part_idx[i], axis=1) - shifts[f"y{i}"][None]
        us = jnp.take(r[p], unit_pos[i], axis=1) - shifts[f"u{i}"][None]
        new = (ys, ys * ys, xv[o] * ys, us, us * us, xv[o] * us)
        acc[f"p{i}"] = tuple(s + sums(wc, v) for s, v in zip(acc[f"p{i}"], new))
      return acc, None

    zeros = lambda n: jnp.zeros((S, n), jnp.float32)
    init = {f"x{o}": (zeros(acts[o].shape[1]),) * 2 for o in owners}
    init.update({f"p{i}": (zeros(part_idx[i].shape[0]),) * 6 for i in range(len(pairs))})
    acc, _ = jax.lax.scan(step, init, xs)

    n = w.sum(1)
    inv = 1.0 / jnp.maximum(n, 1.0)

    def moments(c, a, q):   # shift, Σ(v-c), Σ(v-c)² per slot -> mean, centred m2
      return c[None] + a * inv[:, None], q - a * a * inv[:, None]

    out = {"n": n}
    for o in owners:
      out[f"x{o}"] = moments(shifts[f"x{o}"], *acc[f"x{o}"])
    for i, (o, _) in enumerate(pairs):
      xa = acc[f"x{o}"][0]
      ya, yq, xy, ua, uq, xu = acc[f"p{i}"]
      my, m2y = moments(shifts[f"y{i}"], ya, yq)
      mu, m2u = moments(shifts[f"u{i}"], ua, uq)
      out[f"p{i}"] = (my, m2y, xy - xa * ya * inv[:, None], mu, m2u, xu - xa * ua * inv[:, None])
    return out

  return f


def batch_means(out, pairs) -> dict:
  """The means over a batch's slots of every variable in `make_batch_fn`'s output, as the
  `shifts` of the batches after it (zeros where the batch counted no token)."""
  n = np.asarray(out["n"], np.float64)
  wgt = n / max(n.sum(), 1.0)

  def mean(m):
    return (wgt[:, None] * np.asarray(m, np.float64)).sum(0).astype(np.float32)

  shifts = {k: mean(out[k][0]) for k in out if k.startswith("x")}
  for i in range(len(pairs)):
    shifts[f"y{i}"], shifts[f"u{i}"] = mean(out[f"p{i}"][0]), mean(out[f"p{i}"][3])
  return shifts


class Blocks:
  """Per-block float64 moments of the selected pairs, merged batch slot by batch slot
  (Chan's pairwise formulas: exact merges of centred moments)."""

  def __init__(self, blocks: int, pairs, n_own: dict):
    self.B, self.pairs = blocks, list(pairs)
    self.n = np.zeros(blocks)
    self.x = {o: np.zeros((2, blocks, n)) for o, n in n_own.items()}          # mean, m2
    self.p = [np.zeros((6, blocks, n_own[o])) for o, _ in self.pairs]
    # my, m2y, cxy, mu, m2u, cxu

  def add(self, slot_blocks, out) -> None:
    """Merges a batch's per-slot moments (`make_batch_fn`'s output, on the host) into the
    blocks `slot_blocks` [S] (-1: unused slot)."""
    n_s = np.asarray(out["n"], np.float64)
    for s, b in enumerate(slot_blocks):
      if b < 0 or n_s[s] == 0:
        continue
      na, nb = self.n[b], n_s[s]
      nt = na + nb
      f = na * nb / nt
      xd = {}
      for o, acc in self.x.items():
        mean, m2 = (np.asarray(a[s], np.float64) for a in out[f"x{o}"])
        d = mean - acc[0, b]
        xd[o] = d
        acc[1, b] += m2 + d * d * f
        acc[0, b] += d * nb / nt
      for i, (o, _) in enumerate(self.pairs):
        my, m2y, cxy, mu, m2u, cxu = (np.asarray(a[s], np.float64) for a in out[f"p{i}"])
        acc = self.p[i]
        dy, du = my - acc[0, b], mu - acc[3, b]
        acc[2, b] += cxy + xd[o] * dy * f
        acc[5, b] += cxu + xd[o] * du * f
        acc[1, b] += m2y + dy * dy * f
        acc[4, b] += m2u + du * du * f
        acc[0, b] += dy * nb / nt
        acc[3, b] += du * nb / nt
      self.n[b] = nt

  def correlations(self, i: int):
    """Pair i's (full, leave-one-block-out [B, N]) correlations with the best partner and
    with the rotated unit: ((c, c_loo), (u, u_loo)). Blocks are re-centred on the global
    means, so the leave-one-out sums are differences of float64 sums of small numbers."""
    o = self.pairs[i][0]
    n = self.n[:, None]
    N = n.sum()
    mx, m2x = self.x[o]
    my, m2y, cxy, mu, m2u, cxu = self.p[i]
    gx = (n * mx).sum(0) / N
    dx = mx - gx
    ax, qx = n * dx, m2x + n * dx * dx

    def one(mv, m2v, cv):
      gv = (n * mv).sum(0) / N
      dv = mv - gv
      av, qv, c = n * dv, m2v + n * dv * dv, cv + n * dx * dv
      full = _corr(N, ax.sum(0), av.sum(0), qx.sum(0), qv.sum(0), c.sum(0))
      loo = _corr(N - n, ax.sum(0) - ax, av.sum(0) - av, qx.sum(0) - qx, qv.sum(0) - qv,
                  c.sum(0) - c)
      return full, loo

    return one(my, m2y, cxy), one(mu, m2u, cxu)


def _corr(n, ax, ay, qx, qy, c):
  """Pearson from sums about a common shift: Σx, Σy, Σx², Σy², Σxy (n tokens)."""
  with np.errstate(all="ignore"):
    n = np.maximum(n, 1)
    vx, vy = qx - ax * ax / n, qy - ay * ay / n
    r = (c - ax * ay / n) / np.sqrt(vx * vy)
  return np.where((vx > 0) & (vy > 0), r, np.nan)


def jackknife_se(loo: np.ndarray) -> np.ndarray:
  """Delete-1 jackknife SE from replicates [B, ...]: √((B-1)/B Σ (θ_b - θ̄)²)."""
  B = loo.shape[0]
  return np.sqrt((B - 1) / B * np.sum((loo - loo.mean(0)) ** 2, axis=0))


def smoothed_count(excess, threshold, scale) -> np.ndarray:
  """Σ Φ((excess - threshold)/scale) over the last axis (indicator where scale is 0/NaN;
  NaN excess counts 0)."""
  e = np.nan_to_num(excess, nan=-np.inf)
  ok = np.nan_to_num(scale, nan=0.0) > 0
  with np.errstate(invalid="ignore"):
    z = np.where(ok, (e - threshold) / np.where(ok, scale, 1.0),
                 np.where(e > threshold, np.inf, -np.inf))
  return ndtr(z).sum(-1)


def count_interval(excess, excess_se, threshold, block_excess=None, draw_excess=None):
  """(count, lower, upper, half width): the universal count and its 95% interval, integers
  (the normal interval count ± half with the continuity correction ±0.5 of a discrete
  count: k is inside when |k - count| ≤ half + 0.5). block_excess [B, N] and draw_excess
  [D, N]: the leave-one-out replicates of every neuron's excess."""
  e = np.nan_to_num(excess, nan=-np.inf)
  count = int(np.sum(e > threshold))
  var = 0.0
  for reps in (block_excess, draw_excess):
    if reps is not None and reps.shape[0] >= 2:
      var += float(jackknife_se(smoothed_count(reps, threshold, excess_se)[:, None])[0] ** 2)
  half = Z95 * math.sqrt(var)
  n = int(np.sum(np.isfinite(excess)))
  lo = max(0, math.ceil(count - half - 0.5 - 1e-12))
  hi = min(n, math.floor(count + half + 0.5 + 1e-12))
  return count, lo, hi, half


def annotate(agg, partners: list, pass_corr: dict, draws: dict, threshold: float):
  """Adds the interval columns to a neurons table (in place) and returns its summary entry.
  partners: the partner names of its corr__<m> / baseline__<m> columns; pass_corr: {m:
  ((c, c_loo), (u, u_loo))} from Blocks.correlations; draws: {m: [D, N] the primary
  baseline's draws} (D ≥ 1)."""
  live = ~agg["dead"].to_numpy()
  corr = np.stack([agg[f"corr__{m}"].to_numpy(np.float64) for m in partners])      # [M, N]
  base = np.stack([agg[f"baseline__{m}"].to_numpy(np.float64) for m in partners])
  corr[:, ~live], base[:, ~live] = np.nan, np.nan
  corr_rep = np.stack([corr[j] + (pass_corr[m][0][1] - pass_corr[m][0][0])
                       for j, m in enumerate(partners)])                            # [M, B, N]
  base_rep = np.stack([base[j] + (pass_corr[m][1][1] - pass_corr[m][1][0])
                       for j, m in enumerate(partners)])
  for j, m in enumerate(partners):
    agg[f"corr_se__{m}"] = jackknife_se(corr_rep[j])
    agg[f"baseline_data_se__{m}"] = jackknife_se(base_rep[j])
  excess = corr.mean(0) - base.mean(0)
  block_excess = corr_rep.mean(0) - base_rep.mean(0)                                # [B, N]
  data_se = jackknife_se(block_excess)
  draw_se = np.nan_to_num(agg["mean_baseline_se"].to_numpy(np.float64), nan=0.0)
  agg["excess_data_se"] = data_se
  agg["excess_se"] = np.sqrt(data_se ** 2 + draw_se ** 2)
  D = min(d.shape[0] for d in draws.values())
  draw_excess = None
  if D >= 2:   # leave one draw out of every partner's mean baseline
    stack = np.stack([draws[m][:D] for m in partners])                               # [M, D, N]
    loo = (stack.sum(1, keepdims=True) - stack) / (D - 1)
    draw_excess = corr.mean(0)[None] - loo.mean(0)
  se = agg["excess_se"].to_numpy()
  count, lo, hi, half = count_interval(excess, se, threshold, block_excess, draw_excess)
  n = len(agg)
  out = {"count": count, "of": n, "share": count / n,
         "count_ci95": [lo, hi], "share_ci95": [lo / n, hi / n], "half_width": half,
         "blocks": int(block_excess.shape[0]), "draws": int(D),
         "excess_se_median": float(np.nanmedian(se[live])) if live.any() else None}
  if len(partners) >= 2:   # leave one partner (seed) out
    counts = []
    for j in range(len(partners)):
      keep = [k for k in range(len(partners)) if k != j]
      e = corr[keep].mean(0) - base[keep].mean(0)
      counts.append(int(np.sum(np.nan_to_num(e, nan=-np.inf) > threshold)))
    out["leave_one_seed_out"] = {"min": min(counts), "max": max(counts),
                                 "share_min": min(counts) / n, "share_max": max(counts) / n}
  return out

