"""The careless user's sweep (issue 21): malformed values for every subcommand's config fields
and flags, each run through the real CLI entry, classified by what the user sees.

  .venv/bin/python benchmarks/config_sweep.py                    # every class (~300 cases)
  .venv/bin/python benchmarks/config_sweep.py --classes=train,correlate --verbose

Cases run in this process through main.py's own entry (flag parsing, then main.dispatch, as
`python main.py ...` does) with stdout/stderr captured, each in a fresh workdir that does not
exist yet; inputs that a case needs (a tiny BPE token store, a 2-seed tiny family trained on
it, their correlation tables) are built once with the same CLI into --fixtures. A value the
code accepts runs the real job to the end, so the sweep also measures what an accepted value
does. Every case's value is malformed (out of range, non-finite, not an allowed choice, out of
the vocabulary, inconsistent with another field), so the one right outcome is a refusal.

Outcome of a case (one line per class of cases, then the total):
  clean        exit 2, the last stderr line starts with "error:", no traceback, and nothing
               in the workdir (not even an empty directory)
  late         a clean refusal, but after writing into the workdir
  traceback    an exception escaped (or a traceback was printed)
  exit0_wrong  exit 0 on a value the issue saw produce a wrong or silently altered result
  accepted     exit 0 on another malformed value
Exit status 1 unless every case is clean.
"""
import os
import sys

if __name__ == "__main__":   # run as a script: import the repository's main.py and ucore
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTCOMES = ("clean", "late", "traceback", "exit0_wrong", "accepted")


@dataclasses.dataclass(frozen=True)
class Case:
  klass: str        # tokenize | train | correlate | correlate_models | plan | analyze | pipeline
  field: str        # the field (or flag) made malformed; a refusal must name it
  args: tuple       # the overrides, e.g. ("--config.seed=-1",)
  wrong: bool = False   # the issue saw exit 0 with a wrong result for this value

  @property
  def opens_models(self):
    """Refused only once the models are opened (their layer count): needs real fixtures."""
    return self.klass == "correlate_models" and self.field == "layers"

  @property
  def name(self):
    return f"{self.klass}:{' '.join(self.args)}"


# Base command lines; {store}, {seed0}, {seed1}, {tables} are the fixtures.
BASE = {
    "tokenize": ["tokenize", "--config=configs/tokenize_default.py:tiny",
                 "--config.max_documents=120"],
    "train": ["train", "--config=configs/train_tiny.py", "--config.data.store={store}"],
    "correlate": ["correlate", "--config=configs/correlate_tiny.py"],
    "correlate_models": ["correlate", "--config=configs/correlate_default.py",
                         "--config.models={seed0},{seed1}", "--config.token_store={store}",
                         "--config.max_tokens=2048", "--config.batch_rows=8",
                         "--config.selfcheck.sample=16"],
    "plan": ["plan", "--config=configs/correlate_tiny.py", "--plan_devices=1"],
    "analyze": ["analyze", "--config=configs/analyze_default.py:quick",
                "--config.model_dir={seed0}", "--config.token_store={store}",
                "--config.corr_table={tables}"],
    "pipeline": ["pipeline", "--config=configs/pipeline_default.py:quick"],
}

# Malformed values by kind of field (written from the configs' comments, independently of
# ucore.jobs.schema's table).
COUNT1 = ("0", "-1")              # a count that must be >= 1
COUNT0 = ("-1",)                  # a count or row index that must be >= 0
POSITIVE = ("0", "-1", "nan", "inf")
NONNEG = ("-1", "nan", "inf")
FINITE = ("nan", "inf")
UNIT = ("-0.1", "1.5", "nan")     # a share / threshold in [0, 1]
CORR = ("nan", "inf", "2")        # a correlation threshold in [-1, 1]
BOGUS = ("bogus",)
BOOL = ("maybe",)

FIELDS = {
    "tokenize": {
        "source": ("",), "split": ("",), "text_field": ("",), "txt_sample_by": BOGUS,
        "min_chars": COUNT0, "ctx": ("1", "0", "-5", "1.5"), "num_tokens": ("-1", "nan"), "seed": COUNT0,
        "shuffle": BOOL, "max_documents": COUNT0, "tokenizer": ("", "no/such/dir"),
        "bpe_vocab_size": ("--config.tokenizer=bpe", "0", "100", "-1"),
        "bpe_train_documents": ("--config.tokenizer=bpe", "-1"),
        "bos_id": ("-2", "99999"), "eos_id": ("-2", "99999"),
        "model_vocab_size": ("-1", "100"), "mask_exclude_ids": ("99999", "-5", "x"),
        "encode_batch_docs": COUNT1, "shard_rows": COUNT1, "chunk_rows": COUNT1,
        "write_block_rows": COUNT1, "log_every_s": NONNEG,
    },
    "train": {
        "seeds": ("", "-1", "0,0", "x", "0,-2"), "model.n_layer": COUNT1, "model.n_embd": ("0", "33"),
        "model.n_head": ("0", "3", "-1"), "model.d_mlp": COUNT1,
        "model.n_positions": ("-1", "1", "64"), "model.vocab_size": ("-1", "100"),
        "model.activation_function": BOGUS, "model.layer_norm_epsilon": POSITIVE,
        "model.scale_attn_by_inverse_layer_idx": BOOL, "init_std": POSITIVE,
        "data.max_rows": ("-1", "4"), "heldout_rows": COUNT1, "batch_rows": COUNT1,
        "num_steps": COUNT1, "optim.lr": POSITIVE, "optim.warmup_steps": ("-1", "20", "100"),
        "optim.min_lr_ratio": UNIT, "optim.b1": ("1.5", "-0.1", "nan", "1"),
        "optim.b2": ("-0.1", "1", "nan"), "optim.eps": POSITIVE, "optim.weight_decay": NONNEG,
        "optim.grad_clip": ("-1", "0", "nan"), "checkpoint_steps": ("-1", "999"),
        "eval_every": COUNT1, "eval_batch_rows": COUNT1, "state_every": COUNT1,
        "log_every": COUNT1,
    },
    "correlate": {
        "mode": BOGUS, "hook": ("blocks.*.attn.hook_z", "bogus"), "layers": ("x", "", "-1", "99"),
        "layer_mode": BOGUS, "max_tokens": COUNT0, "start_row": COUNT0, "batch_rows": COUNT1,
        "precision": BOGUS, "forward_dtype": BOGUS + ("float16",), "compensated": BOOL, "dead_rel_std": NONNEG, "dead_value": FINITE,
        "top_k": ("0", "-1", "100000"), "threshold": CORR, "log_every": COUNT1,
        "baseline.kinds": ("bogus", ""), "baseline.primary": ("bogus",),
        "baseline.draws": COUNT1, "baseline.seed": COUNT0, "intervals.blocks": ("-1", "1"),
        "selfcheck.sample": COUNT0,
        "selfcheck.seed": COUNT0, "selfcheck.fail_above": ("nan", "0", "-1"),
        "mesh.tok": ("0", "-2"), "mesh.neu": ("0", "-2"), "memory.device_gib": NONNEG,
        "checkpoint.every_steps": COUNT1, "checkpoint.every_minutes": POSITIVE,
        "checkpoint.keep": COUNT1, "synthetic.n_models": ("1", "0"),
        "synthetic.n_layers": COUNT1, "synthetic.d_mlp": COUNT1,
        "synthetic.n_planted": ("1000", "-1"), "synthetic.n_graded": ("-1",),
        "synthetic.seed": COUNT0,
        "synthetic.offset": FINITE, "synthetic.ctx": ("1", "0"), "synthetic.rows": COUNT1,
    },
    "correlate_models": {
        "exclude_ids": ("99999", "-5", "50257"), "pad_id": ("99999", "-2", "512"),
        "model_names": ("a", "a,a"), "models": ("{seed0}",), "layers": ("5",),
    },
    "analyze": {
        "batch_rows": COUNT1, "max_rows": COUNT0, "start_row": ("-1", "999999"),
        "seed": COUNT0, "report": BOOL, "universal.fallback_k": COUNT1,
        "universal.threshold": CORR, "universal.cards_k": COUNT1, "universal.cards_rows": COUNT1,
        "stats.max_rows": COUNT0, "families.max_rows": COUNT0, "families.n_unigrams": COUNT1,
        "families.layers_per_pass": COUNT0, "families.memory_gb": POSITIVE,
        "families.position_mi_threshold": UNIT, "families.vr_threshold": ("nan", "-1"),
        "families.alphabet_threshold": ("nan", "2"), "prediction.kurt_threshold": ("nan", "-1"),
        "prediction.partition_factor": POSITIVE, "entropy.max_rows": COUNT0,
        "entropy.n_targets": COUNT1, "entropy.n_random": COUNT1, "entropy.last_layers": COUNT1,
        "entropy.fixed_values": ("", "nan"), "entropy.control_filter": BOGUS,
        "attention.max_rows": COUNT0, "attention.top_pairs": COUNT0,
        "attention.positions": ("8", "8,4", "0,9999", "0,0"), "attention.n_random": COUNT1,
        "attention.rank_by": BOGUS, "ablation.max_rows": COUNT0,
        "ablation.modes": ("", "bogus", "zero,zero", "zero,"), "ablation.n_random": COUNT1,
        "ablation.fixed_value": FINITE,
    },
    "pipeline": {
        "train_rows": COUNT1, "persistence_steps": ("7",), "persistence_max_tokens": ("0",),
        "report_top_k": COUNT1, "examples_rows": ("0",), "train.seeds": ("0",),
        "train.optim.lr": ("nan",), "correlate.threshold": ("nan",),
        "analyze.batch_rows": ("0",), "tokenize.seed": ("-1",),
        "tokenize.mask_exclude_ids": ("99999",), "correlate.exclude_ids": ("99999",),
        "train.model.vocab_size": ("100",), "correlate.top_k": ("0",),
        "analyze.attention.n_random": ("0",), "tokenize.ctx": ("1",), "train.num_steps": ("0",),
        "analyze.attention.positions": ("8",), "correlate.baseline.kinds": ("bogus",),
        "train.optim.b1": ("1.5",),
    },
}
PLAN_FLAGS = {"plan_tokens": ("-1", "0", "nan", "inf", "-1e9"), "plan_devices": ("0", "-1")}
PLAN_FIELDS = {"batch_rows": ("0",), "mesh.tok": ("0",), "threshold": ("nan",)}

# Values the issue saw exit 0 with a wrong or silently altered result.
WRONG = {("train", "optim.grad_clip", "-1"), ("correlate", "threshold", "nan"),
         ("tokenize", "bpe_train_documents", "-1"), ("plan", "plan_tokens", "-1"),
         ("pipeline", "report_top_k", "-1"), ("analyze", "attention.top_pairs", "-1"),
         ("analyze", "ablation.n_random", "-1"), ("analyze", "ablation.fixed_value", "nan"),
         ("analyze", "universal.threshold", "nan"), ("analyze", "universal.cards_k", "-1"),
         ("analyze", "families.n_unigrams", "-1"), ("analyze", "prediction.kurt_threshold", "nan")}


def cases() -> list:
  out = []
  for klass, fields in FIELDS.items():
    for field, values in fields.items():
      pre = tuple(v for v in values if v.startswith("--"))
      for v in values:
        if v.startswith("--"):
          continue
        out.append(Case(klass, field, pre + (f"--config.{field}={v}",),
                        (klass, field, v) in WRONG))
  for flag, values in PLAN_FLAGS.items():
    out += [Case("plan", flag, (f"--{flag}={v}",), ("plan", flag, v) in WRONG) for v in values]
  for field, values in PLAN_FIELDS.items():
    out += [Case("plan", field, (f"--config.{field}={v}",)) for v in values]
  # cross-field: each value valid alone, the pair not
  out += [
      Case("train", "optim.warmup_steps", ("--config.num_steps=5", "--config.optim.warmup_steps=5")),
      Case("train", "checkpoint_steps", ("--config.num_steps=5", "--config.checkpoint_steps=0,10")),
      Case("correlate", "baseline.primary", ("--config.baseline.kinds=haar",
                                             "--config.baseline.primary=gaussian_rows")),
      Case("correlate", "mesh", ("--config.mesh.tok=-1", "--config.mesh.neu=-1")),
      Case("correlate", "synthetic.n_planted", ("--config.synthetic.d_mlp=2",
                                                "--config.synthetic.n_layers=1")),
      Case("tokenize", "bpe_vocab_size", ("--config.tokenizer=bpe", "--config.bpe_vocab_size=600",
                                          "--config.model_vocab_size=512")),
      Case("pipeline", "persistence_steps", ("--config.train.checkpoint_steps=0,20",)),
  ]
  return out


# ---- running one case in this process -------------------------------------------------------
def _main_module():
  import main   # noqa: F401  (defines every subcommand's flags)
  return sys.modules["main"]


def run_argv(argv: list, stdout=None) -> tuple:
  """(exit status, stderr text, escaped exception or None) of `python main.py *argv`, run in
  this process through main.py's flag parser and dispatch; its stdout goes to `stdout` (a
  text stream) or is dropped."""
  from absl import flags
  main = _main_module()
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)   # --config.x overrides of the previous run (defined per parse)
  err, exc, status = io.StringIO(), None, 0
  saved = sys.argv
  sys.argv = ["main.py", *argv]   # ml_collections reads --config.x overrides from sys.argv
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout or io.StringIO()):
      try:
        rest = main._parse_flags(sys.argv)
        if hasattr(main, "dispatch"):
          status = main.dispatch(rest[1:])
        else:   # main.py before issue 21 (the sweep's "before" figures): exits on an error
          main.main(rest)
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
      except Exception as e:   # a bug: the user would see a traceback
        exc, status = e, 1
        traceback.print_exc(file=err)
  finally:
    sys.argv = saved
  return status, err.getvalue(), exc


def classify(case: Case, status: int, stderr: str, exc, workdir: str) -> str:
  if exc is not None or "Traceback (most recent call last)" in stderr or status not in (0, 2):
    return "traceback"
  if status == 0:
    return "exit0_wrong" if case.wrong else "accepted"
  lines = stderr.strip().splitlines()
  if not lines or not lines[-1].startswith("error: "):
    return "traceback"
  return "late" if os.path.exists(workdir) else "clean"


def argv_of(case: Case, fixtures: dict, workdir: str) -> list:
  args = [a.format(**fixtures) for a in BASE[case.klass]]
  args += [a.format(**fixtures) for a in case.args]
  if case.klass != "plan":
    args.append(f"--workdir={workdir}")
  return args


def run_case(case: Case, fixtures: dict, tmp: str) -> tuple:
  """(outcome, last stderr line) of one case, in a fresh workdir under `tmp` (removed after)."""
  workdir = tempfile.mkdtemp(dir=tmp)
  os.rmdir(workdir)   # the workdir must not exist before the run: anything there was written
  status, stderr, exc = run_argv(argv_of(case, fixtures, workdir))
  outcome = classify(case, status, stderr, exc, workdir)
  shutil.rmtree(workdir, ignore_errors=True)
  last = (stderr.strip().splitlines() or [""])[-1]
  return outcome, last


def build_fixtures(root: str) -> dict:
  """A tiny BPE store, a 2-seed, 2-layer tiny family trained on it and their correlation tables, made
  with the CLI once (reused when `root` holds them)."""
  fx = {"store": os.path.join(root, "store"), "family": os.path.join(root, "family"),
        "corr": os.path.join(root, "corr")}
  fx["seed0"] = os.path.join(fx["family"], "seed0", "final")
  fx["seed1"] = os.path.join(fx["family"], "seed1", "final")
  fx["tables"] = os.path.join(fx["corr"], "tables")
  steps = [
      (os.path.join(fx["store"], "manifest.json"),
       ["tokenize", "--config=configs/tokenize_default.py:tiny,bpe",
        "--config.bpe_vocab_size=512", "--config.num_tokens=40000", f"--workdir={fx['store']}"]),
      (os.path.join(fx["family"], "family.json"),
       ["train", "--config=configs/train_tiny.py", f"--config.data.store={fx['store']}",
        "--config.model.n_layer=2", f"--workdir={fx['family']}"]),   # attention needs 2 layers
      (os.path.join(fx["tables"], "summary.json"),
       ["correlate", "--config=configs/correlate_default.py",
        f"--config.models={fx['seed0']},{fx['seed1']}", "--config.model_names=a,b",
        f"--config.token_store={fx['store']}", "--config.max_tokens=4096",
        "--config.batch_rows=8", f"--workdir={fx['corr']}"]),
  ]
  for done, argv in steps:
    if not os.path.exists(done):
      status, stderr, exc = run_argv(argv)
      if status or exc:
        raise RuntimeError(f"fixture `main.py {' '.join(argv)}` failed: {stderr[-2000:]}")
  return fx


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--classes", default="", help="comma list of case classes (default: all)")
  ap.add_argument("--fixtures", default=os.path.join(tempfile.gettempdir(), "ucore_sweep_fx"))
  ap.add_argument("--match", default="", help="only cases whose name (class:args) has this "
                  "regular expression")
  ap.add_argument("--verbose", action="store_true", help="print every case that is not clean")
  a = ap.parse_args()
  os.chdir(ROOT)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import logging
  logging.set_verbosity(logging.ERROR)
  import re
  todo = [c for c in cases() if (not a.classes or c.klass in a.classes.split(",")) and
          re.search(a.match, c.name)]
  t0 = time.time()
  fixtures = build_fixtures(a.fixtures)
  print(f"fixtures ready in {time.time() - t0:.0f}s ({a.fixtures})", flush=True)
  counts, t1 = {}, time.time()
  with tempfile.TemporaryDirectory() as tmp:
    for case in todo:
      outcome, last = run_case(case, fixtures, tmp)
      counts.setdefault(case.klass, dict.fromkeys(OUTCOMES, 0))[outcome] += 1
      if a.verbose and outcome != "clean":
        print(f"  {outcome:12s} {case.name}  | {last[:160]}", flush=True)
  total = dict.fromkeys(OUTCOMES, 0)
  print(f"{'class':18s} {'cases':>5s} " + " ".join(f"{o:>11s}" for o in OUTCOMES))
  for klass, c in counts.items():
    for o in OUTCOMES:
      total[o] += c[o]
    print(f"{klass:18s} {sum(c.values()):5d} " + " ".join(f"{c[o]:11d}" for o in OUTCOMES))
  print(f"{'total':18s} {sum(total.values()):5d} " + " ".join(f"{total[o]:11d}" for o in OUTCOMES))
  print(f"({time.time() - t1:.0f}s for {len(todo)} cases)")
  return 0 if total["clean"] == len(todo) else 1


if __name__ == "__main__":
  sys.exit(main())
