"""Dry-run planning: per-device memory, FLOPs and estimated time of a correlate run.

Model dimensions (and the weight-memory terms: vocabulary, learned positions, tied or untied
unembedding) come from the first model's converted config.json when it exists, otherwise from
the known sizes in ARCHS. Peak numbers are for float32 at Precision.HIGHEST (GPU: CUDA-core fp32,
no TF32; TPU: 6 bf16 MXU passes ≈ bf16 peak / 6); `efficiency` is the expected fraction of peak.

Memory: where the planned device kind and count are at hand (`compiled_step_bytes`), the step's
need is XLA's own memory analysis of the compiled step (ucore.corr.memory, what `correlate`'s
preflight checks); elsewhere an analytic estimate of the same buffers.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

from ucore.jobs.errors import UserError

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

# GEMM TFLOP/s at the faster precisions (ucore.corr.precision), used in place of DEVICES' fp32
# figure. H100: XLA dots measured on the lent H100 (issue 13; BF16_BF16_F32_X3 156, TF32 275);
# elsewhere dense bf16 peak / 3 and the TF32 peak from the vendors' sheets. None: the device
# has no such dot (V100: no bf16/TF32 tensor cores; TPUs: no TF32).
# The capture modes (issue 23) are ESTIMATES until measured: `bf16` (one BF16_BF16_F32 pass)
# at 3 × the bf16_3x rate (H100/H200: 468, 47% of the 989 dense bf16 peak; the H200's measured
# dots, BENCHMARKS.md (7): bf16_3x 206, so ~620 there), elsewhere the dense bf16 peak;
# `tf32_fp16` runs the same TF32 dot as `tf32` (its rate is that dot's; the rounding at
# capture costs no GEMM time). CPU: both run as float32 dots (ucore.corr.precision).
FAST_TFLOPS = {
    "cpu": {"bf16_3x": 0.15, "tf32": None, "bf16": 0.15, "tf32_fp16": 0.15},
    "v100": {"bf16_3x": None, "tf32": None, "bf16": None, "tf32_fp16": None},
    "a100": {"bf16_3x": 312 / 3, "tf32": 156.0, "bf16": 312.0, "tf32_fp16": 156.0},
    "h100": {"bf16_3x": 156.0, "tf32": 275.0, "bf16": 3 * 156.0, "tf32_fp16": 275.0},
    "h200": {"bf16_3x": 156.0, "tf32": 275.0, "bf16": 3 * 156.0, "tf32_fp16": 275.0},
    "tpu-v4": {"bf16_3x": 275 / 3, "tf32": None, "bf16": 275.0, "tf32_fp16": None},
    "tpu-v5e": {"bf16_3x": 197 / 3, "tf32": None, "bf16": 197.0, "tf32_fp16": None},
    "tpu-v5p": {"bf16_3x": 459 / 3, "tf32": None, "bf16": 459.0, "tf32_fp16": None},
}
# rates above that no device measurement backs yet (format_plan labels them)
ESTIMATED = {"bf16", "tf32_fp16"}


def operand_split_bytes(precision: str, captured: float) -> float:
  """Temporaries the dot's operand conversion adds beside the fp32 step: bf16_3x splits
  every operand into bf16 hi + lo (measured on an H200: 2 × one step's captured activations,
  issue 13); bf16 makes one bf16 copy (estimate: half of that); the others none."""
  return {"bf16_3x": 2 * captured, "bf16": captured}.get(precision, 0.0)


def gemm_tflops(device: str, precision: str = "highest") -> float:
  """The correlation GEMMs' TFLOP/s on `device` at `precision`; UserError where it has none."""
  if precision == "highest":
    return DEVICES[device][0]
  t = FAST_TFLOPS[device].get(precision)
  if t is None:
    raise UserError(f"plan: {device} has no {precision} dot; plan with "
                    "--config.precision=highest")
  return t



@dataclasses.dataclass(frozen=True)
class Arch:
  """What a plan needs of a model: its neuron grid and width, and its weights' size."""
  n_layer: int
  d_mlp: int
  d_model: int
  vocab_size: int = 50257
  n_positions: int = 1024
  tie_word_embeddings: bool = True
  learned_positions: bool = True   # GPT-2's position table; rotary (GPT-NeoX) has none

  def n_params(self) -> int:
    """Weights of one model (LayerNorms and biases left out)."""
    blocks = self.n_layer * (4 * self.d_model ** 2 + 2 * self.d_model * self.d_mlp)
    embed = self.vocab_size * self.d_model * (1 if self.tie_word_embeddings else 2)
    pos = self.n_positions * self.d_model if self.learned_positions else 0
    return blocks + embed + pos

  @classmethod
  def of_model_config(cls, c) -> "Arch":
    """From a ucore.models.config.LMConfig (any architecture)."""
    return cls(c.n_layer, c.d_mlp, c.n_embd, c.vocab_size, c.n_positions,
               bool(c.tie_word_embeddings), c.positional == "learned")


ARCHS = {
    "gpt2-small": Arch(12, 3072, 768),
    "gpt2-medium": Arch(24, 4096, 1024),
    # EleutherAI/pythia-160m (GPT-NeoX): rotary positions, untied unembedding, padded vocab
    "pythia-160m": Arch(12, 3072, 768, vocab_size=50304, n_positions=2048,
                        tie_word_embeddings=False, learned_positions=False),
}

# The paper's runs, planned beside a config's own: (label, ARCHS key, models)
PAPER_RUNS = (
    ("paper gpt2-small (a vs b..e)", "gpt2-small", 5),
    ("paper gpt2-medium (a vs b..e)", "gpt2-medium", 5),
    ("paper pythia-160m (vs seed1..3)", "pythia-160m", 4),
)


@dataclasses.dataclass
class Plan:
  name: str
  models: int
  pairs: int
  n_layer: int
  d_mlp: int
  params_per_model: int
  tokens: float
  devices: int
  mesh: tuple
  device: str
  tokens_per_step: int
  state_gib_total: float
  state_gib_per_device: float
  acts_gib_per_device: float
  weights_gib_per_device: float
  captured_gib_per_device: float  # one step's captured activations (held across the step)
  steps_in_flight: int           # 2 in the overlapped loop, 1 without (as planned)
  step_gib_per_device: float     # the accumulate step program (compiled or analytic)
  analytic_step_gib: float       # the analytic estimate, shown beside a compiled figure
  memory_source: str             # "compiled for <kind>" or "analytic"
  peak_gib_per_device: float
  one_step_at_a_time: bool       # the overlapped loop would not fit; correlate runs sequentially
  overlapped_peak_gib: float     # the peak with two steps in flight
  device_gib: float
  fits: bool
  corr_flops_per_token: float
  forward_flops_per_token: float
  total_flops: float
  est_hours: float
  original_accum_gib: float
  precision: str = "highest"
  # passes (ucore.corr.passes), where one pass does not fit: the tiles' count and layout,
  # the largest tile's peak, and the time with every pass's forwards recomputed
  passes: int = 1
  pass_layout: str = ""
  pass_peak_gib: float = 0.0
  pass_memory_source: str = ""
  pass_hours: float = 0.0
  forward_share: float = 0.0       # recomputed forwards' share of the passes' FLOPs
  # finalize's baseline draws (ucore.corr.finalize): FLOPs of one draw of one kind, and the
  # estimated seconds of all of them (draws × kinds) at the fp32 GEMM rate
  draw_flops: float = 0.0
  draws: int = 0
  kinds: int = 0
  finalize_draws_s: float = 0.0


class _MeshShape:
  """What make_spec reads of a mesh (its axis sizes): specs for devices not at hand."""

  def __init__(self, tok, neu):
    from ucore.corr import moments as M
    self.shape = {M.TOK: tok, M.NEU: neu}


def run_spec(n_models, arch: Arch, *, devices, tok, mode="reference", layer_mode="all",
             compensated=True, precision="highest", mesh=None):
  """The Spec a correlate run of `n_models` × `arch` makes on `devices` (mesh tok × rest)."""
  from ucore.corr import moments as M
  return M.make_spec([f"m{i}" for i in range(n_models)], [range(arch.n_layer)] * n_models,
                     arch.d_mlp, mesh or _MeshShape(tok, devices // tok), mode=mode,
                     layer_mode=layer_mode, compensated=compensated, precision=precision)


def tile_bytes(t, arch: Arch, *, devices, tok, tokens_per_step, precision="highest") -> dict:
  """Analytic per-device bytes of one step of spec `t` (a whole run or one pass's tile):
  'state', 'step' (state + slabs + GEMM block + precision split), 'captured' (one step's
  forwards' activations), 'fin' (finalize transient). The same terms as `plan`'s."""
  from ucore.corr import moments as M
  neu = devices // tok
  d_pad, T = t.d_pad, tokens_per_step
  rows = {x for x, _ in t.pairs} | set(t.rotated)
  cols = t.col_stats_models() & set(t.active)
  state = M.state_bytes(t) / devices
  acts = 2 * T * 4 * (sum(t.n_layers[m] for m in rows) * d_pad / tok
                      + sum(t.n_layers[m] for m in cols) * d_pad / neu)
  gemm = max(t.n_layers[x] * d_pad / tok * t.band(x, y) * d_pad / neu * 4 for x, y in t.pairs)
  captured = T * sum(t.n_layers[m] for m in t.active) * arch.d_mlp * 4 / devices
  split = operand_split_bytes(precision, captured)
  fin = max(t.n_layers[m] for m in t.active) * d_pad * d_pad * 4 / tok
  return {"state": state, "step": state + acts + gemm + split, "captured": captured,
          "fin": fin}


def forward_flops(arch: Arch, ctx: int) -> float:
  """One model's forward FLOPs per token."""
  return (2.0 * arch.n_layer * (4 * arch.d_model + 2 * arch.d_mlp) * arch.d_model
          + 4.0 * arch.n_layer * ctx * arch.d_model)


def plan_passes(spec, arch: Arch, *, devices, tok, device, tokens_per_step, tokens,
                precision="highest", efficiency=0.7, ctx=512, compiled=None,
                n_models=None):
  """The passes correlate would make where one does not fit `device` (ucore.corr.passes:
  the fewest tiles whose peak — weights + step + one step's captured activations — is ≤ 90%
  of the device): (tiles, largest peak in bytes, hours with every pass's forwards, forwards'
  share of the FLOPs), or None when not even one tile fits. compiled(tile): the compiled
  step's need where the device is at hand (else None: the analytic estimate)."""
  from ucore.corr import moments as M
  from ucore.corr import passes as PS
  usable = 0.9 * DEVICES[device][1] * 2.0 ** 30
  weights = (n_models or spec.n_models) * arch.n_params() * 4

  def peak(t):
    b = tile_bytes(t, arch, devices=devices, tok=tok, tokens_per_step=tokens_per_step,
                   precision=precision)
    step = compiled(t) if compiled is not None else None
    step = b["step"] if step is None else step
    return weights + max(step + b["captured"], b["state"] + b["fin"])

  tiles = PS.choose(spec, lambda t: peak(t) <= usable)
  if tiles is None:
    return None
  fwd = forward_flops(arch, ctx)
  corr = sum(M.step_flops(t, 1) for t in tiles)
  fw = sum(len(t.active) for t in tiles) * fwd
  secs = (corr / (gemm_tflops(device, precision) * 1e12) + fw / (DEVICES[device][0] * 1e12)) \
      * tokens / (devices * efficiency)
  return tiles, max(peak(t) for t in tiles), secs / 3600, fw / (fw + corr)


def plan(name, n_models, arch: Arch, *, tokens=1e8, devices=8, tok=1,
         device="h100", tokens_per_step=4096, compensated=True, mode="reference",
         layer_mode="all", efficiency=0.7, ctx=512, compiled_step_bytes=None,
         precision="highest", overlap=True, compiled_tile=None, draws=16, kinds=2) -> Plan:
  """compiled_step_bytes: the compiled step's per-device need (compiled_step_bytes()); used
  instead of the analytic step estimate when given. overlap: the driver's overlapped loop
  holds two steps' captured activations (what correlate's preflight counts).
  compiled_tile(tile): a pass's compiled step need, where the device is at hand.
  draws, kinds: the baseline's draws per kind and its kinds (finalize's estimate)."""
  if device not in DEVICES:
    raise UserError(f"unknown device kind {device!r}; choose from {', '.join(DEVICES)}.")
  peak, mem, _ = DEVICES[device]
  n_layer, d_mlp, d_model = arch.n_layer, arch.d_mlp, arch.d_model
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
  # the GEMM's output block (one pair's C slice per device) is a temporary beside the state
  # before the compensated merge (one H100, 5 × GPT-2 small: compiled 61.9 GiB, without this
  # term the estimate said 56.7)
  gemm = n_layer * d_pad / tok * band * d_pad / neu * 4
  # captured activations [T, L*d] per model live across the step (rows split over devices),
  # two steps' worth in the overlapped loop
  captured = tokens_per_step * n_models * N * 4 / devices
  in_flight = 2 if overlap else 1
  # bf16_3x: the dots' operands split into bf16 parts, temporaries the fp32 dot has not. One
  # H200 (jax 0.11.2), 5 × GPT-2 small, 4096 tokens/step: compiled 64.69 GiB vs 59.06 at
  # highest's estimate; the gap is 2 × captured (issue 13)
  split = operand_split_bytes(precision, captured)
  params = arch.n_params()
  weights = n_models * params * 4
  # finalize transient: one partner layer of rotated block per device
  fin = n_layer * d_pad * d_pad * 4 / tok
  analytic_step = state / devices + acts + gemm + split
  if compiled_step_bytes is None:
    step, source = analytic_step, "analytic"
  else:
    step, source = float(compiled_step_bytes), f"compiled for {device}"
  per_dev = weights + max(step + in_flight * captured, state / devices + fin)
  # what correlate does (memory.steps_in_flight_that_fit): one step at a time where two
  # steps' activations do not fit beside the step but one does
  overlapped_peak, usable = per_dev, 0.9 * mem * 2.0 ** 30
  one_step = weights + max(step + captured, state / devices + fin)
  sequential = in_flight > 1 and per_dev > usable >= one_step
  if sequential:
    per_dev = one_step
  corr_fl = 2.0 * pairs * N * band * d_mlp + 2.0 * rotated * n_layer * d_mlp * d_mlp
  fwd_fl = n_models * (2.0 * n_layer * (4 * d_model + 2 * d_mlp) * d_model
                       + 4.0 * n_layer * ctx * d_model)
  total = (corr_fl + fwd_fl) * tokens
  # the forwards run at fp32 (HIGHEST) whatever the correlation GEMMs' precision
  hours = (corr_fl / (gemm_tflops(device, precision) * 1e12) + fwd_fl / (peak * 1e12)) * tokens \
      / (devices * efficiency) / 3600
  # One baseline draw of one kind, in finalize: every owned row's co-moments with each
  # partner layer times that layer's d×d matrix (both orientations in all_pairs), plus the
  # rotated variances diag(R S Rᵀ) of each rotated model; at HIGHEST whatever the pass's
  # precision (the haar kind's float64 QRs, (4/3)·d³ per layer, are left out)
  orientations = 2 if mode == "all_pairs" else 1
  draw_fl = orientations * pairs * 2.0 * N * band * d_mlp * d_mlp \
      + rotated * 2.0 * n_layer * d_mlp ** 3
  draws_s = draw_fl * draws * kinds / (gemm_tflops(device) * 1e12 * devices * efficiency)
  g = 2.0 ** 30
  extra = dict(draw_flops=draw_fl, draws=int(draws), kinds=int(kinds), finalize_draws_s=draws_s)
  if per_dev / g > 0.9 * mem:   # one pass does not fit: passes
    spec = run_spec(n_models, arch, devices=devices, tok=tok, mode=mode,
                    layer_mode=layer_mode, compensated=compensated, precision=precision)
    got = plan_passes(spec, arch, devices=devices, tok=tok, device=device,
                      tokens_per_step=tokens_per_step, tokens=tokens, precision=precision,
                      efficiency=efficiency, ctx=ctx, compiled=compiled_tile)
    if got is not None:
      tiles, peak, hrs, share = got
      extra.update(passes=len(tiles), pass_layout=_layout(tiles), pass_peak_gib=peak / g,
                   pass_memory_source=("compiled" if compiled_tile is not None
                                       else "analytic"), pass_hours=hrs,
                   forward_share=share)
  return Plan(**extra, name=name, models=n_models, pairs=pairs, n_layer=n_layer, d_mlp=d_mlp,
              params_per_model=params,
              tokens=tokens, devices=devices, mesh=(tok, neu), device=device,
              tokens_per_step=tokens_per_step, state_gib_total=state / g,
              state_gib_per_device=state / devices / g, acts_gib_per_device=acts / g,
              weights_gib_per_device=weights / g, captured_gib_per_device=captured / g,
              steps_in_flight=1 if sequential else in_flight, step_gib_per_device=step / g,
              analytic_step_gib=analytic_step / g, memory_source=source,
              peak_gib_per_device=per_dev / g, one_step_at_a_time=sequential,
              overlapped_peak_gib=overlapped_peak / g,
              device_gib=mem, fits=per_dev / g <= 0.9 * mem, corr_flops_per_token=corr_fl,
              forward_flops_per_token=fwd_fl, total_flops=total, est_hours=hours,
              original_accum_gib=pairs * (N * N + 2 * N) * 8 / g, precision=precision)


def _layout(tiles) -> str:
  """'4 partner groups × 3 reference-layer chunks' / '9 pair groups'."""
  pairs = {t.pairs for t in tiles}
  chunks = {t.layer_ids[0] for t in tiles}
  if all(x == 0 for t in tiles for x, _ in t.pairs) and len(chunks) > 1:
    return (f"{len(pairs)} partner group(s) × {len(chunks)} reference-layer chunks of "
            f"≤ {max(len(c) for c in chunks)} layers")
  if all(x == 0 for t in tiles for x, _ in t.pairs):
    return f"{len(pairs)} partner groups of ≤ {max(len(p) for p in pairs)} partners"
  return f"{len(pairs)} pair groups of ≤ {max(len(p) for p in pairs)} pairs"


def arch_of(config) -> Arch:
  """The first model's Arch from its converted config.json (any architecture), else the
  synthetic family's, else by a size named in the model names (a warning says when none
  tells and GPT-2 small is assumed). UserError if the config file exists but is not a
  converted model's."""
  from ucore.models.registry import config_from_dict
  for path in list(config.models)[:1]:
    p = os.path.join(path, "config.json")
    if os.path.exists(p):
      try:
        with open(p) as f:
          return Arch.of_model_config(config_from_dict(json.load(f)))
      except (OSError, TypeError, KeyError, ValueError, UserError) as e:
        raise UserError(f"cannot read the model config {p} ({e}); is {path} a converted "
                        "model?") from e
  names = " ".join(list(config.models) + list(config.model_names)).lower()
  if config.synthetic.enabled:
    s = config.synthetic
    return Arch(s.n_layers, s.d_mlp, max(s.d_mlp // 4, 1))
  for key, arch in ARCHS.items():
    if key.split("-")[1] in names:
      return arch
  from absl import logging
  logging.warning("plan: no model config or size in the model names %r; assuming gpt2-small",
                  names)
  return ARCHS["gpt2-small"]


def format_plan(p: Plan) -> str:
  fit = (f"fits one step at a time; two in flight would need {p.overlapped_peak_gib:.1f}"
         if p.one_step_at_a_time else "fits" if p.fits else
         f"one pass does not fit: {p.passes} passes, below" if p.passes > 1 else
         "DOES NOT FIT even in passes: add devices, lower batch_rows, set overlap=False or "
         "compensated=False")
  compared = ("" if p.memory_source == "analytic" else
              f"; analytic estimate {p.analytic_step_gib:.2f}")
  passes = ("" if p.passes == 1 else
            f"\n  in {p.passes} passes ({p.pass_layout}) over the same rows: peak ≈ "
            f"{p.pass_peak_gib:.1f} GiB/device per pass ({p.pass_memory_source}; fits); "
            f"forwards recomputed each pass ({100 * p.forward_share:.1f}% of the FLOPs) → ≈ "
            f"{p.pass_hours:.2f} h")
  return (f"{p.name}: {p.models} models, {p.pairs} pairs, {p.n_layer}×{p.d_mlp} neurons, "
          f"{p.tokens:.3g} tokens on {p.devices}× {p.device} (mesh tok={p.mesh[0]} "
          f"neu={p.mesh[1]}), {p.tokens_per_step} tokens/step\n"
          f"  accumulators {p.state_gib_total:.1f} GiB total = {p.state_gib_per_device:.2f} "
          f"GiB/device; step program {p.step_gib_per_device:.2f} GiB/device "
          f"({p.memory_source}{compared}) + captured activations {p.steps_in_flight} × "
          f"{p.captured_gib_per_device:.2f} + weights {p.weights_gib_per_device:.2f} → peak ≈ "
          f"{p.peak_gib_per_device:.1f} GiB/device of {p.device_gib} ({fit})\n"
          f"  FLOPs/token: correlations {p.corr_flops_per_token / 1e9:.2f} G + forwards "
          f"{p.forward_flops_per_token / 1e9:.2f} G; total {p.total_flops:.3g} → ≈ "
          f"{p.est_hours:.2f} h at 70% of the {p.precision} GEMM rate"
          f"{' (an estimate: not measured on a device yet)' if p.precision in ESTIMATED else ''}"
          f" (the original: "
          f"{p.original_accum_gib:.0f} GiB float64 accumulators, one V100 per job)"
          + passes
          + (f"\n  finalize: {p.draws} baseline draw(s) × {p.kinds} kind(s), "
             f"{p.draw_flops / 1e12:.3g} TFLOP per draw of one kind → ≈ "
             f"{p.finalize_draws_s:.0f} s at 70% of the fp32 GEMM rate (haar's float64 QRs "
             "not counted)" if p.draws and p.kinds else ""))


def local_kind():
  """The DEVICES key of this host's accelerator (None if it is none of them)."""
  import jax
  d = jax.devices()[0]
  if d.platform == "cpu":
    return "cpu"
  kind = d.device_kind.lower().replace(" lite", "e").replace("tpu ", "tpu-")
  return next((k for k in DEVICES if k != "cpu" and k in kind), None)


def compiled_step_bytes(n_models, arch: Arch, *, devices, tok, device, tokens_per_step,
                        compensated=True, mode="reference", layer_mode="all",
                        precision="highest"):
  """The accumulate step's per-device need from XLA's memory analysis (compiled for abstract
  shapes: nothing allocated), or None where the planned `device` kind × `devices` is not at
  hand here (a CPU compile keeps other temporaries than a GPU's: no cross-platform figures)."""
  import jax
  from ucore.corr import memory, moments as M
  if device != local_kind() or devices > jax.device_count() or devices % tok:
    return None
  mesh = M.make_mesh(tok, devices // tok, jax.devices()[:devices])
  spec = M.make_spec([f"m{i}" for i in range(n_models)], [range(arch.n_layer)] * n_models,
                     arch.d_mlp, mesh, mode=mode, layer_mode=layer_mode,
                     compensated=compensated, precision=precision)
  return memory.step_memory(spec, mesh, tokens_per_step).need


def compiled_tile_bytes(*, devices, tok, device, tokens_per_step):
  """tile -> its compiled step's per-device need (ucore.corr.memory), where the planned
  device kind × count is at hand here; None elsewhere (plans use the analytic estimate)."""
  import jax
  from ucore.corr import memory, moments as M
  if device != local_kind() or devices > jax.device_count() or devices % tok:
    return None
  mesh = M.make_mesh(tok, devices // tok, jax.devices()[:devices])
  return lambda t: memory.step_memory(t, mesh, tokens_per_step).need
