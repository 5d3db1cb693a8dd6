"""The checkpoint sweep end to end, offline: a tiny random GPT-NeoX family of 4 "seeds" with 3
local HF "checkpoints" each (written with transformers) -> `main.py sweep`, killed with -9 in
its second checkpoint and rerun -> per-checkpoint universality equal to brute-force float64
numpy on the same activations (transformers' PyTorch forward in float64), and the
over-training tables recomputed here from those numbers; the conversion cache reused by a
second sweep.

Brute-forced: each neuron's max correlation with every sibling (corr__<sibling>) and their
mean (mean_corr). The rotation baselines are checked through the tables' own columns
(mean_baseline = mean of baseline__<sibling>; excess_corr = mean_corr - mean_baseline;
universal = excess_corr > threshold): ucore's baselines have their own float64 tests
(tests/test_corr_baselines.py)."""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests import hf_fixtures
from tests.corr_ref import corr64, rowmax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = (0, 1, 2, 3)
STEPS = (100, 200, 300)
NOISE = {100: 0.3, 200: 0.03, 300: 0.003}   # seeds drift apart less as "training" goes on
THRESHOLD = 0.5
WORDS = ("the dog river mountain quick brown fox jumps over lazy a b c 1984 She said (it) "
         "running walked USA data of and to in").split(" ")
VOCAB, CTX, ROWS, D_MLP, N_LAYER = 320, 32, 12, 32, 2


def _sweep_cmd(workdir, family, store, cache, checkpoints):
  return [sys.executable, os.path.join(ROOT, "main.py"), "sweep",
          f"--config={ROOT}/configs/sweep_default.py", f"--workdir={workdir}",
          "--config.models=" + ",".join(os.path.join(family, f"seed{s}") for s in SEEDS),
          "--config.checkpoints=" + ",".join(checkpoints),
          f"--config.cache_dir={cache}", f"--config.correlate.token_store={store}",
          f"--config.correlate.max_tokens={ROWS * CTX}", "--config.correlate.batch_rows=4",
          "--config.correlate.precision=highest", "--config.correlate.top_k=2",
          "--config.correlate.checkpoint.every_steps=2", "--config.fallback_k=5",
          # brute-forced below instead; one baseline kind is enough for the columns' checks
          "--config.correlate.selfcheck.sample=0", "--config.correlate.baseline.kinds=haar"]


def _run_killed_in_second_checkpoint(cmd, log):
  """Starts the sweep and kill -9s it once it has started correlating its second checkpoint
  (its first is finished then)."""
  with open(log, "w") as err:
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    lines = []
    for line in p.stdout:
      lines.append(line)
      if line.startswith("[sweep] checkpoint 2/3") and "correlating" in line:
        p.send_signal(signal.SIGKILL)
        break
    p.wait(timeout=120)
  return p.returncode, "".join(lines)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
  """HF checkpoints family/seed<s>/checkpoint-<N> with their tokenizer.json, and a token store
  made with that tokenizer."""
  import torch
  from ucore.data import build
  from ucore.jobs import config_files
  tmp = tmp_path_factory.mktemp("sweep")
  rng = np.random.default_rng(0)
  corpus = str(tmp / "docs.jsonl")
  with open(corpus, "w") as f:
    for _ in range(40):
      f.write(json.dumps({"text": " ".join(rng.choice(WORDS, int(rng.integers(20, 60))))})
              + "\n")
  texts = [json.loads(l)["text"] for l in open(corpus)]
  cfg = hf_fixtures.neox_config(num_hidden_layers=N_LAYER, hidden_size=32, num_attention_heads=2,
                                intermediate_size=D_MLP, vocab_size=VOCAB,
                                max_position_embeddings=CTX)
  hf = {}
  for j, step in enumerate(STEPS):
    for s in SEEDS:
      m = hf_fixtures.random_hf_model(cfg, seed=100 + j)   # the family's weights at this step
      g = torch.Generator().manual_seed(1000 * j + s)
      with torch.no_grad():
        for p in m.parameters():
          p.add_(NOISE[step] * p.std().clamp(min=1e-3) *
                 torch.randn(p.shape, generator=g))
      d = hf_fixtures.write_checkpoint(str(tmp / "family" / f"seed{s}" / f"checkpoint-{step}"), m)
      hf_fixtures.write_tokenizer_json(d, texts, VOCAB, added=())
      hf[(step, s)] = m.double().eval()
  tc = config_files.load("tokenize_default")
  tc.source, tc.ctx, tc.num_tokens, tc.log_every_s = corpus, CTX, 0, 0.0
  tc.label_field = ""
  tc.tokenizer, tc.model_vocab_size = str(tmp / "family" / "seed0" / "checkpoint-100"), VOCAB
  store = build.build_store(tc, str(tmp / "store"))
  assert store.num_rows >= ROWS
  return {"tmp": tmp, "family": str(tmp / "family"), "store": store, "hf": hf}


@pytest.fixture(scope="module")
def swept(family):
  """The sweep killed in its second checkpoint, then rerun with the same command."""
  tmp = family["tmp"]
  workdir, cache = str(tmp / "run"), str(tmp / "cache")
  cmd = _sweep_cmd(workdir, family["family"], family["store"].path, cache,
                   [f"checkpoint-{s}" for s in STEPS])
  rc, first = _run_killed_in_second_checkpoint(cmd, str(tmp / "killed.log"))
  assert rc == -signal.SIGKILL, first
  done_100 = os.path.join(workdir, "corr", "step100", "tables", "summary.json")
  assert os.path.isfile(done_100)
  mtime = os.path.getmtime(done_100)
  # the same command again, in this process through main.py's parser and dispatch (the
  # process boundary that is the claim is the kill above)
  from tests import job_runs
  status, rerun, stderr = job_runs.main_in_process(*cmd[2:])
  assert status == 0, stderr[-3000:]
  return {"workdir": workdir, "cache": cache, "cmd": cmd, "first": first, "rerun": rerun,
          "mtime_100": mtime}


def _brute_force(family, step):
  """{seed: activations [tokens, layers * d_mlp] float64} over the counted tokens of the rows
  the sweep reads, from transformers' forward (float64)."""
  store = family["store"]
  tokens = store.read_rows(0, ROWS)
  keep = ~np.isin(tokens, list(store.mask_exclude_ids)).reshape(-1)
  out = {}
  for s in SEEDS:
    _, cache = hf_fixtures.reference_activations(family["hf"][(step, s)], tokens)
    acts = np.concatenate([cache[f"blocks.{l}.mlp.hook_post"] for l in range(N_LAYER)], -1)
    out[s] = acts.reshape(-1, N_LAYER * D_MLP)[keep].astype(np.float64)
  return out, int(keep.sum())


@pytest.mark.slow("a sweep over three training checkpoints, resumed, against float64")
def test_resumed_sweep_matches_brute_force_float64(family, swept):
  assert "finished before" in swept["rerun"].splitlines()[0]   # step 100: skipped
  assert "checkpoint 1/3 step 100 (checkpoint-100): finished before" in swept["rerun"]
  assert os.path.getmtime(os.path.join(swept["workdir"], "corr", "step100", "tables",
                                       "summary.json")) == swept["mtime_100"]
  tables = {}
  for step in STEPS:
    tdir = os.path.join(swept["workdir"], "corr", f"step{step}", "tables")
    t = pd.read_parquet(os.path.join(tdir, "neurons_seed0.parquet"))
    acts, n_tokens = _brute_force(family, step)
    assert json.load(open(os.path.join(tdir, "summary.json")))["tokens_counted"] == n_tokens
    maxes = []
    for s in SEEDS[1:]:
      mx, _ = rowmax(corr64(acts[0], acts[s]))
      np.testing.assert_allclose(t[f"corr__seed{s}"].to_numpy(), mx, atol=2e-5, rtol=0)
      maxes.append(mx)
    mean_corr = np.mean(maxes, axis=0)
    np.testing.assert_allclose(t["mean_corr"].to_numpy(), mean_corr, atol=2e-5, rtol=0)
    base = np.mean([t[f"baseline__seed{s}"].to_numpy() for s in SEEDS[1:]], axis=0)
    np.testing.assert_allclose(t["mean_baseline"].to_numpy(), base, atol=1e-6, rtol=0)
    excess = mean_corr - base
    np.testing.assert_allclose(t["excess_corr"].to_numpy(), excess, atol=2e-5, rtol=0)
    clear = np.abs(excess - THRESHOLD) > 1e-4   # away from the threshold: no rounding flips
    assert (t["universal"].to_numpy()[clear] == (excess > THRESHOLD)[clear]).all()
    tables[step] = t
  counts = {s: int(tables[s]["universal"].sum()) for s in STEPS}
  assert counts[300] > counts[100] and counts[300] > 0, counts   # universality emerges

  # the over-training tables, recomputed here from the per-checkpoint tables
  out = os.path.join(swept["workdir"], "over_training")
  final = {i for i, u in zip(tables[300].index, tables[300]["universal"]) if u}
  persist = pd.read_parquet(os.path.join(out, "persistence.parquet"))
  share = pd.read_parquet(os.path.join(out, "share_by_layer.parquet"))
  focus = pd.read_parquet(os.path.join(out, "focus_by_step.parquet"))
  by_step = pd.read_parquet(os.path.join(out, "excess_by_step.parquet"))
  assert list(persist.index) == list(STEPS)
  for step in STEPS:
    t = tables[step]
    u = {i for i, v in zip(t.index, t["universal"]) if v}
    assert persist.loc[step, "n_universal"] == len(u)
    assert persist.loc[step, "share_of_final"] == pytest.approx(len(u & final) / len(final))
    if u:
      assert persist.loc[step, "share_still_universal"] == pytest.approx(len(u & final) / len(u))
    for layer in range(N_LAYER):
      n = sum(1 for l, _ in u if l == layer)
      assert share.loc[(step, layer), "n_universal"] == n
      assert share.loc[(step, layer), "share_universal"] == pytest.approx(n / D_MLP)
    ex = t["excess_corr"]
    assert by_step.loc[step, "median_excess"] == pytest.approx(float(np.nanmedian(ex)))
    fin = ex.reindex(sorted(final))
    assert focus.loc[step, "n_set"] == len(final)
    assert focus.loc[step, "median_excess"] == pytest.approx(float(np.nanmedian(fin)))
    assert focus.loc[step, "share_above_threshold"] == pytest.approx(
        float(np.mean(fin.to_numpy() > THRESHOLD)))
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["steps"] == list(STEPS) and summary["final_step"] == 300
  assert summary["n_universal"] == [counts[s] for s in STEPS]
  for f in ("persistence", "excess_by_step", "share_by_layer", "focus_by_step"):
    assert os.path.getsize(os.path.join(out, f + ".png")) > 5000
  assert f"step 300: {counts[300]}" in swept["rerun"]


def test_conversion_cache_is_keyed_by_content_and_reused(family, swept):
  """Another sweep of the same checkpoint files (copied elsewhere) finds every conversion in
  the cache: the key is the files' content, not their place."""
  import shutil
  from ucore import sweep
  from ucore.models.hooked import read_manifest
  entries = sorted(os.listdir(swept["cache"]))
  assert len(entries) == len(SEEDS) * len(STEPS)   # one per checkpoint file set, no partials
  moved = str(family["tmp"] / "family_copy")
  shutil.copytree(family["family"], moved)
  for step in STEPS:
    for s in SEEDS:
      src = sweep.source_of(os.path.join(moved, f"seed{s}", f"checkpoint-{step}"))
      assert src.kind == "hf_dir"
      entry = sweep.cache_entry(src, swept["cache"])
      before = os.path.getmtime(os.path.join(entry, "manifest.json"))
      assert sweep.converted_dir(src, swept["cache"]) == entry
      assert os.path.getmtime(os.path.join(entry, "manifest.json")) == before
      assert read_manifest(entry)["source"]["location"] == os.path.join(
          family["family"], f"seed{s}", f"checkpoint-{step}")   # converted from the original
  assert sorted(os.listdir(swept["cache"])) == entries
  # other processing is another key: converted anew, not served from the entry above
  other = sweep.source_of(os.path.join(moved, "seed0", "checkpoint-300"), "transformer_lens")
  assert sweep.cache_entry(other, swept["cache"]) not in [
      os.path.join(swept["cache"], e) for e in entries]


def test_a_rerun_of_a_finished_sweep_redoes_nothing(swept):
  """The same command again, in this process through main.py's parser and dispatch (the
  process boundary is `swept`'s kill and rerun, not this claim)."""
  from tests import job_runs
  status, stdout, stderr = job_runs.main_in_process(*swept["cmd"][2:])
  assert status == 0, stderr[-2000:]
  assert stdout.count("finished before") == 3 and "converting" not in stdout



def test_a_sweep_with_other_settings_is_refused_in_its_workdir(family, swept):
  from ucore import sweep
  from ucore.jobs.errors import UserError
  c = _config(family, swept["cache"], correlate_max_tokens=64)
  with pytest.raises(UserError, match="holds a sweep of another family or settings") as e:
    sweep.run(c, swept["workdir"])
  assert f"(correlate.max_tokens: {ROWS * CTX} -> 64)" in str(e.value)


def _config(family, cache, **overrides):
  from ucore.jobs import config_files
  c = config_files.load("sweep_default")
  c.models = [os.path.join(family["family"], f"seed{s}") for s in SEEDS]
  c.checkpoints = [f"checkpoint-{s}" for s in STEPS]
  c.cache_dir, c.correlate.token_store = cache, family["store"].path
  c.fallback_k, c.correlate.max_tokens, c.correlate.batch_rows = 5, ROWS * CTX, 4
  c.correlate.precision, c.correlate.top_k, c.correlate.checkpoint.every_steps = "highest", 2, 2
  c.correlate.selfcheck.sample, c.correlate.baseline.kinds = 0, ("haar",)   # as _sweep_cmd
  for k, v in overrides.items():
    if k.startswith("correlate_"):
      c.correlate[k[len("correlate_"):]] = v
    else:
      c[k] = v
  return c


@pytest.mark.parametrize("overrides,message", [
    ({"checkpoints": ["@step1000"]}, "is a hub revision but model"),
    ({"checkpoints": ["checkpoint-999"]}, "does not exist"),
    ({"checkpoints": ["checkpoint-100", "checkpoint-100"]}, "config.checkpoints=['checkpoint-100', 'checkpoint-100'] must not repeat an element"),
    ({"steps": (1, 2)}, "config.steps has 2 steps for 3 checkpoints"),
    ({"steps": (5, 5, 6)}, "config.steps=(5, 5, 6) must not repeat an element"),
    ({"model_names": ["a", "a", "b", "c"]}, "config.model_names=['a', 'a', 'b', 'c'] must not repeat an element"),
    ({"models": ["pythia-70m", "pythia-70m-seed1"], "checkpoints": ["@step1500"]},
     "step 1500 is not a kept Pythia checkpoint; nearest: step1000, step2000"),
    ({"models": ["pythia-70m", "pythia-70m-seed1"], "checkpoints": ["checkpoint-10"]},
     "is not a local directory"),
    ({"models": ["pythia-70m@step1000", "pythia-70m-seed1"], "checkpoints": ["@step2000"]},
     "carries a revision"),
    ({"correlate_token_store": ""}, "token_store is required"),
    ({"correlate_models": ["x", "y"]}, "set per checkpoint by the sweep"),
    ({"correlate_mode": "all_pairs"}, "mode 'reference'"),
    ({"correlate_batch_rows": 0}, "batch_rows=0 must be >= 1"),
    ({"process": "fold"}, "config.process='fold' must be one of 'none', 'transformer_lens'"),
])
def test_bad_sweeps_refused_before_writing(family, tmp_path, overrides, message):
  from ucore import sweep
  from ucore.jobs.errors import UserError
  workdir = str(tmp_path / "run")
  with pytest.raises(UserError, match=re.escape(message)):
    sweep.run(_config(family, str(tmp_path / "cache"), **overrides), workdir)
  assert not os.path.exists(workdir) and not os.path.exists(tmp_path / "cache")


def test_checkpoint_without_a_step_in_its_name_is_refused_on_the_command_line(family, tmp_path):
  workdir = str(tmp_path / "run")
  cmd = _sweep_cmd(workdir, family["family"], family["store"].path, str(tmp_path / "cache"),
                   ["checkpoint-100", "final"])
  with open(tmp_path / "err.log", "w") as err:
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, timeout=300)
  last = open(tmp_path / "err.log").read().strip().splitlines()[-1]
  assert r.returncode == 2 and last == (
      "error: checkpoints ['final'] carry no step in their name; give every checkpoint's "
      "training step in config.steps")
  assert not os.path.exists(workdir)


_HUB_CONVERT = """
import json, sys
from ucore import sweep
for cache, *refs in json.loads(sys.argv[1]):
  print(MARK, flush=True)
  print(MARK, file=sys.stderr, flush=True)
  out = {}
  for r in refs:
    src = sweep.source_of(r)
    out[r] = {"kind": src.kind, "key": src.key, "entry": sweep.converted_dir(src, cache)}
  print(json.dumps(out), flush=True)
"""


def test_hub_checkpoints_are_converted_into_the_cache_by_id_and_revision(family, swept, tmp_path):
  """PolyPythias aliases at @step<N> through the hub path (a hand-built offline HF cache of
  the local checkpoints): one cache entry per hub id@revision, the same weights as the local
  conversion of those files, and a second lookup converts nothing."""
  from tests.test_convert_errors import _fake_hub_cache
  from ucore.models.hooked import read_manifest
  hub = str(tmp_path / "hub")
  for j, s in enumerate((0, 1)):
    _fake_hub_cache(hub, f"EleutherAI/pythia-70m-seed{s + 1}", {
        "step512": (f"{j}" * 40, os.path.join(family["family"], f"seed{s}", "checkpoint-300"))})
  cache = str(tmp_path / "cache")
  refs = ["pythia-70m-seed1@step512", "pythia-70m-seed2@step512"]
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=hub)
  # both lookups in one process (the hub cache's environment is read at import)
  from tests import job_runs
  r, _ = job_runs.several_in_one_process(_HUB_CONVERT, [[cache, *refs]] * 2, env)
  assert r.returncode == 0, r.stderr[-2000:]
  outs = r.stdout.split(job_runs.MARK)[1:]
  assert len(outs) == 2, r.stdout[-2000:]
  first, second = (json.loads(o.strip().splitlines()[-1]) for o in outs)
  assert first == second and len(os.listdir(cache)) == 2
  assert "converting" in outs[0] and "converting" not in outs[1]
  for s, r in enumerate(refs):
    assert first[r]["kind"] == "hub" and first[r]["key"] == {
        "hub": f"EleutherAI/pythia-70m-seed{s + 1}", "revision": "step512", "process": "none"}
    m = read_manifest(first[r]["entry"])
    assert (m["source"]["revision"], m["source"]["resolved_commit"]) == ("step512", f"{s}" * 40)
    local = [e for e in os.listdir(swept["cache"]) if read_manifest(
        os.path.join(swept["cache"], e))["source"]["location"].endswith(
        os.path.join(f"seed{s}", "checkpoint-300"))]
    assert len(local) == 1 and m["params_fingerprint"] == read_manifest(
        os.path.join(swept["cache"], local[0]))["params_fingerprint"]
