"""Model references: TransformerLens aliases, HF hub ids with @revision, local directories."""
import dataclasses
import os
import re

from ucore.jobs.errors import UserError

STANFORD = {
    "small": ("alias-gpt2-small-x21", "battlestar-gpt2-small-x49", "caprica-gpt2-small-x81",
              "darkmatter-gpt2-small-x343", "expanse-gpt2-small-x777"),
    "medium": ("arwen-gpt2-medium-x21", "beren-gpt2-medium-x49", "celebrimbor-gpt2-medium-x81",
               "durin-gpt2-medium-x343", "eowyn-gpt2-medium-x777"),
}
ALIASES = {
    f"stanford-gpt2-{size}-{letter}": f"stanford-crfm/{name}"
    for size, names in STANFORD.items() for letter, name in zip("abcde", names)
}
ALIASES.update({
    "gpt2": "openai-community/gpt2", "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium", "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl", "distilgpt2": "distilbert/distilgpt2",
})
# Pythia (GPT-NeoX; TransformerLens names): EleutherAI/pythia-<size>[-deduped], and the paper's
# extra seeds of 160m. Training checkpoints are hub revisions step<N> (pythia_revision).
PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
ALIASES.update({f"pythia-{size}{d}": f"EleutherAI/pythia-{size}{d}"
                for size in PYTHIA_SIZES for d in ("", "-deduped")})
ALIASES.update({f"pythia-160m-seed{i}": f"EleutherAI/pythia-160m-seed{i}" for i in (1, 2, 3)})
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_REVISION = re.compile(r"^[A-Za-z0-9._/-]+$")


@dataclasses.dataclass(frozen=True)
class ModelRef:
  kind: str                   # "local" or "hub"
  location: str               # directory, or hub repo id
  revision: str | None        # hub branch/tag/commit (checkpoint-400000, step1000), None = main
  alias: str | None = None

  def describe(self) -> str:
    rev = f"@{self.revision}" if self.revision else ""
    return f"{self.alias or self.location}{rev}"


def pythia_revision(step: int) -> str:
  """The EleutherAI Pythia branch name for a training step (step0 ... step143000)."""
  return f"step{int(step)}"


def parse(ref: str) -> ModelRef:
  """'stanford-gpt2-small-a@checkpoint-1000' | 'pythia-160m@step1000' | 'org/name@rev' |
  '/path/to/dir'."""
  if not ref or not ref.strip():
    raise UserError("--model is empty: pass an alias (e.g. stanford-gpt2-small-a), a hub id "
                    "(org/name[@revision]) or a local directory")
  ref = ref.strip()
  if os.path.isdir(ref):
    return ModelRef("local", os.path.abspath(ref), None)
  if ref.startswith((".", "/", "~")) or os.sep + os.sep in ref:
    raise UserError(f"local model directory {ref} does not exist")
  name, _, revision = ref.partition("@")
  if "@" in ref and not revision:
    raise UserError(f"model reference {ref!r} has an empty revision after '@'")
  if revision and not _REVISION.match(revision):
    raise UserError(f"revision {revision!r} is not a valid branch, tag or commit name")
  if name in ALIASES:
    return ModelRef("hub", ALIASES[name], revision or None, alias=name)
  if "/" not in name:
    close = sorted(a for a in ALIASES if a.startswith(name.split("-")[0]))[:6]
    raise UserError(f"unknown model alias {name!r}; known aliases include "
                    f"{', '.join(close or sorted(ALIASES)[:6])}, or pass org/name or a directory")
  if not _HUB_ID.match(name):
    raise UserError(f"{name!r} is neither an existing directory nor a valid hub id (org/name)")
  return ModelRef("hub", name, revision or None)
