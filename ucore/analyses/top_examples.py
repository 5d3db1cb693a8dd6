"""Top-activating tokens in context for chosen neurons (the report's "what does it fire on")."""
import numpy as np
import pandas as pd

from ucore.jobs.errors import UserError


def top_activating_examples(model, batches, neurons, decode, per_neuron: int = 3,
                            context: int = 12, hook: str = "mlp.hook_post") -> pd.DataFrame:
  """For each (layer, neuron): the `per_neuron` counted tokens of largest activation, at most
  one per row, with `context` tokens of text before and after.

  batches: iterable of ucore.data.batches.Batch (tokens, mask); decode: ids -> str.
  Returns DataFrame(layer, neuron, activation, token, context_before, context_after).
  """
  neurons = [(int(l), int(n)) for l, n in neurons]
  if not neurons:
    return pd.DataFrame(columns=["layer", "neuron", "activation", "token", "context_before",
                                 "context_after"])
  layers = sorted({l for l, _ in neurons})
  d = model.config.d_mlp
  if any(not 0 <= n < d for _, n in neurons):
    raise UserError(f"neuron index outside [0, {d})")
  cols = np.array([layers.index(l) * d + n for l, n in neurons])
  best = [[] for _ in neurons]          # per neuron: (activation, tokens row, position)
  for batch in batches:
    acts = np.asarray(model.neuron_activations(batch.tokens, layers=layers, hook=hook))
    acts = acts[..., cols]                                # [B, P, k]
    acts = np.where(batch.mask[..., None], acts, -np.inf)
    row_max = acts.max(axis=1)                            # [B, k]: one example per row
    row_arg = acts.argmax(axis=1)
    for j in range(len(neurons)):
      for b in np.argsort(-row_max[:, j])[:per_neuron]:
        if np.isfinite(row_max[b, j]):
          best[j].append((float(row_max[b, j]), batch.tokens[b], int(row_arg[b, j])))
      best[j] = sorted(best[j], key=lambda t: -t[0])[:per_neuron]
  records = []
  for (layer, neuron), examples in zip(neurons, best):
    for value, row, pos in examples:
      records.append({
          "layer": layer, "neuron": neuron, "activation": value,
          "token": decode([int(row[pos])]),
          "context_before": decode([int(t) for t in row[max(0, pos - context):pos]]),
          "context_after": decode([int(t) for t in row[pos + 1:pos + 1 + context]])})
  return pd.DataFrame.from_records(records)
