"""ucore.corr.memory: the compiled step's memory, the preflight refusal, OOM as one line, and
plan's per-device figure (issue 13 item 4)."""
import numpy as np
import pytest

import jax

from ucore.corr import memory, moments as M, plan as P
from ucore.jobs.errors import UserError

GIB = 2.0 ** 30


def _spec(n_models, L, d, tok, neu, **kw):
  mesh = M.make_mesh(tok, neu, jax.devices()[:tok * neu])
  return M.make_spec([f"m{i}" for i in range(n_models)], [range(L)] * n_models, d, mesh,
                     **kw), mesh


def _per_device_state_bytes(spec, mesh):
  """From the shapes and partition specs alone: a sharded axis divides by its mesh size."""
  total = 0
  for shape, dtype, pspec in M.state_shapes(spec).values():
    div = 1
    for ax in pspec:
      for name in (ax if isinstance(ax, tuple) else (ax,)):
        div *= mesh.shape[name] if name else 1
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize // div
  return total


SHAPES = [(3, 2, 128, 1, 1, 1000, {}),
          (3, 2, 128, 1, 8, 1024, {}),
          (3, 2, 128, 2, 4, 1024, {"compensated": False}),
          (4, 3, 64, 2, 2, 512, {"mode": "all_pairs"}),
          (3, 3, 96, 1, 4, 777, {"layer_mode": "adjacent"})]


@pytest.mark.parametrize("n_models,L,d,tok,neu,T,kw", SHAPES)
def test_step_memory_counts_state_and_inputs_without_allocating(n_models, L, d, tok, neu, T, kw):
  spec, mesh = _spec(n_models, L, d, tok, neu, **kw)
  live = sum(a.nbytes for a in jax.live_arrays())
  sm = memory.step_memory(spec, mesh, T)
  assert sum(a.nbytes for a in jax.live_arrays()) == live   # abstract shapes: nothing allocated
  state = _per_device_state_bytes(spec, mesh)
  tp = -(-T // mesh.size) * mesh.size
  xs = sum(spec.n_layers) * spec.d_pad * tp * 4 // mesh.size
  assert sm.argument == state + xs + tp * 4 // mesh.size
  assert sm.alias == state                       # the state is donated: updated in place
  assert 0 <= sm.output - state <= 8 * len(M.state_shapes(spec))   # + the output tuple's table
  assert sm.temp > 0 and sm.need == sm.argument + sm.output - sm.alias + sm.temp + sm.code


@pytest.mark.parametrize("n_models,L,d,tok,neu,T,kw", SHAPES[1:4])
def test_plan_per_device_step_is_the_compiled_step(n_models, L, d, tok, neu, T, kw):
  """On the planned kind (cpu here) and device count, plan's step figure is XLA's; another
  kind gets the analytic estimate, shown beside the compiled one."""
  arch = P.Arch(L, d, 32)
  mode, layer_mode = kw.get("mode", "reference"), kw.get("layer_mode", "all")
  comp = kw.get("compensated", True)
  spec, mesh = _spec(n_models, L, d, tok, neu, **kw)
  want = memory.step_memory(spec, mesh, T).need
  got = P.compiled_step_bytes(n_models, arch, devices=tok * neu, tok=tok, device="cpu",
                              tokens_per_step=T, compensated=comp, mode=mode,
                              layer_mode=layer_mode)
  p = P.plan("x", n_models, arch, devices=tok * neu, tok=tok, device="cpu", tokens_per_step=T,
             compensated=comp, mode=mode, layer_mode=layer_mode, compiled_step_bytes=got)
  assert p.step_gib_per_device * GIB == pytest.approx(want, rel=0.05)
  assert p.memory_source == "compiled for cpu"
  assert "compiled for cpu; analytic estimate" in P.format_plan(p)
  assert P.compiled_step_bytes(n_models, arch, devices=tok * neu, tok=tok, device="h100",
                               tokens_per_step=T) is None
  assert P.compiled_step_bytes(n_models, arch, devices=16, tok=tok, device="cpu",
                               tokens_per_step=T) is None   # more devices than at hand
  q = P.plan("x", n_models, arch, devices=tok * neu, tok=tok, device="h100", tokens_per_step=T,
             compensated=comp, mode=mode, layer_mode=layer_mode)
  assert q.memory_source == "analytic" and q.step_gib_per_device == q.analytic_step_gib
  assert q.step_gib_per_device * GIB > _per_device_state_bytes(spec, mesh)


def test_plan_analytic_step_matches_the_h100_measurement():
  """Issue 13: one H100, 5 × GPT-2 small, 4096 tokens/step, compensated: the compiled step
  needed 61.9 GiB; the analytic estimate must be within 5% of it."""
  p = P.plan("x", 5, P.ARCHS["gpt2-small"], devices=1, device="h100", tokens_per_step=4096)
  assert p.step_gib_per_device == pytest.approx(61.9, rel=0.05)


def test_plan_matches_the_h200_preflight_at_bf16_3x():
  """Issue 13, one H200 (jax 0.11.2), configs/correlate_gpt2_small.py as shipped (bf16_3x,
  overlapped, 4096 tokens/step): the compiled step needed 64.69 GiB and the preflight 70.32
  GiB with two steps' captured activations, beside 2.32 GiB of weights. The analytic plan
  must agree within 5%, and the sequential loop holds one step's activations fewer."""
  p = P.plan("x", 5, P.ARCHS["gpt2-small"], devices=1, device="h200", tokens_per_step=4096,
             precision="bf16_3x")
  assert p.step_gib_per_device == pytest.approx(64.69, rel=0.05)
  assert p.peak_gib_per_device == pytest.approx(70.32 + 2.32, rel=0.05)
  seq = P.plan("x", 5, P.ARCHS["gpt2-small"], devices=1, device="h200", tokens_per_step=4096,
               precision="bf16_3x", overlap=False)
  assert p.peak_gib_per_device - seq.peak_gib_per_device == pytest.approx(
      p.captured_gib_per_device, rel=1e-12)
  assert p.captured_gib_per_device == pytest.approx(4096 * 5 * 12 * 3072 * 4 / GIB, rel=1e-12)
  # one 80 GB H100: two steps in flight do not fit, one does; correlate (and so plan) then
  # runs one step at a time
  h100 = dict(devices=1, device="h100", tokens_per_step=4096, precision="bf16_3x")
  q = P.plan("x", 5, P.ARCHS["gpt2-small"], **h100)
  assert q.fits and q.one_step_at_a_time and q.steps_in_flight == 1
  assert q.overlapped_peak_gib == pytest.approx(p.peak_gib_per_device, rel=1e-12)
  assert q.peak_gib_per_device == pytest.approx(seq.peak_gib_per_device, rel=1e-12)
  assert "fits one step at a time" in P.format_plan(q)
  assert not P.plan("x", 5, P.ARCHS["gpt2-small"], overlap=False, **h100).one_step_at_a_time
  assert not p.one_step_at_a_time and p.steps_in_flight == 2   # the H200 has room for two


def test_two_steps_in_flight_fall_back_to_one_when_only_one_fits():
  spec, mesh = _spec(3, 2, 128, 1, 8)
  one = memory.step_memory(spec, mesh, 1024).need + memory.captured_bytes(spec, mesh, 1024)
  two = one + memory.captured_bytes(spec, mesh, 1024)
  assert memory.steps_in_flight_that_fit(spec, mesh, 1024, free=two) == 2
  assert memory.steps_in_flight_that_fit(spec, mesh, 1024, free=two - 1) == 1
  assert memory.steps_in_flight_that_fit(spec, mesh, 1024, free=one, wanted=1) == 1
  with pytest.raises(UserError, match="one correlate step"):
    memory.steps_in_flight_that_fit(spec, mesh, 1024, free=one - 1)


def test_preflight_refuses_a_step_that_cannot_fit_and_passes_one_that_can():
  spec, mesh = _spec(3, 2, 128, 1, 8)
  need = memory.step_memory(spec, mesh, 1024).need + memory.captured_bytes(spec, mesh, 1024)
  live = sum(a.nbytes for a in jax.live_arrays())
  with pytest.raises(UserError) as e:
    memory.preflight(spec, mesh, 1024, free=need - 1)
  msg = str(e.value)
  assert "\n" not in msg and "needs" in msg and "memory.device_gib" in msg
  for remedy in ("batch_rows", "compensated=False", "mesh.neu", "fewer models"):
    assert remedy in msg
  assert sum(a.nbytes for a in jax.live_arrays()) == live   # refused before any allocation
  assert memory.preflight(spec, mesh, 1024, free=need) == need
  assert memory.preflight(spec, mesh, 1024, 10, free=need + 10) == need + 10   # model bytes
  with pytest.raises(UserError):
    memory.preflight(spec, mesh, 1024, 10, free=need + 9)
  # no free figure given: CPU devices keep no allocator statistics; the host's memory is used
  assert memory.free_bytes(jax.devices()[0]) is None
  assert memory.preflight(spec, mesh, 1024) == need
  assert memory.host_available_bytes() > need


def test_captured_activations_are_split_over_the_local_devices():
  spec, mesh = _spec(3, 2, 128, 2, 4)
  assert memory.captured_bytes(spec, mesh, 800) == 800 * 3 * 2 * 128 * 4 // 8


def test_oom_becomes_one_line_that_names_resume_and_remedies():
  big = jax.jit(lambda: jax.numpy.ones((2 ** 41,), jax.numpy.float32))   # 8 TiB: a real OOM
  with pytest.raises(UserError) as e:
    with memory.oom_as_user_error("correlate step 3", resume="runs/x/state"):
      big().block_until_ready()
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("correlate step 3: out of device memory")
  assert "runs/x/state" in msg and "resume" in msg and "batch_rows" in msg
  assert isinstance(e.value.__cause__, jax.errors.JaxRuntimeError)
  with pytest.raises(ValueError):   # anything else passes through untouched
    with memory.oom_as_user_error("x"):
      raise ValueError("not memory")


@pytest.mark.parametrize("user_value", [None, ".5"])
def test_main_sets_the_allocator_fraction_unless_the_user_did(user_value):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_MEM_FRACTION"}
  if user_value:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = user_value
  out = subprocess.run([sys.executable, "-c", "import os, main; "
                        "print(os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'])"],
                       cwd=root, env=env, capture_output=True, text=True, check=True).stdout
  assert out.strip() == (user_value or ".92")
