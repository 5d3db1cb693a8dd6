"""Flags every subcommand shares, and list/tuple config fields from the command line.

`--config.models=a,b` (and every other list or tuple field: model_names, exclude_ids,
baseline.kinds, train.seeds ...) takes comma-separated elements; `--config.models=` is the
empty list; a Python literal (`--config.exclude_ids='(1, 2)'`) also works. The elements take
the type of the field's default elements (int, float or str); for an empty default they are
ints when every element is an integer or the field is named *_ids (token ids), else strings.
A malformed value is a one-line error.
"""
import ast

from absl import flags
from ml_collections import config_flags
from ml_collections.config_dict import config_dict


class _Raw:
  """Marks elements parsed from "a,b" (strings), typed from the field's default later."""


class _RawList(list, _Raw):
  pass


class _RawTuple(tuple, _Raw):
  pass


class _SequenceParser(flags.ArgumentParser):
  """Parses a list/tuple field's override; the field's default passes through."""

  def __init__(self, kind):
    self.kind = kind

  def parse(self, argument):
    if not isinstance(argument, str):
      return argument
    text = argument.strip()
    if text[:1] in ("(", "["):
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError) as e:
        raise ValueError(f"{argument!r} is not a Python list/tuple literal") from e
      if not isinstance(value, (list, tuple)):
        raise ValueError(f"{argument!r} is not a list")
      return self.kind(value)
    parts = [p.strip() for p in text.split(",")] if text else []
    if any(not p for p in parts):
      raise ValueError(f"{argument!r} has an empty element (use a,b,c; an empty value is "
                       "the empty list)")
    return (_RawList if self.kind is list else _RawTuple)(parts)

  def flag_type(self):
    return "comma-separated " + self.kind.__name__


config_flags.register_flag_parser_for_type(list, _SequenceParser(list))
config_flags.register_flag_parser_for_type(tuple, _SequenceParser(tuple))

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Python config file (configs/*.py), optionally `file.py:arg`; "
    "fields can be overridden as --config.field=value (lists as a,b,c).", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this job's outputs and state.")
# Shared by `convert` (what to read) and `export` (which checkpoint to write out).
MODEL = flags.DEFINE_string("model", None, "convert: TransformerLens alias (stanford-gpt2-small-a, "
                            "pythia-160m, PolyPythias pythia-70m-seed3), HF hub id with optional "
                            "@revision (e.g. @checkpoint-1000, @step1000: a kept Pythia "
                            "checkpoint), or a local HF checkpoint "
                            "directory (GPT-2 or GPT-NeoX: read from its config.json); export: "
                            "a converted or trained checkpoint directory.")


def require_workdir() -> str:
  from ucore.jobs.errors import UserError
  if not WORKDIR.value:
    raise UserError("--workdir is required: pass the directory where outputs and state go.")
  return WORKDIR.value


def _element_type(default):
  kinds = {type(v) for v in default}
  if kinds == {bool}:
    return bool
  if kinds and kinds <= {int}:
    return int
  if kinds and kinds <= {int, float}:
    return float
  return str


def _typed(path: str, raw, default):
  """`raw` (strings) as elements of the type of `default`'s elements."""
  from ucore.jobs.errors import UserError
  kind = _element_type(default or ())
  if not default and (path.endswith("_ids") or raw and all(_is_int(v) for v in raw)):
    kind = int   # *_ids fields (exclude_ids, mask_exclude_ids) hold token ids
  try:
    if kind is bool:
      values = [{"true": True, "false": False}[v.lower()] for v in raw]
    else:
      values = [kind(v) for v in raw]
  except (ValueError, KeyError) as e:
    raise UserError(f"--config.{path}={','.join(raw)}: every element must be "
                    f"{'an' if kind is int else 'a'} {kind.__name__} (like the default "
                    f"{tuple(default)!r})") from e
  return list(values) if isinstance(raw, list) else tuple(values)


def _is_int(s: str) -> bool:
  try:
    int(s)
    return True
  except ValueError:
    return False


def _type_overrides(config, prefix=""):
  """Replaces every comma-parsed override (_Raw) in `config` by its typed elements."""
  for key in list(config.keys()):
    value = config[key]
    path = f"{prefix}{key}"
    if isinstance(value, config_dict.ConfigDict):
      _type_overrides(value, path + ".")
    elif isinstance(value, _Raw):
      with config.ignore_type():   # the field's type is the marker class until now
        config[key] = _typed(path, value, flags.FLAGS[f"{CONFIG.name}.{path}"].default)


def config_value():
  """--config's ConfigDict or None; a config file that failed to load is a UserError (the
  flag library reports that only when the value is first used)."""
  from ucore.jobs.errors import UserError
  try:
    config = CONFIG.value
    if config is not None:
      config.keys()   # a config file that failed to load raises here, not at parse time
      _type_overrides(config)
    return config
  except OSError as e:
    raise UserError(f"--config: {str(e).strip().splitlines()[-1].strip()}") from e


def require_config():
  from ucore.jobs.errors import UserError
  config = config_value()
  if config is None:
    raise UserError("--config is required: pass one of configs/*.py (see README).")
  return config


# The config family (ucore.jobs.schema) of each subcommand's --config.
FAMILY = {"tokenize": "tokenize", "train": "train", "correlate": "correlate",
          "plan": "correlate", "analyze": "analyze", "pipeline": "pipeline", "sweep": "sweep"}


def check_config(command: str) -> None:
  """Checks --config (when given) against its family's schema before the subcommand runs:
  every field, the cross-field rules, and token ids against the vocabulary of the inputs it
  names that exist already (a tokenizer directory, a token store). Reads, never writes."""
  from ucore.jobs import schema
  family = FAMILY.get(command)
  config = config_value()
  if family is None or config is None:
    return
  schema.check(config, family)   # the fields and their cross rules first
  vocab = _input_vocab(config, family)
  if vocab is not None:   # then token ids against the vocabulary of an input on disk
    schema.check(config, family, vocab_size=vocab)
  if family == "analyze":
    _check_against_store(config)
  if family == "train":
    _check_train_against_store(config)


def _manifest(path):
  import os
  from ucore.data import store
  if not path or not os.path.isfile(os.path.join(str(path), store.MANIFEST)):
    return None   # missing: the subcommand reports it when it opens the store
  return store.read_manifest(str(path))


def _input_vocab(config, family):
  """(size, where) of the vocabulary an existing input fixes, else None."""
  import os
  if family == "correlate" and not config.synthetic.enabled:
    m = _manifest(config.token_store)
    if m is not None:
      return int(m["tokenizer"]["vocab_size"]), f"token store {config.token_store}"
  spec = str(config.get("tokenizer", "")).strip()
  if family == "tokenize" and spec not in ("gpt2", "bpe"):
    from ucore.jobs.errors import UserError
    from ucore.models import tokenizer as tokmod
    files = tokmod.files_in_dir(spec) if os.path.isdir(spec) else None
    if files is None:
      raise UserError(f"config.tokenizer={spec!r}: use 'gpt2', 'bpe' (train one on the "
                      "source) or a directory holding vocab.json + merges.txt or a HF "
                      "tokenizer.json")
    return tokmod.vocab_size(files), f"tokenizer {spec}"
  return None


def _check_against_store(config):
  """analyze: the rows and positions it asks for exist in the token store."""
  from ucore.jobs.errors import UserError
  m = _manifest(config.token_store)
  if m is None:
    return
  rows, ctx = int(m["num_rows"]), int(m["recipe"]["ctx"])
  if not 0 <= int(config.start_row) < rows:
    raise UserError(f"config.start_row={config.start_row} lies outside the token store's "
                    f"{rows} rows")
  hi = int(config.attention.positions[1])
  if hi > ctx:
    raise UserError(f"config.attention.positions={tuple(config.attention.positions)} reaches "
                    f"past the token store's {ctx}-token rows; use an end <= {ctx}")


def _check_train_against_store(config):
  """train: the model's context and vocabulary cover the store's rows and ids, and the rows
  used leave a batch after the held-out rows."""
  from ucore.jobs.errors import UserError
  m = _manifest(config.data.store)
  if m is None:
    return
  rows, ctx, vocab = int(m["num_rows"]), int(m["recipe"]["ctx"]), int(m["tokenizer"]["vocab_size"])
  n_pos, n_vocab = int(config.model.n_positions), int(config.model.vocab_size)
  if n_pos and n_pos < ctx:
    raise UserError(f"config.model.n_positions={n_pos} is shorter than the token store's "
                    f"{ctx}-token rows; use 0 (= row length) or a larger value")
  if n_vocab and n_vocab < vocab:
    raise UserError(f"config.model.vocab_size={n_vocab} is smaller than the token store's "
                    f"{vocab}-id vocabulary; use 0 (= the store's) or a larger value")
  used = min(int(config.data.max_rows) or rows, rows)
  if used - int(config.heldout_rows) < int(config.batch_rows):
    raise UserError(f"the token store's {used} rows used leave {used - int(config.heldout_rows)}"
                    f" training rows after config.heldout_rows={config.heldout_rows}; need at "
                    f"least config.batch_rows={config.batch_rows}")
