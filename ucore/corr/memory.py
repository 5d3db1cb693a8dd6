"""Does a correlate step fit the device? One home for the answer (issue 13 item 4).

`step_memory` compiles the real accumulate step (ucore.corr.moments.make_step) for abstract
shapes — nothing is allocated — and reads XLA's own buffer assignment: per device, arguments
+ outputs − donated (aliased) + temporaries + generated code. That figure is the platform's:
a CPU compile keeps more temporaries than a GPU one, so plans for another device kind fall back
to ucore.corr.plan's analytic estimate.

`preflight` compares it (plus the captured activations held across the step) with the free
memory before the first step and refuses with one line naming the remedies. `oom_as_user_error`
turns an out-of-memory error mid-run into one line as well.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from ucore.corr import moments as M
from ucore.jobs.errors import UserError

GIB = 2.0 ** 30
REMEDIES = ("lower batch_rows, set compensated=False (halves the accumulators), use more "
            "devices or a larger mesh.neu, or correlate fewer models per run")


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Per-device bytes of the compiled accumulate step (XLA's memory analysis)."""
  argument: int
  output: int
  alias: int
  temp: int
  code: int

  @property
  def need(self) -> int:
    # donated state: its output reuses the argument's buffers
    return self.argument + self.output - self.alias + self.temp + self.code


def padded_tokens(mesh, tokens_per_step: int) -> int:
  """Global tokens of one step after Accumulator.prepare's padding: each process pads its
  share to a multiple of its devices."""
  procs = jax.process_count()
  local = max(mesh.size // procs, 1)
  per_process = -(-max(int(tokens_per_step), 1) // procs)
  return -(-per_process // local) * local * procs


def step_args(spec: M.Spec, mesh, tokens_per_step: int):
  """Abstract (state, xs, w) with Accumulator.prepare's layout and shardings."""
  sh = M.state_shardings(spec, mesh)
  state = {k: jax.ShapeDtypeStruct(s, dt, sharding=sh[k])
           for k, (s, dt, _) in M.state_shapes(spec).items()}
  tp = padded_tokens(mesh, tokens_per_step)
  xsh = NamedSharding(mesh, M.X_SPEC)
  xs = [jax.ShapeDtypeStruct((spec.n_layers[m], spec.d_pad, tp), jnp.float32, sharding=xsh)
        for m in spec.active]
  w = jax.ShapeDtypeStruct((tp,), jnp.float32, sharding=NamedSharding(mesh, P((M.TOK, M.NEU))))
  return state, xs, w


@functools.lru_cache(maxsize=64)
def step_memory(spec: M.Spec, mesh, tokens_per_step: int) -> StepMemory:
  """Compiles (does not run) the accumulate step and returns its per-device memory."""
  compiled = M.make_step(spec, mesh).lower(*step_args(spec, mesh, tokens_per_step)).compile()
  m = compiled.memory_analysis()
  return StepMemory(argument=int(m.argument_size_in_bytes), output=int(m.output_size_in_bytes),
                    alias=int(m.alias_size_in_bytes), temp=int(m.temp_size_in_bytes),
                    code=int(m.generated_code_size_in_bytes))


def captured_bytes(spec: M.Spec, mesh, tokens_per_step: int) -> int:
  """Per device: the forwards' captured activations [T, L_m*d_mlp] float32, alive while the
  step runs (the driver holds them until the update returns); rows split over local devices."""
  per_token = sum(spec.n_layers[m] for m in spec.active) * spec.d_mlp * 4
  return -(-int(tokens_per_step) * per_token // max(len(mesh.local_devices), 1))


def free_bytes(device) -> int | None:
  """What the device's allocator can still hand out (bytes_limit − bytes_in_use), or None
  where the device keeps no statistics (CPU)."""
  stats = device.memory_stats()
  if not stats or "bytes_limit" not in stats:
    return None
  return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def host_available_bytes() -> int | None:
  """Linux MemAvailable (what new allocations can get without swapping), or None."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def free_per_device(mesh, free: int | None = None):
  """(bytes a step may use per local device, where the figure comes from), or (None, why)
  where nothing says. free: config.memory.device_gib's figure, which wins."""
  if free is not None:
    return int(free), "set by memory.device_gib"
  local = list(mesh.local_devices)
  frees = [free_bytes(d) for d in local]
  if all(f is not None for f in frees):
    return min(frees), f"free on each {local[0].device_kind}"
  host = host_available_bytes()
  if host is None:
    return None, "no memory statistics here"
  return host // max(len(local), 1), (f"of host memory available per device ({len(local)} "
                                      "share it)")


def step_need(spec: M.Spec, mesh, tokens_per_step: int, steps_in_flight: int = 1) -> int:
  """Per-device bytes of one step of `spec` (a whole run or one pass's tile): the compiled
  step plus the captured activations of `steps_in_flight` steps."""
  return (step_memory(spec, mesh, tokens_per_step).need
          + max(int(steps_in_flight), 1) * captured_bytes(spec, mesh, tokens_per_step))


def preflight(spec: M.Spec, mesh, tokens_per_step: int, model_bytes: int = 0, *,
              free: int | None = None, steps_in_flight: int = 1) -> int:
  """UserError (one line) unless one step fits every local device; returns the need in bytes.

  Call before the accumulator state is allocated (the need counts the state). model_bytes:
  per-device bytes the models will still take that the allocator does not count yet (0 when
  their weights are already loaded). free: assume this many free bytes per device
  (config.memory.device_gib) instead of asking the devices. On CPU (no allocator statistics)
  the local devices share the host's available memory. steps_in_flight: steps whose captured
  activations are alive at once (2 in the driver's overlapped loop)."""
  sm = step_memory(spec, mesh, tokens_per_step)
  need = (sm.need + max(int(steps_in_flight), 1) * captured_bytes(spec, mesh, tokens_per_step)
          + int(model_bytes))
  free, where = free_per_device(mesh, free)
  if free is None:
    logging.debug("preflight: no memory statistics here; not checked")
    return need
  logging.info("correlate: one step needs %.2f GiB per device (step %.2f, of it temporaries "
               "%.2f; + captured activations), %.2f GiB %s", need / GIB, sm.need / GIB,
               sm.temp / GIB, free / GIB, where)
  if need > free:
    raise UserError(f"one correlate step ({tokens_per_step} tokens) needs {need / GIB:.3g} GiB "
                    f"per device, more than the {free / GIB:.3g} GiB {where}; {REMEDIES}")
  return need


def steps_in_flight_that_fit(spec: M.Spec, mesh, tokens_per_step: int, model_bytes: int = 0,
                             *, free: int | None = None, wanted: int = 2) -> int:
  """The steps the driver may keep in flight: `wanted` (2, the overlapped loop) when their
  captured activations fit beside the step, else 1 when one step fits (the same tables, the
  host's work no longer hidden behind the device's; a warning says so), else preflight's
  one-line UserError. One 80 GB H100 with the paper's GPT-2-small config is such a case."""
  try:
    preflight(spec, mesh, tokens_per_step, model_bytes, free=free, steps_in_flight=wanted)
    return int(wanted)
  except UserError:
    if int(wanted) <= 1:
      raise
  preflight(spec, mesh, tokens_per_step, model_bytes, free=free, steps_in_flight=1)
  logging.warning("correlate: %d steps in flight do not fit; running one step at a time (as "
                  "config.overlap=False: the same tables, the host's reading no longer "
                  "overlapped with the device)", int(wanted))
  return 1


def is_oom(e: BaseException) -> bool:
  return isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(e)


@contextlib.contextmanager
def oom_as_user_error(what: str, resume: str = ""):
  """Re-raises an XLA out-of-memory error inside the block as a one-line UserError.
  `what`: the work that ran out ("correlate step 12"); `resume`: where the last commit is."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if not is_oom(e):
      raise
    first = next((l.strip() for l in str(e).splitlines() if "RESOURCE_EXHAUSTED" in l), "")
    kept = f"the last commit in {resume} is kept" if resume else "the last commit is kept"
    raise UserError(f"{what}: out of device memory ({first[:160]}); {kept}: free the device "
                    "(other processes) or raise XLA_PYTHON_CLIENT_MEM_FRACTION and rerun the "
                    "same command to resume, or start a new workdir after you "
                    f"{REMEDIES}") from e
