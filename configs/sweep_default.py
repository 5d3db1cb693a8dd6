"""Universality over training (Nandan et al. 2025): the five Stanford GPT-2-small seeds at 8
checkpoints, stanford-gpt2-small-a against b..e at each, on one token store.

  python main.py sweep --config=configs/sweep_default.py --workdir=runs/sweep_small \
      --config.correlate.token_store=data/pile_test_100m
  # Pythia / PolyPythias: hub revisions step<N> (step0, 1, 2, 4 ... 512, every 1000 to 143000)
  python main.py sweep --config=configs/sweep_default.py --workdir=runs/sweep_pythia70m \
      --config.models=pythia-70m,pythia-70m-seed1,pythia-70m-seed2,pythia-70m-seed3 \
      --config.checkpoints=@step1000,@step4000,@step16000,@step143000 \
      --config.correlate.token_store=data/pile_test_100m_pythia
  # the pipeline's own family (local ucore checkpoints, used in place; `final` needs its step)
  python main.py sweep --config=configs/sweep_default.py --workdir=runs/sweep_default \
      --config.models=runs/default/family/seed0,runs/default/family/seed1,... \
      --config.checkpoints=checkpoint-50,checkpoint-100,final --config.steps=50,100,2000 \
      --config.correlate.token_store=runs/default/tokens --config.correlate.start_row=16384
Rerunning the same command continues a killed sweep (finished checkpoints are skipped);
checkpoints can be added to the list later. Outputs: <workdir>/over_training/ (ucore/sweep.py).
"""
import ml_collections

from ucore.jobs.config_files import load as _config_of

SEEDS = ("a", "b", "c", "d", "e")


def get_config():
  c = ml_collections.ConfigDict()
  # The family: aliases, hub ids (no @revision) or local model directories; the first is the
  # reference whose neurons are followed over training.
  c.models = [f"stanford-gpt2-small-{s}" for s in SEEDS]
  # Display names (table column suffixes); default: the alias / last path component.
  c.model_names = []
  # Checkpoints: @<revision> of every hub model, or a subdirectory of every local model.
  # (Pythia steps are checked against its schedule up front; other revisions by the hub when
  # converted: a missing one stops the sweep with a one-line error, finished steps kept.)
  c.checkpoints = [f"@checkpoint-{n}" for n in
                   (1000, 2000, 5000, 10000, 20000, 50000, 100000, 400000)]
  # Training step of each checkpoint; () = read from the names (step<N>, checkpoint-<N>).
  c.steps = ()
  # Conversion of HF checkpoints: "none" or "transformer_lens" (part of the cache key).
  c.process = "none"
  # Conversion cache shared by sweeps; "" = $UCORE_CACHE/converted or ~/.cache/ucore/converted.
  c.cache_dir = ""
  # Neurons followed back when the final checkpoint has no universal neuron (top-k by excess).
  c.fallback_k = 20
  # Correlations at each checkpoint (configs/correlate_default.py fields; models and
  # model_names are set per checkpoint from the fields above; token_store is required).
  c.correlate = _config_of("correlate_default")
  c.correlate.max_tokens = 10_000_000    # per checkpoint (the paper's final run used 1e8)
  c.correlate.batch_rows = 8             # 4,096 tokens per step at ctx 512
  c.correlate.precision = "bf16_3x"      # verified against float64 in every run (selfcheck)
  c.correlate.checkpoint.every_steps = 1_000_000_000   # commit by time only
  c.correlate.intervals.blocks = 0       # no interval pass per checkpoint (another pass of forwards)
  return c
