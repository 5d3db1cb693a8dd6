"""The config schema (ucore/jobs/schema.py, issue 21 item 1): it describes every field of every
config in configs/ (a field added later needs its rule), every shipped config passes it, and
its rules refuse what they should and accept the boundaries."""
import glob
import math
import os

import pytest
from ml_collections import config_dict

from ucore.jobs import config_files, schema
from ucore.jobs.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every config file with each variant it documents.
VARIANTS = {"analyze_default": ["", "quick"], "pipeline_default": ["", "quick", "gpt2", "gpu",
                                                                   "gpu,quick"],
            "tokenize_default": ["", "tiny", "bpe", "tiny,bpe"],
            "tokenize_pile": ["", "pythia", "1e7", "pythia,1e7"], "train_default": ["", "gpt2"]}


def _family(name):
  return "pipeline" if name.startswith("pipeline") else name.split("_")[0]


def _leaves(c, prefix=""):
  for k, v in c.items():
    if isinstance(v, config_dict.ConfigDict):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}"


def _configs():
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
  assert names, "no configs found"
  return [(n, v) for n in names for v in VARIANTS.get(n, [""])]


@pytest.mark.parametrize("name,variant", _configs())
def test_every_field_is_described_and_every_shipped_config_passes(name, variant):
  c = config_files.load(name, variant)
  fields = schema.fields_of(_family(name))
  undescribed = [p for p in _leaves(c) if p not in fields]
  assert not undescribed, f"configs/{name}.py fields without a rule in ucore/jobs/schema.py"
  stale = [p for p in fields if p not in set(_leaves(c))]
  assert not stale, f"rules for fields configs/{name}.py does not have"
  assert schema.problems(c, _family(name)) == []


def test_mirrored_constants_match_their_homes():
  from ucore.corr.baselines import KINDS
  from ucore.models.config import ACTIVATIONS
  from ucore.models import tokenizer as tokmod
  assert schema.ACTIVATIONS == ACTIVATIONS
  assert schema.BASELINE_KINDS == KINDS
  assert schema.GPT2_VOCAB == tokmod.vocab_size(tokmod.gpt2_files_offline())
  from converters.convert import PROCESSING
  assert schema.SWEEP_OWN["process"].choices == PROCESSING
  from ucore.corr.precision import NAMES
  from ucore.data.mask import GPT2_EOS_ID
  assert schema.CORRELATE["precision"].choices == NAMES
  from ucore.corr.activations import FORWARD_DTYPES
  assert schema.CORRELATE["forward_dtype"].choices == FORWARD_DTYPES
  assert schema.GPT2_VOCAB == GPT2_EOS_ID + 1   # <|endoftext|> is GPT-2's last id


def _with(name, variant="", **overrides):
  c = config_files.load(name, variant)
  for path, v in overrides.items():
    node = c
    *parents, leaf = path.split("__")
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = v
  return c


# (config, family, overrides, the field the message must name); each invalid on its own
BAD = [
    ("train_tiny", "train", {"optim__grad_clip": -1.0}, "optim.grad_clip"),
    ("train_tiny", "train", {"optim__b1": 1.5}, "optim.b1"),
    ("train_tiny", "train", {"optim__b2": -0.1}, "optim.b2"),
    ("train_tiny", "train", {"optim__lr": math.inf}, "optim.lr"),
    ("train_tiny", "train", {"optim__weight_decay": math.nan}, "optim.weight_decay"),
    ("train_tiny", "train", {"init_std": -1.0}, "init_std"),
    ("train_tiny", "train", {"init_std": math.nan}, "init_std"),
    ("train_tiny", "train", {"seeds": (0, 0)}, "seeds"),
    ("train_tiny", "train", {"seeds": ()}, "seeds"),
    ("train_tiny", "train", {"seeds": (True,)}, "seeds"),
    ("train_tiny", "train", {"model__n_embd": 33}, "model.n_embd"),   # 2 heads
    ("train_tiny", "train", {"optim__warmup_steps": 20}, "optim.warmup_steps"),  # = num_steps
    ("train_tiny", "train", {"checkpoint_steps": (0, 21)}, "checkpoint_steps"),
    ("train_tiny", "train", {"model__activation_function": "gelu2"}, "model.activation_function"),
    ("train_tiny", "train", {"batch_rows": 2.5}, "batch_rows"),
    ("correlate_tiny", "correlate", {"threshold": math.nan}, "threshold"),
    ("correlate_tiny", "correlate", {"dead_rel_std": -1.0}, "dead_rel_std"),
    ("correlate_tiny", "correlate", {"checkpoint__keep": 0}, "checkpoint.keep"),
    ("correlate_tiny", "correlate", {"baseline__kinds": ("bogus",)}, "baseline.kinds"),
    ("correlate_tiny", "correlate", {"baseline__kinds": ("haar",),
                                     "baseline__primary": "gaussian_rows"}, "baseline.primary"),
    ("correlate_tiny", "correlate", {"selfcheck__fail_above": math.nan}, "selfcheck.fail_above"),
    ("correlate_tiny", "correlate", {"synthetic__d_mlp": 0}, "synthetic.d_mlp"),
    ("correlate_tiny", "correlate", {"synthetic__n_planted": 1000}, "synthetic.n_planted"),
    ("correlate_tiny", "correlate", {"hook": "blocks.*.attn.hook_z"}, "hook"),
    ("correlate_tiny", "correlate", {"exclude_ids": (-5,)}, "exclude_ids"),
    ("correlate_tiny", "correlate", {"layers": "0,x"}, "layers"),
    ("correlate_tiny", "correlate", {"mesh__tok": -1, "mesh__neu": -1}, "mesh"),
    ("correlate_tiny", "correlate", {"top_k": 257}, "top_k"),   # 2 layers x 128 neurons
    ("tokenize_default", "tokenize", {"seed": -1}, "seed"),
    ("tokenize_default", "tokenize", {"bpe_train_documents": -1}, "bpe_train_documents"),
    ("tokenize_default", "tokenize", {"mask_exclude_ids": (99999,)}, "mask_exclude_ids"),
    ("tokenize_default", "tokenize", {"mask_exclude_ids": (50257,)}, "mask_exclude_ids"),
    ("tokenize_default", "tokenize", {"tokenizer": "bpe", "bpe_vocab_size": 512,
                                      "eos_id": 512}, "eos_id"),
    ("tokenize_default", "tokenize", {"tokenizer": "bpe", "bpe_vocab_size": 600,
                                      "model_vocab_size": 512}, "bpe_vocab_size"),
    ("tokenize_default", "tokenize", {"txt_sample_by": "sentence"}, "txt_sample_by"),
    ("analyze_default", "analyze", {"batch_rows": 0}, "batch_rows"),
    ("analyze_default", "analyze", {"max_rows": -1}, "max_rows"),
    ("analyze_default", "analyze", {"attention__positions": (8,)}, "attention.positions"),
    ("analyze_default", "analyze", {"attention__positions": (8, 4)}, "attention.positions"),
    ("analyze_default", "analyze", {"attention__top_pairs": -1}, "attention.top_pairs"),
    ("analyze_default", "analyze", {"ablation__modes": ()}, "ablation.modes"),
    ("analyze_default", "analyze", {"ablation__fixed_value": math.nan}, "ablation.fixed_value"),
    ("analyze_default", "analyze", {"universal__cards_k": -1}, "universal.cards_k"),
    ("analyze_default", "analyze", {"prediction__kurt_threshold": math.nan},
     "prediction.kurt_threshold"),
    ("pipeline_default", "pipeline", {"report_top_k": -1}, "report_top_k"),
    ("pipeline_default", "pipeline", {"train_rows": -1}, "train_rows"),
    ("pipeline_default", "pipeline", {"train__seeds": (0,)}, "train.seeds"),
    ("pipeline_default", "pipeline", {"persistence_steps": (7,)}, "persistence_steps"),
    ("pipeline_default", "pipeline", {"correlate__exclude_ids": (512,)}, "correlate.exclude_ids"),
    ("pipeline_default", "pipeline", {"tokenize__mask_exclude_ids": (600,)},
     "tokenize.mask_exclude_ids"),
    ("pipeline_default", "pipeline", {"train__optim__lr": math.nan}, "train.optim.lr"),
    ("pipeline_default", "pipeline", {"analyze__attention__n_random": 0},
     "analyze.attention.n_random"),
]


@pytest.mark.parametrize("name,family,overrides,field", BAD,
                         ids=[f"{b[0]}-{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_invalid_values_are_refused_naming_the_field(name, family, overrides, field):
  with pytest.raises(UserError) as e:
    schema.check(_with(name, **overrides), family)
  assert f"config.{field}" in str(e.value) and "\n" not in str(e.value)


# Boundaries and special values that are valid.
GOOD = [
    ("train_tiny", "train", {"optim__b1": 0.0, "optim__min_lr_ratio": 1.0,
                             "optim__weight_decay": 0.0, "optim__warmup_steps": 19,
                             "model__vocab_size": 0, "model__n_positions": 0,
                             "checkpoint_steps": (0, 20)}),
    ("correlate_tiny", "correlate", {"threshold": -1, "pad_id": -1, "mesh__tok": -1, "mesh__neu": 1,
                                     "selfcheck__sample": 0, "max_tokens": 0,
                                     "synthetic__n_planted": 253}),
    ("tokenize_default", "tokenize", {"bos_id": -1, "mask_exclude_ids": (50256, 198),
                                      "num_tokens": 0}),
    ("analyze_default", "analyze", {"attention__top_pairs": 0, "max_rows": 0,
                                    "universal__threshold": 1.0}),
]


@pytest.mark.parametrize("name,family,overrides", GOOD, ids=[g[0] for g in GOOD])
def test_boundaries_and_special_values_pass(name, family, overrides):
  schema.check(_with(name, **overrides), family)


def test_token_ids_against_a_vocabulary_known_only_from_an_input():
  c = _with("correlate_tiny", exclude_ids=(0, 511), pad_id=600)
  assert schema.problems(c, "correlate") == []   # no vocabulary known: only the range
  with pytest.raises(UserError, match=r"config.pad_id=600.*\[0, 512\) of token store s"):
    schema.check(c, "correlate", vocab_size=(512, "token store s"))
  schema.check(_with("correlate_tiny", exclude_ids=(0, 511)), "correlate",
               vocab_size=(512, "token store s"))


def test_a_config_of_another_family_is_refused():
  with pytest.raises(UserError, match="is not a train config"):
    schema.check(config_files.load("correlate_tiny"), "train")


def test_many_problems_are_one_line_with_a_count():
  c = _with("analyze_default", batch_rows=0, max_rows=-1, seed=-1, start_row=-1,
            families__n_unigrams=0, entropy__n_random=0)
  with pytest.raises(UserError, match=r"\(and 2 more\)$"):
    schema.check(c, "analyze")


# ---- the sweep (benchmarks/config_sweep.py) through the CLI entry, a subset of every class
def _sweep_subset():
  from benchmarks import config_sweep as S
  cases = S.cases()
  picked, seen = [], set()
  for c in cases:   # the wrong results, and the first case of every class and field kind
    if c.opens_models:   # needs trained models: the benchmark's own fixtures cover it
      continue
    kind = (c.klass, c.args[-1].rsplit("=", 1)[-1])
    if c.wrong or kind not in seen or len(c.args) > 1:
      picked.append(c)
      seen.add(kind)
  return picked


@pytest.fixture(scope="module")
def sweep_fixtures(tmp_path_factory):
  """The sweep's inputs, as far as a refusal reads them: a real token store (its vocabulary
  and rows bound correlate's ids and analyze's rows); model and table paths that never get
  opened when the config is refused first."""
  import json
  from ucore.data import build
  tmp = tmp_path_factory.mktemp("sweep")
  src = tmp / "docs.jsonl"
  words = "the dog river mountain quick brown fox jumps over lazy data of and to in".split()
  src.write_text("".join(json.dumps({"text": " ".join(words[(i * 7 + j) % len(words)]
                                                        for j in range(60)), "label": "a"}) + "\n"
                         for i in range(200)))
  c = config_files.load("tokenize_default", "bpe")
  # 128-token rows and 512 ids, as the sweep's own store (some cases are wrong only for it)
  c.source, c.ctx, c.num_tokens, c.bpe_vocab_size, c.log_every_s = str(src), 128, 0, 512, 0.0
  store = build.build_store(c, str(tmp / "store"))
  return {"store": store.path, "seed0": str(tmp / "no_model_a"), "seed1": str(tmp / "no_model_b"),
          "tables": str(tmp / "no_tables")}


@pytest.mark.parametrize("case", _sweep_subset(), ids=lambda c: c.name[:80])
def test_sweep_case_is_one_clean_line_naming_the_field(case, sweep_fixtures, tmp_path):
  from benchmarks import config_sweep as S
  outcome, last = S.run_case(case, sweep_fixtures, str(tmp_path))
  assert outcome == "clean", (outcome, last)
  assert last.startswith("error: ") and case.field.split(".")[-1] in last, last
