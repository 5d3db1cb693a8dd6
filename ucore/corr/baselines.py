"""Random mixing matrices for the baselines (applied to the accumulated moments, one pass).

  haar          Haar-orthogonal R per layer: QR of a standard Gaussian with the sign fix
                (R = Q diag(sign(diag(Rqr)))), seeded by (seed, draw, model, layer).
  gaussian_rows The paper's code: a standard Gaussian matrix with unit-norm rows (not
                orthogonal). Seeded here (the original was not).

Rotating layer l of model y by R maps the cross co-moment block C[:, l] to C[:, l] R^T and
y's second moments to diag(R S_l R^T) (S_l = within-layer co-moment), so every draw is exact
without a second pass over the data.
"""
import numpy as np

KINDS = ("haar", "gaussian_rows")


def _rng(seed: int, kind: str, draw: int, model: int, layer: int):
  kind_id = KINDS.index(kind)
  return np.random.default_rng([int(seed), kind_id, int(draw), int(model), int(layer)])


def mixing_matrix(kind: str, d: int, *, seed: int, draw: int, model: int, layer: int):
  """float64 [d, d]; rotated units are R @ v (row k of R mixes v into unit k)."""
  g = _rng(seed, kind, draw, model, layer).standard_normal((d, d))
  if kind == "haar":
    # scipy's LAPACK QR when present: numpy's np.linalg.qr is ~30× slower on the build
    # machine (same result up to rounding; the sign fix below makes Q unique)
    try:
      import scipy.linalg
      q, r = scipy.linalg.qr(g, mode="economic", check_finite=False)
    except ImportError:
      q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))[None, :]
  if kind == "gaussian_rows":
    return g / np.linalg.norm(g, axis=1, keepdims=True)
  raise ValueError(f"unknown baseline kind {kind!r}; choose from {KINDS}")


def mixing_stack(kind: str, d: int, d_pad: int, layer_ids, *, seed: int, draw: int,
                 model: int) -> np.ndarray:
  """float32 [L, d_pad, d_pad]: one matrix per kept layer, zero outside the real d×d block
  (padded units then have zero variance and are excluded like dead neurons)."""
  out = np.zeros((len(layer_ids), d_pad, d_pad), np.float32)
  for pos, layer in enumerate(layer_ids):
    out[pos, :d, :d] = mixing_matrix(kind, d, seed=seed, draw=draw, model=model, layer=layer)
  return out
