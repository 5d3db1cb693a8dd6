"""The neuron browser (ucore/report/browser.py): every neuron's record against numpy brute
force on the planted model, the bulk export equal to the records, and the static pages in
headless Chromium: search finds a neuron by id and its card renders."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from tests import planted
from ucore.analyses import common
from ucore.data.batches import make_batches
from ucore.report import browser

PER, CTX, BINS, K = 2, 3, 10, 4


def _corr(config, seed=0):
  rng = np.random.default_rng(seed)
  idx = common.neuron_index(config.n_layer, config.d_mlp)
  n = len(idx)
  base = rng.uniform(0.05, 0.25, n)
  mean = base + rng.uniform(0.0, 0.8, n)
  t = pd.DataFrame({"mean_corr": mean, "max_corr": mean + 0.05, "min_corr": mean - 0.05,
                    "mean_baseline": base}, index=idx)
  t["excess_corr"] = t.mean_corr - t.mean_baseline
  t["universal"] = t.excess_corr > 0.5
  for m in ("seed1", "seed2"):
    t[f"corr__{m}"] = rng.uniform(0, 1, n)
    t[f"max_sim_layer__{m}"] = rng.integers(0, config.n_layer, n)
    t[f"max_sim_neuron__{m}"] = rng.integers(0, config.d_mlp, n)
  t.loc[(1, 3), "max_sim_layer__seed2"] = -1     # no partner (dead in the other seed)
  return t


@pytest.fixture(scope="module")
def setup(model):
  tokens = planted.planted_tokens(12, 32, seed=3)
  batches = make_batches(tokens, 4)
  corr = _corr(model.config)
  texts = [f"t{i}" for i in range(model.config.vocab_size)]
  decode = lambda ids: " ".join(texts[int(i)] for i in ids)
  fam = pd.DataFrame({"family": "unigram", "best_label": "digits", "best_vr": 0.25},
                     index=corr.index)
  fam.loc[(1, 2), ["family", "best_label"]] = ("position", "pos_0")
  records = browser.neuron_records(model, batches, corr, texts, decode, families=fam,
                                   per_neuron=PER, context=CTX, bins=BINS, k_tokens=K)
  return model, batches, corr, texts, decode, records


def test_records_match_bruteforce(setup):
  model, batches, corr, texts, decode, records = setup
  cfg = model.config
  assert [r["id"] for r in records] == [f"L{l}.{n}" for l in range(cfg.n_layer)
                                        for n in range(cfg.d_mlp)]
  acts = np.concatenate([np.asarray(model.neuron_activations(b.tokens), np.float64)
                         for b in batches])
  mask = np.concatenate([b.mask for b in batches])
  tokens = np.concatenate([b.tokens for b in batches])
  kept = acts[mask]
  w = common.processed_weights(model)
  w_u = w.w_u - w.w_u.mean(axis=1, keepdims=True)
  for i, r in enumerate(records):
    l, n = divmod(i, cfg.d_mlp)
    a = kept[:, i]
    assert r["tokens"] == len(a)
    assert r["act_mean"] == pytest.approx(a.mean(), rel=1e-12)
    assert r["act_max"] == a.max() and r["act_share_positive"] == pytest.approx(np.mean(a > 0))
    if a.max() > a.min():
      ref, _ = np.histogram(a, bins=BINS, range=(a.min(), a.max()))
      assert r["hist_counts"] == ref.tolist(), r["id"]
    else:
      assert r["hist_counts"] == [len(a)] + [0] * (BINS - 1)
    # top contexts: the rows of largest activation, one example per row
    per_row = np.where(mask, acts[..., i], -np.inf).max(axis=1)
    order = np.argsort(-per_row, kind="stable")[:PER]
    assert [c["activation"] for c in r["contexts"]] == per_row[order].tolist()
    b = order[0]
    p = int(np.argmax(np.where(mask[b], acts[b, :, i], -np.inf)))
    assert r["contexts"][0]["token"] == texts[tokens[b, p]]
    assert r["contexts"][0]["before"] == decode(tokens[b, max(0, p - CTX):p])
    assert r["contexts"][0]["after"] == decode(tokens[b, p + 1:p + 1 + CTX])
    # logit effects
    # (ties, e.g. a zero w_out, may list any of the tied tokens: values and tokens checked)
    eff = w.w_out[l, n] @ w_u
    # float64 sums in another order: error bound scale sum |w_out| |W_U|
    tol = 1e-12 * (np.abs(w.w_out[l, n]) @ np.abs(w_u)).max()
    for got, want in ((r["promotes"], np.sort(eff)[::-1][:K]),
                      (r["suppresses"], np.sort(eff)[:K])):
      np.testing.assert_allclose([t["value"] for t in got], want, rtol=0, atol=tol)
      np.testing.assert_allclose([eff[int(t["token"][1:])] for t in got],
                                 [t["value"] for t in got], rtol=0, atol=tol)
      assert len({t["token"] for t in got}) == K
    # the correlation table's fields and partners
    row = corr.iloc[i]
    assert r["excess_corr"] == row.excess_corr and r["universal"] == bool(row.universal)
    for p_, m in zip(r["partners"], ("seed1", "seed2")):
      assert p_["model"] == m and p_["corr"] == row[f"corr__{m}"]
      want = (None if row[f"max_sim_layer__{m}"] < 0 else
              f"L{int(row[f'max_sim_layer__{m}'])}.{int(row[f'max_sim_neuron__{m}'])}")
      assert p_["partner"] == want
  assert records[cfg.d_mlp + 3]["partners"][1]["partner"] is None
  assert records[cfg.d_mlp + 2]["family"] == "position"


def _chromium_dom(page, tmp_path, script):
  """`page` with `script` appended, rendered by headless Chromium; returns the final DOM."""
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  assert chromium, "headless Chromium is required (apt-get install chromium; .ci/run does)"
  html = open(page, encoding="utf-8").read()
  probe = os.path.join(os.path.dirname(page), "_probe.html")
  with open(probe, "w", encoding="utf-8") as f:
    f.write(html.replace("</body>", f"<script>{script}</script></body>"))
  try:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    return subprocess.run([chromium, *flags, "--dump-dom", "file://" + probe],
                          capture_output=True, text=True, timeout=120).stdout
  finally:
    os.unlink(probe)


# Types an id into the search box as a person would, then records what the card shows.
SEARCH = """window.addEventListener('load', () => {
  const q = document.getElementById('q'); q.value = %s;
  q.dispatchEvent(new Event('input'));
  const wait = () => { const c = document.getElementById('card');
    if (c.dataset.id) document.body.setAttribute('data-card', c.dataset.id);
    else setTimeout(wait, 50); };
  wait(); });"""


def search_and_render(page, tmp_path, neuron_id):
  return _chromium_dom(page, tmp_path, SEARCH % json.dumps(neuron_id))


def test_pages_and_export_in_chromium(setup, tmp_path):
  model, _, corr, _, _, records = setup
  cfg = model.config
  data = tmp_path / "analyses" / "browser"
  browser.write_data(str(data), records, cfg.n_layer)
  report = tmp_path / "report"
  report.mkdir()
  (report / "index.html").write_text("<html></html>")
  page = browser.write_beside_report(str(report / "index.html"), str(data))
  assert page == str(report / "index.html")
  page = str(report / browser.PAGES_DIR / "index.html")
  # the bulk export holds the records, per layer, as parquet and as JSON
  for l in range(cfg.n_layer):
    layer = [r for r in records if r["layer"] == l]
    as_json = json.load(open(report / "neurons" / "export" / f"layer{l}.json"))
    assert as_json == json.loads(json.dumps(layer))
    pq = pd.read_parquet(report / "neurons" / "export" / f"layer{l}.parquet")
    assert list(pq["id"]) == [r["id"] for r in layer]
    np.testing.assert_array_equal(pq["excess_corr"], [r["excess_corr"] for r in layer])
  size = browser.pages_size(str(report))
  assert size["shards"] > 0 and size["export"] > size["shards"] / 2
  # Chromium: the id typed into the search box opens that neuron's card with its data
  target = records[cfg.d_mlp + 5]
  dom = search_and_render(page, tmp_path, target["id"])
  assert f'data-card="{target["id"]}"' in dom, dom[-2000:]
  card = dom[dom.index('id="card"'):]
  assert f'<h2 id="card-title">{target["id"]}</h2>' in card
  assert f'<mark>{target["contexts"][0]["token"]}</mark>' in card
  assert target["promotes"][0]["token"] in card
  assert target["partners"][0]["partner"] in card and "<svg" in card
  # a family search lists the matching neurons
  dom = search_and_render(page, tmp_path, "position")
  assert re.search(r"1 neurons match", dom) and "L1.2" in dom
