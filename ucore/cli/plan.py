"""`python main.py plan --config=configs/correlate_*.py [--plan_devices=8 --plan_device=h100]
[--workdir=RUN]`.

Prints per-device memory, FLOPs and estimated time for the config's correlate run and for
the paper's runs (GPT2-small and GPT2-medium, 5 seeds; Pythia-160m, 4 seeds; 1e8 tokens) on
the same mesh, and finalize's baseline draws (the config's draws and kinds). Where one pass does not fit, the passes correlate would make (their count,
memory per pass, and the time with every pass's forwards recomputed); with --workdir, which
pass a run under way is in.
"""
from absl import flags

from ucore.cli import common

DEVICES = flags.DEFINE_integer("plan_devices", None, "plan: number of devices (default: the "
                               "devices visible here).")
DEVICE = flags.DEFINE_string("plan_device", "h100", "plan: device kind (cpu, v100, a100, "
                             "h100, h200, tpu-v4, tpu-v5e, tpu-v5p).")
TOKENS = flags.DEFINE_float("plan_tokens", None, "plan: tokens (default: config.max_tokens).")


def run(argv):
  from ucore.corr import plan as P
  from ucore.jobs.errors import UserError
  if argv:
    raise UserError(f"plan takes no positional arguments, got {argv}.")
  config = common.require_config()
  if DEVICES.value is None:
    import jax
    n_dev = jax.device_count()
  else:
    n_dev = DEVICES.value
  if n_dev < 1:
    raise UserError("--plan_devices must be ≥ 1.")
  if TOKENS.value is not None and not 0 < TOKENS.value < float("inf"):
    raise UserError(f"--plan_tokens={TOKENS.value} must be a positive, finite token count")
  tok = int(config.mesh.tok)
  if tok == -1 or n_dev % max(tok, 1):
    tok = 1
  arch = P.arch_of(config)
  n_models = len(config.models) or (config.synthetic.n_models if config.synthetic.enabled else 5)
  ctx = config.synthetic.ctx if config.synthetic.enabled else 512
  tokens = TOKENS.value or (config.max_tokens if config.max_tokens > 0 else
                            config.synthetic.rows * ctx)
  tps = int(config.batch_rows) * ctx

  tile_mem = P.compiled_tile_bytes(devices=n_dev, tok=tok, device=DEVICE.value,
                                   tokens_per_step=tps)

  def one(label, models, arch, **kw):
    # the step's need compiled here when this host has the planned devices, else analytic
    mem = P.compiled_step_bytes(models, arch, devices=n_dev, tok=tok, device=DEVICE.value,
                                tokens_per_step=tps, compensated=config.compensated,
                                mode=kw.get("mode", "reference"),
                                layer_mode=kw.get("layer_mode", "all"),
                                precision=str(config.precision))
    return P.format_plan(P.plan(label, models, arch, devices=n_dev, tok=tok,
                                device=DEVICE.value, tokens_per_step=tps,
                                compensated=config.compensated, compiled_step_bytes=mem,
                                precision=str(config.precision),
                                overlap=bool(config.overlap), compiled_tile=tile_mem,
                                draws=int(config.baseline.draws),
                                kinds=len(config.baseline.kinds), **kw))

  out = [one("this config", n_models, arch, tokens=tokens, mode=config.mode,
             layer_mode=config.layer_mode, ctx=ctx)]
  for label, key, models in P.PAPER_RUNS:
    out.append(one(label, models, P.ARCHS[key], tokens=1e8))
  if common.WORKDIR.value:   # a run under way: which pass it is in
    import os
    from ucore.corr import passes as PS
    state_dir = os.path.join(common.WORKDIR.value, "state")
    if os.path.isdir(state_dir):
      out.append(f"run in {common.WORKDIR.value}: {PS.where(state_dir)}")
  print("\n".join(out))
