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

from ucore.jobs import config_files
from ucore.models import tokenizer as tokmod
from tests import planted
from ucore import analyze as runner
from ucore.analyses import common
from ucore.data import build
from ucore.jobs.errors import UserError
from ucore.models.hooked import save_model

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
  corr["max_baseline"] = 0.25
  corr["strict_excess"] = corr["min_corr"] - corr["max_baseline"]
  for m, shift in (("seed1", 0), ("seed2", 1)):        # best partners in two other seeds
    corr[f"corr__{m}"] = 0.4 - 0.1 * shift
    corr[f"max_sim_layer__{m}"] = idx.get_level_values("layer")
    corr[f"max_sim_neuron__{m}"] = (idx.get_level_values("neuron") + shift) % 32
  corr_path = str(tmp / "neurons_planted.parquet")
  corr.to_parquet(corr_path)
  return dict(tmp=tmp, model_dir=model_dir, store=_store(tmp), corr=corr_path)


def _cfg(inputs, **kw):
  c = _config("analyze_default", "quick")
  c.model_dir, c.token_store, c.corr_table = inputs["model_dir"], inputs["store"].path, inputs["corr"]
  c.max_rows = 8
  c.entropy.n_random, c.entropy.fixed_values = 2, (0.0, 6.0)   # shrink the default for speed
  c.attention.top_pairs, c.ablation.n_random = 1, 1
  for k, v in kw.items():
    setattr(c, k, v)
  return c


@pytest.mark.slow("every analysis of the paper on one store, then the report")
def test_all_analyses_on_store_with_report(inputs):
  wd = str(inputs["tmp"] / "run")
  r = runner.run(_cfg(inputs), wd, "all")
  sections = r.sections
  assert runner.report(_cfg(inputs), wd, r) == os.path.join(wd, "report", "index.html")
  meta = json.load(open(os.path.join(wd, "sections.json")))
  assert meta["analyses"] == list(runner.ANALYSES)
  # every section has its figure, except the neuron browser's link (its pages beside the report)
  assert len(sections) >= 10 and all(os.path.isfile(s[1]) for s in sections
                                     if s[0] != "Neuron browser")
  assert 'href="neurons/index.html"' in open(os.path.join(wd, "report", "index.html")).read()
  browser_export = os.path.join(wd, "report", "neurons", "export")
  assert sorted(os.listdir(browser_export)) == ["layer0.json", "layer0.parquet",
                                               "layer1.json", "layer1.parquet"]
  for f in ("stats/neuron_stats.parquet", "stats/universal_comparison.parquet",
            "families/families.parquet", "families/alphabet_neurons.parquet",
            "prediction/vocab_role_counts.parquet", "entropy/entropy_sweep.parquet",
            "attention/attention_scores.parquet", "attention/path_ablation.parquet",
            "ablation/ablation.parquet", "report/index.html"):
    assert os.path.isfile(os.path.join(wd, f)), f
  html = open(os.path.join(wd, "report", "index.html")).read()
  for s in sections:
    assert s[0].split(" ")[0] in html
  # the universality sections: present, about the universal set, with their tables
  titles = [s[0] for s in sections]
  for t in ("Universal vs other neurons: the paper's properties",
            "Excess correlation without a threshold", "Excess correlation of sparse neurons",
            "Families and roles of the universal neurons", "Ablating universal vs random neurons",
            "Neuron cards (universal)"):
    assert t in titles, (t, titles)
    assert t.replace("'", "&#x27;") in html
  for f in ("properties/universal_properties.parquet", "views/excess_counts.parquet",
            "views/sparse_excess.parquet", "roles/universal_roles.parquet",
            "cards/cards.parquet"):
    assert os.path.isfile(os.path.join(wd, f)), f
  cards = pd.read_parquet(os.path.join(wd, "cards", "cards.parquet"))
  assert len(cards) == 3 and (cards["examples"] > 0).all() and (cards["tokens"] > 0).all()
  q = planted.PLANTED["query"]
  assert cards.loc[q, "partner_seed2"] == f"L{q[0]}.{(q[1] + 1) % 32}"
  assert cards.loc[q, "partner_corr_seed1"] == pytest.approx(0.4)
  assert html.count('class="card"') == 3
  roles = pd.read_parquet(os.path.join(wd, "roles", "universal_roles.parquet"))
  assert set(roles.index) == {q, planted.PLANTED["entropy"], (0, 0)}
  assert roles.loc[planted.PLANTED["entropy"], "entropy_rank"] == 1
  assert roles.loc[q, "max_attn_head"] == "L1.H0"
  assert "project&#x27;s own thresholds" in html and "spaCy" in html
  fam = pd.read_parquet(os.path.join(wd, "families", "families.parquet"))
  assert fam.loc[planted.PLANTED["position"], "family"] == "position"
  ent = pd.read_parquet(os.path.join(wd, "entropy", "entropy_candidates.parquet"))
  assert ent["rank"].idxmin() == planted.PLANTED["entropy"]


def test_universality_sections_without_universal_neurons(inputs):
  """No universal neuron: every universality section still runs, on the top-k by excess."""
  tmp = inputs["tmp"]
  corr = pd.read_parquet(inputs["corr"])
  corr["universal"] = False
  path = str(tmp / "neurons_none.parquet")
  corr.to_parquet(path)
  c = _cfg(inputs, corr_table=path)
  c.universal.fallback_k, c.universal.cards_k = 3, 2
  r = runner.run(c, str(tmp / "none"), "stats,properties,views,roles,ablation,cards")
  assert r.analyses == ["stats", "properties", "views", "roles", "ablation", "cards"]
  by_title = {s[0]: s for s in r.sections}
  for t in ("Universal vs other neurons: the paper's properties",
            "Excess correlation without a threshold", "Excess correlation of sparse neurons",
            "Families and roles of the top-3 by excess neurons",
            "Ablating top-3 by excess vs random neurons", "Neuron cards (top-3 by excess)"):
    assert t in by_title, (t, list(by_title))
    s = by_title[t]
    assert os.path.getsize(s[1]) > 2000
    if t != "Excess correlation without a threshold":
      assert "No neuron is universal in this run" in s[2], t
  comp = pd.read_parquet(os.path.join(tmp, "none", "properties",
                                      "universal_properties.parquet"))
  assert (comp.xs("all", level="scope")["n_focus"] == 3).all()
  assert len(pd.read_parquet(os.path.join(tmp, "none", "cards", "cards.parquet"))) == 2


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
