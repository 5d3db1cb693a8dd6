"""PolyPythias-160m (van der Wal et al., ICLR 2025): pythia-160m and its 9 seed siblings, every
model against every other (mode all_pairs: 45 pairs, the seed × seed matrix), all layers,
100M Pile test tokens. One H100 holds ≈ 1/15 of the state: correlate runs it in passes
(ucore.corr.passes); `plan` prints how many, their memory and the time.

  for m in pythia-160m pythia-160m-seed{1..9}; do
    python main.py convert --model=$m --workdir=ckpt/$m; done
  python main.py tokenize --config=configs/tokenize_pile.py:pythia --workdir=data/pile_test_100m_pythia
  python main.py correlate --config=configs/correlate_polypythia160m.py --workdir=runs/corr_polypythia160m
  python main.py plan --config=configs/correlate_polypythia160m.py --plan_device=h100 --plan_devices=1
The tables keep the per-model layout (neurons_<model>.parquet for every model) and add the
seed matrix (ucore.corr.tables.read_seed_matrix / read_k_of_m).
"""
from ucore.jobs import config_files

MODELS = ("pythia-160m",) + tuple(f"pythia-160m-seed{i}" for i in range(1, 10))


def get_config():
  c = config_files.load("correlate_default")
  c.models = [f"ckpt/{m}" for m in MODELS]     # converted checkpoints (convert --model=<alias>)
  c.model_names = list(MODELS)                  # table names
  c.mode = "all_pairs"           # every seed against every other: one C block per pair
  c.token_store = "data/pile_test_100m_pythia"  # built with Pythia's tokenizer
  c.max_tokens = 100_000_000     # the paper's 1e8 tokens
  c.batch_rows = 8               # 4,096 tokens per step
  c.precision = "bf16_3x"        # 3-pass bf16 GEMMs: max |Δcorr| 6.8e-6 vs float64 on 5 ×
                                 # GPT-2 small (H200, issue 13). Kept: the only mode measured on
                                 # a GPU within the self-check's 1e-4. "bf16" (capture rounded to
                                 # bf16, one bf16 pass; plan estimates ~3× the GEMM rate) has no
                                 # GPU measurement yet (issue 23; benchmarks/gpu_paper_run.sh has
                                 # its rows): switch when it measures faster within 1e-4
  c.mesh.tok = 1                 # all devices split the partner-neuron axis
  c.mesh.neu = -1                # -1 = the remaining devices
  c.checkpoint.every_steps = 1_000_000_000   # commit by time only (checkpoint.every_minutes)
  return c
