"""Dry-run planning: per-device memory, FLOPs and estimated time of a correlate run.

Model dimensions come from the models' converted configs when they exist, otherwise from
the known GPT-2 sizes. Peak numbers are for float32 at Precision.HIGHEST (GPU: CUDA-core fp32,
no TF32; TPU: 6 bf16 MXU passes ≈ bf16 peak / 6); `efficiency` is the expected fraction of peak.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

from ucore.errors import UserError

# name: (fp32-at-HIGHEST TFLOP/s, memory GiB, description)
DEVICES = {
    "cpu": (0.15, 128, "this 2-core build machine (measured numpy fp32 GEMM)"),
    "v100": (15.7, 32, "NVIDIA V100 SXM2 32GB (the paper's GPU)"),
    "a100": (19.5, 80, "NVIDIA A100 80GB"),
    "h100": (67.0, 80, "NVIDIA H100 SXM 80GB"),
    "h200": (67.0, 141, "NVIDIA H200 141GB"),
    "tpu-v4": (275 / 6, 32, "TPU v4 chip"),
    "tpu-v5e": (197 / 6, 16, "TPU v5e chip"),
    "tpu-v5p": (459 / 6, 95, "TPU v5p chip"),
}

ARCHS = {  # n_layer, d_mlp, d_model, ctx (GPT-2 family)
    "gpt2-small": (12, 3072, 768, 1024),
    "gpt2-medium": (24, 4096, 1024, 1024),
}


@dataclasses.dataclass
class Plan:
  name: str
  models: int
  pairs: int
  n_layer: int
  d_mlp: int
  tokens: float
  devices: int
  mesh: tuple
  device: str
  tokens_per_step: int
  state_gib_total: float
  state_gib_per_device: float
  acts_gib_per_device: float
  weights_gib_per_device: float
  peak_gib_per_device: float
  device_gib: float
  fits: bool
  corr_flops_per_token: float
  forward_flops_per_token: float
  total_flops: float
  est_hours: float
  original_accum_gib: float


def plan(name, n_models, n_layer, d_mlp, d_model, *, tokens=1e8, devices=8, tok=1,
         device="h100", tokens_per_step=4096, compensated=True, mode="reference",
         layer_mode="all", efficiency=0.7, ctx=512) -> Plan:
  if device not in DEVICES:
    raise UserError(f"unknown device kind {device!r}; choose from {', '.join(DEVICES)}.")
  peak, mem, _ = DEVICES[device]
  N = n_layer * d_mlp
  pairs = n_models - 1 if mode == "reference" else n_models * (n_models - 1) // 2
  rotated = n_models - 1 if mode == "reference" else n_models
  band = n_layer if layer_mode == "all" else 3
  comp = 2 if compensated else 1
  neu = devices // tok
  q = math.lcm(tok, neu)
  d_pad = -(-d_mlp // q) * q
  c_bytes = pairs * n_layer * d_pad * band * d_pad * 4 * comp
  s_bytes = rotated * n_layer * d_pad * d_pad * 4 * comp
  state = c_bytes + s_bytes
  # per step, each device holds all tokens of its row slice (d/tok) of every model that
  # appears as rows (reference; every rotated model, for S) and of its column slice (d/neu)
  # of every partner model, raw and centred
  row_models = n_models if mode == "all_pairs" else 1 + rotated
  col_models = n_models if mode == "all_pairs" else n_models - 1
  acts = 2 * tokens_per_step * n_layer * 4 * (
      min(row_models, n_models) * d_pad / tok + col_models * d_pad / neu)
  params = n_layer * 12 * d_model * d_model + 50257 * d_model + 1024 * d_model
  weights = n_models * params * 4
  # finalize transient: one partner layer of rotated block per device
  fin = n_layer * d_pad * d_pad * 4 / tok
  per_dev = state / devices + acts + weights + fin
  corr_fl = 2.0 * pairs * N * band * d_mlp + 2.0 * rotated * n_layer * d_mlp * d_mlp
  fwd_fl = n_models * (2.0 * n_layer * 12 * d_model * d_model + 4.0 * n_layer * ctx * d_model)
  total = (corr_fl + fwd_fl) * tokens
  hours = total / (devices * peak * 1e12 * efficiency) / 3600
  g = 2.0 ** 30
  return Plan(name=name, models=n_models, pairs=pairs, n_layer=n_layer, d_mlp=d_mlp,
              tokens=tokens, devices=devices, mesh=(tok, neu), device=device,
              tokens_per_step=tokens_per_step, state_gib_total=state / g,
              state_gib_per_device=state / devices / g, acts_gib_per_device=acts / g,
              weights_gib_per_device=weights / g, peak_gib_per_device=per_dev / g,
              device_gib=mem, fits=per_dev / g <= 0.9 * mem, corr_flops_per_token=corr_fl,
              forward_flops_per_token=fwd_fl, total_flops=total, est_hours=hours,
              original_accum_gib=pairs * (N * N + 2 * N) * 8 / g)


def arch_of(config):
  """(n_layer, d_mlp, d_model) from the first model's converted config, or by name (a
  warning says when neither tells and GPT-2 small is assumed). UserError if the first
  model's config file exists but does not describe a GPT-2."""
  for path in list(config.models)[:1]:
    for fname in ("config.json", "model_config.json"):
      p = os.path.join(path, fname)
      if os.path.exists(p):
        try:
          with open(p) as f:
            c = json.load(f)
          return (int(c.get("n_layer")), int(c.get("d_mlp") or 4 * c["n_embd"]),
                  int(c.get("n_embd") or c.get("d_model")))
        except (OSError, TypeError, KeyError, ValueError) as e:
          raise UserError(f"cannot read n_layer/d_mlp/n_embd from {p} ({e!r}); is "
                          f"{path} a converted model?") from e
  names = " ".join(list(config.models) + list(config.model_names)).lower()
  if config.synthetic.enabled:
    s = config.synthetic
    return s.n_layers, s.d_mlp, max(s.d_mlp // 4, 1)
  for key, (L, d, dm, _) in ARCHS.items():
    if key.split("-")[1] in names:
      return L, d, dm
  from absl import logging
  logging.warning("plan: no model config or size in the model names %r; assuming gpt2-small",
                  names)
  return ARCHS["gpt2-small"][:3]


def format_plan(p: Plan) -> str:
  fit = ("fits" if p.fits else
         "DOES NOT FIT: add devices, set compensated=False or lower batch_rows")
  return (f"{p.name}: {p.models} models, {p.pairs} pairs, {p.n_layer}×{p.d_mlp} neurons, "
          f"{p.tokens:.3g} tokens on {p.devices}× {p.device} (mesh tok={p.mesh[0]} "
          f"neu={p.mesh[1]}), {p.tokens_per_step} tokens/step\n"
          f"  accumulators {p.state_gib_total:.1f} GiB total = {p.state_gib_per_device:.2f} "
          f"GiB/device; + activations {p.acts_gib_per_device:.2f} + weights "
          f"{p.weights_gib_per_device:.2f} → peak ≈ {p.peak_gib_per_device:.1f} GiB/device of "
          f"{p.device_gib} ({fit})\n"
          f"  FLOPs/token: correlations {p.corr_flops_per_token / 1e9:.2f} G + forwards "
          f"{p.forward_flops_per_token / 1e9:.2f} G; total {p.total_flops:.3g} → ≈ "
          f"{p.est_hours:.2f} h at 70% of fp32 peak (the original: "
          f"{p.original_accum_gib:.0f} GiB float64 accumulators, one V100 per job)")
