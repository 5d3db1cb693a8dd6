"""Exact streaming moments of many columns: float64, batch-centered, merged with Chan/Pébay.

Each batch's central sums M2, M3, M4 are computed around the batch's own mean in float64, and
batches are merged with Pébay's pairwise formulas (Chan et al. for M2), so neither large mean
offsets nor long streams lose precision (no raw power sums). Results equal scipy.stats on
the concatenated data: skew = sqrt(n) M3 / M2^1.5 (bias=True), kurt = n M4 / M2² (non-excess,
Gaussian = 3).
"""
from __future__ import annotations

import numpy as np


class StreamingMoments:
  """Moments of `num` columns over a stream of row batches [n, num]."""

  def __init__(self, num: int, count_positive: bool = True):
    self.n = 0
    self.mean = np.zeros(num)
    self.m2 = np.zeros(num)
    self.m3 = np.zeros(num)
    self.m4 = np.zeros(num)
    self.positive = np.zeros(num, np.int64) if count_positive else None

  def update(self, x) -> None:
    """x: [n, num] (any float dtype); rows are observations."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
      raise ValueError(f"expected [n, {self.mean.shape[0]}], got {x.shape}")
    nb = x.shape[0]
    if nb == 0:
      return
    mb = x.mean(axis=0)
    d = x - mb
    d2 = d * d
    m2b = d2.sum(axis=0)
    m3b = (d2 * d).sum(axis=0)
    m4b = (d2 * d2).sum(axis=0)
    if self.positive is not None:
      self.positive += (x > 0).sum(axis=0)
    self._merge(nb, mb, m2b, m3b, m4b)

  def merge(self, other: "StreamingMoments") -> None:
    if other.n == 0:
      return
    if self.positive is not None and other.positive is not None:
      self.positive += other.positive
    self._merge(other.n, other.mean, other.m2, other.m3, other.m4)

  def _merge(self, nb, mb, m2b, m3b, m4b):
    na = self.n
    if na == 0:
      self.n, self.mean, self.m2, self.m3, self.m4 = nb, mb.copy(), m2b, m3b, m4b
      return
    n = na + nb
    delta = mb - self.mean
    d_n = delta / n
    d_n2 = d_n * d_n
    term1 = delta * d_n * na * nb
    m2a, m3a, m4a = self.m2, self.m3, self.m4
    self.m4 = (m4a + m4b + term1 * d_n2 * (na * na - na * nb + nb * nb)
               + 6.0 * d_n2 * (na * na * m2b + nb * nb * m2a)
               + 4.0 * d_n * (na * m3b - nb * m3a))
    self.m3 = (m3a + m3b + term1 * d_n * (na - nb)
               + 3.0 * d_n * (na * m2b - nb * m2a))
    self.m2 = m2a + m2b + term1
    self.mean = self.mean + d_n * nb
    self.n = n

  def result(self) -> dict:
    """mean, var (population), skew, kurt (non-excess), sparsity (share > 0); NaN for
    constant columns' skew/kurt and for everything when empty."""
    n = self.n
    nan = np.full_like(self.mean, np.nan)
    if n == 0:
      return dict(mean=nan, var=nan, skew=nan, kurt=nan, sparsity=nan)
    var = self.m2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
      ok = self.m2 > 0
      skew = np.where(ok, np.sqrt(n) * self.m3 / np.where(ok, self.m2, 1.0) ** 1.5, np.nan)
      kurt = np.where(ok, n * self.m4 / np.where(ok, self.m2, 1.0) ** 2, np.nan)
    out = dict(mean=self.mean.copy(), var=var, skew=skew, kurt=kurt)
    out["sparsity"] = (self.positive / n if self.positive is not None else nan)
    return out
