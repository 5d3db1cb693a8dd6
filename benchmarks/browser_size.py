"""Neuron browser size (ucore/report/browser.py): measured for a model, projected to GPT-2-small.

  python -m benchmarks.browser_size --workdir=runs/default            # a finished pipeline run
  python -m benchmarks.browser_size --model_dir=DIR --store=DIR [--partners=2] [--rows=64]

With --workdir the pages the pipeline wrote beside its report are measured. With --model_dir
and --store (any model of the study's shape, e.g. a family checkpoint, before correlations
exist) the records are computed here on the store's last --rows rows (contexts, histograms,
logit effects, statistics) with a synthetic correlation table of --partners sibling seeds and
synthetic family labels (sizes only: those values are random). The
projection to GPT-2-small's 36,864 neurons (4 sibling seeds in the paper) scales the measured
bytes per neuron, adds the per-partner bytes for the extra seeds and rescales the context text
by GPT-2's characters per token over this store's text (measured with the offline GPT-2
tokenizer) against this model's. Results in BENCHMARKS.md, "Neuron browser".
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GPT2_NEURONS, GPT2_PARTNERS = 36864, 4


def _synthetic_corr(config, partners, seed=0):
  import pandas as pd
  from ucore.analyses import common
  rng = np.random.default_rng(seed)
  idx = common.neuron_index(config.n_layer, config.d_mlp)
  n = len(idx)
  t = pd.DataFrame({"mean_corr": rng.uniform(0, 1, n), "max_corr": rng.uniform(0, 1, n),
                    "min_corr": rng.uniform(0, 1, n), "mean_baseline": rng.uniform(0, 1, n),
                    "max_sim_layer": rng.integers(0, config.n_layer, n)}, index=idx)
  t["excess_corr"] = t.mean_corr - t.mean_baseline
  t["universal"] = t.excess_corr > 0.5
  for m in range(1, partners + 1):
    t[f"corr__seed{m}"] = rng.uniform(0, 1, n)
    t[f"max_sim_layer__seed{m}"] = rng.integers(0, config.n_layer, n)
    t[f"max_sim_neuron__seed{m}"] = rng.integers(0, config.d_mlp, n)
  return t


def _records_from_store(model_dir, store_dir, rows, partners, out):
  import pandas as pd
  from ucore import load_model
  from ucore.analyses import vocab
  from ucore.analyses.common import vocab_file_of
  from ucore.data.batches import make_batches
  from ucore.data.store import open_store
  from ucore.report import browser
  model, store = load_model(model_dir), open_store(store_dir)
  texts = vocab.decode_vocab(vocab_file_of(model, store), model.config.vocab_size)
  held = store.read_rows(store.num_rows - rows, store.num_rows)
  batches = make_batches(held, 32, exclude_ids=store.mask_exclude_ids)
  from ucore.analyses.families import FAMILIES
  from ucore.analyses.stats import neuron_stats
  corr = _synthetic_corr(model.config, partners)
  rng = np.random.default_rng(1)
  families = pd.DataFrame({"family": rng.choice(list(FAMILIES), len(corr)),
                           "best_label": rng.choice(["unigram_the", "position_3", "digits",
                                                     "newline", "capital"], len(corr)),
                           "best_vr": rng.uniform(0, 1, len(corr))}, index=corr.index)
  t0 = time.perf_counter()
  records = browser.neuron_records(model, batches, corr, texts,
                                   lambda ids: "".join(texts[int(i)] for i in ids),
                                   stats=neuron_stats(model, batches), families=families)
  seconds = time.perf_counter() - t0
  data = os.path.join(out, "data")
  browser.write_data(data, records, model.config.n_layer)
  report = os.path.join(out, "report")
  os.makedirs(report)
  browser.write_pages(report, data)
  return report, held, store, texts, seconds


def _chars_per_token(rows, decode):
  text = "".join(decode(r) for r in rows)
  return len(text) / rows.size, text


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir")
  ap.add_argument("--model_dir")
  ap.add_argument("--store")
  ap.add_argument("--rows", type=int, default=64)
  ap.add_argument("--partners", type=int, default=2)
  a = ap.parse_args()
  from ucore.report import browser
  from ucore.models import tokenizer as tokmod
  out = tempfile.mkdtemp(prefix="browser-size-")
  seconds = None
  if a.workdir:
    report = os.path.join(a.workdir, "report")
    store_dir = os.path.join(a.workdir, "tokens")
  else:
    report, _, _, _, seconds = _records_from_store(a.model_dir, a.store, a.rows, a.partners, out)
    store_dir = a.store
  size = browser.pages_size(report)
  root = os.path.join(report, browser.PAGES_DIR)
  recs = [r for f in sorted(os.listdir(os.path.join(root, browser.EXPORT_DIR)))
          if f.endswith(".json") for r in json.load(open(os.path.join(root, "export", f)))]
  n = len(recs)
  partners = len(recs[0]["partners"])
  # bytes of one partner entry and of the context text, as the shards hold them (rounded)
  per_partner = np.mean([len(json.dumps(p, separators=(",", ":"))) + 1 for r in recs
                         for p in r["partners"]])
  ctx_chars = np.mean([sum(len(c["before"]) + len(c["token"]) + len(c["after"])
                           for c in r["contexts"]) for r in recs])
  # characters per token: this store's tokenizer vs GPT-2's on the same text
  from ucore.data.store import open_store
  store = open_store(store_dir)
  ours = tokmod.load(tokmod.files_in_dir(store.tokenizer_dir))
  rows = store.read_rows(store.num_rows - a.rows, store.num_rows)
  cpt_ours, text = _chars_per_token(rows, lambda r: ours.decode([int(t) for t in r]))
  gpt2 = tokmod.load(tokmod.gpt2_files_offline())
  cpt_gpt2 = len(text) / len(gpt2.encode(text).ids)
  shard_per_neuron = size["shards"] / n
  export_per_neuron = size["export"] / n
  extra = (GPT2_PARTNERS - partners) * per_partner + ctx_chars * (cpt_gpt2 / cpt_ours - 1)
  proj_shards = GPT2_NEURONS * (shard_per_neuron + extra)
  proj_export = GPT2_NEURONS * (export_per_neuron + 2 * extra)   # parquet + JSON both grow
  proj_index = size["index"] / n * GPT2_NEURONS
  result = {
      "neurons": n, "partners": partners, "page_bytes": size["page"],
      "index_bytes": size["index"],
      "shards_bytes": size["shards"], "largest_shard_bytes": size["largest_shard"],
      "export_bytes": size["export"], "shard_bytes_per_neuron": round(shard_per_neuron, 1),
      "chars_per_token": {"this": round(cpt_ours, 3), "gpt2": round(cpt_gpt2, 3)},
      "records_seconds": None if seconds is None else round(seconds, 2),
      "gpt2_small_projection": {
          "neurons": GPT2_NEURONS, "index_mb": round(proj_index / 1e6, 2),
          "shards_mb": round(proj_shards / 1e6, 1),
          "per_layer_shard_mb": round(proj_shards / 12 / 1e6, 2),
          "export_mb": round(proj_export / 1e6, 1)}}
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
