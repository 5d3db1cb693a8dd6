"""The paper's neuron analyses (§5–§8) on one converted model and a token store.

  python main.py analyze --config=configs/analyze_default.py --workdir=runs/analyze \
      --config.model_dir=ckpt/stanford-gpt2-small-a --config.token_store=data/pile_test_10m \
      --config.corr_table=runs/corr_small/tables/neurons_stanford-gpt2-small-a.parquet
  python main.py analyze --config=configs/analyze_default.py:quick --workdir=/tmp/an \
      --config.model_dir=runs/default/family/seed0/checkpoint-150 --config.token_store=runs/default/tokens

Pick analyses with --analysis=stats,properties,views,families,prediction,entropy,attention,roles,
ablation,cards (default all; "all" skips those needing corr_table when none is given). Variant
`quick`: every analysis shrunk to seconds on a tiny model (smoke runs, tests).
"""
import ml_collections


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  # Converted or trained checkpoint directory (python main.py convert / train).
  c.model_dir = ""
  # Token store directory (python main.py tokenize ...).
  c.token_store = ""
  # Correlation results: neurons_<model>.parquet (or the directory holding it); "" = none
  # (then no universal-vs-other comparison and no ablation).
  c.corr_table = ""
  # Refuse correlation results whose summary.json names other weights than model_dir's.
  c.corr_check_fingerprint = True
  # Rows per forward pass.
  c.batch_rows = 8
  # Use at most this many rows of the store for every analysis (0 = all). Paper: 10M tokens.
  c.max_rows = 0
  # First store row used (e.g. past the rows a trained family saw: held-out text).
  c.start_row = 0
  # Seed of every random choice (control neurons, random sets, random directions).
  c.seed = 0
  # Write an HTML report in <workdir>/report (needs corr_table).
  c.report = True

  # The universality sections (properties, views, roles, ablation, cards) are about the
  # universal neurons; when none clears the threshold, about the fallback_k neurons of highest
  # excess correlation instead (every caption says which).
  c.universal = ml_collections.ConfigDict()
  c.universal.fallback_k = 20
  c.universal.threshold = 0.5           # the cut drawn in the threshold-free views
  c.universal.cards_k = 12              # neuron cards (top by excess correlation)
  c.universal.cards_rows = 64           # held-out rows for the cards' contexts and histograms

  c.stats = ml_collections.ConfigDict()
  c.stats.max_rows = 0                  # rows for the activation moments (0 = max_rows)

  c.families = ml_collections.ConfigDict()
  c.families.max_rows = 0
  c.families.n_unigrams = 200           # frequent normalized tokens that become unigram labels
  c.families.layers_per_pass = 0        # layers per data pass; 0 = as many as fit memory_gb
  c.families.memory_gb = 8.0            # host memory for grouped sums (2·V·d_mlp·8 B per layer)
  c.families.position_mi_threshold = 0.2  # position neuron: MI / H(activation bins) above this
  c.families.vr_threshold = 0.5         # family member (authors' notebooks)
  c.families.alphabet_threshold = 0.35  # alphabet neurons (authors' notebooks)

  c.prediction = ml_collections.ConfigDict()
  c.prediction.kurt_threshold = 10.0         # prediction/suppression: vocab_kurt above this
  c.prediction.partition_factor = 4.0        # partition: vocab_var above factor × median
  # Other models of the same family (comma-separated checkpoint dirs, e.g. seeds b..e): adds
  # percentiles pooled over the family and the mean count of vocab_kurt > threshold per layer.
  c.prediction.family_model_dirs = ""

  c.entropy = ml_collections.ConfigDict()
  c.entropy.max_rows = 64
  c.entropy.n_targets = 1               # top entropy candidates swept
  c.entropy.n_random = 20               # random control neurons (paper: 20)
  c.entropy.last_layers = 2             # controls drawn from the last layers (paper: 2)
  c.entropy.fixed_values = (-0.17, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
  # Controls exclude the top decile of l2_penalty and bottom decile of vocab_var ("original",
  # as the authors' code) or of ‖w_out‖ and logit variance ("w_out").
  c.entropy.control_filter = "original"

  c.attention = ml_collections.ConfigDict()
  c.attention.max_rows = 64
  c.attention.top_pairs = 3             # path-ablate the top-scoring (neuron, head) pairs
  c.attention.positions = (64, 256)     # destination positions (paper: 64–255 of 256)
  c.attention.n_random = 1000           # random unit vectors for the baseline
  # Rank (neuron, head) pairs by the paper's score ŵ_outᵀW_Q k_BOS/√d_head ("paper") or by the
  # model's own score divisor, which adds 1/(layer+1) in inverse-layer-scaled models ("model").
  c.attention.rank_by = "paper"

  c.ablation = ml_collections.ConfigDict()
  c.ablation.max_rows = 64
  c.ablation.modes = ("zero", "mean")   # of zero, mean, fixed
  c.ablation.n_random = 5               # random sets with the universal set's per-layer counts
  c.ablation.fixed_value = 0.0          # value for mode "fixed"

  if "quick" in arg.split(","):
    c.batch_rows = 8
    c.families.n_unigrams = 50
    c.entropy.n_random = 4
    c.entropy.last_layers = 1
    c.entropy.fixed_values = (0.0, 3.0, 6.0)
    c.attention.positions = (8, 32)
    c.attention.n_random = 200
    c.ablation.n_random = 2
  return c
