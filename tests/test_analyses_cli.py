"""The analyses pipeline end to end on a saved planted model + a real token store (built from a
small local corpus), with a correlation table: every analysis runs, writes its tables and
figures, sections.json and the HTML report. Bad input gets a clear UserError / exit 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ucore import config_files
from ucore import tokenizer as tokmod
from ucore.analyses import common, planted, runner
from ucore.data import build
from ucore.errors import UserError
from ucore.model import save_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the dog river mountain quick brown fox jumps over lazy a b c 1984 She said (it) "
         "running walked USA data of and to in").split(" ")


def _config(name, arg=""):
  return config_files.load(name, arg)


def _store(tmp, tokenizer="gpt2"):
  rng = np.random.default_rng(0)
  src = tmp / "docs.jsonl"
  with open(src, "w") as f:
    for i in range(80):
      text = " ".join(rng.choice(WORDS, int(rng.integers(20, 80))))
      f.write(json.dumps({"text": text, "label": "ab"[i % 2]}) + "\n")
  c = _config("tokenize_default")
  c.source, c.ctx, c.num_tokens, c.log_every_s = str(src), 32, 0, 0.0
  c.tokenizer = tokenizer
  if tokenizer == "bpe":
    c.bpe_vocab_size = 600
  return build.build_store(c, str(tmp / f"store_{tokenizer}"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("an")
  m = planted.planted_model()
  files = tokmod.gpt2_files_offline()
  model_dir = str(tmp / "model")
  save_model(model_dir, m.config, m.params, tokenizer_files=files,
             manifest={"processing": "none", "tokenizer_sha256": files.sha256()})
  idx = common.neuron_index(2, 32)
  corr = pd.DataFrame({"mean_corr": 0.3, "max_corr": 0.4, "min_corr": 0.2, "mean_baseline": 0.2,
                       "excess_corr": 0.1, "universal": False}, index=idx)
  corr.loc[[planted.PLANTED["query"], planted.PLANTED["entropy"], (0, 0)],
           ["excess_corr", "universal"]] = [0.9, True]
  corr_path = str(tmp / "neurons_planted.parquet")
  corr.to_parquet(corr_path)
  return dict(tmp=tmp, model_dir=model_dir, store=_store(tmp), corr=corr_path)


def _cfg(inputs, **kw):
  c = _config("analyze_default", "planted")
  c.model_dir, c.token_store, c.corr_table = inputs["model_dir"], inputs["store"].path, inputs["corr"]
  c.max_rows = 8
  c.entropy.n_random, c.entropy.fixed_values = 2, (0.0, 6.0)   # shrink the default for speed
  c.attention.top_pairs, c.ablation.n_random = 1, 1
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_all_analyses_on_store_with_report(inputs):
  wd = str(inputs["tmp"] / "run")
  r = runner.run(_cfg(inputs), wd, "all")
  sections = r.sections
  assert runner.report(_cfg(inputs), wd, r) == os.path.join(wd, "report", "index.html")
  meta = json.load(open(os.path.join(wd, "sections.json")))
  assert meta["analyses"] == list(runner.ANALYSES)
  assert len(sections) >= 10 and all(os.path.isfile(p) for _, p, _ in sections)
  for f in ("stats/neuron_stats.parquet", "stats/universal_comparison.parquet",
            "families/families.parquet", "families/alphabet_neurons.parquet",
            "prediction/vocab_role_counts.parquet", "entropy/entropy_sweep.parquet",
            "attention/attention_scores.parquet", "attention/path_ablation.parquet",
            "ablation/ablation.parquet", "report/index.html"):
    assert os.path.isfile(os.path.join(wd, f)), f
  html = open(os.path.join(wd, "report", "index.html")).read()
  for title, _, _ in sections:
    assert title.split(" ")[0] in html
  fam = pd.read_parquet(os.path.join(wd, "families", "families.parquet"))
  assert fam.loc[planted.PLANTED["position"], "family"] == "position"
  ent = pd.read_parquet(os.path.join(wd, "entropy", "entropy_candidates.parquet"))
  assert ent["rank"].idxmin() == planted.PLANTED["entropy"]


def test_bad_inputs(inputs):
  tmp = inputs["tmp"]
  with pytest.raises(UserError, match="unknown analyses"):
    runner.run_all(_cfg(inputs), str(tmp / "x1"), "stats,clustering")
  with pytest.raises(UserError, match="need correlation results"):
    runner.run_all(_cfg(inputs, corr_table=""), str(tmp / "x2"), "ablation")
  with pytest.raises(UserError, match="do not exist"):
    runner.run_all(_cfg(inputs, corr_table=str(tmp / "none.parquet")), str(tmp / "x3"), "stats")
  wrong = pd.read_parquet(inputs["corr"]).iloc[:32]
  wrong.to_parquet(tmp / "neurons_wrong.parquet")
  with pytest.raises(UserError, match="model has 2 layers"):
    runner.run_all(_cfg(inputs, corr_table=str(tmp / "neurons_wrong.parquet")), str(tmp / "x4"),
                   "stats")
  bpe_store = _store(tmp, "bpe")
  with pytest.raises(UserError, match="tokenizer"):
    runner.run_all(_cfg(inputs, token_store=bpe_store.path), str(tmp / "x5"), "stats")
  with pytest.raises(UserError, match="does not exist"):
    runner.run_all(_cfg(inputs, model_dir=str(tmp / "nomodel")), str(tmp / "x6"), "stats")


def test_main_exit_code_on_bad_input(tmp_path):
  r = subprocess.run([sys.executable, "main.py", "analyze",
                      "--config=configs/analyze_default.py", f"--workdir={tmp_path}/w",
                      f"--config.model_dir={tmp_path}/missing"], cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("error: model directory")
