"""Universal-neurons toolkit entry point.

  python main.py                      # the default offline pipeline (see README)
  python main.py convert  --model=stanford-gpt2-small-a --workdir=ckpt/small-a
  python main.py tokenize --config=configs/tokenize_default.py --workdir=data/tok
  python main.py correlate --config=configs/correlate_default.py --workdir=runs/corr

Each subcommand lives in ucore/cli/<name>.py; this file only parses flags and dispatches.
A ucore.errors.UserError becomes a one-line message on stderr and exit status 2.
"""
import importlib
import logging as logging_std
import sys

from absl import app
from absl import logging

from ucore.cli import common  # noqa: F401  (defines --config, --workdir)

COMMANDS = ("pipeline", "convert", "tokenize", "correlate", "plan", "train", "analyze")
DEFAULT_COMMAND = "pipeline"


def _load_commands():
  modules = {}
  for name in COMMANDS:
    module_name = f"ucore.cli.{name}"
    try:
      modules[name] = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
      if e.name != module_name:
        raise
  return modules


_MODULES = _load_commands()


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of orbax (several lines per checkpoint) from the absl log; warnings
  and errors still pass."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def main(argv):
  from ucore.errors import UserError
  logging.get_absl_handler().addFilter(_QuietLibraries())
  args = argv[1:]
  command = args[0] if args else DEFAULT_COMMAND
  if command not in _MODULES:
    sys.stderr.write(f"error: unknown command {command!r}; available: "
                     f"{', '.join(_MODULES)}\n")
    sys.exit(2)
  try:
    _MODULES[command].run(args[1:])
  except UserError as e:
    logging.flush() if hasattr(logging, "flush") else None
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
