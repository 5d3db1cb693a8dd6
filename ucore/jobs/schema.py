"""One declarative description of every config family's fields, checked for a whole config
before anything is written (issue 21).

A family (tokenize, train, correlate, analyze, pipeline, sweep) is a table {dotted field:
rule} plus cross-field rules (functions of the whole config returning an error or None).
`check(config, family)` checks every field the table describes and every cross-field rule, and
raises one UserError naming every bad field (at most a few, then a count). The pipeline's
table nests the other four under its own prefixes (the sweep's nests correlate), so one call
checks every stage's sub-config at pipeline start.

Token ids: fields whose rule says `token_id` are checked against the vocabulary. Where the
vocabulary follows from the config itself (tokenize: gpt2 = 50257, bpe = bpe_vocab_size; the
pipeline's tokenize stage) the table checks it; where it is only known from an input on disk
(correlate's token store), the caller passes `vocab_size` (ucore/cli/common.py reads the
store's manifest) — still before anything is written.

Who calls it: main.py for every subcommand's --config (ucore/cli/common.check_config) and
ucore.pipeline.run for the pipeline (also when called from Python). tests/test_config_schema.py
asserts that every field of every config in configs/ is described here: a field added to a
config needs its rule here too (a field the table lacks is not checked, never refused, so a
user's run never fails for it).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

from ucore.jobs.errors import UserError

# Constants mirrored from higher layers (this module is in the lowest layer: the token store
# build checks its config here too); tests/test_config_schema.py holds each equal to its home.
GPT2_VOCAB = 50257   # OpenAI's GPT-2 BPE: ids 0..ucore.data.mask.GPT2_EOS_ID
BPE_MIN_VOCAB = 258   # a byte-level BPE: 256 byte symbols + <|endoftext|> + at least one merge


@dataclasses.dataclass(frozen=True)
class Rule:
  """One field. kind: int | float | str | bool | seq (a list/tuple of `item`s).
  lo/hi: inclusive bounds unless lo_open/hi_open; also: extra allowed values outside them
  (e.g. -1 = "none"); choices: the allowed values; finite: floats must be finite;
  nonempty (str/seq); distinct (seq); length (seq: exact length); token_id: < vocabulary."""
  kind: str
  lo: Optional[float] = None
  hi: Optional[float] = None
  lo_open: bool = False
  hi_open: bool = False
  also: tuple = ()
  choices: tuple = ()
  finite: bool = True
  nonempty: bool = False
  distinct: bool = False
  length: Optional[int] = None
  item: Optional["Rule"] = None
  token_id: bool = False
  what: str = ""   # the meaning of a special value, for the message

  def problem(self, value) -> Optional[str]:
    """Why `value` breaks this rule ("must be ...", to follow "field=value"), or None."""
    if self.kind == "seq":
      if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        return "must be a list (comma-separated on the command line)"
      if self.nonempty and not value:
        return "must not be empty"
      if self.length is not None and len(value) != self.length:
        return f"must have exactly {self.length} elements, not {len(value)}"
      if self.distinct and len(set(value)) != len(value):
        return "must not repeat an element"
      for v in value:
        p = self.item.problem(v)
        if p:
          return f"holds {v!r}, which {p}"
      return None
    if self.kind == "bool":
      return None if isinstance(value, bool) else "must be true or false"
    if self.kind == "str":
      if not isinstance(value, str):
        return "must be a string"
      if self.nonempty and not value.strip():
        return "must not be empty"
      if self.choices and value not in self.choices:
        return f"must be one of {', '.join(map(repr, self.choices))}"
      return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
        (self.kind == "int" and not float(value).is_integer()):
      return f"must be {'an integer' if self.kind == 'int' else 'a number'}"
    if value in self.also:
      return None
    if self.finite and not math.isfinite(value):
      return "must be a finite number"
    if self.choices and value not in self.choices:
      return f"must be one of {', '.join(map(repr, self.choices))}"
    low_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
    high_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
    if low_bad or high_bad:
      return f"must be {self.range_text()}"
    return None

  def range_text(self) -> str:
    parts = []
    if self.lo is not None and self.hi is not None:
      parts.append(f"in {'(' if self.lo_open else '['}{_num(self.lo)}, "
                   f"{_num(self.hi)}{')' if self.hi_open else ']'}")
    elif self.lo is not None:
      parts.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
    elif self.hi is not None:
      parts.append(f"{'<' if self.hi_open else '<='} {_num(self.hi)}")
    if self.also:
      parts.append(f"or {', '.join(map(_num, self.also))}" + (f" ({self.what})" if self.what
                                                               else ""))
    return " ".join(parts)


def _num(v) -> str:
  return str(int(v)) if float(v).is_integer() else repr(v)


# ---- rule constructors (the tables below read as a list of fields) --------------------------
def Int(lo=None, hi=None, also=(), what="", token_id=False) -> Rule:
  return Rule("int", lo=lo, hi=hi, also=tuple(also), what=what, token_id=token_id)


def Count(lo=1) -> Rule:
  """A count or size: an integer >= lo."""
  return Rule("int", lo=lo)


def Float(lo=None, hi=None, lo_open=False, hi_open=False) -> Rule:
  return Rule("float", lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


def Positive() -> Rule:
  return Rule("float", lo=0, lo_open=True)


def Str(*choices, nonempty=False) -> Rule:
  return Rule("str", choices=tuple(choices), nonempty=nonempty)


def Bool() -> Rule:
  return Rule("bool")


def Seq(item: Rule, nonempty=False, distinct=False, length=None) -> Rule:
  return Rule("seq", item=item, nonempty=nonempty, distinct=distinct, length=length)


TOKEN_ID = Int(lo=0, token_id=True)
SEED = Count(0)


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  fields: dict                       # dotted path -> Rule
  cross: tuple = ()                  # functions (config) -> error text or None
  vocab: Optional[Callable] = None   # (config) -> (size, where) or None: the token-id bound


def _get(config, path: str):
  value = config
  for key in path.split("."):
    value = value[key]
  return value


def _has(config, path: str) -> bool:
  value = config
  for key in path.split("."):
    try:
      if key not in value:
        return False
    except TypeError:
      return False
    value = value[key]
  return True


def _valid(config, fam: "Family", *paths) -> bool:
  """Cross rules run only over fields that passed their own rule."""
  return all(_has(config, p) and not fam.fields[p].problem(_get(config, p)) for p in paths)


# ---- tokenize -------------------------------------------------------------------------------
TOKENIZE = {
    "source": Str(nonempty=True),
    "split": Str(nonempty=True),
    "revision": Str(),
    "text_field": Str(nonempty=True),
    "label_field": Str(),
    "txt_sample_by": Str("document", "paragraph", "line"),
    "min_chars": Count(0),
    "ctx": Count(2),
    "num_tokens": Count(0),
    "seed": SEED,
    "shuffle": Bool(),
    "max_documents": Count(0),
    "tokenizer": Str(nonempty=True),
    "bpe_vocab_size": Count(BPE_MIN_VOCAB),
    "bpe_train_documents": Count(0),
    "bos_id": Int(lo=0, also=(-1,), what="the tokenizer's <|endoftext|>", token_id=True),
    "eos_id": Int(lo=0, also=(-1,), what="the tokenizer's <|endoftext|>", token_id=True),
    "model_vocab_size": Count(0),
    "mask_exclude_ids": Seq(TOKEN_ID),
    "encode_batch_docs": Count(1),
    "shard_rows": Count(1),
    "chunk_rows": Count(1),
    "write_block_rows": Count(1),
    "log_every_s": Float(0),   # 0 = a progress line at every step
}


def tokenizer_vocab(config) -> Optional[tuple]:
  """(vocabulary size, why) a tokenize config implies without reading files; None for a
  tokenizer directory (checked once its files are read, before the store is written)."""
  spec = str(config.tokenizer).strip()
  if spec == "gpt2":
    return GPT2_VOCAB, "GPT-2's tokenizer"
  if spec == "bpe" and isinstance(config.bpe_vocab_size, int):
    return int(config.bpe_vocab_size), "config.bpe_vocab_size"
  return None


def _bpe_fits_model(c):
  if str(c.tokenizer).strip() == "bpe" and c.model_vocab_size and \
      c.bpe_vocab_size > c.model_vocab_size:
    return (f"bpe_vocab_size={c.bpe_vocab_size} exceeds model_vocab_size="
            f"{c.model_vocab_size}: the model's embedding would not cover every token id")
  if str(c.tokenizer).strip() == "gpt2" and c.model_vocab_size and \
      GPT2_VOCAB > c.model_vocab_size:
    return (f"model_vocab_size={c.model_vocab_size}: GPT-2's tokenizer has {GPT2_VOCAB} ids "
            f"but the model's vocabulary has {c.model_vocab_size}; they do not match")
  return None


TOKENIZE_FAMILY = Family("tokenize", TOKENIZE, cross=(_bpe_fits_model,), vocab=tokenizer_vocab)

# ---- train ----------------------------------------------------------------------------------
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu", "swish",
               "quick_gelu", "tanh")   # = ucore.models.config.ACTIVATIONS (a test keeps them equal)

TRAIN = {
    "seeds": Seq(SEED, nonempty=True, distinct=True),
    "model.n_layer": Count(1),
    "model.n_embd": Count(1),
    "model.n_head": Count(1),
    "model.d_mlp": Count(1),
    "model.n_positions": Int(lo=2, also=(0,), what="the token rows' length"),
    "model.vocab_size": Int(lo=1, also=(0,), what="the token store's vocabulary"),
    "model.activation_function": Str(*ACTIVATIONS),
    "model.layer_norm_epsilon": Positive(),
    "model.scale_attn_by_inverse_layer_idx": Bool(),
    "model.reorder_and_upcast_attn": Bool(),
    "init_std": Positive(),
    "data.store": Str(),
    "data.max_rows": Count(0),
    "heldout_rows": Count(1),
    "batch_rows": Count(1),
    "num_steps": Count(1),
    "optim.lr": Positive(),
    "optim.warmup_steps": Count(0),
    "optim.min_lr_ratio": Float(0, 1),
    "optim.b1": Float(0, 1, hi_open=True),
    "optim.b2": Float(0, 1, hi_open=True),
    "optim.eps": Positive(),
    "optim.weight_decay": Float(0),
    "optim.grad_clip": Positive(),
    "checkpoint_steps": Seq(Count(0)),
    "eval_every": Count(1),
    "eval_batch_rows": Count(1),
    "state_every": Count(1),
    "log_every": Count(1),
}


def _train_cross(fam):
  def heads(c):
    if _valid(c, fam, "model.n_embd", "model.n_head") and c.model.n_embd % c.model.n_head:
      return (f"model.n_embd={c.model.n_embd} must be a multiple of model.n_head="
              f"{c.model.n_head} (d_head = n_embd / n_head)")
    return None

  def warmup(c):
    if _valid(c, fam, "optim.warmup_steps", "num_steps") and \
        c.optim.warmup_steps >= c.num_steps:
      return f"optim.warmup_steps={c.optim.warmup_steps} must be < num_steps={c.num_steps}"
    return None

  def kept(c):
    if _valid(c, fam, "checkpoint_steps", "num_steps"):
      bad = sorted(int(s) for s in c.checkpoint_steps if int(s) > c.num_steps)
      if bad:
        return f"checkpoint_steps {bad} lie past num_steps={c.num_steps}"
    return None

  def rows(c):
    if _valid(c, fam, "data.max_rows", "heldout_rows", "batch_rows") and c.data.max_rows and \
        c.data.max_rows - c.heldout_rows < c.batch_rows:
      return (f"data.max_rows={c.data.max_rows} leaves {c.data.max_rows - c.heldout_rows} "
              f"training rows after heldout_rows={c.heldout_rows}; need at least "
              f"batch_rows={c.batch_rows}")
    return None
  return (heads, warmup, kept, rows)


TRAIN_FAMILY = Family("train", TRAIN)
TRAIN_FAMILY = dataclasses.replace(TRAIN_FAMILY, cross=_train_cross(TRAIN_FAMILY))

# ---- correlate ------------------------------------------------------------------------------
BASELINE_KINDS = ("haar", "gaussian_rows")   # = ucore.corr.baselines.KINDS (a test keeps them equal)
NEURON_HOOKS = ("blocks.*.mlp.hook_post", "blocks.*.mlp.hook_pre")   # one value per MLP neuron

CORRELATE = {
    "models": Seq(Str(nonempty=True)),
    "model_names": Seq(Str(nonempty=True), distinct=True),
    "mode": Str("reference", "all_pairs"),
    "token_store": Str(),
    "hook": Str(*NEURON_HOOKS),
    "layers": Str(nonempty=True),
    "layer_mode": Str("all", "adjacent"),
    "max_tokens": Count(0),
    "start_row": Count(0),
    "batch_rows": Count(1),
    "exclude_ids": Seq(TOKEN_ID),
    "pad_id": Int(lo=0, also=(-1,), what="none", token_id=True),
    "precision": Str("highest", "bf16_3x", "tf32", "bf16", "tf32_fp16"),   # = ucore.corr.precision.NAMES (tested)
    "forward_dtype": Str("float32", "bfloat16"),   # = ucore.corr.activations.FORWARD_DTYPES
    "overlap": Bool(),
    "compensated": Bool(),
    "dead_rel_std": Float(0),
    "fill_dead": Bool(),
    "dead_value": Float(),
    "top_k": Count(1),
    "threshold": Float(-1, 1),
    "save_full_matrix": Bool(),
    "log_every": Count(1),
    "baseline.kinds": Seq(Str(*BASELINE_KINDS), nonempty=True, distinct=True),
    "baseline.primary": Str(*BASELINE_KINDS),
    "baseline.draws": Count(1),
    "baseline.seed": SEED,
    "intervals.blocks": Int(lo=2, hi=1000, also=(0,), what="off"),
    "selfcheck.sample": Count(0),
    "selfcheck.seed": SEED,
    "selfcheck.fail_above": Positive(),
    "mesh.tok": Int(lo=1, also=(-1,), what="the remaining devices"),
    "mesh.neu": Int(lo=1, also=(-1,), what="the remaining devices"),
    "memory.device_gib": Float(0),
    "checkpoint.every_steps": Count(1),
    "checkpoint.every_minutes": Positive(),
    "checkpoint.keep": Count(1),
    "synthetic.enabled": Bool(),
    "synthetic.n_models": Count(2),
    "synthetic.n_layers": Count(1),
    "synthetic.d_mlp": Count(1),
    "synthetic.n_planted": Count(0),
    "synthetic.n_graded": Count(0),
    "synthetic.seed": SEED,
    "synthetic.offset": Float(),
    "synthetic.ctx": Count(2),
    "synthetic.rows": Count(1),
}


def _correlate_cross(fam):
  def names(c):
    if _valid(c, fam, "models", "model_names") and c.model_names and \
        len(c.model_names) != len(c.models):
      return (f"model_names has {len(c.model_names)} names for {len(c.models)} models; give "
              "one per model (or none)")
    return None

  def models(c):
    if _valid(c, fam, "models", "synthetic.enabled") and not c.synthetic.enabled and \
        len(c.models) == 1:
      return f"models has one entry ({c.models[0]}); correlations need at least two models"
    return None

  def primary(c):
    if _valid(c, fam, "baseline.kinds", "baseline.primary") and \
        c.baseline.primary not in c.baseline.kinds:
      return (f"baseline.primary={c.baseline.primary!r} is not among baseline.kinds="
              f"{list(c.baseline.kinds)}")
    return None

  def layers(c):
    if _valid(c, fam, "layers") and c.layers.strip() != "all":
      parts = [p.strip() for p in c.layers.split(",")]
      if not all(p.isdigit() for p in parts):
        return f"layers must be 'all' or comma-separated layer numbers >= 0, got {c.layers!r}"
    return None

  def mesh(c):
    if _valid(c, fam, "mesh.tok", "mesh.neu") and c.mesh.tok == -1 and c.mesh.neu == -1:
      return "mesh.tok=-1 and mesh.neu=-1: at most one of them may be -1 (the remaining devices)"
    return None

  def planted(c):
    if _valid(c, fam, "synthetic.n_planted", "synthetic.n_graded", "synthetic.d_mlp",
              "synthetic.n_layers"):
      n = c.synthetic.n_layers * c.synthetic.d_mlp
      if c.synthetic.n_planted + c.synthetic.n_graded + 3 > n:
        return (f"synthetic.n_planted={c.synthetic.n_planted} + n_graded="
                f"{c.synthetic.n_graded} do not fit {c.synthetic.n_layers} layers x "
                f"{c.synthetic.d_mlp} neurons (at most {n - 3} together)")
    return None

  def top_k(c):
    if _valid(c, fam, "top_k", "synthetic.enabled", "synthetic.d_mlp", "synthetic.n_layers") \
        and c.synthetic.enabled and c.top_k > c.synthetic.n_layers * c.synthetic.d_mlp:
      return (f"top_k={c.top_k} exceeds the {c.synthetic.n_layers * c.synthetic.d_mlp} "
              "neurons of a synthetic model")
    return None
  return (names, models, primary, layers, mesh, planted, top_k)


CORRELATE_FAMILY = Family("correlate", CORRELATE)
CORRELATE_FAMILY = dataclasses.replace(CORRELATE_FAMILY, cross=_correlate_cross(CORRELATE_FAMILY))

# ---- analyze --------------------------------------------------------------------------------
ANALYZE = {
    "model_dir": Str(),
    "token_store": Str(),
    "corr_table": Str(),
    "corr_check_fingerprint": Bool(),
    "batch_rows": Count(1),
    "max_rows": Count(0),
    "start_row": Count(0),
    "seed": SEED,
    "report": Bool(),
    "universal.fallback_k": Count(1),
    "universal.threshold": Float(-1, 1),
    "universal.cards_k": Count(1),
    "universal.cards_rows": Count(1),
    "stats.max_rows": Count(0),
    "families.max_rows": Count(0),
    "families.n_unigrams": Count(1),
    "families.layers_per_pass": Count(0),
    "families.memory_gb": Positive(),
    "families.position_mi_threshold": Float(0, 1),
    "families.vr_threshold": Float(0, 1),
    "families.alphabet_threshold": Float(0, 1),
    "prediction.kurt_threshold": Float(0),
    "prediction.partition_factor": Positive(),
    "prediction.family_model_dirs": Str(),
    "entropy.max_rows": Count(0),
    "entropy.n_targets": Count(1),
    "entropy.n_random": Count(1),
    "entropy.last_layers": Count(1),
    "entropy.fixed_values": Seq(Float(), nonempty=True),
    "entropy.control_filter": Str("original", "w_out"),
    "attention.max_rows": Count(0),
    "attention.top_pairs": Count(0),
    "attention.positions": Seq(Count(0), length=2),
    "attention.n_random": Count(2),
    "attention.rank_by": Str("paper", "model"),
    "ablation.max_rows": Count(0),
    "ablation.modes": Seq(Str("zero", "mean", "fixed"), nonempty=True, distinct=True),
    "ablation.n_random": Count(1),
    "ablation.fixed_value": Float(),
}


def _analyze_cross(fam):
  def positions(c):
    if _valid(c, fam, "attention.positions"):
      lo, hi = c.attention.positions
      if lo >= hi:
        return (f"attention.positions=({lo}, {hi}) must be (first, end) with first < end "
                "(destination positions first..end-1)")
    return None
  return (positions,)


ANALYZE_FAMILY = Family("analyze", ANALYZE)
ANALYZE_FAMILY = dataclasses.replace(ANALYZE_FAMILY, cross=_analyze_cross(ANALYZE_FAMILY))

# ---- pipeline: its own fields, and each stage's family under its prefix ---------------------
PIPELINE_OWN = {
    "train_rows": Count(1),
    "persistence_steps": Seq(Count(0), distinct=True),
    "persistence_max_tokens": Count(1),
    "report_top_k": Count(1),
    "examples_rows": Count(1),
}
# The pipeline sets these itself (store paths, the family's models): not read from the config.
PIPELINE_SET = ("train.data.store", "train.data.max_rows", "correlate.models",
                "correlate.model_names", "correlate.token_store", "correlate.start_row",
                "correlate.mode", "analyze.model_dir", "analyze.token_store",
                "analyze.corr_table", "analyze.start_row", "analyze.prediction.family_model_dirs")
STAGES = {"tokenize": TOKENIZE_FAMILY, "train": TRAIN_FAMILY, "correlate": CORRELATE_FAMILY,
          "analyze": ANALYZE_FAMILY}


def _pipeline_cross(c):
  out = []
  if PIPELINE_OWN["persistence_steps"].problem(c.persistence_steps) is None and \
      not TRAIN["num_steps"].problem(c.train.num_steps) and \
      not TRAIN["checkpoint_steps"].problem(c.train.checkpoint_steps):
    kept = {int(s) for s in c.train.checkpoint_steps} | {0, int(c.train.num_steps)}
    missing = [int(s) for s in c.persistence_steps if int(s) not in kept]
    if missing:
      out.append(f"persistence_steps {missing} are not kept training checkpoints "
                 f"{sorted(kept)}; add them to train.checkpoint_steps")
  if not TRAIN["seeds"].problem(c.train.seeds) and len(c.train.seeds) < 2:
    out.append(f"train.seeds={list(c.train.seeds)}: the pipeline correlates seeds against each "
               "other and needs at least two")
  vocab = tokenizer_vocab(c.tokenize) if not TOKENIZE["bpe_vocab_size"].problem(
      c.tokenize.bpe_vocab_size) else None
  if vocab and not TRAIN["model.vocab_size"].problem(c.train.model.vocab_size) and \
      c.train.model.vocab_size and c.train.model.vocab_size < vocab[0]:
    out.append(f"train.model.vocab_size={c.train.model.vocab_size} is smaller than the "
               f"tokenizer's {vocab[0]} ids ({vocab[1].replace('config.', 'tokenize.')})")
  if vocab:
    out += [f"tokenize.{p}" for p in _id_problems(c.tokenize, TOKENIZE, vocab)]
    out += [f"correlate.{p}" for p in _id_problems(c.correlate, CORRELATE, vocab)]
  return "; ".join(out) or None


# ---- sweep (ucore/sweep.py): the family, its checkpoints, and a correlate sub-config --------
SWEEP_OWN = {
    "models": Seq(Str(nonempty=True), nonempty=True),
    "model_names": Seq(Str(nonempty=True), distinct=True),
    "checkpoints": Seq(Str(nonempty=True), nonempty=True, distinct=True),
    "steps": Seq(Count(0), distinct=True),
    "process": Str("none", "transformer_lens"),
    "cache_dir": Str(),
    "fallback_k": Count(1),
}
# The sweep sets these per checkpoint from its own fields.
SWEEP_SET = ("correlate.models", "correlate.model_names")


def _sweep_cross(c):
  out = []
  if not SWEEP_OWN["models"].problem(c.models) and len(c.models) < 2:
    out.append(f"models={list(c.models)}: a sweep correlates a family and needs at least two "
               "models (the first is the reference)")
  if not SWEEP_OWN["model_names"].problem(c.model_names) and c.model_names and \
      len(c.model_names) != len(c.models):
    out.append(f"model_names has {len(c.model_names)} names for {len(c.models)} models")
  if not SWEEP_OWN["steps"].problem(c.steps) and c.steps and \
      len(c.steps) != len(c.checkpoints):
    out.append(f"steps has {len(c.steps)} steps for {len(c.checkpoints)} checkpoints")
  if list(c.correlate.models) or list(c.correlate.model_names):
    out.append("correlate.models / correlate.model_names are set per checkpoint by the sweep: "
               "use models and model_names")
  if c.correlate.mode != "reference":
    out.append(f"correlate.mode={c.correlate.mode!r}: a sweep correlates the reference against "
               "the others (mode 'reference')")
  return "; ".join(out) or None


FAMILIES = {"tokenize": TOKENIZE_FAMILY, "train": TRAIN_FAMILY, "correlate": CORRELATE_FAMILY,
            "analyze": ANALYZE_FAMILY}
# Families that nest others under a prefix: (own fields, {prefix: family}, fields the command
# sets itself (not read from the config), cross rule over the whole config).
NESTED = {
    "pipeline": (PIPELINE_OWN, STAGES, PIPELINE_SET, _pipeline_cross),
    "sweep": (SWEEP_OWN, {"correlate": CORRELATE_FAMILY}, SWEEP_SET, _sweep_cross),
}


def nested_fields(family: str) -> dict:
  """Every field of a nesting family with its rule (the nested families' under their prefix)."""
  own, stages, _, _ = NESTED[family]
  out = dict(own)
  for prefix, fam in stages.items():
    out.update({f"{prefix}.{k}": r for k, r in fam.fields.items()})
  return out


def pipeline_fields() -> dict:
  return nested_fields("pipeline")


def fields_of(family: str) -> dict:
  return nested_fields(family) if family in NESTED else FAMILIES[family].fields


# ---- checking -------------------------------------------------------------------------------
def _id_problems(config, fields: dict, vocab) -> list:
  """'field=... is outside the vocabulary' for token-id fields of `config` >= vocab[0]."""
  size, where = vocab
  out = []
  for path, rule in fields.items():
    if not rule.token_id and not (rule.item and rule.item.token_id):
      continue
    if not _has(config, path) or rule.problem(_get(config, path)):
      continue
    value = _get(config, path)
    values = list(value) if rule.kind == "seq" else [value]
    bad = [int(v) for v in values if int(v) >= size]
    if bad:
      out.append(f"{path}={value!r}: token id(s) {bad} outside the vocabulary [0, {size}) of "
                 f"{where}")
  return out


def problems(config, family: str, vocab_size=None) -> list:
  """Every problem of `config` as a family `family` config (field: why), [] when valid.
  `vocab_size`: (size, where) of the vocabulary the token ids must fall in, when the config
  alone does not tell it."""
  fields = fields_of(family)
  present = [p for p in fields if _has(config, p)]
  if len(present) < len(fields) / 2:
    return [f"--config is not a {family} config: it lacks {len(fields) - len(present)} of the "
            f"{len(fields)} fields of one (e.g. {', '.join(p for p in fields if p not in present)[:120]})"]
  out = []
  own_set = NESTED[family][2] if family in NESTED else ()
  for path, rule in fields.items():
    if path in own_set:
      continue
    if not _has(config, path):
      continue   # an older config without the field: its reader's default applies
    value = _get(config, path)
    p = rule.problem(value)
    if p:
      out.append(f"{path}={value!r} {p}")
  if family in NESTED:
    _, stages, _, cross = NESTED[family]
    for prefix, fam in stages.items():
      if prefix in config:
        out += [f"{prefix}.{e}" for e in (f(config[prefix]) for f in fam.cross) if e]
    e = None if out else cross(config)   # (over fields that passed their rules)
    if e:
      out.append(e)
    return out
  fam = FAMILIES[family]
  out += [e for e in (f(config) for f in fam.cross) if e]
  vocab = vocab_size or (fam.vocab(config) if fam.vocab else None)
  if vocab and not out:
    out += _id_problems(config, fam.fields, vocab)
  return out


def check(config, family: str, vocab_size=None, limit: int = 4) -> None:
  """UserError naming the config's problems (the first `limit`, then a count); see problems."""
  found = problems(config, family, vocab_size)
  if found:
    more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
    text = "; ".join(e if e.startswith("--config") else f"config.{e}" for e in found[:limit])
    raise UserError(text + more)
