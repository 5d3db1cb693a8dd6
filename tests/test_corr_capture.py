"""Issue 23 items 1-2 on CPU: the capture precision modes (bf16, tf32_fp16) and the
self-check's split of the error into capture rounding and arithmetic.

References are independent of ucore: the rounding is numpy's (float16) or bit arithmetic
(bfloat16, round to nearest even), correlations are float64 numpy."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.corr_ref import accumulate, adversarial, corr64
from ucore.corr import finalize as F, moments as M, precision, selfcheck as SC
from ucore.corr.synthetic import SyntheticFamily
from ucore.jobs import atomic, config_files
from ucore.jobs.errors import UserError


def bf16_np(x):
  """float32 → nearest bfloat16 (ties to even), as float32: integer arithmetic on the bits."""
  u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
  u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
  return u.astype(np.uint32).view(np.float32)


def fp16_np(x):
  with np.errstate(over="ignore"):   # overflow to inf is float16's behaviour, tested
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


ROUND = {"bf16": bf16_np, "tf32_fp16": fp16_np}


def _flat(a, mask):
  a = a[mask]
  return a.reshape(a.shape[0], -1).astype(np.float64)


def test_names_rounding_and_cpu_availability():
  rng = np.random.default_rng(0)
  # every scale: fp16's subnormals (< 6.1e-5), its overflow (> 65504), ties, signs
  x = (rng.standard_normal(20_000) * 10.0 ** rng.uniform(-9, 5.5, 20_000)).astype(np.float32)
  x = np.concatenate([x, np.float32([65504, 65519, 65520, -7e4, 2 ** -25, 3 * 2 ** -25,
                                     1 + 2 ** -8, 1 + 3 * 2 ** -8, 0.0])])
  for name, rnd in ROUND.items():
    assert name in precision.NAMES and precision.check(name) == name   # CPU: not refused
    dev = np.asarray(jax.jit(lambda v: precision.capture(v, name))(jnp.asarray(x)))
    np.testing.assert_array_equal(dev, rnd(x))
    np.testing.assert_array_equal(precision.capture(x, name), rnd(x))     # host path too
    assert "at capture" in precision.describe(name)
  np.testing.assert_array_equal(precision.capture(x, "bf16_3x"), x)
  with pytest.raises(UserError, match="not available on cpu"):
    precision.check("tf32")
  # products of the rounded numbers are exact in float32 (the premise of the modes)
  x = (rng.standard_normal(20_000) * 37).astype(np.float32)
  a, b = bf16_np(x[:10_000]), bf16_np(x[10_000:])
  assert np.array_equal((a * b).astype(np.float64), a.astype(np.float64) * b.astype(np.float64))
  a, b = fp16_np(x[:10_000]), fp16_np(x[10_000:])
  assert np.array_equal((a * b).astype(np.float64), a.astype(np.float64) * b.astype(np.float64))


def test_bf16_step_uses_bf16_operands():
  acts, mask = adversarial(K=2, L=1, d=4, T=16)
  mesh = M.make_mesh(1, 1, jax.devices()[:1])
  spec = M.make_spec(["a", "b"], [(0,), (0,)], 4, mesh, precision="bf16")
  acc = M.Accumulator(spec, mesh)
  xs, w = acc.prepare(list(acts), mask)
  shapes = {k: p for k, (_, _, p) in M.state_shapes(spec).items()}
  fn = jax.shard_map(lambda s, x, w: M._local_step(spec, s, x, w), mesh=mesh,
                     in_specs=(shapes, [M.X_SPEC] * 2, jax.sharding.PartitionSpec((M.TOK, M.NEU))),
                     out_specs=shapes, check_vma=False)
  eqns = [e for e in jax.make_jaxpr(fn)(acc.state, xs, w).jaxpr.eqns[0].params["jaxpr"].eqns
          if e.primitive.name == "dot_general"]
  gemms = [e for e in eqns if all(v.aval.dtype == jnp.bfloat16 for v in e.invars)]
  assert len(gemms) == 2          # the C and S blocks: bf16 operands, float32 results
  assert all(e.outvars[0].aval.dtype == jnp.float32 for e in gemms)
  stats = [e for e in eqns if e not in gemms]   # means and M2: float32 at HIGHEST
  assert stats and all(v.aval.dtype == jnp.float32 for e in stats for v in e.invars)
  assert all(e.params["precision"] == (jax.lax.Precision.HIGHEST,) * 2 for e in stats)


@pytest.mark.parametrize("name", ["bf16", "tf32_fp16"])
@pytest.mark.parametrize("layer_mode,mesh_shape", [("all", (1, 1)), ("adjacent", (2, 4))])
def test_capture_modes_compute_the_moments_of_the_rounded_activations(name, layer_mode,
                                                                      mesh_shape):
  acts, mask = adversarial(offset=2.0, T=600)
  mask[200:400] = False   # the middle batch counts no token (what an empty batch gives the step)
  devices = jax.devices()[:mesh_shape[0] * mesh_shape[1]]
  if len(devices) < mesh_shape[0] * mesh_shape[1]:
    mesh_shape, devices = (1, 1), jax.devices()[:1]
  mesh = M.make_mesh(*mesh_shape, devices)
  spec, _, acc = accumulate(acts, mask, precision=name, layer_mode=layer_mode, mesh=mesh,
                            batches=(200, 200, 200))   # one shape: one compile
  rounded = [ROUND[name](a) for a in acts]
  _, moms = F.moments_host(spec, acc.state, 1e-6)
  for m in range(3):
    x = _flat(rounded[m], mask)
    np.testing.assert_allclose(moms[m]["mean"][:, :6].reshape(-1), x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(moms[m]["std"][:, :6].reshape(-1), x.std(0), rtol=1e-5,
                               atol=1e-6)
  got = np.asarray(F.full_corr_blocks(spec, acc.state, 0, 1))[:, :6, :, :6]
  ref = corr64(_flat(rounded[0], mask), _flat(rounded[1], mask)).reshape(2, 6, 2, 6)
  unr = corr64(_flat(acts[0], mask), _flat(acts[1], mask)).reshape(2, 6, 2, 6)
  if layer_mode == "all":
    pairs = [(g, r, u) for g, r, u in [(got, ref, unr)]]
  else:   # band position b of layer l holds partner layer l + b - 1
    pairs = [(got[l, :, b], ref[l, :, l + b - 1], unr[l, :, l + b - 1])
             for l in range(2) for b in range(3) if 0 <= l + b - 1 < 2]
  arith = max(np.nanmax(np.abs(g - r)) for g, r, _ in pairs)
  capture = max(np.nanmax(np.abs(r - u)) for _, r, u in pairs)
  assert arith < 3e-5, arith            # float32 accumulation of exact products
  assert capture > 10 * arith            # the rounding happened, and dominates


def _family_acts(name, offset, T_rows=48, ctx=16):
  fam = SyntheticFamily(n_models=3, n_layers=2, d_mlp=32, n_planted=4, seed=5, offset=offset,
                        ctx=ctx)
  acts = [np.concatenate([fam.row_acts(m, r) for r in range(T_rows)]) for m in range(3)]
  mask = np.random.default_rng(2).random(acts[0].shape[0]) > 0.1
  return acts, mask


def _engine_and_check(acts, mask, name, sample, batches=3):
  mesh = M.make_mesh(1, 1, jax.devices()[:1])
  spec = M.make_spec(["a", "b", "c"], [range(2)] * 3, acts[0].shape[1] // 2, mesh,
                     precision=name)
  acc = M.Accumulator(spec, mesh)
  chk = SC.SelfCheck(spec, sample, seed=4)
  for part in np.array_split(np.arange(acts[0].shape[0]), batches):
    a = [x[part] for x in acts]
    acc.update(a, mask[part])
    chk.add(chk.gather([jnp.asarray(x) for x in a]), mask[part])
  return spec, acc, chk


@pytest.mark.parametrize("name", ["bf16", "tf32_fp16"])
def test_selfcheck_split_attributes_a_planted_familys_error_to_capture(name):
  # offset 2 on a spread of ~0.6: bf16 spacing there is 2^-6 (fp16 2^-9), coarse against the
  # spread, while the raw GEMM's cancellation (~eps32·mean²/var) stays small
  acts, mask = _family_acts(name, offset=2.0)
  spec, acc, chk = _engine_and_check(acts, mask, name, sample=24)
  _, moms = F.moments_host(spec, acc.state, 1e-6)
  res = chk.measure(acc.state, moms)
  # independent: numpy float64 on the sampled columns, rounded by numpy / bit arithmetic
  capture = arith = total = 0.0
  checked = 0
  for x, y in spec.pairs:
    cx = lambda a, m: a[mask][:, chk.ids[m]]
    ref = corr64(cx(acts[x], x), cx(acts[y], y))
    ref_r = corr64(cx(ROUND[name](acts[x]), x), cx(ROUND[name](acts[y]), y))
    full = np.asarray(F.full_corr_blocks(spec, acc.state, x, y))   # [L, d_pad, L, d_pad]
    d = spec.d_mlp
    eng = full[chk.ids[x] // d, chk.ids[x] % d][:, chk.ids[y] // d, chk.ids[y] % d]
    ok = np.isfinite(ref) & np.isfinite(eng) & np.isfinite(ref_r)
    capture = max(capture, np.max(np.abs(ref_r - ref)[ok]))
    arith = max(arith, np.max(np.abs(eng - ref_r)[ok]))
    total = max(total, np.max(np.abs(eng - ref)[ok]))
    checked += int(ok.sum())
  assert res["entries_checked"] == checked > 24 * 24
  assert res["capture_max_abs_corr"] == pytest.approx(capture, rel=1e-9)
  assert res["max_abs_corr"] == pytest.approx(total, rel=1e-3)
  assert res["arithmetic_max_abs_corr"] == pytest.approx(arith, rel=0.05, abs=1e-7)
  assert res["capture_max_abs_corr"] > 1e-4 > 10 * res["arithmetic_max_abs_corr"]
  assert res["capture_max_abs_rotated"] > 10 * res["arithmetic_max_abs_rotated"]
  assert res["rotated_checked"] > 0
  # sampling error beside it: (1 − r²)/√n over the run's tokens at r = 0 and r = 0.9
  n = int(mask.sum())
  assert res["tokens"] == n
  assert res["sampling_se_r0"] == pytest.approx(1 / np.sqrt(n), rel=1e-12)
  assert res["sampling_se_r09"] == pytest.approx(0.19 / np.sqrt(n), rel=1e-12)
  text = SC.describe(dict(res, status="ok", precision=name, fail_above=1e-4))
  assert "capture rounding" in text and "sampling error" in text


def test_unrounded_modes_write_no_split():
  acts, mask = _family_acts("highest", offset=8.0, T_rows=32)   # 256-token batches, as above
  spec, acc, chk = _engine_and_check(acts, mask, "highest", sample=16, batches=2)
  res = chk.measure(acc.state, F.moments_host(spec, acc.state, 1e-6)[1])
  assert res["max_abs_corr"] > 0 and not set(SC.SPLIT_KEYS) & set(res) and "split" not in res
  assert res["sampling_se_r0"] == pytest.approx(1 / np.sqrt(mask.sum()))
  assert "capture" not in chk.settings()     # old runs' settings (resume identity) unchanged
  assert "capture rounding" not in SC.describe(dict(res, status="ok", precision="highest",
                                                    fail_above=1e-3))


def test_resumed_reference_keeps_the_rounded_half_or_says_it_lacks_it():
  # 256-token batches and halves: the bf16 step and gather compiled above serve it
  acts, mask = _family_acts("bf16", offset=8.0, T_rows=32)
  spec, acc, whole = _engine_and_check(acts, mask, "bf16", sample=16, batches=2)
  half = np.arange(acts[0].shape[0]) < acts[0].shape[0] // 2
  mesh = M.make_mesh(1, 1, jax.devices()[:1])

  def run(reload):
    chk = SC.SelfCheck(spec, 16, seed=4)
    for i, part in enumerate((half, ~half)):
      if i == 1:
        chk = reload(chk.to_bytes())
      a = [jnp.asarray(x[part]) for x in acts]
      chk.add(chk.gather(a), mask[part])
    return chk.measure(acc.state, F.moments_host(spec, acc.state, 1e-6)[1])

  def same(data):
    chk = SC.SelfCheck(spec, 16, seed=4)
    chk.load_bytes(data, "ckpt")
    return chk

  def strip(data):   # a reference persisted without the rounded half
    import io
    with np.load(io.BytesIO(data)) as z:
      kept = {k: z[k] for k in z.files if not k.startswith(("shift/r", "shift/v", "sum/s1/r",
                                                             "sum/s2/r", "sum/s1/v", "sum/s2/v",
                                                             "sum/rx"))}
    buf = io.BytesIO()
    np.savez(buf, **kept)
    return same(buf.getvalue())

  ref = whole.measure(acc.state, F.moments_host(spec, acc.state, 1e-6)[1])
  resumed = run(same)
  for k in ("max_abs_corr", "capture_max_abs_corr", "arithmetic_max_abs_corr",
            "capture_max_abs_rotated", "tokens"):
    assert resumed[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-15), k
  lacking = run(strip)
  assert lacking["split"].startswith("unavailable (resumed from ckpt")
  assert "capture_max_abs_corr" not in lacking
  assert lacking["max_abs_corr"] == pytest.approx(ref["max_abs_corr"], rel=1e-9)
  assert "split unavailable" in SC.describe(dict(lacking, status="ok", precision="bf16",
                                                 fail_above=1.0))


def test_correlate_at_bf16_writes_the_split(tmp_path):
  from ucore.corr import driver
  c = config_files.load("correlate_tiny")
  c.precision = "bf16"
  c.synthetic.offset = 4.0
  c.selfcheck.fail_above = 1e-2
  c.batch_rows = 16                 # fewer steps and commits than the tiny config's: faster
  c.checkpoint.every_steps = 100
  c.baseline.draws = 1
  wd = str(tmp_path / "run")
  driver.run(c, wd)
  s = atomic.read_json(os.path.join(wd, "tables", "summary.json"))
  chk = s["selfcheck"]
  assert s["precision"] == "bf16" and "at capture" in s["numerics"]
  assert chk["status"] == "ok" and chk["tokens"] > 0
  assert chk["capture_max_abs_corr"] > chk["arithmetic_max_abs_corr"]
  assert chk["max_abs_corr"] <= chk["capture_max_abs_corr"] + chk["arithmetic_max_abs_corr"]
  assert chk["sampling_se_r0"] == pytest.approx(1 / np.sqrt(chk["tokens"]))
  assert s["universal"]["synth0"] >= 1


def test_merge_of_passes_takes_maxima():
  a = {"max_abs_corr": 1e-5, "max_abs_rotated": 2e-5, "capture_max_abs_corr": 1e-5,
       "capture_max_abs_rotated": 1e-6, "arithmetic_max_abs_corr": 3e-7,
       "arithmetic_max_abs_rotated": 1e-7, "entries_checked": 4, "rotated_checked": 2,
       **SC.sampling_error(400)}
  b = dict(a, max_abs_corr=3e-5, arithmetic_max_abs_rotated=5e-7, entries_checked=6)
  m = SC.merge([a, b])
  assert m["max_abs_corr"] == 3e-5 and m["arithmetic_max_abs_rotated"] == 5e-7
  assert m["entries_checked"] == 10 and m["capture_max_abs_corr"] == 1e-5
  assert m["sampling_se_r0"] == 0.05 and m["rotated_checked"] == 4


def test_model_source_runs_its_forward_in_the_chosen_dtype(tmp_path):
  from ucore.corr import activations as S
  from ucore.corr.synthetic import SyntheticTokens
  from ucore.models.gpt2 import GPT2Config
  from ucore.models.hooked import init_params, save_model
  cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, d_mlp=24)
  p = str(tmp_path / "m")
  save_model(p, cfg, init_params(cfg, seed=0), manifest={"source": "test", "seed": 0})
  tokens = SyntheticTokens(num_rows=4, ctx=16, seed=1).read_rows(0, 4)
  f32 = S.ModelSource(p, "m", "blocks.*.mlp.hook_post")
  bf = S.ModelSource(p, "m", "blocks.*.mlp.hook_post", dtype="bfloat16")
  assert (f32.forward_dtype, bf.forward_dtype) == ("float32", "bfloat16")
  assert bf.fingerprint == f32.fingerprint        # the weights' (analyze matches tables by it)
  a32 = np.asarray(f32.acts(tokens, [0, 1]))
  a16 = np.asarray(bf.acts(tokens, [0, 1]))
  assert a16.dtype == np.float32 and a16.shape == a32.shape == (4, 16, 48)
  rel = np.abs(a16 - a32).max() / np.abs(a32).max()
  assert 1e-4 < rel < 5e-2                          # bf16 rounding, not a different forward
  with pytest.raises(UserError, match="forward_dtype='float16' is not one of"):
    S.ModelSource(p, "m", "blocks.*.mlp.hook_post", dtype="float16")
