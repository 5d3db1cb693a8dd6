"""The default study, offline, on the embedded corpus (data/corpus): what `python main.py` runs.

  python main.py                                   # = the line below
  python main.py pipeline --config=configs/pipeline_default.py --workdir=runs/default

Stages (each cached and resumable; re-running skips finished ones): byte-level BPE + token
store -> a family of GPT-2 seeds trained here -> correlations of seed 0 against the others
with one-pass rotation baselines -> the same at earlier training checkpoints (persistence) ->
the paper's analyses on seed 0 -> report (runs/default/report/index.html).
Variants (comma-separated, e.g. `:gpu,quick`):
  quick  shrinks every stage (tests, smoke runs; seconds on a CPU)
  gpt2   the GPT-2-faithful family (gelu_new, 512 neurons, BPE 4096; no universal neuron)
  gpu    a deeper family for one GPU (6 layers, d_model 256, 2048 neurons per layer)
The default family departs from GPT-2 in its MLP activation (ReLU); see configs/train_default.py.
"""
import ml_collections

from ucore.jobs.config_files import load as _config_of


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  # Token store recipe: the embedded corpus, a byte-level BPE trained on it, 128-token rows.
  c.tokenize = _config_of("tokenize_default", "bpe")
  c.tokenize.ctx = 128
  c.tokenize.num_tokens = 0              # keep every row; train / held-out split below
  # A small vocabulary: cheap unembedding, frequent tokens (BENCHMARKS.md "Universality recipes")
  c.tokenize.bpe_vocab_size = 512
  # Rows [0, train_rows) train the family; rows after them are held-out text for the
  # correlations and analyses (the paper correlates on text the models never saw).
  c.train_rows = 16384
  # The seed family (configs/train_default.py; data.store and data.max_rows are set here).
  c.train = _config_of("train_default")
  # Correlations of the first seed against every other (configs/correlate_default.py fields).
  c.correlate = _config_of("correlate_default")
  c.correlate.max_tokens = 150_000       # held-out tokens correlated
  c.correlate.batch_rows = 64
  # 8 draws: baseline SE 0.006 for the median neuron (0.009 at the 95th percentile; 12 / 26
  # draws would reach 0.005), set by the 10-minute budget: a draw of both kinds costs ~10 s
  # of finalize on the 2-core machine (BENCHMARKS.md "Baseline draws and intervals").
  c.correlate.baseline.draws = 8
  c.correlate.checkpoint.every_steps = 20
  c.correlate.log_every = 20
  # Universality over training: correlate the family at these earlier checkpoints too
  # (must be among train.checkpoint_steps), on this many held-out tokens each.
  c.persistence_steps = (50, 100)
  # 30k tokens a step (sampling SE of a correlation ≈ 1/√30000 ≈ 0.006): with the final
  # correlations' 8 draws and interval pass, 50k no longer fit the 10-minute budget
  c.persistence_max_tokens = 30_000
  # The paper's analyses on the first seed (configs/analyze_default.py fields).
  c.analyze = _config_of("analyze_default")
  c.analyze.max_rows = 512               # held-out rows used by the analyses
  c.analyze.batch_rows = 32
  c.analyze.families.n_unigrams = 200
  c.analyze.report = False               # the pipeline writes one combined report
  # Report: top universal neurons shown, with their top-activating contexts from this many
  # held-out rows.
  c.report_top_k = 20
  c.examples_rows = 512
  variants = [v for v in arg.split(",") if v]
  unknown = sorted(set(variants) - {"quick", "gpt2", "gpu"})
  if unknown:
    raise ValueError(f"unknown variant(s) {unknown} of configs/pipeline_default.py "
                     "(known: quick, gpt2, gpu; comma-separated)")
  if "gpt2" in variants:
    c.tokenize.bpe_vocab_size = 4096
    c.train = _config_of("train_default", "gpt2")
    c.correlate.max_tokens = 300_000
    c.persistence_steps = (50, 100, 200)
  if "gpu" in variants:
    # ~6x the default's FLOPs per token and 2.5x its tokens: minutes on one H100.
    c.train_rows = 40_000                # of the BPE-512 store's 53,030 rows
    c.train.seeds = (0, 1, 2, 3, 4)         # five seeds, as the paper
    c.train.model.n_layer = 6
    c.train.model.n_embd = 256
    c.train.model.n_head = 8
    c.train.model.d_mlp = 2048
    c.train.num_steps = 1000
    c.train.checkpoint_steps = (0, 10, 20, 50, 100, 200, 500, 1000)
    c.train.eval_every = 100
    c.train.state_every = 100
    c.correlate.max_tokens = 1_000_000
    c.correlate.batch_rows = 128
    c.persistence_steps = (100, 200, 500)
    c.persistence_max_tokens = 300_000
  if "quick" in variants:
    c.tokenize.max_documents = 400
    c.tokenize.bpe_train_documents = 400   # the BPE trains on those documents only
    c.tokenize.bpe_vocab_size = 512
    c.train_rows = 512
    c.train.seeds = (0, 1, 2)
    c.train.model.n_embd = 32
    c.train.model.n_head = 2
    c.train.model.d_mlp = 64
    c.train.num_steps = 20
    c.train.batch_rows = 4
    c.train.heldout_rows = 16
    c.train.checkpoint_steps = (0, 10, 20)
    c.train.eval_every = 10
    c.train.state_every = 10
    c.train.optim.warmup_steps = 4
    c.correlate.max_tokens = 8192
    c.correlate.batch_rows = 16
    c.persistence_steps = (10,)
    c.persistence_max_tokens = 4096
    c.analyze.max_rows = 32
    c.analyze.batch_rows = 8
    c.analyze.families.n_unigrams = 20
    c.analyze.entropy.max_rows = 8
    c.analyze.entropy.n_random = 4
    c.analyze.attention.max_rows = 8
    c.analyze.attention.positions = (8, 64)
    c.analyze.attention.n_random = 100
    c.analyze.ablation.max_rows = 8
    c.analyze.ablation.n_random = 2
    c.examples_rows = 32
  return c
