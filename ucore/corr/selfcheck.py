"""Every correlate run verifies itself: a float64 reference on a sample of neuron pairs.

Beside the fast float32 accumulators (whatever their dot precision, ucore.corr.precision) the
driver feeds the same activations, same tokens, same mask into a float64 reference kept on the
host for a seeded sample of `sample` neurons per model:

  corr      correlation of sampled neurons of x with sampled neurons of y, for every pair
            (x, y) the run accumulates
  rotated   correlation of sampled neurons of x with `sample` rotated units of y (rows of a
            Haar rotation of y's layers, drawn here for the check): the quantities whose max
            over units is the rotation baseline, computed by the engine's one-pass formula
            (C R^T / sqrt(diag R S R^T)) and directly from the rotated activations

At the end, `measure` compares the engine's values (from the accumulator state) with the
reference and reports max |Δcorr| and max |Δrotated| (the max over units is 1-Lipschitz, so
|Δbaseline| is bounded by the latter over the same units); summary.json and the report carry
them. A deliberately corrupted accumulator shows up as a large error.

The reference is always float64 of the activations as the models produced them (unrounded). In
a capture mode (ucore.corr.precision: "bf16", "tf32_fp16") the engine sees them rounded to a
16-bit type, so the reference also keeps float64 sums of the same sample rounded the same way,
and the error is split (per entry; the maxima below are over the same checked entries):
  capture     |float64(rounded) − float64(unrounded)|: what the rounding itself costs
  arithmetic  |engine − float64(rounded)|: the GEMMs' and merges' float32 error
In the other modes nothing is rounded (the whole error is arithmetic) and no split is written.
Beside them stands the sampling error of the same correlations, (1 − r²)/√n over the run's n
tokens (the standard error of a Pearson r from n independent samples; neighbouring tokens are
correlated, so the true one is larger): at r = 0, the typical sampled pair (the default run's
median sampled |r| is 0.06) and the largest value, and at r = 0.9, a universal neuron's
partner. Both depend on n only, so a multi-pass run's passes agree on them: an error far
below them changes nothing a finite corpus can tell.

The reference sums are shifted by the first batch's means (float64, no raw power sums of
offset data) and persisted with every committed checkpoint (`to_bytes` / `from_bytes`), so a
resumed run verifies all its tokens. Single-process runs only (multi-process: reported as
unavailable).
"""
from __future__ import annotations

import functools
import hashlib
import io
import queue
import threading

import jax
import jax.numpy as jnp
import numpy as np

from ucore.corr import precision as precision_names
from ucore.jobs.errors import UserError

FILE = "selfcheck.npz"
ROTATION = "haar rows (QR of a seeded Gaussian d × n per layer)"


def _sample_ids(n_total: int, size: int, rng) -> np.ndarray:
  return np.sort(rng.choice(n_total, size=min(size, n_total), replace=False))


class SelfCheck:
  """The sample, the check rotation and the float64 reference sums of one run."""

  def __init__(self, spec, sample: int, seed: int, whole=None):
    """`whole`: the run's spec when `spec` is one pass's tile (ucore.corr.passes): the sample
    and the rotations are the whole run's, restricted to the tile's pairs (and reference
    layers), so the passes together check exactly what a single pass checks."""
    self.spec, self.sample, self.seed = spec, int(sample), int(seed)
    # capture modes: the engine's activations are rounded; a second, rounded reference
    self.capture = spec.precision if precision_names.capture_dtype(spec.precision) else None
    self.split_missing = ""   # why a resumed reference has no rounded half ('' = it has)
    whole = spec if whole is None else whole
    d = spec.d_mlp
    rng = np.random.default_rng([self.seed, 0x5E1F])
    self.ids = [_sample_ids(whole.n_layers[m] * d, self.sample, rng)
                for m in range(whole.n_models)]
    # rotated units of each baseline partner: per layer position, n_l rows of a Haar matrix
    # (the first n_l rows of Q from QR of a d × d... drawn as QR of d × n_l: same law)
    self.rot = {}
    for y in whole.rotated:
      lay = _sample_ids(whole.n_layers[y] * d, self.sample, rng) // d   # ≤ d units per layer
      rows = np.zeros((lay.size, d), np.float64)
      for l in np.unique(lay):
        k = int(np.sum(lay == l))
        q, r = np.linalg.qr(rng.standard_normal((d, k)))
        q = q * np.sign(np.diag(r))[None, :]
        rows[lay == l] = q.T
      self.rot[y] = (lay, rows.astype(np.float32))
    self.rot = {y: v for y, v in self.rot.items() if y in spec.rotated}
    if spec.layer_ids[0] != whole.layer_ids[0]:   # a chunk of the reference's layers
      pos = [whole.layer_ids[0].index(l) for l in spec.layer_ids[0]]
      lay, unit = self.ids[0] // d, self.ids[0] % d
      keep = np.isin(lay, pos)
      self.ids[0] = np.searchsorted(pos, lay[keep]) * d + unit[keep]
    self.n = 0
    self.shift = {}   # key -> float64 shift vector (first batch's means)
    self.sums = {}    # key -> float64 arrays
    # the sample and the rotation rows are the program's arguments, not constants baked into
    # it: runs and passes of one shape share one compiled gather
    self._ids = {m: jnp.asarray(self.ids[m]) for m in spec.active}
    self._rows = {y: [jnp.asarray(rows[lay == l]) for l in np.unique(lay)]
                  for y, (lay, rows) in self.rot.items()}
    self._gather = _gather_program(
        d, tuple(spec.n_layers), tuple(spec.active), self.capture,
        tuple((y, tuple(int(l) for l in np.unique(lay))) for y, (lay, _) in self.rot.items()))

  # ------------------------------------------------------------------ identity / persistence

  def settings(self) -> dict:
    out = {"sample": self.sample, "seed": self.seed, "rotation": ROTATION}
    if self.capture:   # (absent otherwise: older runs' settings resume unchanged)
      out["capture"] = self.capture
    return out

  def to_bytes(self) -> bytes:
    arrays = {"n": np.asarray(self.n, np.int64)}
    for k, v in self.shift.items():
      arrays["shift/" + k] = v
    for k, v in self.sums.items():
      arrays["sum/" + k] = v
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()

  def load_bytes(self, data: bytes, where: str) -> None:
    try:
      with np.load(io.BytesIO(data)) as z:
        self.n = int(z["n"])
        self.shift = {k[6:]: z[k] for k in z.files if k.startswith("shift/")}
        self.sums = {k[4:]: z[k] for k in z.files if k.startswith("sum/")}
    except (OSError, ValueError, KeyError) as e:
      raise UserError(f"{where}: the self-check's reference sums are unreadable ({e}); "
                      "delete the workdir's state/ to recompute") from e
    if self.capture and self.n and not any(k.startswith("s1/r") for k in self.sums):
      # the total error stays measured (unrounded reference); its split cannot be
      self.split_missing = (f"unavailable (resumed from {where}, whose reference sums "
                            "have no rounded half)")

  # ------------------------------------------------------------------ accumulation

  def gather(self, acts):
    """Dispatches the device gather (async); returns device arrays for `add`."""
    return self._gather(list(acts), self._ids, self._rows)

  def add(self, gathered, mask: np.ndarray) -> None:
    """float64 reference sums over the tokens of `mask` (host; blocks on the device)."""
    (cols, rots), rounded = gathered
    keep = np.asarray(mask, bool).reshape(-1)
    if not keep.any():
      return
    # x<m>/u<y>: the activations as produced; r<m>/v<y>: rounded (capture modes)
    parts = [("x", "u", cols, rots)] + ([("r", "v", *rounded)] if rounded is not None else [])
    data = {}
    for xk, uk, cols, rots in parts:
      data.update({f"{xk}{m}": np.asarray(c, np.float64)[keep] for m, c in cols.items()})
      for y, (u, centres) in rots.items():
        lay, rows = self.rot[y]
        shift = np.concatenate([rows[lay == l].astype(np.float64) @ c.astype(np.float64)
                                for l, c in zip(np.unique(lay), np.asarray(centres))])
        data[f"{uk}{y}"] = np.asarray(u, np.float64)[keep] + shift
    if self.split_missing:   # a resumed reference without the rounded half: none from here
      data = {k: v for k, v in data.items() if k[0] in "xu"}
    if not self.shift:
      self.shift = {k: v.mean(axis=0) for k, v in data.items()}
    data = {k: v - self.shift[k] for k, v in data.items()}
    terms = {}
    for k, v in data.items():
      terms["s1/" + k] = v.sum(axis=0)
      terms["s2/" + k] = np.einsum("ti,ti->i", v, v)
    for x, y in self.spec.pairs:
      terms[f"xy/{x}_{y}"] = data[f"x{x}"].T @ data[f"x{y}"]
      if y in self.rot:
        terms[f"xu/{x}_{y}"] = data[f"x{x}"].T @ data[f"u{y}"]
      if self.capture and not self.split_missing:
        terms[f"rxy/{x}_{y}"] = data[f"r{x}"].T @ data[f"r{y}"]
        if y in self.rot:
          terms[f"rxu/{x}_{y}"] = data[f"r{x}"].T @ data[f"v{y}"]
    for k, v in terms.items():
      self.sums[k] = self.sums.get(k, 0.0) + v
    self.n += int(keep.sum())

  # ------------------------------------------------------------------ comparison

  def _ref_corr(self, a: str, b: str, cross: str):
    n = max(self.n, 1)
    ma, mb = self.sums["s1/" + a] / n, self.sums["s1/" + b] / n
    va = self.sums["s2/" + a] / n - ma ** 2
    vb = self.sums["s2/" + b] / n - mb ** 2
    cov = self.sums[cross] / n - np.outer(ma, mb)
    with np.errstate(invalid="ignore", divide="ignore"):
      return cov / np.sqrt(np.outer(va, vb)), va, vb

  def measure(self, state, moments) -> dict:
    """{'max_abs_corr', 'max_abs_rotated', 'entries_checked', ...} from the accumulator state
    (`moments`: ucore.corr.finalize.moments_host's per-model list), with the error's split
    into capture and arithmetic and the sampling error beside it (module docstring)."""
    from ucore.corr import finalize as F
    spec, d = self.spec, self.spec.d_mlp
    out = {"sample": self.sample, "seed": self.seed, "tokens": int(self.n),
           "rotation": ROTATION, "max_abs_corr": 0.0, "max_abs_rotated": 0.0,
           "entries_checked": 0, "rotated_checked": 0}
    split = bool(self.capture) and not self.split_missing
    if split:
      out.update({k: 0.0 for k in SPLIT_KEYS})
    elif self.split_missing:
      out["split"] = self.split_missing
    out.update(sampling_error(self.n))
    if self.n < 2:
      for k in list(out):
        if k.startswith(("max_abs", "capture_max", "arithmetic_max")):
          out[k] = float("nan")
      return out

    def record(what, eng, ref, ref_r, ok):
      """Maxima over the checked entries `ok` of the total error and of its split."""
      if not ok.any():
        return 0
      out[f"max_abs_{what}"] = max(out[f"max_abs_{what}"], float(np.max(np.abs(eng - ref)[ok])))
      if split:
        for part, err in (("capture", ref_r - ref), ("arithmetic", eng - ref_r)):
          key = f"{part}_max_abs_{what}"
          out[key] = max(out[key], float(np.max(np.abs(err)[ok])))
      return int(ok.sum())

    for x, y in spec.pairs:
      ix, iy = self.ids[x], self.ids[y]
      lx, ux = ix // d, ix % d
      ly, uy = iy // d, iy % d
      c = F._value(state, f"C/{x}_{y}")
      rows = F._to_host(c[jnp.asarray(lx), jnp.asarray(ux)]).astype(np.float64)  # [s, B, d_pad]
      band = spec.partner_layer(x, y)[lx]                                         # [s, B]
      std_x = np.sqrt(moments[x]["m2"][lx, ux])
      dead_x = moments[x]["dead"][lx, ux]

      def band_pos(layer_pos):   # [s_x, s] position of the partner layer in x's band (-1: none)
        hit = band[:, :, None] == layer_pos[None, None, :]
        return np.where(hit.any(1), hit.argmax(1), -1)

      ref, va, vb = self._ref_corr(f"x{x}", f"x{y}", f"xy/{x}_{y}")
      ref_r = self._rounded_ref(f"r{x}", f"r{y}", f"rxy/{x}_{y}", ref)
      b = band_pos(ly)
      cov = np.take_along_axis(rows[:, :, uy].transpose(0, 2, 1), np.maximum(b, 0)[..., None],
                               axis=2)[..., 0]
      std_y = np.sqrt(moments[y]["m2"][ly, uy])
      with np.errstate(invalid="ignore", divide="ignore"):
        eng = cov / np.outer(std_x, std_y)
      ok = ((b >= 0) & ~dead_x[:, None] & ~moments[y]["dead"][ly, uy][None, :]
            & (va[:, None] > 0) & (vb[None, :] > 0) & np.isfinite(eng) & np.isfinite(ref)
            & np.isfinite(ref_r))
      out["entries_checked"] += record("corr", eng, ref, ref_r, ok)
      if y not in self.rot:
        continue
      lay, rmat = self.rot[y]
      rmat64 = rmat.astype(np.float64)
      b = band_pos(lay)
      # C R^T for each rotated unit k: the partner layer's row of C times R_k
      crt = np.einsum("sbn,kn->skb", rows[:, :, :d], rmat64)
      crt = np.take_along_axis(crt, np.maximum(b, 0)[..., None], axis=2)[..., 0]
      s_val = F._value(state, f"S/{y}")
      var = np.zeros(lay.size)
      for l in np.unique(lay):
        rl = jnp.asarray(rmat[lay == l])
        s_l = s_val[int(l), :d, :d]
        var[lay == l] = F._to_host(jnp.einsum("kn,nm,km->k", rl, s_l, rl,
                                              precision=jax.lax.Precision.HIGHEST))
      ref, va, vu = self._ref_corr(f"x{x}", f"u{y}", f"xu/{x}_{y}")
      ref_r = self._rounded_ref(f"r{x}", f"v{y}", f"rxu/{x}_{y}", ref)
      with np.errstate(invalid="ignore", divide="ignore"):
        eng = crt / np.outer(std_x, np.sqrt(np.maximum(var, 0.0)))
      ok = ((b >= 0) & ~dead_x[:, None] & (var[None, :] > 0) & (va[:, None] > 0)
            & (vu[None, :] > 0) & np.isfinite(eng) & np.isfinite(ref) & np.isfinite(ref_r))
      out["rotated_checked"] += record("rotated", eng, ref, ref_r, ok)
    return out

  def _rounded_ref(self, a, b, cross, unrounded):
    """float64 correlations of the rounded sample; the unrounded ones where nothing is
    rounded (or, on a resumed reference without the rounded half, unused: no split)."""
    if not self.capture or self.split_missing:
      return unrounded
    return self._ref_corr(a, b, cross)[0]


def sampling_error(n: int) -> dict:
  """(1 − r²)/√n — the standard error of a Pearson r over n independent tokens — at r = 0
  (the typical sampled pair, and the largest value) and at r = 0.9."""
  if n < 2:
    return {"sampling_se_r0": float("nan"), "sampling_se_r09": float("nan")}
  return {"sampling_se_r0": float(1.0 / np.sqrt(n)),
          "sampling_se_r09": float((1.0 - 0.9 ** 2) / np.sqrt(n))}


SPLIT_KEYS = ("capture_max_abs_corr", "capture_max_abs_rotated", "arithmetic_max_abs_corr",
              "arithmetic_max_abs_rotated")


def merge(results) -> dict:
  """Several passes' measured results as one (ucore.corr.passes: each pass checks its own
  pairs, over the same tokens): error maxima over the passes (the capture/arithmetic split's
  too), counts summed; the sampling error depends on the tokens only."""
  res = dict(results[0])
  for r in results[1:]:
    for key in ("max_abs_corr", "max_abs_rotated") + SPLIT_KEYS:
      if key in res and key in r:
        res[key] = max(res[key], r[key]) if np.isfinite(res[key]) else res[key]
    for key in ("entries_checked", "rotated_checked"):
      res[key] += r[key]
    if "split" in r:
      res["split"] = r["split"]
      for key in SPLIT_KEYS:
        res.pop(key, None)
  return res


def describe(result) -> str:
  """One line for reports, from summary.json's "selfcheck" (None for tables predating it)."""
  if not result:
    return "not recorded (tables made before the self-check existed)"
  if "max_abs_corr" not in result:
    return f"{result.get('status')} (precision {result.get('precision')})"
  line = (f"{result['status']}: max |Δcorr| {result['max_abs_corr']:.1e}, max |Δrotated corr| "
          f"{result['max_abs_rotated']:.1e} vs float64 on {result['sample']} × "
          f"{result['sample']} sampled neurons per pair over {result['tokens']:,} tokens "
          f"(precision {result['precision']}; bound {result['fail_above']:g})")
  if "capture_max_abs_corr" in result:
    line += (f"; of which capture rounding ≤ {result['capture_max_abs_corr']:.1e} (rotated "
             f"{result['capture_max_abs_rotated']:.1e}), arithmetic ≤ "
             f"{result['arithmetic_max_abs_corr']:.1e} (rotated "
             f"{result['arithmetic_max_abs_rotated']:.1e})")
  elif "split" in result:
    line += f"; capture/arithmetic split {result['split']}"
  if "sampling_se_r0" in result:
    line += (f"; sampling error (1 − r²)/√n {result['sampling_se_r0']:.1e} at r = 0 (typical "
             f"pair), {result['sampling_se_r09']:.1e} at r = 0.9")
  return line


def digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


class Worker:
  """Runs SelfCheck.add on a thread, in submission order (float64 sums bit-identical to a
  sequential run), so the host's float64 GEMMs and device-to-host copies overlap the device.
  `drain()` before reading the sums (checkpoints, the end)."""

  def __init__(self, check: SelfCheck, depth: int = 2):
    self.check = check
    self._q = queue.Queue(maxsize=depth)
    self._err = None
    self._t = threading.Thread(target=self._run, daemon=True, name="selfcheck")
    self._t.start()

  def _run(self):
    while True:
      item = self._q.get()
      try:
        if item is None:
          return
        if self._err is None:
          self.check.add(*item)
      except BaseException as e:   # re-raised on the driver's thread at the next drain
        self._err = e
      finally:
        self._q.task_done()

  def submit(self, gathered, mask) -> None:
    self._raise()
    self._q.put((gathered, mask))

  def drain(self) -> None:
    self._q.join()
    self._raise()

  def close(self) -> None:
    self._q.put(None)
    self._t.join()

  def _raise(self):
    if self._err is not None:
      err, self._err = self._err, None
      raise err


@functools.lru_cache(maxsize=32)
def _gather_program(d: int, n_layers: tuple, active: tuple, capture, rot_layers: tuple):
  """The device side of one step, jitted: sampled columns (`ids[m]`) of every active model
  and, for each baseline partner y of `rot_layers` ((y, its layer positions), ...), its
  centred activations rotated by `rows[y][i]` per layer position; in a capture mode also
  those of the rounded activations (else None)."""

  def one(acts, ids, rows):
    cols = {m: jnp.take(acts[m].reshape(acts[m].shape[0], -1), ids[m], axis=1) for m in active}
    rots = {}
    for y, layers in rot_layers:
      a = acts[y].reshape(acts[y].shape[0], n_layers[y], d)
      # rotate centred data in float32 (exact to the spread, whatever the offset); the
      # centres' rotation is added back on the host in float64 (`add`)
      parts, centres = [], []
      for l, r in zip(layers, rows[y]):
        a_l = a[:, l, :]
        c_l = jnp.mean(a_l, axis=0)
        parts.append(jnp.dot(a_l - c_l, r.T, precision=jax.lax.Precision.HIGHEST))
        centres.append(c_l)
      rots[y] = (jnp.concatenate(parts, axis=1), jnp.stack(centres))
    return cols, rots

  def gather(acts, ids, rows):
    rounded = None
    if capture:
      rounded = one([precision_names.capture(a, capture) for a in acts], ids, rows)
    return one(acts, ids, rows), rounded

  return jax.jit(gather)
