"""Streaming, sharded, numerically stable co-moments between the neurons of K models.

Numerics (stated, and checked by tests/test_corr_moments.py):
  * Every batch is centred on its own (two-pass) mean, its co-moment block is one float32
    GEMM at `precision=HIGHEST` (true fp32 on GPU/TPU: no TF32, no bf16 passes), and the
    block is merged into the running state with Chan et al.'s pairwise formulas
    (co-moments: C += C_b + n*n_b/(n+n_b) * d_a d_b^T). Large mean offsets therefore never
    cancel (raw Σxy - n μx μy is never formed).
  * Batch means are carried as hi + lo (float32 mean + mean of the residuals), so a mean
    offset of 1e3 costs no precision in the merge. The running means and second moments are
    always Kahan-compensated float32 (size N, free); the N² co-moments are compensated when
    `compensated=True` (default): their merge error then stays O(eps) instead of growing
    with the number of steps, at the price of one more buffer.
  * Counts are int32 (≤ 2.1e9 kept tokens).
  * Capture modes (precision "bf16" / "tf32_fp16", ucore.corr.precision): the activations are
    rounded once to bf16 / fp16 in `prepare` (so every moment is that of the rounded
    activations) and the C/S GEMMs run on the raw masked rounded activations — exact products,
    one 16-bit pass — with the batch's co-moment formed as raw − n_b·μ_x·μ_yᵀ (μ = hi + lo).
    The means, M2 and the Chan merge are as above.

Layout. Model m's activations are [tokens, L_m, d_pad] (d_pad = d_mlp padded with zero
"dead" neurons to a multiple of the mesh sizes; padding is dropped at finalize). For each pair
(x, y) the cross co-moment is stored as C[L_x, d_pad, B, d_pad]: B = L_y ("all" layers,
partner layer = b) or B = 3 ("adjacent": partner layer = a + b - 1). Each rotated model y also
keeps its within-layer co-moment S_y[L_y, d_pad, d_pad] for the one-pass baselines.

Sharding. A 2-D mesh ("tok", "neu"). Activations arrive feature-major [L, d_pad, tokens],
token-sharded over all devices. Device (i, j) owns the blocks C[:, rows_i, :, cols_j] and
S[:, rows_i, cols_j] (rows split over "tok", columns over "neu"), so accumulator memory per
device is total / devices. Each step it fetches all tokens of just its own neuron slices
(all_to_all over one axis + all_gather over the other: tokens × neurons/axis-size values per
device, never neurons²); batch means are computed on a slice and all-gathered (size N).
Means and second moments (size N) are replicated. The GEMMs are in "NT" form (both operands
feature-major), the fastest layout for XLA on CPU and GPU.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ucore.corr import precision as precision_names
from ucore.jobs.errors import UserError

TOK, NEU = "tok", "neu"
PRECISION = jax.lax.Precision.HIGHEST
C_SPEC = P(None, TOK, None, NEU)
S_SPEC = P(None, TOK, NEU)
X_SPEC = P(None, None, (TOK, NEU))   # activations: feature-major [L, d_pad, tokens]


def make_mesh(tok: int = 1, neu: int = -1, devices=None) -> Mesh:
  """A ("tok", "neu") mesh over `devices` (default: all). -1 in one axis = the rest."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if tok == -1 and neu == -1:
    raise UserError("mesh: at most one of mesh.tok / mesh.neu may be -1.")
  if tok == -1:
    tok = n // max(neu, 1)
  if neu == -1:
    neu = n // max(tok, 1)
  if tok < 1 or neu < 1 or tok * neu != n:
    raise UserError(f"mesh tok={tok} × neu={neu} does not match the {n} available devices; "
                    "set mesh.tok and mesh.neu so their product is the device count.")
  return Mesh(np.array(devices, dtype=object).reshape(tok, neu), (TOK, NEU))


@dataclasses.dataclass(frozen=True)
class Spec:
  """What is correlated with what (static; part of the resume manifest)."""
  names: tuple            # model names, index 0 = reference
  n_layers: tuple         # layers kept per model (all models must keep the same count in
                          # "adjacent" mode)
  layer_ids: tuple        # per model: the model's layer numbers that are kept
  d_mlp: int
  d_pad: int
  pairs: tuple            # ((x, y), ...): rows of model x against columns of model y
  rotated: tuple          # models y whose within-layer co-moment is kept (baselines)
  layer_mode: str = "all"  # "all" | "adjacent"
  compensated: bool = True
  precision: str = "highest"   # dot precision of the C/S GEMMs (ucore.corr.precision)
  stats_cols: tuple = ()  # a pass's tile (ucore.corr.passes): the models whose batch
                          # statistics come from the column slab, as in the whole run's spec
                          # (so a tile's means are bit-identical to one pass's); () = derived

  @property
  def n_models(self):
    return len(self.names)

  @property
  def active(self) -> tuple:
    """Models whose activations this spec's step reads (every model, except in a tile)."""
    return tuple(sorted({m for p in self.pairs for m in p} | set(self.rotated)))

  def col_stats_models(self) -> set:
    return set(self.stats_cols) if self.stats_cols else (
        {y for _, y in self.pairs} | set(self.rotated))

  def band(self, x, y):
    return self.n_layers[y] if self.layer_mode == "all" else 3

  def partner_layer(self, x, y) -> np.ndarray:
    """[L_x, B] -> position of the partner layer in model y's kept layers, -1 if none."""
    lx, ly = self.n_layers[x], self.n_layers[y]
    if self.layer_mode == "all":
      return np.tile(np.arange(ly), (lx, 1))
    pl = np.arange(lx)[:, None] + np.arange(3)[None, :] - 1
    return np.where((pl >= 0) & (pl < ly), pl, -1)

  def to_json(self):
    out = dataclasses.asdict(self)
    if out["precision"] == "highest":   # runs from before precision modes resume unchanged
      del out["precision"]
    if not out["stats_cols"]:           # ... and from before passes
      del out["stats_cols"]
    return out


def make_spec(names, layer_ids, d_mlp, mesh: Mesh, *, mode="reference", layer_mode="all",
              compensated=True, precision="highest") -> Spec:
  names = tuple(names)
  if len(names) < 2:
    raise UserError("correlate needs at least two models.")
  if len(set(names)) != len(names):
    raise UserError(f"model names must be distinct: {names}")
  layer_ids = tuple(tuple(int(l) for l in ls) for ls in layer_ids)
  if any(len(ls) == 0 for ls in layer_ids):
    raise UserError("every model must keep at least one layer.")
  if mode == "reference":
    pairs = tuple((0, m) for m in range(1, len(names)))
    rotated = tuple(range(1, len(names)))
  elif mode == "all_pairs":
    pairs = tuple((i, j) for i in range(len(names)) for j in range(i + 1, len(names)))
    rotated = tuple(range(len(names)))
  else:
    raise UserError(f"mode must be 'reference' or 'all_pairs', got {mode!r}.")
  if layer_mode not in ("all", "adjacent"):
    raise UserError(f"layer_mode must be 'all' or 'adjacent', got {layer_mode!r}.")
  if layer_mode == "adjacent":
    if len({len(ls) for ls in layer_ids}) != 1:
      raise UserError("layer_mode='adjacent' needs the same layers in every model.")
    if mode == "all_pairs":
      raise UserError("layer_mode='adjacent' is supported with mode='reference' only.")
  q = math.lcm(mesh.shape[TOK], mesh.shape[NEU])
  d_pad = -(-d_mlp // q) * q
  return Spec(names=names, n_layers=tuple(len(ls) for ls in layer_ids), layer_ids=layer_ids,
              d_mlp=int(d_mlp), d_pad=int(d_pad), pairs=pairs, rotated=rotated,
              layer_mode=layer_mode, compensated=bool(compensated),
              precision=precision_names.check(precision))


# ----------------------------------------------------------------------------- state


def state_shapes(spec: Spec):
  """{name: (shape, dtype, PartitionSpec)} for every accumulator array."""
  d = spec.d_pad
  out = {"n": ((), jnp.int32, P())}
  for m in range(spec.n_models):
    out[f"mean/{m}"] = ((spec.n_layers[m], d), jnp.float32, P())
    out[f"m2/{m}"] = ((spec.n_layers[m], d), jnp.float32, P())
  for k in list(out):   # means/M2 (size N): always Kahan-compensated, separate buffers
    if k != "n":
      out[k + "#c"] = out[k]
  # C and S: leading axis [sum, compensation] (K=2) or [sum] (K=1), updated in one fusion
  K = 2 if spec.compensated else 1
  for x, y in spec.pairs:
    out[f"C/{x}_{y}"] = ((K, spec.n_layers[x], d, spec.band(x, y), d), jnp.float32,
                         P(None, *C_SPEC))
  for y in spec.rotated:
    out[f"S/{y}"] = ((K, spec.n_layers[y], d, d), jnp.float32, P(None, *S_SPEC))
  return out


def state_bytes(spec: Spec) -> int:
  return sum(int(np.prod(s)) * 4 for s, _, _ in state_shapes(spec).values())


@functools.lru_cache(maxsize=32)
def _zeros_fn(spec: Spec, mesh: Mesh):
  """One compiled program making every zero accumulator in its sharding (a jit per entry
  would trace, lower and compile once per entry per call)."""
  shapes = state_shapes(spec)
  return jax.jit(lambda: {k: jnp.zeros(s, dt) for k, (s, dt, _) in shapes.items()},
                 out_shardings=state_shardings(spec, mesh))


def init_state(spec: Spec, mesh: Mesh):
  out = _zeros_fn(spec, mesh)()
  return {k: out[k] for k in state_shapes(spec)}   # the state_shapes order, as before


def state_shardings(spec: Spec, mesh: Mesh):
  return {k: NamedSharding(mesh, p) for k, (_, _, p) in state_shapes(spec).items()}


# ----------------------------------------------------------------------------- step


def _kadd(s, c, term, compensated):
  """s + term with Kahan compensation c (c=None when not compensated)."""
  if not compensated:
    return s + term, None
  y = term - c
  t = s + y
  return t, (t - s) - y


def _batch_stats(x, w, n_b):
  """Batch mean as an unevaluated sum hi + lo (hi: float32 mean, lo: the mean of the
  residuals x - hi). At large offsets hi alone is off by up to half an ulp of the offset;
  carrying lo keeps the Chan merge exact to float32 resolution of the spread, not of the
  offset. x [L, k, T] (feature-major), w [T]. Returns hi, lo, M2 [L, k] and the centred,
  masked activations. The weighted sums are GEMVs (no broadcast of w is materialized)."""
  inv = jnp.where(n_b > 0, 1.0 / jnp.maximum(n_b, 1).astype(jnp.float32), 0.0)
  dot = lambda a, b: jnp.einsum("lkt,t->lk", a, b, precision=PRECISION)
  hi = dot(x, w) * inv
  res = x - hi[..., None]           # exact where x and hi are within a factor 2 (Sterbenz)
  lo = dot(res, w) * inv
  xc = (res - lo[..., None]) * w
  m2 = jnp.einsum("lkt,lkt->lk", xc, xc, precision=PRECISION)
  return hi, lo, m2, xc


def _center(x, hi, lo, w):
  return ((x - hi[..., None]) - lo[..., None]) * w


def _gather_slab(x, split_axis, other_axis, n_split, n_other):
  """x: this device's tokens [L, d_pad, T_loc]. Returns all tokens of this device's d-slice
  along `split_axis` ([L, d_pad/n_split, T]), tokens in global order. Communication:
  T·L·d_pad/n_split values per device (tokens × neurons, never neurons²)."""
  if n_split > 1:
    x = jax.lax.all_to_all(x, split_axis, split_axis=1, concat_axis=2, tiled=True)
  if n_other > 1:
    x = jax.lax.all_gather(x, other_axis, axis=2, tiled=True)
  L, k, T = x.shape
  if split_axis == TOK and n_split > 1 and n_other > 1:
    # token blocks arrive ordered (neu, tok); the global order is (tok, neu)
    x = x.reshape(L, k, n_other, n_split, T // (n_split * n_other))
    x = jnp.swapaxes(x, 2, 3).reshape(L, k, T)
  return x


def _local_step(spec: Spec, state, xs, w):
  """Runs per device inside shard_map. xs: per model this device's tokens, feature-major
  [L_m, d_pad, T_loc]; w [T_loc] (1 = counted)."""
  comp = spec.compensated
  gemm = precision_names.dot_precision(spec.precision)
  # capture modes: raw (uncentred) rounded operands, exact 16-bit products (module docstring)
  raw = precision_names.capture_dtype(spec.precision)
  operand = ((lambda v: v.astype(raw)) if raw == jnp.bfloat16 else (lambda v: v))
  r = jax.lax.axis_size(TOK)
  c = jax.lax.axis_size(NEU)
  dr, dc = spec.d_pad // r, spec.d_pad // c
  wg = jax.lax.all_gather(w, (TOK, NEU), axis=0, tiled=True).astype(jnp.float32)
  n_b = jnp.sum(wg > 0).astype(jnp.int32)
  n = state["n"]
  nf, nbf = n.astype(jnp.float32), n_b.astype(jnp.float32)
  tot = jnp.maximum(nf + nbf, 1.0)
  frac = nbf / tot            # weight of the batch mean in the merged mean
  f = nf * nbf / tot          # Chan's cross-term factor
  new = dict(state)
  new["n"] = n + n_b
  need_rows = {x for x, _ in spec.pairs} | set(spec.rotated)
  stats_cols = spec.col_stats_models()
  rows_c, cols_c, d_rows, d_cols = {}, {}, {}, {}
  mu_rows, mu_cols = {}, {}     # capture modes: this device's slices of the batch means (hi, lo)
  for pos, m in enumerate(spec.active):   # a tile's other models keep their (zero) moments
    slabs = {}
    if m in need_rows:
      slabs["rows"] = _gather_slab(xs[pos], TOK, NEU, r, c)      # [L, dr, T]
    if m in stats_cols:
      slabs["cols"] = _gather_slab(xs[pos], NEU, TOK, c, r)      # [L, dc, T]
    # batch statistics from one slab, all-gathered to the full (replicated) vectors
    which, ax = ("cols", NEU) if "cols" in slabs else ("rows", TOK)
    hi_l, lo_l, m2_l, xc_l = _batch_stats(slabs[which], wg, n_b)
    hi, lo, m2_b = (jax.lax.all_gather(v, ax, axis=1, tiled=True) for v in (hi_l, lo_l, m2_l))
    mc = state[f"mean/{m}#c"]         # running mean = s - c
    d_m = (hi - state[f"mean/{m}"]) + (lo + mc)
    d_m = jnp.where(n_b > 0, d_m, 0.0)
    for key, term in ((f"mean/{m}", d_m * frac), (f"m2/{m}", m2_b + f * d_m * d_m)):
      new[key], new[key + "#c"] = _kadd(state[key], state[key + "#c"], term, True)
    i = jax.lax.axis_index(TOK)
    j = jax.lax.axis_index(NEU)
    sl_r = lambda v: jax.lax.dynamic_slice_in_dim(v, i * dr, dr, axis=1)
    sl_c = lambda v: jax.lax.dynamic_slice_in_dim(v, j * dc, dc, axis=1)
    if "cols" in slabs:
      cols_c[m] = operand(slabs["cols"] * wg) if raw is not None else xc_l
      mu_cols[m] = (sl_c(hi), sl_c(lo))
      d_cols[m] = sl_c(d_m)
    if "rows" in slabs:
      if raw is not None:
        rows_c[m] = operand(slabs["rows"] * wg)
      elif which == "rows" or (r == 1 and c == 1):   # the stats slab / one device: same slab
        rows_c[m] = xc_l
      else:
        rows_c[m] = _center(slabs["rows"], sl_r(hi), sl_r(lo), wg)
      mu_rows[m] = (sl_r(hi), sl_r(lo))
      d_rows[m] = sl_r(d_m)

  def mean_outer(a, b, expand_a, expand_b):
    """n_b·μ_a·μ_bᵀ (μ = hi + lo; lo·lo dropped): what a raw batch GEMM holds beyond the
    batch's centred co-moment. expand_*: index functions placing [L, k] into the block."""
    (ha, la), (hb, lb) = a, b
    ha, la, hb, lb = expand_a(ha), expand_a(la), expand_b(hb), expand_b(lb)
    return nbf * (ha * hb + (ha * lb + la * hb))

  def merge(key, term):
    st = state[key]
    if comp:
      t, cc = _kadd(st[0], st[1], term, True)
      new[key] = jnp.stack([t, cc])
    else:
      new[key] = st + term[None]

  for x, y in spec.pairs:
    xa, da = rows_c[x], d_rows[x]                 # [Lx, dr, T], [Lx, dr]
    lx, ly = spec.n_layers[x], spec.n_layers[y]
    T = xa.shape[-1]
    if spec.layer_mode == "all":
      xb, db = cols_c[y], d_cols[y]               # [Ly, dc, T]
      cb = jax.lax.dot_general(xa.reshape(lx * dr, T), xb.reshape(ly * dc, T),
                               (((1,), (1,)), ((), ())), precision=gemm,
                               preferred_element_type=jnp.float32)
      term = cb.reshape(lx, dr, ly, dc) + f * (da[:, :, None, None] * db[None, None])
      if raw is not None:
        term = term - mean_outer(mu_rows[x], mu_cols[y], lambda v: v[:, :, None, None],
                                 lambda v: v[None, None])
    else:
      pl = spec.partner_layer(x, y)               # [L, 3]
      idx = np.where(pl < 0, 0, pl)
      valid = jnp.asarray((pl >= 0).astype(np.float32))
      xb = cols_c[y][idx] * valid[:, :, None, None].astype(cols_c[y].dtype)  # [L, 3, dc, T]
      db = d_cols[y][idx] * valid[:, :, None]                   # [L, 3, dc]
      cb = jax.lax.dot_general(xa, xb.reshape(lx, 3 * dc, T), (((2,), (2,)), ((0,), (0,))),
                               precision=gemm, preferred_element_type=jnp.float32)
      term = cb.reshape(lx, dr, 3, dc) + f * (da[:, :, None, None] * db[:, None, :, :])
      if raw is not None:
        term = term - mean_outer(mu_rows[x], mu_cols[y], lambda v: v[:, :, None, None],
                                 lambda v: (v[idx] * valid[:, :, None])[:, None, :, :])
    merge(f"C/{x}_{y}", term)
  for y in spec.rotated:
    sb = jax.lax.dot_general(rows_c[y], cols_c[y], (((2,), (2,)), ((0,), (0,))),
                             precision=gemm, preferred_element_type=jnp.float32)
    term = sb + f * (d_rows[y][:, :, None] * d_cols[y][:, None, :])
    if raw is not None:
      term = term - mean_outer(mu_rows[y], mu_cols[y], lambda v: v[:, :, None],
                               lambda v: v[:, None, :])
    merge(f"S/{y}", term)
  return new


@functools.lru_cache(maxsize=32)
def make_step(spec: Spec, mesh: Mesh):
  """jit(state, xs: list of [T, L_m, d_pad] token-sharded, w [T]) -> state (donated)."""
  specs = {k: p for k, (_, _, p) in state_shapes(spec).items()}
  xspecs = [X_SPEC] * len(spec.active)
  fn = jax.shard_map(partial(_local_step, spec), mesh=mesh,
                     in_specs=(specs, xspecs, P((TOK, NEU))), out_specs=specs,
                     check_vma=False)
  return jax.jit(fn, donate_argnums=(0,))


def step_flops(spec: Spec, tokens: int) -> float:
  """Useful FLOPs of one accumulate step (the GEMMs; elementwise work not counted)."""
  d = spec.d_mlp
  fl = 0.0
  for x, y in spec.pairs:
    fl += 2.0 * tokens * spec.n_layers[x] * d * spec.band(x, y) * d
  for y in spec.rotated:
    fl += 2.0 * tokens * spec.n_layers[y] * d * d
  return fl


@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6))
def _to_layout(a, L, d, d_pad, Tp, sharding, precision):
  T = a.shape[0]
  a = precision_names.capture(a, precision).reshape(T, L, d).transpose(1, 2, 0)
  a = jnp.pad(a, ((0, 0), (0, d_pad - d), (0, Tp - T)))
  return jax.lax.with_sharding_constraint(a, sharding)


class Accumulator:
  """Owns the sharded state and the compiled step; feed it batches of activations.

  `update(acts, mask)`: acts is a list (one per model, same token order) of arrays
  [T, L_m, d_mlp] (or [T, L_m*d_mlp]); mask [T] bool, True = token counted. Any T. Entries
  of models outside `spec.active` (a pass's tile) are ignored and may be None.
  """

  def __init__(self, spec: Spec, mesh: Mesh, state=None):
    self.spec, self.mesh = spec, mesh
    self.state = init_state(spec, mesh) if state is None else state
    self._step = make_step(spec, mesh)
    self._xsh = NamedSharding(mesh, X_SPEC)
    self._wsh = NamedSharding(mesh, P((TOK, NEU)))

  @property
  def count(self) -> int:
    return int(self.state["n"])

  def prepare(self, acts, mask):
    """Pads this process's tokens and builds the global token-sharded arrays. In a
    multi-process run every process passes its own (equally sized) slice of the batch."""
    spec = self.spec
    T = int(np.shape(mask)[0])
    local = max(self.mesh.size // jax.process_count(), 1)
    Tp = -(-max(T, 1) // local) * local
    xs = []
    for m in spec.active:
      a = acts[m]
      if a.shape[0] != T or int(np.prod(a.shape)) != T * spec.n_layers[m] * spec.d_mlp:
        raise ValueError(f"model {m}: activations {a.shape} do not match {T} tokens × "
                         f"{spec.n_layers[m]} layers × {spec.d_mlp} neurons")
      if jax.process_count() == 1:
        # transpose/pad compiled (on the accelerator when the activations already live
        # there: no host round trip), then resharded to the step's layout
        if not isinstance(a, jax.Array):
          a = jnp.asarray(np.asarray(a, np.float32))
        xs.append(_to_layout(a, spec.n_layers[m], spec.d_mlp, spec.d_pad, Tp, self._xsh,
                             spec.precision))
        continue
      a = np.asarray(precision_names.capture(np.asarray(a), spec.precision), np.float32)
      buf = np.zeros((spec.n_layers[m], spec.d_pad, Tp), np.float32)
      buf[:, :spec.d_mlp, :T] = a.reshape(T, spec.n_layers[m], spec.d_mlp).transpose(1, 2, 0)
      xs.append(jax.make_array_from_process_local_data(self._xsh, buf))
    w = np.zeros((Tp,), np.float32)
    w[:T] = np.asarray(mask, bool)
    return xs, jax.make_array_from_process_local_data(self._wsh, w)

  def update(self, acts, mask):
    xs, w = self.prepare(acts, mask)
    self.state = self._step(self.state, xs, w)
    return self
