"""Default correlate config: every field of `python main.py correlate`, one comment each.

  python main.py plan --config=configs/correlate_default.py --plan_devices=8

A run needs `models`: set them in a config file (configs/correlate_*.py and the pipeline
start from this one, ucore.jobs.config_files.load("correlate_default"), and override fields) or
on the command line, where list fields take comma-separated values, e.g.
  python main.py correlate --config=configs/correlate_tiny.py --workdir=runs/corr_tiny
  python main.py correlate --config=configs/correlate_default.py --workdir=runs/corr_ab \
      --config.models=ckpt/a,ckpt/b --config.model_names=a,b --config.token_store=runs/tok
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.models = []                  # converted model directories; the first is the reference
  c.model_names = []             # display names (default: directory basenames)
  c.mode = "reference"           # "reference": first vs each other; "all_pairs": every pair
  c.token_store = ""             # token store directory (main.py tokenize)
  c.hook = "blocks.*.mlp.hook_post"   # TransformerLens hook correlated, one per layer
  c.layers = "all"               # "all" or comma-separated layer numbers (chosen layers)
  c.layer_mode = "all"           # "all": every layer vs every layer; "adjacent": |Δlayer| ≤ 1
  c.max_tokens = 100_000_000     # token budget (rows × ctx, before the mask); ≤0 = whole store
  c.start_row = 0                # first row of the store used
  c.batch_rows = 24              # rows per global step (all processes together)
  c.exclude_ids = ()             # token ids not counted; () = the store's (BOS/EOS, newline)
  c.pad_id = -1                  # padding id not counted; -1 = none
  c.precision = "highest"        # C/S GEMMs: "highest" (fp32) | "bf16_3x" | "tf32" (GPU) |
                                 # "bf16" | "tf32_fp16" (capture rounded; ucore.corr.precision)
  c.forward_dtype = "float32"    # models' forward: "float32" | "bfloat16" (LayerNorm, scores,
                                 # softmax stay fp32; ucore.corr.activations)
  c.overlap = True               # prepare step k+1 while step k runs; False: one at a time
  c.compensated = True           # Kahan-compensated float32 running sums (2× state memory)
  c.dead_rel_std = 1e-6          # dead neuron: std ≤ dead_rel_std·|mean| (float32 resolution)
  c.fill_dead = False            # False: dead/partner-less neurons are NaN in the tables
  c.dead_value = 0.0             # value used instead of NaN when fill_dead (original: 0)
  c.top_k = 5                    # partners kept per neuron and partner model
  c.threshold = 0.5              # universal ⇔ excess_corr > threshold
  c.save_full_matrix = False     # also write every correlation block as chunked zarr3
  c.log_every = 10               # steps between progress lines
  c.baseline = ml_collections.ConfigDict()
  c.baseline.kinds = ("haar", "gaussian_rows")   # one-pass baselines computed
  c.baseline.primary = "haar"    # the one used for mean/min/max_baseline and excess_corr
  # Random matrices per kind; tables carry their mean and its SE over draws. On the default
  # family (benchmarks/baseline_draws.py, BENCHMARKS.md "Baseline draws and intervals") one
  # draw's SD of a neuron's mean baseline is 0.017 (median; 0.025 p95, 0.037 max): SE ≤ 0.005
  # takes 12 draws for the median neuron, 26 for the 95th percentile, 56 for the worst.
  c.baseline.draws = 16
  c.baseline.seed = 0            # seed of the mixing matrices
  c.intervals = ml_collections.ConfigDict()
  c.intervals.blocks = 20        # row blocks of the jackknife intervals (one forward-only pass); 0 = off
  c.selfcheck = ml_collections.ConfigDict()
  c.selfcheck.sample = 256       # neurons per model checked against a float64 reference; 0 = off
  c.selfcheck.seed = 0           # seed of the sample and of the check's rotation
  c.selfcheck.fail_above = 1e-3  # no tables when max |Δ| vs float64 exceeds this
  c.mesh = ml_collections.ConfigDict()
  c.mesh.tok = 1                 # mesh axis splitting the rows (reference neurons) of C
  c.mesh.neu = -1                # mesh axis splitting the columns (partner neurons); -1 = rest
  c.memory = ml_collections.ConfigDict()
  c.memory.device_gib = 0.0      # free memory per device assumed by the preflight; 0 = ask the device
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500     # commit the state every this many steps ...
  c.checkpoint.every_minutes = 20.0  # ... or this many minutes, whichever comes first
  c.checkpoint.keep = 1              # committed checkpoints kept
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.enabled = False    # planted synthetic family instead of models + store
  c.synthetic.n_models = 3       # models in the family
  c.synthetic.n_layers = 2       # layers per model
  c.synthetic.d_mlp = 128        # neurons per layer (small d makes rotation baselines high)
  c.synthetic.n_planted = 4      # planted universal neurons
  c.synthetic.n_graded = 0       # graded shared neurons (excess from weak to strong; intervals)
  c.synthetic.seed = 0           # data seed
  c.synthetic.offset = 100.0     # mean offset added to every activation
  c.synthetic.ctx = 16           # tokens per row
  c.synthetic.rows = 64          # rows in the synthetic token store
  return c
