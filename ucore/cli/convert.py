"""`python main.py convert --model=<alias | hub id[@revision] | local dir> --workdir=<dir>`."""
from absl import flags
from absl import logging

from ucore.cli import common

MODEL = flags.DEFINE_string("model", None, "TransformerLens alias (stanford-gpt2-small-a, "
                            "pythia-160m, PolyPythias pythia-70m-seed3), HF hub id with "
                            "optional @revision (e.g. @checkpoint-1000, @step1000: a kept "
                            "Pythia checkpoint), or a local HF checkpoint "
                            "directory (GPT-2 or GPT-NeoX: read from its config.json).")
PROCESS = flags.DEFINE_enum("process", "none", ["none", "transformer_lens"],
                            "transformer_lens: fold LayerNorm, center writing weights and the "
                            "unembedding (the weights the paper's weight analyses use).")


def run(argv):
  from converters.convert import convert
  from ucore.jobs.errors import UserError
  if argv:
    raise UserError(f"convert takes no positional arguments; got {argv}")
  if not MODEL.value:
    raise UserError("--model is required (alias, hub id[@revision] or local directory)")
  manifest = convert(MODEL.value, common.require_workdir(), PROCESS.value)
  logging.info("params fingerprint %s", manifest["params_fingerprint"])
  print(f"converted {MODEL.value} -> {common.WORKDIR.value} "
        f"(processing={PROCESS.value}, fingerprint {manifest['params_fingerprint'][:12]})")
