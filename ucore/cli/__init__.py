"""Subcommands of main.py, one module each. A module defines its own absl flags at import
(never `--workdir` / `--config` / `--model`, which live in common.py) and a `run(argv)` function."""
