"""config.forward_dtype (issue 23 item 2): a bfloat16 forward feeds the engine the activations
of the models' bf16 forward — the tables match float64 numpy on exactly those activations and
not the fp32 forward's — and the dtype is part of the run's identity (a resume at another
dtype is refused)."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from ucore.corr import driver
from ucore.corr.synthetic import SyntheticTokens
from ucore.data.mask import token_mask
from ucore.jobs import config_files
from ucore.jobs.errors import UserError
from ucore.models.gpt2 import GPT2Config
from ucore.models.hooked import load_model
from tests.corr_ref import tiny_model_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _max_corr(paths, tokens, keep, dtype):
  """float64 numpy: each neuron of model 0's max correlation with models 1 and 2. The
  activations in the run's batches of 6 rows on one device (XLA may fuse a bf16 forward
  differently for another batch shape or device layout, which moves bf16 roundings)."""
  acts = []
  for p in paths:
    model = load_model(p, dtype=dtype)
    a = np.concatenate([np.asarray(model.neuron_activations(tokens[i:i + 6]), np.float64)
                        for i in range(0, len(tokens), 6)])
    acts.append(a.reshape(-1, a.shape[-1])[keep])
  z = [(a - a.mean(0)) / a.std(0) for a in acts]
  return [(z[0].T @ z[m] / len(z[0])).max(1) for m in (1, 2)]


def test_bfloat16_forward_is_what_the_engine_correlates(tmp_path):
  """Run on one device (a subprocess): a forward sharded over the 8 test devices is fused
  differently and rounds at other places than the reference's one-device forward (7.7e-4
  apart in max corr), which would blur the bf16-vs-fp32 distinction this test draws."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=ROOT)
  code = f"from tests.test_corr_forward_dtype import _check; _check({str(tmp_path)!r})"
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "checked" in r.stdout


def _check(tmp):
  paths = tiny_model_family(tmp, GPT2Config)
  store = SyntheticTokens(num_rows=12, ctx=16, seed=1)
  c = config_files.load("correlate_default")
  c.models, c.model_names = paths, ["a", "b", "c"]
  c.max_tokens, c.batch_rows = 0, 6
  c.baseline.kinds, c.baseline.primary, c.baseline.draws = ("haar",), "haar", 1
  c.intervals.blocks = 0
  c.forward_dtype = "bfloat16"
  wd = os.path.join(tmp, "run")
  tables = driver.run(c, wd, store=store)
  s = json.load(open(os.path.join(tables, "summary.json")))
  assert s["forward_dtype"] == "bfloat16" and s["identity"]["forward_dtype"] == "bfloat16"

  table = pd.read_parquet(os.path.join(tables, "neurons_a.parquet"))
  tokens = store.read_rows(0, store.num_rows)
  keep = np.asarray(token_mask(tokens, exclude_ids=store.mask_exclude_ids)).reshape(-1)
  got = [table["corr__b"].to_numpy(), table["corr__c"].to_numpy()]
  err = {dt: max(np.max(np.abs(g - r)) for g, r in zip(got, _max_corr(paths, tokens, keep, dt)))
         for dt in (jnp.bfloat16, jnp.float32)}
  assert err[jnp.bfloat16] < 1e-5          # the bf16 forward's activations, to fp32 rounding
  assert err[jnp.float32] > 1e-3           # and not the fp32 forward's

  c.forward_dtype = "float32"
  with pytest.raises(UserError, match="inputs changed"):
    driver.run(c, wd, store=store)
  print("checked")
