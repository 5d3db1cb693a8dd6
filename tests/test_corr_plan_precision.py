"""plan estimates the correlation GEMMs at the config's precision (issue 13 item 1)."""
import pytest

from ucore.corr import plan as P
from ucore.jobs.errors import UserError


def test_plan_time_follows_the_gemm_rate_of_the_precision():
  arch = P.ARCHS["gpt2-small"]
  hi = P.plan("x", 5, arch, devices=1, device="h100", precision="highest")
  bf = P.plan("x", 5, arch, devices=1, device="h100", precision="bf16_3x")
  # same work; the correlation part runs at 156 instead of 67 TFLOP/s, the forwards stay at
  # fp32; memory: the bf16 operand splits (two steps' captured activations' worth)
  assert bf.total_flops == hi.total_flops
  assert bf.step_gib_per_device == pytest.approx(
      hi.step_gib_per_device + 2 * hi.captured_gib_per_device, rel=1e-12)
  want = (bf.corr_flops_per_token / 156e12 + bf.forward_flops_per_token / 67e12) * 1e8 / 0.7
  assert bf.est_hours == pytest.approx(want / 3600, rel=1e-12)
  assert hi.est_hours / bf.est_hours > 2
  assert "bf16_3x GEMM rate" in P.format_plan(bf)
  with pytest.raises(UserError, match="v100 has no bf16_3x"):
    P.plan("x", 5, arch, devices=1, device="v100", precision="bf16_3x")


def test_plan_knows_the_capture_modes_as_estimates():
  arch = P.ARCHS["gpt2-small"]
  hi = P.plan("x", 5, arch, devices=1, device="h100", precision="highest")
  b3 = P.plan("x", 5, arch, devices=1, device="h100", precision="bf16_3x")
  bf = P.plan("x", 5, arch, devices=1, device="h100", precision="bf16")
  tf = P.plan("x", 5, arch, devices=1, device="h100", precision="tf32_fp16")
  # bf16: one pass at 3 × the measured bf16_3x dot rate; tf32_fp16: the TF32 dot's rate
  want = (bf.corr_flops_per_token / 468e12 + bf.forward_flops_per_token / 67e12) * 1e8 / 0.7
  assert bf.est_hours == pytest.approx(want / 3600, rel=1e-12)
  want = (tf.corr_flops_per_token / 275e12 + tf.forward_flops_per_token / 67e12) * 1e8 / 0.7
  assert tf.est_hours == pytest.approx(want / 3600, rel=1e-12)
  assert bf.est_hours < tf.est_hours < b3.est_hours < hi.est_hours
  # one bf16 copy of the operands: half of bf16_3x's split
  assert bf.step_gib_per_device == pytest.approx(
      hi.step_gib_per_device + hi.captured_gib_per_device, rel=1e-12)
  assert tf.step_gib_per_device == pytest.approx(hi.step_gib_per_device, rel=1e-12)
  for p in (bf, tf):
    assert "an estimate: not measured" in P.format_plan(p)
  assert "an estimate" not in P.format_plan(b3)
  for name in ("bf16", "tf32_fp16"):
    with pytest.raises(UserError, match=f"v100 has no {name}"):
      P.plan("x", 5, arch, devices=1, device="v100", precision=name)
  with pytest.raises(UserError, match="tpu-v4 has no tf32_fp16"):
    P.plan("x", 5, arch, devices=1, device="tpu-v4", precision="tf32_fp16")


def test_plan_counts_finalize_draws_from_the_shapes_rotated():
  """A draw rotates each owned row's co-moments with every partner layer (N × L·d times a
  d×d matrix per layer) and each rotated model's within-layer moments (R S Rᵀ: 2d³ per
  layer); all_pairs does both orientations of each pair; adjacent layers (band 3) less."""
  arch = P.ARCHS["gpt2-small"]
  L, d = arch.n_layer, arch.d_mlp
  N = L * d
  ref = P.plan("x", 5, arch, devices=1, device="h100", draws=16, kinds=2)
  assert ref.draw_flops == 4 * 2.0 * N * L * d * d + 4 * 2.0 * L * d ** 3
  assert ref.finalize_draws_s == pytest.approx(ref.draw_flops * 32 / (67e12 * 0.7), rel=1e-12)
  allp = P.plan("x", 5, arch, devices=1, device="h100", mode="all_pairs")
  assert allp.draw_flops == 2 * 10 * 2.0 * N * L * d * d + 5 * 2.0 * L * d ** 3
  adj = P.plan("x", 5, arch, devices=1, device="h100", layer_mode="adjacent")
  assert adj.draw_flops == 4 * 2.0 * N * 3 * d * d + 4 * 2.0 * L * d ** 3
  eight = P.plan("x", 5, arch, devices=8, device="h100")
  assert eight.finalize_draws_s == pytest.approx(ref.finalize_draws_s / 8, rel=1e-12)
  assert "finalize: 16 baseline draw(s) × 2 kind(s)" in P.format_plan(ref)
