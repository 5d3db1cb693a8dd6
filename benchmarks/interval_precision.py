"""The interval pass's jackknife SEs on a finished default run, against float64 numpy.

  .venv/bin/python benchmarks/interval_precision.py --run runs/default [--neurons 25]

Re-runs the family's forwards over the correlated held-out rows (float32 activations, as the
pass sees them), and for --neurons random live neurons of the reference against each partner
computes in float64 the delete-1 block jackknife SE of the correlation with the best partner
and with draw 0's argmax rotated unit (the same blocks of rows); prints the relative error of
the tables' corr_se__<m> and baseline_data_se__<m> (max and median; NaN references skipped).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--run", required=True, help="a finished pipeline workdir (runs/default)")
  ap.add_argument("--neurons", type=int, default=25)
  a = ap.parse_args(argv)
  from ucore.corr import baselines as BL, intervals as IV, tables as TB
  from ucore.data.mask import token_mask
  from ucore.data.store import open_store
  from ucore.models.hooked import load_model
  tables = os.path.join(a.run, "corr", "tables")
  summary = json.load(open(os.path.join(tables, "summary.json")))
  ident = summary["identity"]
  spec, names = ident["spec"], [m["name"] for m in ident["models"]]
  start, stop, blocks = ident["start_row"], ident["stop_row"], summary["intervals"]["blocks"]
  d, layers = spec["d_mlp"], spec["layer_ids"][0]
  store = open_store(os.path.join(a.run, "tokens"))
  tok = store.read_rows(start, stop)
  mask = np.asarray(token_mask(tok, exclude_ids=tuple(ident["exclude_ids"]))).reshape(-1)
  bid = np.repeat(IV.block_of_rows(np.arange(start, stop), start, stop, blocks), tok.shape[1])
  bid = bid[mask]
  acts = []
  for name in names:
    model = load_model(os.path.join(a.run, "family", name, "final"))
    acts.append(np.concatenate([
        np.asarray(model.neuron_activations(tok[s:s + 64], layers=layers,
                                            hook=ident["hook"].split(".", 2)[2]))
        .reshape(-1, len(layers) * d) for s in range(0, len(tok), 64)]).astype(np.float64)[mask])

  def loo_se(x, y):
    reps = np.array([np.corrcoef(x[bid != b], y[bid != b])[0, 1] for b in range(blocks)])
    return np.sqrt((blocks - 1) / blocks * np.sum((reps - reps.mean()) ** 2))

  agg = TB.read_neurons(tables, names[0])
  live = np.flatnonzero(~agg["dead"].to_numpy())
  rng = np.random.default_rng(0)
  err = {"corr_se": [], "baseline_data_se": []}
  with np.errstate(all="ignore"):
    for m in range(1, len(names)):
      pair = TB.read_neuron_table(os.path.join(tables, "pairs", f"{names[0]}__{names[m]}.parquet"))
      fin = summary["finalize"]   # the finalize fields the tables were made with
      mats = {l: BL.mixing_matrix(fin["baseline.primary"], d, seed=int(fin["baseline.seed"]),
                                  draw=0, model=m, layer=l) for l in layers}
      for i in rng.choice(live, min(a.neurons, len(live)), replace=False):
        row = pair.iloc[i]
        y = acts[m][:, layers.index(int(row["max_sim_layer"])) * d + int(row["max_sim_neuron"])]
        ul, uk = int(row["baseline_unit_layer"]), int(row["baseline_unit"])
        p = layers.index(ul)
        u = acts[m][:, p * d:(p + 1) * d] @ mats[ul][uk]
        x = acts[0][:, i]
        err["corr_se"].append(agg[f"corr_se__{names[m]}"].iloc[i] / loo_se(x, y) - 1)
        err["baseline_data_se"].append(agg[f"baseline_data_se__{names[m]}"].iloc[i]
                                       / loo_se(x, u) - 1)
  out = {"tokens": int(mask.sum()), "blocks": blocks}
  for k, e in err.items():
    e = np.abs(np.array(e))
    e = e[np.isfinite(e)]
    out[k] = {"pairs": int(len(e)), "max_rel_err": float(e.max()),
              "median_rel_err": float(np.median(e))}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
