"""Universal-neurons toolkit entry point.

  python main.py                      # the default offline pipeline (see README)
  python main.py convert  --model=stanford-gpt2-small-a --workdir=ckpt/small-a
  python main.py tokenize --config=configs/tokenize_default.py --workdir=data/tok
  python main.py correlate --config=configs/correlate_default.py --workdir=runs/corr
  python main.py sweep --config=configs/sweep_default.py --workdir=runs/sweep

Each subcommand lives in ucore/cli/<name>.py (a missing module is an import error) and
registers its own flags there; a flag of another subcommand (`main.py train --plan_devices=3`)
is refused. --config and --workdir (ucore/cli/common.py) are shared. This file only parses
flags and dispatches. A ucore.jobs.errors.UserError, a full disk and an unwritable path
(ucore.jobs.errors.environment_error) become a one-line message on stderr and exit status 2.
"""
import importlib
import logging as logging_std
import os
import sys

# Before jax is imported: let JAX's GPU allocator take 92% of the device (its default, 75%, ran
# a step that `plan` calls fitting out of memory on an H100: ../shared/GPU.md). A value the user
# sets wins; ucore.corr.plan's fit test leaves 10% for the CUDA context and workspaces.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", ".92")

from absl import app
from absl import flags
from absl import logging

from ucore.cli import common  # defines --config, --workdir; checks --config

COMMANDS = ("pipeline", "convert", "export", "tokenize", "correlate", "plan", "train",
            "analyze", "sweep")
DEFAULT_COMMAND = "pipeline"


_MODULES = {name: importlib.import_module(f"ucore.cli.{name}") for name in COMMANDS}


def _foreign_flags(command: str) -> list:
  """[(flag, its subcommand)] set on the command line but registered by another subcommand."""
  by_module = flags.FLAGS.flags_by_module_dict()
  return [(f.name, name) for name, module in _MODULES.items() if name != command
          for f in by_module.get(module.__name__, ()) if f.present]


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of orbax (several lines per checkpoint) from the absl log; warnings
  and errors still pass."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def dispatch(args) -> int:
  """Runs `main.py <args>` (flags already parsed); returns the exit status: 0, or 2 after
  writing the one `error:` line of a UserError or an environment failure. Any other exception
  is a bug and propagates with its traceback."""
  from ucore.jobs.errors import UserError, environment_error
  command = args[0] if args else DEFAULT_COMMAND
  if command not in _MODULES:
    sys.stderr.write(f"error: unknown command {command!r}; available: "
                     f"{', '.join(_MODULES)}\n")
    return 2
  try:
    foreign = _foreign_flags(command)
    if foreign:
      raise UserError(", ".join(f"--{f} is a flag of `{c}`" for f, c in foreign) +
                      f", not of `{command}`")
    common.check_config(command)   # every config field, before the subcommand writes anything
    _MODULES[command].run(args[1:])
  except UserError as e:
    logging.flush()
    sys.stderr.write(f"error: {e}\n")
    return 2
  except Exception as e:   # a full disk or an unwritable workdir: the environment's, not a bug
    line = environment_error(e)
    if line is None:
      raise
    logging.flush()
    sys.stderr.write(f"error: {line}\n")
    return 2
  return 0


def _exit_quietly(status: int):
  """Ends the process right after the error line: background threads of orbax and asyncio
  whose writes failed with it (a full disk, a read-only workdir) would otherwise print their
  own tracebacks during interpreter shutdown, burying the one line that says what to do.
  Every write is atomic and flock-held workdirs are released by the OS, so nothing that
  shutdown would run is needed."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  status = dispatch(argv[1:])
  if status:
    _exit_quietly(status)


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag, config file or override as one `error:` line and
  exit status 2 (not an absl FATAL dump or a traceback). Parsing touches only user input
  (the command line and the config file it names), so every failure here is the user's."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, SyntaxError, ImportError, OSError, AttributeError, KeyError, TypeError,
          ValueError) as e:
    from ucore.jobs.errors import UserError
    what = str(e)
    if "Traceback (most recent call last)" in what:   # a config file's get_config raised
      what = f"--config: {what.strip().splitlines()[-1].strip()}"
    elif isinstance(e, (AttributeError, KeyError)):
      what = f"unknown config field {e} (see the config file for the fields it has)"
    elif isinstance(e, (SyntaxError, TypeError)):
      what = f"{type(e).__name__}: {e}"
    sys.stderr.write(f"error: {str(UserError(what))[:400]}\n")
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
