"""The pipeline's `gpu` variant (a 6-layer family for one GPU) in its quick form on CPU: every
stage runs and the tables cover all six layers; and the variants compose as documented."""
import json
import os

import pandas as pd
import pytest

from ucore.jobs import config_files


def test_variants_compose():
  gpu = config_files.load("pipeline_default", "gpu")
  quick_gpu = config_files.load("pipeline_default", "gpu,quick")
  gpt2 = config_files.load("pipeline_default", "gpt2")
  default = config_files.load("pipeline_default")
  assert gpu.train.model.n_layer == quick_gpu.train.model.n_layer == 6
  assert quick_gpu.train.model.d_mlp < gpu.train.model.d_mlp
  assert set(gpu.persistence_steps) <= set(gpu.train.checkpoint_steps)
  assert default.train.model.activation_function == "relu"
  assert gpt2.train.model.activation_function == "gelu_new"
  assert gpt2.tokenize.bpe_vocab_size == 4096 and default.tokenize.bpe_vocab_size == 512


@pytest.mark.slow("the product's `:gpu,quick` pipeline end to end (six-layer seeds "
                  "trained, correlated, analysed, reported) in a fresh process")
def test_gpu_variant_quick_form_runs_on_cpu(concurrent_pipelines):
  """(conftest's `concurrent_pipelines` runs it beside test_determinism's quick rerun.)"""
  workdir, r = concurrent_pipelines["gpu,quick"]
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(os.path.join(workdir, "pipeline.json")))
  neurons = pd.read_parquet(os.path.join(workdir, "corr", "tables", "neurons_seed0.parquet"))
  assert sorted(set(neurons.index.get_level_values("layer"))) == list(range(6))
  assert summary["n_neurons"] == 6 * 64 == len(neurons)
  assert len(summary["universal_per_layer"]) == 6
  assert os.path.isfile(summary["report"])
