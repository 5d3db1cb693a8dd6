"""A tiny GPT-NeoX family end to end, offline: HF checkpoints with their own tokenizer.json ->
convert -> tokenize (with the converted tokenizer) -> correlate -> analyze -> report; and the
same family in mode all_pairs (every model against every other) against float64 numpy."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from converters.convert import convert
from tests import hf_fixtures
from ucore.jobs import config_files
from ucore import load_model
from ucore import analyze as runner
from ucore.corr import driver
from ucore.data import build

WORDS = ("the dog river mountain quick brown fox jumps over lazy a b c 1984 She said (it) "
         "running walked USA data of and to in").split(" ")


def _corpus(path, n=60):
  rng = np.random.default_rng(0)
  with open(path, "w") as f:
    for i in range(n):
      text = " ".join(rng.choice(WORDS, int(rng.integers(20, 80))))
      f.write(json.dumps({"text": text, "label": "ab"[i % 2]}) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
  """Four converted NeoX models (one and three slightly perturbed copies) and a token store
  tokenized with their converted tokenizer: (model dirs, store)."""
  tmp_path = tmp_path_factory.mktemp("neox_family")
  corpus = _corpus(tmp_path / "docs.jsonl")
  cfg = hf_fixtures.neox_config(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                intermediate_size=32, vocab_size=320, max_position_embeddings=32)
  import torch
  dirs = []
  for i in range(4):   # a family: one model and three slightly perturbed copies (universal)
    m = hf_fixtures.random_hf_model(cfg, seed=0)
    with torch.no_grad():
      for p in m.parameters():
        p.add_(0.002 * i * torch.randn_like(p))
    src = hf_fixtures.write_checkpoint(str(tmp_path / f"hf{i}"), m)
    hf_fixtures.write_tokenizer_json(src, [json.loads(l)["text"] for l in open(corpus)], 320,
                                     added=())
    convert(src, str(tmp_path / f"m{i}"))
    dirs.append(str(tmp_path / f"m{i}"))
  tc = config_files.load("tokenize_default")
  tc.source, tc.ctx, tc.num_tokens, tc.log_every_s = corpus, 32, 0, 0.0
  tc.label_field, tc.tokenizer, tc.model_vocab_size = "label", dirs[0] + "/tokenizer", 320
  store = build.build_store(tc, str(tmp_path / "store"))
  assert store.bos_id == 0   # <|endoftext|> of the checkpoint's tokenizer.json
  return dirs, store


@pytest.mark.slow("tokenize, correlate, analyze and report through the CLI on a "
                  "converted NeoX family")
def test_neox_family_tokenize_correlate_analyze_report(family, tmp_path):
  dirs, store = family
  dirs = dirs[:3]
  c = config_files.load("correlate_default")
  c.models, c.model_names = dirs, ["a", "b", "c"]
  c.token_store = store.path
  c.max_tokens, c.batch_rows, c.top_k = 0, 4, 2
  c.baseline.kinds = ("haar",)
  # layers of 32 neurons: the max over 32 rotated units is ~0.55 averaged over the default's
  # draws, so the 0.5 excess is all but out of reach even for near-copies; one draw leaves a
  # few neurons universal and most not (what the analyses' matched random sets need)
  c.baseline.draws = 1
  driver.run(c, str(tmp_path / "corr"))
  table = str(tmp_path / "corr" / "tables" / "neurons_a.parquet")
  corr = pd.read_parquet(table)
  assert len(corr) == 2 * 32 and corr["universal"].sum() > 0

  ac = config_files.load("analyze_default")
  ac.model_dir, ac.token_store, ac.corr_table = dirs[0], store.path, table
  ac.max_rows, ac.attention.n_random, ac.families.n_unigrams = 8, 200, 50
  ac.entropy.n_random, ac.entropy.fixed_values = 2, (0.0, 6.0)
  ac.attention.top_pairs, ac.ablation.n_random, ac.attention.positions = 1, 1, (8, 32)
  wd = str(tmp_path / "analyze")
  r = runner.run(ac, wd, "all")
  assert r.sections and runner.report(ac, wd, r) == os.path.join(wd, "report", "index.html")
  stats = pd.read_parquet(os.path.join(wd, "stats", "neuron_stats.parquet"))
  assert len(stats) == 64
  assert load_model(dirs[0]).config.architecture == "gpt_neox"


def test_neox_family_all_pairs_matches_float64(family, tmp_path):
  """mode all_pairs on the NeoX family: every model's max correlation with every sibling
  and its Haar baseline, against float64 numpy on the models' own activations."""
  from ucore.corr import baselines as BL, moments as M, tables as TB
  from ucore.data.mask import token_mask
  dirs, store = family
  names = ["a", "b", "c", "d"]
  K = len(names)
  c = config_files.load("correlate_default")
  c.models, c.model_names, c.token_store, c.mode = dirs, names, store.path, "all_pairs"
  c.max_tokens, c.batch_rows, c.top_k = 0, 4, 2
  c.baseline.kinds, c.baseline.primary, c.baseline.draws = ("haar",), "haar", 1
  c.baseline.seed = 0
  c.intervals.blocks = 0   # not what this test is about
  tables = driver.run(c, str(tmp_path / "corr"))

  tokens = store.read_rows(0, store.num_rows)
  keep = np.asarray(token_mask(tokens, exclude_ids=store.mask_exclude_ids)).reshape(-1)
  acts = []
  for d in dirs:
    a = np.asarray(load_model(d).neuron_activations(tokens, layers=[0, 1]), np.float64)
    acts.append(a.reshape(-1, a.shape[-1])[keep])
  L, D = 2, acts[0].shape[1] // 2
  z = [(a - a.mean(0)) / a.std(0) for a in acts]
  mesh = M.make_mesh(1, -1)
  d_pad = M.make_spec(["a", "b"], [range(L)] * 2, D, mesh).d_pad
  matrix = TB.read_seed_matrix(tables)
  assert list(matrix.index) == names and list(matrix.columns) == names + ["universal"]
  for own in range(K):
    agg = TB.read_neurons(tables, names[own])
    excess = {}
    for part in range(K):
      if part == own:
        continue
      n = len(z[own])
      mx = (z[own].T @ z[part] / n).max(1)
      rmat = np.asarray(BL.mixing_stack("haar", D, d_pad, tuple(range(L)), seed=0, draw=0,
                                        model=part, mesh=mesh), np.float64)[:, :D, :D]
      centred = acts[part] - acts[part].mean(0)
      rot = np.concatenate([centred[:, l * D:(l + 1) * D] @ rmat[l].T for l in range(L)], 1)
      base = (z[own].T @ (rot / np.sqrt((rot ** 2).mean(0))) / n).max(1)
      np.testing.assert_allclose(agg[f"corr__{names[part]}"], mx, atol=2e-5)
      np.testing.assert_allclose(agg[f"baseline__{names[part]}"], base, atol=2e-5)
      excess[part] = mx - base
    # the seed × seed matrix and k of M-1 against the float64 excess (no neuron sits within
    # 1e-4 of the threshold here, so no rounding can move one across it)
    hits = np.stack([excess[p] > c.threshold for p in sorted(excess)], 1)
    assert np.all(np.abs(np.stack([excess[p] for p in sorted(excess)], 1) - c.threshold) > 1e-4)
    kt = TB.read_k_of_m(tables, names[own])
    np.testing.assert_array_equal(kt["k"].to_numpy(), hits.sum(1))
    assert (kt["of"] == K - 1).all()
    for j, p in enumerate(sorted(excess)):
      assert matrix.loc[names[own], names[p]] == pytest.approx(hits[:, j].mean())
    assert np.isnan(matrix.loc[names[own], names[own]])
