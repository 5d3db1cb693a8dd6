import numpy as np

from tests import planted
from ucore.data.batches import make_batches
from ucore.analyses.top_examples import top_activating_examples


def test_top_examples_match_bruteforce():
  model = planted.planted_model(n_positions=32)
  tokens = planted.planted_tokens(12, 32, seed=3)
  batches = make_batches(tokens, 4)
  neurons = [(0, 1), (1, 2)]
  df = top_activating_examples(model, batches, neurons, decode=lambda ids: " ".join(map(str, ids)),
                               per_neuron=2, context=3)
  # the model's activations batch by batch: the program top_activating_examples runs (one
  # compile for both)
  acts = np.concatenate([np.asarray(model.neuron_activations(b.tokens, layers=[0, 1]))
                         for b in batches])
  assert acts.shape[0] == len(tokens)
  mask = np.concatenate([b.mask for b in batches])
  d = model.config.d_mlp
  for layer, neuron in neurons:
    a = np.where(mask, acts[..., [0, 1].index(layer) * d + neuron], -np.inf)
    per_row = a.max(axis=1)
    order = np.argsort(-per_row)[:2]
    got = df[(df.layer == layer) & (df.neuron == neuron)].reset_index(drop=True)
    np.testing.assert_allclose(got.activation.values, per_row[order], rtol=1e-6)
    b, p = order[0], int(np.argmax(a[order[0]]))
    assert got.token[0] == str(tokens[b, p])
    assert got.context_before[0] == " ".join(map(str, tokens[b, max(0, p - 3):p]))
