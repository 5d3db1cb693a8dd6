"""The driver wired to real (tiny, random) converted models: every model's forward runs once
per batch through `HookedTransformer.neuron_activations`, and the tables match float64 numpy on the
same activations."""
import numpy as np
import pandas as pd
import pytest

from tests.corr_ref import corr64, rowmax, tiny_model_family
from ucore.corr import driver
from ucore.jobs import config_files
from ucore.corr.synthetic import SyntheticTokens
from ucore.data.mask import token_mask
from ucore.models.gpt2 import GPT2Config
from ucore.models.neox import NeoXConfig
from ucore.models.hooked import load_model


@pytest.mark.parametrize("config_class", [GPT2Config, NeoXConfig])
def test_driver_with_converted_models(tmp_path, config_class):
  paths = tiny_model_family(tmp_path, config_class)
  store = SyntheticTokens(num_rows=12, ctx=16, seed=1)
  c = config_files.load("correlate_default")
  c.models = paths
  c.model_names = ["a", "b", "c"]
  c.max_tokens = 0
  c.batch_rows = 5            # uneven: 5 + 5 + 2 rows
  c.top_k = 2
  c.baseline.kinds = ("haar",)
  driver.run(c, str(tmp_path / "run"), store=store)
  df = pd.read_parquet(tmp_path / "run" / "tables" / "neurons_a.parquet")
  tokens = store.read_rows(0, 12)
  mask = token_mask(tokens).reshape(-1)
  acts = [np.asarray(load_model(p).neuron_activations(tokens)).reshape(-1, 48)[mask]
          for p in paths]
  for m, name in ((1, "b"), (2, "c")):
    mx, am = rowmax(corr64(acts[0], acts[m]))
    np.testing.assert_allclose(df[f"corr__{name}"].to_numpy(), mx, atol=1e-5, equal_nan=True)
  summary = pd.read_json(tmp_path / "run" / "tables" / "summary.json", typ="series")
  assert summary["tokens_counted"] == int(mask.sum())
  fps = [m["fingerprint"] for m in summary["models"]]
  assert fps == [load_model(p).fingerprint for p in paths] and len(set(fps)) == 3
