"""Model references offline (resolution only, no hub): the PolyPythias aliases, the Pythia
checkpoint schedule of @step<N> revisions, and the older aliases unchanged."""
import pytest

from converters import aliases
from ucore.jobs.errors import UserError


def _pythia_schedule():
  """Written out independently: step0, 1, 2, 4, ..., 512, then 1000, 2000, ..., 143000."""
  steps, p = [0], 1
  while p <= 512:
    steps.append(p)
    p *= 2
  steps += [1000 * k for k in range(1, 144)]
  return steps


def test_pythia_schedule_has_154_checkpoints():
  assert list(aliases.PYTHIA_STEPS) == _pythia_schedule()
  assert len(aliases.PYTHIA_STEPS) == 154


@pytest.mark.parametrize("size", ["14m", "31m", "70m", "160m", "410m"])
def test_polypythias_seed_aliases(size):
  for n in range(1, 10):
    ref = aliases.parse(f"pythia-{size}-seed{n}@step143000")
    assert (ref.kind, ref.location, ref.revision) == (
        "hub", f"EleutherAI/pythia-{size}-seed{n}", "step143000")
    assert ref.alias == f"pythia-{size}-seed{n}"
  with pytest.raises(UserError, match="unknown model alias"):
    aliases.parse(f"pythia-{size}-seed10")


def test_polypythias_data_and_weight_seed_aliases_of_160m():
  for kind in ("data", "weight"):
    for n in (1, 2, 3):
      ref = aliases.parse(f"pythia-160m-{kind}-seed{n}@step512")
      assert (ref.location, ref.revision) == (f"EleutherAI/pythia-160m-{kind}-seed{n}", "step512")
    for bad in (f"pythia-160m-{kind}-seed4", f"pythia-70m-{kind}-seed1"):
      with pytest.raises(UserError, match="unknown model alias"):
        aliases.parse(bad)


def test_existing_aliases_still_resolve():
  assert aliases.parse("pythia-160m").location == "EleutherAI/pythia-160m"
  assert aliases.parse("pythia-1.4b-deduped@step1000").location == "EleutherAI/pythia-1.4b-deduped"
  assert aliases.parse("pythia-12b").location == "EleutherAI/pythia-12b"
  ref = aliases.parse("stanford-gpt2-small-a@checkpoint-400000")
  assert (ref.location, ref.revision) == ("stanford-crfm/alias-gpt2-small-x21", "checkpoint-400000")
  assert aliases.parse("stanford-gpt2-medium-e").location == "stanford-crfm/eowyn-gpt2-medium-x777"
  assert aliases.parse("gpt2").location == "openai-community/gpt2"


@pytest.mark.parametrize("step", _pythia_schedule())
def test_every_kept_step_is_accepted(step):
  assert aliases.parse(f"pythia-70m-seed3@step{step}").revision == f"step{step}"
  assert aliases.pythia_revision(step) == f"step{step}"


@pytest.mark.parametrize("ref,nearest", [
    ("pythia-160m@step100", "step64, step128"),
    ("pythia-160m-seed2@step1500", "step1000, step2000"),
    ("pythia-14m-seed9@step600", "step512, step1000"),
    ("pythia-410m@step143500", "step143000"),
    ("EleutherAI/pythia-31m-seed4@step3", "step2, step4"),   # a hub id, not an alias
])
def test_step_off_the_schedule_is_refused_naming_the_nearest(ref, nearest):
  with pytest.raises(UserError) as e:
    aliases.parse(ref)
  msg = str(e.value)
  assert "\n" not in msg and "not a kept Pythia checkpoint" in msg
  assert f"nearest: {nearest} " in msg


def test_malformed_step_revisions_refused_other_revisions_pass():
  for bad in ("pythia-160m@stepX", "pythia-160m@step-5", "pythia-160m@step"):
    with pytest.raises(UserError, match="revisions step<N>"):
      aliases.parse(bad)
  with pytest.raises(UserError):
    aliases.pythia_revision(999)
  # branch names and commits are not checkpoints: passed to the hub as they are
  assert aliases.parse("pythia-160m@main").revision == "main"
  assert aliases.parse("pythia-160m@" + "a" * 40).revision == "a" * 40
  # non-Pythia repositories keep any step-like revision (their own schedules)
  assert aliases.parse("org/model@step100").revision == "step100"
