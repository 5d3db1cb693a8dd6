"""Shared helpers of the correlation engine tests: float64 numpy references (independent
of ucore.corr) and `accumulate`, which streams activations through ucore.corr.moments."""
import numpy as np

BATCHES = (7, 100, 1, 0, 33, 64, 195)   # uneven, an empty and a 1-token batch; sums to 400


def accumulate(acts, mask, layer_ids=None, mode="reference", layer_mode="all",
               compensated=True, mesh=None, batches=BATCHES, precision="highest"):
  """(spec, mesh, Accumulator) after streaming `acts` [T, L, d] per model in `batches`."""
  import jax
  from ucore.corr import moments as M
  mesh = mesh or M.make_mesh(1, 1, jax.devices()[:1])
  K, L, d = len(acts), acts[0].shape[1], acts[0].shape[2]
  layer_ids = layer_ids or [tuple(range(L))] * K
  spec = M.make_spec([f"m{i}" for i in range(K)], layer_ids, d, mesh, mode=mode,
                     layer_mode=layer_mode, compensated=compensated, precision=precision)
  acc = M.Accumulator(spec, mesh)
  s = 0
  for b in batches:
    acc.update([a[s:s + b][:, list(l)] for a, l in zip(acts, layer_ids)], mask[s:s + b])
    s += b
  assert s == len(mask)
  return spec, mesh, acc


def adversarial(K=3, L=2, d=6, T=400, offset=1e3, seed=0):
  """K models' activations [T, L, d] float32 with a large mean offset, a shared latent
  structure across models (so maxima are not noise), a dead (constant) neuron per model, and
  a token mask dropping ~20%."""
  rng = np.random.default_rng(seed)
  lat = rng.standard_normal((T, 3))
  acts = []
  for m in range(K):
    a = 0.5 * rng.standard_normal((T, L, d))
    a[:, 0, :3] += lat * (m + 1)
    a[:, L - 1, -3:] += np.tanh(lat) if m % 2 else -lat
    a = np.where(a > 0, a, 0.05 * a) + offset
    a[:, m % L, 1] = offset + 0.3          # dead: never silently 0
    acts.append(a.astype(np.float32))
  mask = rng.random(T) > 0.2
  return acts, mask


def corr64(x, y):
  """Pearson matrix [Nx, Ny] in float64, NaN where either side is constant."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  xc, yc = x - x.mean(0), y - y.mean(0)
  sx, sy = np.sqrt((xc * xc).sum(0)), np.sqrt((yc * yc).sum(0))
  with np.errstate(all="ignore"):
    c = (xc.T @ yc) / np.outer(sx, sy)
  dx = sx <= 1e-9 * np.abs(x.mean(0)).clip(1)
  dy = sy <= 1e-9 * np.abs(y.mean(0)).clip(1)
  c[dx, :] = np.nan
  c[:, dy] = np.nan
  return c


def rowmax(c):
  """Signed max over columns ignoring NaN; NaN when a row has no finite entry."""
  c = np.where(np.isnan(c), -np.inf, c)
  m = c.max(1)
  return np.where(np.isfinite(m), m, np.nan), c.argmax(1)


def rotate(y, mats):
  """y [T, L, d]; mats [L, d, d] -> rotated units (R @ v per token) float64."""
  y = np.asarray(y, np.float64)
  return np.einsum("tlp,lkp->tlk", y, np.asarray(mats, np.float64))


def tiny_model_family(directory, config_class, n=3):
  """`n` random-weight 2-layer models (d_mlp 24) of `config_class` saved under `directory`
  as m0, m1, ... (ucore's own format, seeds 0..n-1); returns their paths."""
  import os
  from ucore.models.hooked import init_params, save_model
  cfg = config_class(n_layer=2, n_embd=32, n_head=2, n_positions=32, d_mlp=24)
  paths = []
  for seed in range(n):
    p = os.path.join(str(directory), f"m{seed}")
    save_model(p, cfg, init_params(cfg, seed=seed), manifest={"source": "test", "seed": seed})
    paths.append(p)
  return paths
