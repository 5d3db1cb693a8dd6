"""Which training recipe makes universal neurons emerge? Trains one seed family per recipe on
the embedded corpus and correlates it on held-out text, exactly as the default pipeline does
(tokenize -> train -> correlate of the first seed vs the others), and prints one line per
recipe: share of universal neurons (excess_corr > threshold), per layer, medians, wall times.

  .venv/bin/python benchmarks/universality_sweep.py --recipes=default,relu_v1024 \
      --workdir=/tmp/sweep            # CPU or GPU; re-running skips finished stages

A recipe is a name in RECIPES: overrides (dotted keys) of configs/pipeline_default.py. Token
stores are built once per (vocab, ctx) under <workdir>/tokens_v<V>_c<ctx> and shared; a store
built elsewhere can be copied there (e.g. for an offline GPU host). Results are appended as
JSON lines to <workdir>/results.jsonl; the table in BENCHMARKS.md ("## Universality recipes")
comes from them.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

RECIPE_NAMES = flags.DEFINE_string("recipes", "default", "comma-separated recipe names (see RECIPES)")
WORKDIR = flags.DEFINE_string("workdir", "/tmp/universality_sweep", "sweep directory")
STAGE = flags.DEFINE_enum("stage", "all", ["all", "tokenize"],
                          "tokenize: only build the recipes' token stores")
LIST = flags.DEFINE_bool("list", False, "print the recipes and exit")

def _recipe(vocab, steps, rows=32, act="relu", **extra):
  """Overrides of configs/pipeline_default.py: BPE vocabulary, training steps x rows per seed,
  MLP activation, plus any dotted-key extras (`train__optim__lr=4e-3`)."""
  out = {"tokenize.bpe_vocab_size": vocab, "train.num_steps": steps, "train.batch_rows": rows,
         "train.model.activation_function": act,
         "train.checkpoint_steps": tuple(sorted({0, steps} | {k for k in (50, 100, 200, 400)
                                                              if k < steps}))}
  out.update({k.replace("__", "."): v for k, v in extra.items()})
  return out


RECIPES = {
    # the pipeline's own default, whatever configs/pipeline_default.py says today
    "default": {},
    # the GPT-2-faithful family of earlier defaults (gelu_new, 300 x 16 rows, vocab 4096)
    "gelu_v4096_s300_b16": _recipe(4096, 300, 16, act="gelu_new"),
    "relu_v4096_s1000": _recipe(4096, 1000),
    "relu_v2048_s600": _recipe(2048, 600),
    "relu_v1024_s1000": _recipe(1024, 1000),
    "relu_v1024_s600": _recipe(1024, 600),
    "relu_v1024_s400": _recipe(1024, 400),
    "relu_v1024_s400_lr4": _recipe(1024, 400, train__optim__lr=4e-3),
    "relu_v1024_s400_wd0": _recipe(1024, 400, train__optim__weight_decay=0.0),
    "relu_v1024_s400_l3": _recipe(1024, 400, train__model__n_layer=3),
    "relu_v1024_s400_mlp256": _recipe(1024, 400, train__model__d_mlp=256),
    "relu_v1024_s400_init05": _recipe(1024, 400, train__init_std=0.05),
    "gelu_v1024_s400_init05": _recipe(1024, 400, act="gelu_new", train__init_std=0.05),
    "relu_v512_s400": _recipe(512, 400),
    # smaller initialisation: the "rich" regime, where features are learned from the data
    "relu_v1024_s400_init01": _recipe(1024, 400, train__init_std=0.01),
    "relu_v1024_s400_init005": _recipe(1024, 400, train__init_std=0.005),
    "relu_v2048_s400_init01": _recipe(2048, 400, train__init_std=0.01),
    "relu_v4096_s600": _recipe(4096, 600),
    "relu_v4096_s400": _recipe(4096, 400),
    "relu_v4096_s1000_b16": _recipe(4096, 1000, 16),
    "relu_v4096_s400_l3": _recipe(4096, 400, train__model__n_layer=3),
    "relu_v8192_s400": _recipe(8192, 400),
    # wider residual stream / more neurons
    "relu_v1024_s400_d256": _recipe(1024, 400, train__model__n_embd=256,
                                    train__model__d_mlp=1024),
    "relu_v1024_s400_d256_mlp512": _recipe(1024, 400, train__model__n_embd=256),
    "relu_v1024_s400_mlp1024": _recipe(1024, 400, train__model__d_mlp=1024),
    "relu_v512_s400_mlp1024": _recipe(512, 400, train__model__d_mlp=1024),
    "relu_v4096_s600_init01": _recipe(4096, 600, train__init_std=0.01),
    "relu_v1024_s400_lr1": _recipe(1024, 400, train__optim__lr=1e-3),
    "relu_v1024_s1000_b8": _recipe(1024, 1000, 8),
    "relu_v1024_s400_l3_init01": _recipe(1024, 400, train__model__n_layer=3,
                                         train__init_std=0.01),
    "gelu_v1024_s400_init01": _recipe(1024, 400, act="gelu_new", train__init_std=0.01),
    # CPU-budget candidates: 3 seeds, fewer correlated tokens
    "relu_v512_s300_mlp1536_3seeds": _recipe(512, 300, train__model__d_mlp=1536,
                                             train__seeds=(0, 1, 2),
                                             correlate__max_tokens=150_000),
    "relu_v512_s400_mlp1024_3seeds": _recipe(512, 400, train__model__d_mlp=1024,
                                             train__seeds=(0, 1, 2),
                                             correlate__max_tokens=150_000),
    # seconds: checks the sweep itself
    "smoke": _recipe(1024, 5, 4, correlate__max_tokens=20_000, train__optim__warmup_steps=2),
}


def _set(config, dotted, value):
  *path, leaf = dotted.split(".")
  node = config
  for key in path:
    node = node[key]
  node[leaf] = value


def recipe_config(name):
  from ucore.jobs.config_files import load
  if name not in RECIPES:
    raise SystemExit(f"error: unknown recipe {name!r}; known: {', '.join(RECIPES)}")
  c = load("pipeline_default")
  for k, v in RECIPES[name].items():
    _set(c, k, v)
  return c


def store_dir(workdir, c):
  return os.path.join(workdir, f"tokens_v{c.tokenize.bpe_vocab_size}_c{c.tokenize.ctx}")


def run_recipe(name, workdir):
  import numpy as np
  from ucore import pipeline as P
  from ucore.data.build import build_store
  from ucore.train.store_input import train_from_store
  c = recipe_config(name)
  out = os.path.join(workdir, name)
  times = {}
  t0 = time.time()
  tokens = store_dir(workdir, c)
  build_store(c.tokenize, tokens)
  times["tokenize"] = time.time() - t0
  train_cfg = P._copy(c.train)
  train_cfg.data.store, train_cfg.data.max_rows = tokens, int(c.train_rows)
  t0 = time.time()
  family = train_from_store(train_cfg, os.path.join(out, "family"))
  times["train"] = time.time() - t0
  seeds = [str(s) for s in family["seeds"]]
  names = [f"seed{s}" for s in seeds]
  t0 = time.time()
  tables, _ = P._correlate(c, [family["final"][s] for s in seeds], names, tokens,
                           int(c.train_rows), c.correlate.max_tokens, os.path.join(out, "corr"))
  times["correlate"] = time.time() - t0
  neurons, _ = P._read_tables(tables, names[0])
  u = neurons["universal"].astype(bool)
  per_layer = [int(v) for v in u.groupby(level="layer").sum()]
  steps, rows = int(c.train.num_steps), int(c.train.batch_rows)
  res = {
      "recipe": name, "overrides": RECIPES[name],
      "universal": int(u.sum()), "neurons": int(len(u)),
      "share": float(u.mean()), "per_layer": per_layer,
      "median_mean_corr": float(np.nanmedian(neurons["mean_corr"])),
      "median_baseline": float(np.nanmedian(neurons["mean_baseline"])),
      "median_excess": float(np.nanmedian(neurons["excess_corr"])),
      "p99_excess": float(np.nanpercentile(neurons["excess_corr"], 99)),
      "family_tokens": steps * rows * (int(c.tokenize.ctx) - 1) * len(seeds),
      "heldout_loss": family["final_heldout_loss"],
      "seconds": {k: round(v, 1) for k, v in times.items()},
  }
  with open(os.path.join(workdir, "results.jsonl"), "a") as f:
    f.write(json.dumps(res) + "\n")
  return res


def main(argv):
  del argv
  if LIST.value:
    for k, v in RECIPES.items():
      print(k, v)
    return
  workdir = os.path.abspath(WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  names = [n for n in RECIPE_NAMES.value.split(",") if n]
  if STAGE.value == "tokenize":
    from ucore.data.build import build_store
    for n in names:
      c = recipe_config(n)
      build_store(c.tokenize, store_dir(workdir, c))
    return
  print("recipe | universal | share | per layer | mean corr / baseline / excess (median) | "
        "p99 excess | family tokens | train s | correlate s", flush=True)
  for n in names:
    r = run_recipe(n, workdir)
    print(f"{r['recipe']} | {r['universal']}/{r['neurons']} | {100 * r['share']:.2f}% | "
          f"{r['per_layer']} | {r['median_mean_corr']:.3f} / {r['median_baseline']:.3f} / "
          f"{r['median_excess']:.3f} | {r['p99_excess']:.3f} | {r['family_tokens'] / 1e6:.2f}M | "
          f"{r['seconds']['train']:.0f} | {r['seconds']['correlate']:.0f}", flush=True)


if __name__ == "__main__":
  app.run(main)
