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
