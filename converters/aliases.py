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
# PolyPythias (van der Wal et al., ICLR 2025): nine more seeds of the five smallest sizes, and
# for 160m three runs that vary only the data order (-data-seed) or only the initialisation
# (-weight-seed). Same checkpoint schedule as Pythia.
POLYPYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m")
ALIASES.update({f"pythia-{size}-seed{i}": f"EleutherAI/pythia-{size}-seed{i}"
                for size in POLYPYTHIA_SIZES for i in range(1, 10)})
ALIASES.update({f"pythia-160m-{kind}-seed{i}": f"EleutherAI/pythia-160m-{kind}-seed{i}"
                for kind in ("data", "weight") for i in (1, 2, 3)})
# The Pythia checkpoint schedule (the hub branches step<N>): step0, the powers of two 1 ... 512,
# then every 1000 steps to 143000 (154 checkpoints).
PYTHIA_STEPS = (0,) + tuple(2 ** i for i in range(10)) + tuple(range(1000, 143001, 1000))
_PYTHIA_REPO = re.compile(r"^EleutherAI/pythia-", re.IGNORECASE)
_STEP_REVISION = re.compile(r"^step(\d+)$")
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
  """The EleutherAI Pythia branch name for a training step (step0 ... step143000); UserError
  for a step the schedule does not keep."""
  return check_pythia_revision(f"step{int(step)}", "Pythia")


def check_pythia_revision(revision: str, model: str) -> str:
  """`revision` if it is a kept Pythia checkpoint (step<N>, N in PYTHIA_STEPS); else a
  UserError naming the nearest kept steps."""
  m = _STEP_REVISION.match(revision)
  if m and int(m.group(1)) in PYTHIA_STEPS and m.group(1) == str(int(m.group(1))):
    return revision
  if not m:
    raise UserError(f"{model}@{revision}: Pythia checkpoints are revisions step<N> "
                    "(step0, step1, step2, step4 ... step512, then every 1000 to step143000)")
  n = int(m.group(1))
  below = [s for s in PYTHIA_STEPS if s <= n]
  above = [s for s in PYTHIA_STEPS if s >= n]
  near = sorted({s for s in (below[-1:] + above[:1])})
  raise UserError(f"{model}@{revision}: step {n} is not a kept Pythia checkpoint; nearest: "
                  f"{', '.join(f'step{s}' for s in near)} (the schedule: step0, 1, 2, 4 ... "
                  "512, then every 1000 to 143000)")


def parse(ref: str) -> ModelRef:
  """'stanford-gpt2-small-a@checkpoint-1000' | 'pythia-160m@step1000' | 'org/name@rev' |
  '/path/to/dir'. A Pythia / PolyPythias step<N> revision must be a kept checkpoint."""
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
  location = ALIASES.get(name, name)
  if revision and _PYTHIA_REPO.match(location) and revision.lower().startswith("step"):
    check_pythia_revision(revision, name)   # other revisions (main, a commit) pass through
  if name in ALIASES:
    return ModelRef("hub", location, revision or None, alias=name)
  if "/" not in name:
    close = sorted(a for a in ALIASES if a.startswith(name.split("-")[0]))[:6]
    raise UserError(f"unknown model alias {name!r}; known aliases include "
                    f"{', '.join(close or sorted(ALIASES)[:6])}, or pass org/name or a directory")
  if not _HUB_ID.match(name):
    raise UserError(f"{name!r} is neither an existing directory nor a valid hub id (org/name)")
  return ModelRef("hub", name, revision or None)
