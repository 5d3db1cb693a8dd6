"""`python main.py convert --model=<alias | hub id[@revision] | local dir> --workdir=<dir>`."""
from absl import flags
from absl import logging

from ucore.cli import common

PROCESS = flags.DEFINE_enum("process", "none", ["none", "transformer_lens"],
                            "transformer_lens: fold LayerNorm, center writing weights and the "
                            "unembedding (the weights the paper's weight analyses use).")


def run(argv):
  from converters.convert import convert
  from ucore.jobs.errors import UserError
  if argv:
    raise UserError(f"convert takes no positional arguments; got {argv}")
  if not common.MODEL.value:
    raise UserError("--model is required (alias, hub id[@revision] or local directory)")
  manifest = convert(common.MODEL.value, common.require_workdir(), PROCESS.value)
  logging.info("params fingerprint %s", manifest["params_fingerprint"])
  print(f"converted {common.MODEL.value} -> {common.WORKDIR.value} "
        f"(processing={PROCESS.value}, fingerprint {manifest['params_fingerprint'][:12]})")
