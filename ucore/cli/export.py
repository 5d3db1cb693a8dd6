"""`python main.py export --model=<converted or trained dir> --to=hf --workdir=<out>`.

Writes a HuggingFace model directory (config.json, model.safetensors, tokenizer files) that
transformers' AutoModelForCausalLM / AutoTokenizer load and `convert` reads back; see
converters/export_hf.py for which fields map how and what is refused.
"""
from absl import flags

from ucore.cli import common

TO = flags.DEFINE_string("to", "hf", "export: the target format (hf: a HuggingFace "
                         "transformers model directory).")


def run(argv):
  from converters.export_hf import export
  from ucore.jobs.errors import UserError
  if argv:
    raise UserError(f"export takes no positional arguments; got {argv}")
  if not common.MODEL.value:
    raise UserError("--model is required: a converted or trained checkpoint directory")
  manifest = export(common.MODEL.value, common.require_workdir(), TO.value)
  print(f"exported {common.MODEL.value} -> {common.WORKDIR.value} ({manifest['hf_class']}; "
        "load with transformers.AutoModelForCausalLM.from_pretrained)")
