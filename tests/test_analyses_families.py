"""Families: one-pass grouped-sum VR vs the paper's formula computed label by label in float64;
planted unigram / position neurons on a hand-set model; previous-token, dataset and alphabet
labels on synthetic activations; vocabulary predicates; bad input."""
import numpy as np
import pandas as pd
import pytest

from ucore.data import batches as batches_mod
from ucore.models import tokenizer as tok
from tests import planted
from ucore.analyses import common, families, vocab
from ucore.jobs.errors import UserError


@pytest.fixture(scope="module")
def texts():
  return vocab.decode_vocab(tok.gpt2_files_offline().vocab)


def _vr_reference(v, y):
  """The paper's definition, population variances, float64."""
  v = np.asarray(v, np.float64)
  y = np.asarray(y, bool)
  beta = y.mean()
  if beta in (0.0, 1.0):
    return 0.0
  return 1 - ((1 - beta) * v[~y].var() + beta * v[y].var()) / v.var()


def test_vocab_predicates_on_gpt2_vocab(texts):
  assert texts[15496] == "Hello" and texts[3290] == " dog" and texts[198] == "\n"
  counts = np.zeros(len(texts), np.int64)
  counts[[262, 383, 1169, 3290]] = [10, 5, 3, 7]   # " the", " The", "the", " dog"
  ls = vocab.vocab_labels(texts, counts, n_unigrams=10)
  generic = [n for n, k in zip(ls.names, ls.kinds) if k in ("token", "alphabet")]
  assert len(generic) >= 100
  col = lambda n: ls.matrix[:, ls.names.index(n)]
  assert col("is_year")[vocab_id(texts, " 1984")] and not col("is_year")[vocab_id(texts, " 3000")]
  assert col("starts_with_space")[3290] and not col("starts_with_space")[15496]
  assert col("pronoun_3rd_feminine")[vocab_id(texts, " she")]
  assert col("is_letter_a")[vocab_id(texts, " A")] and col("is_letter_a")[vocab_id(texts, "a")]
  assert col("ends_with_ing")[vocab_id(texts, " running")]
  assert col("punct_open_paren")[vocab_id(texts, " (")]
  assert col("is_all_caps")[vocab_id(texts, " USA")]
  # unigram labels group normalized tokens, ordered by frequency
  assert ls.names[-2:] == ["unigram:the", "unigram:dog"]
  assert set(np.nonzero(col("unigram:the"))[0]) >= {262, 383, 1169}


def vocab_id(texts, s):
  return texts.index(s)


def test_grouped_sum_vr_equals_per_label_formula(texts):
  rng = np.random.default_rng(0)
  B, P, N, V = 6, 20, 5, len(texts)
  pool = rng.choice(np.arange(256, 5000), 60, replace=False)
  toks = rng.choice(pool, (B, P))
  mask = rng.random((B, P)) > 0.1
  acts = rng.normal(size=(B, P, N)) * 0.3 + 100.0    # large offset: cancellation check
  acts[..., 0] += 2.0 * np.isin(toks, pool[:5])       # depends on the token
  rows = np.arange(B) % 2
  labels = vocab.vocab_labels(texts, np.bincount(toks.ravel(), minlength=V), n_unigrams=20)
  acc = families.GroupedSums(N, V, P, n_datasets=2)
  for a, b in [(0, 1), (1, 4), (4, 6)]:
    acc.update(acts[a:b], toks[a:b], mask[a:b], rows[a:b])
  vr, names, kinds = acc.variance_reduction(labels, ["x", "y"])
  assert vr.shape == (2 * len(labels.names) + 2, N)
  v = acts[mask]
  prev = np.concatenate([np.full((B, 1), -1), toks[:, :-1]], 1)
  for j, name in enumerate(labels.names):
    lab = labels.matrix[:, j]
    y_cur = lab[toks][mask]
    y_prev = np.where(prev >= 0, lab[np.maximum(prev, 0)], False)[mask]
    for n in range(N):
      assert vr[j, n] == pytest.approx(_vr_reference(v[:, n], y_cur), abs=1e-9)
      k = len(labels.names) + j
      assert names[k] == "prev:" + name
      assert vr[k, n] == pytest.approx(_vr_reference(v[:, n], y_prev), abs=1e-9)
  y_data = np.broadcast_to(rows[:, None], (B, P))[mask] == 1
  assert names[-1] == "dataset:y"
  np.testing.assert_allclose(vr[-1], [_vr_reference(v[:, n], y_data) for n in range(N)],
                             atol=1e-9)
  # position η² equals the between-position share of variance
  pos = np.broadcast_to(np.arange(P), (B, P))[mask]
  for n in range(N):
    mu = v[:, n].mean()
    ssb = sum((pos == p).sum() * (v[pos == p, n].mean() - mu) ** 2 for p in np.unique(pos))
    assert acc.position_vr()[n] == pytest.approx(ssb / ((v[:, n] - mu) ** 2).sum(), abs=1e-9)
  # mutual information with position: plug-in MI of the (activation decile, position bin)
  # contingency table minus the Miller–Madow bias, computed here with np.histogram2d
  mi = acc.position_mi()[0]
  for n in range(N):
    abin = np.searchsorted(acc.edges[n], v[:, n], side="left")
    pbin = pos * acc.pos_bins // P
    h, _, _ = np.histogram2d(abin, pbin, bins=[np.arange(acc.act_bins + 1) - 0.5,
                                               np.arange(acc.pos_bins + 1) - 0.5])
    pj = h / h.sum()
    pa, pp = pj.sum(1, keepdims=True), pj.sum(0, keepdims=True)
    nz = pj > 0
    ref = (pj[nz] * np.log(pj[nz] / (pa @ pp)[nz])).sum()
    ref -= ((pa > 0).sum() - 1) * ((pp > 0).sum() - 1) / (2 * h.sum())
    assert mi[n] == pytest.approx(max(ref, 0.0), abs=1e-12)


def test_planted_unigram_and_position_neurons(texts, model):
  toks = planted.planted_tokens(24, 32, seed=3)
  batches = batches_mod.make_batches(toks, 8, row_labels=np.arange(24) % 3)
  labels = vocab.vocab_labels(texts, families.token_counts(batches, 50257), n_unigrams=60)
  res = families.neuron_families(model, batches, labels, dataset_names=["p", "q", "r"])
  fam = res["families"]
  row = fam.loc[planted.PLANTED["unigram"]]
  assert row["best_label"] == "unigram:dog"
  assert row["best_vr"] > 0.99
  assert row["family"] == "unigram"
  pos = fam.loc[planted.PLANTED["position"]]
  assert pos["family"] == "position"
  assert fam["position_mi"].idxmax() == planted.PLANTED["position"]
  assert fam["position_vr"].idxmax() == planted.PLANTED["position"]
  counts = res["counts"]
  assert counts.loc[0, "unigram"] >= 1 and counts.loc[0, "position"] >= 1
  assert counts.values.sum() == 2 * 32


def test_previous_token_dataset_and_alphabet_on_synthetic_activations(texts):
  rng = np.random.default_rng(2)
  B, P, V = 8, 24, len(texts)
  a_ids = [vocab_id(texts, "a"), vocab_id(texts, " a"), vocab_id(texts, " A")]
  pool = np.array([vocab_id(texts, w) for w in
                   [" house", " river", " green", " seven", " walk", " quiet", " the", ","]])
  toks = rng.choice(pool, (B, P))
  toks[rng.random((B, P)) < 0.15] = a_ids[1]
  toks[rng.random((B, P)) < 0.05] = a_ids[2]
  rows = np.arange(B) % 2
  prev_is_river = np.concatenate([np.zeros((B, 1), bool), toks[:, :-1] == pool[1]], 1)
  acts = np.stack([prev_is_river * 3.0 + 0.01 * rng.normal(size=(B, P)),   # previous token
                   np.broadcast_to(rows[:, None] * 2.0, (B, P)),            # dataset
                   np.isin(toks, a_ids) * 1.5,                              # letter a
                   rng.normal(size=(B, P))], axis=-1)
  mask = np.ones((B, P), bool)
  labels = vocab.vocab_labels(texts, np.bincount(toks.ravel(), minlength=V), n_unigrams=30)
  acc = families.GroupedSums(4, V, P, n_datasets=2)
  acc.update(acts, toks, mask, rows)
  vr, names, kinds = acc.variance_reduction(labels, ["web", "books"])
  idx = pd.MultiIndex.from_product([[0], range(4)], names=["layer", "neuron"])
  fam = families.assign_families(vr, names, kinds, acc.position_vr(), acc.position_mi()[1], idx)
  assert fam.loc[(0, 0), "best_label"] == "prev:unigram:river"
  assert fam.loc[(0, 0), "family"] == "previous_token"
  assert fam.loc[(0, 1), "best_label"] == "dataset:books" or fam.loc[(0, 1), "best_label"] == "dataset:web"
  assert fam.loc[(0, 1), "best_vr"] == pytest.approx(1.0)
  assert fam.loc[(0, 1), "family"] == "context"
  assert fam.loc[(0, 2), "best_vr"] == pytest.approx(1.0)
  assert fam.loc[(0, 3), "family"] == "none"
  alpha = families.alphabet_table(vr, names, idx)
  assert alpha.loc["a", "neuron"] == 2 and alpha.loc["a", "vr_letter"] == pytest.approx(1.0)
  assert bool(alpha.loc["a", "alphabet_neuron"]) and not bool(alpha.loc["b", "alphabet_neuron"])


def test_runner_and_bad_input(texts, tmp_path, model):
  toks = planted.planted_tokens(8, 32, seed=4)
  factory = lambda: batches_mod.make_batches(toks, 4)
  figs = families.run(model, factory, str(tmp_path), texts, n_unigrams=30, layers_per_pass=1)
  fam = pd.read_parquet(tmp_path / "families.parquet")
  assert len(fam) == 64 and fam.loc[planted.PLANTED["unigram"], "family"] == "unigram"
  assert set(pd.read_parquet(tmp_path / "family_counts.parquet").columns) == set(families.FAMILIES)
  assert len(pd.read_parquet(tmp_path / "alphabet_neurons.parquet")) == 26
  assert all(p.endswith(".png") for _, p, _ in figs)
  with pytest.raises(UserError, match="ids but the model"):
    families.run(model, factory, str(tmp_path), texts[:1000])
  acc = families.GroupedSums(2, 1000, 8)
  acc.update(np.ones((1, 8, 2)), np.zeros((1, 8), int), np.ones((1, 8), bool))
  with pytest.raises(UserError, match="vocabulary"):
    acc.variance_reduction(vocab.vocab_labels(texts[:500]))
