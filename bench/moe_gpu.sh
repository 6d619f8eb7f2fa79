#!/usr/bin/env bash
# Issue 20's GPU measurements on the Qwen3-30B-A3B shape in one device call (random weights):
#   1. bench/moe.py: retune the fused-MoE token classes from RETUNE_FROM tokens on (their cached
#      configs are dropped first; 0 retunes every class), compiling every candidate in parallel
#      first; time the layer at 1, 8, 64, 256 and 4,096 tokens and each stage at 1 and 4,096;
#   2. LightLLM's serving workload (1,024 in, ~128 out, 100 clients, 400 requests) through
#      bench/serve_gpu.sh, with the tuned configs;
#   3. bench/decode.py at batch 1 and 64.
# Each step has its own time limit, so one that hangs leaves the others their time.
# Usage, from the repo root after `source bench/gpu_setup.sh`:
#   OUT=dir TOKENIZER=tokdir BENCH_COMMIT=sha bench/moe_gpu.sh
# env: MODEL (default the Qwen3-30B-A3B shape), MOE_TOKENS, SERVE_REQUESTS (default 400),
#      DECODE_BATCHES (default 1 64), WORKERS (compile processes, default 12),
#      RETUNE_FROM (default 0), MOE_TIMEOUT (s, default 150),
#      SKIP (space-separated steps to leave out: moe serve decode; TOKENIZER is only needed
#      for serve and decode)
set -u
OUT=${OUT:?set OUT to the output directory}
MODEL=${MODEL:-bench/configs/qwen3-30b-a3b}
# bench/commit.py: $AIOLLM_COMMIT or $BENCH_COMMIT, else HEAD only if this tree is a checkout
export BENCH_COMMIT=$(python3 bench/commit.py) PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/log.txt"
skip() { case " ${SKIP:-} " in *" $1 "*) return 0;; esac; return 1; }
step() { echo "== $1 $(date -u +%T)" | tee -a "$LOG"; }
if ! skip serve || ! skip decode; then
  TOKENIZER=${TOKENIZER:?set TOKENIZER to a tokenizer directory}
  # every id the random model can emit needs text (bench/extend_tokenizer.py says why)
  VOCAB=$(python3 -c "import json; print(json.load(open('$MODEL/config.json'))['vocab_size'])")
  python3 bench/extend_tokenizer.py "$TOKENIZER" "/tmp/tokenizer-ext-$$" "$VOCAB" | tee -a "$LOG"
  TOKENIZER=/tmp/tokenizer-ext-$$
fi

if ! skip moe; then
  step moe
  # drop the cached fused-MoE configs of the classes to retune: AIOLLM_AUTOTUNE=1 then tunes
  # exactly those (the missing keys) and loads the others
  python3 bench/moe.py --drop-configs-from "${RETUNE_FROM:-0}" | tee -a "$LOG"
  AIOLLM_AUTOTUNE=1 timeout "${MOE_TIMEOUT:-150}" python3 bench/moe.py "$MODEL" \
    --tokens ${MOE_TOKENS:-1 8 64 256 4096} --breakdown 1 4096 --precompile "${WORKERS:-12}" \
    --out-dir "$OUT" 2>&1 | grep -v Warning | tee -a "$LOG"
  cp "$(ls -t aiollm/kernels/configs/*.json | head -1)" "$OUT/"  # the file tuning wrote
fi
if ! skip serve; then
  step serve
  # timeout signals its whole process group: the server started in the background too
  PLOT=0 OUT_DIR="$OUT" NUM_REQUESTS="${SERVE_REQUESTS:-400}" timeout -k 10 150 \
    bench/serve_gpu.sh "$MODEL" 2>&1 | tail -40 | tee -a "$LOG"
fi
if ! skip decode; then
  step decode
  mkdir -p /tmp/decode-out
  timeout 100 python3 bench/decode.py "$MODEL" --batch ${DECODE_BATCHES:-1 64} --no-hf \
    --tokenizer "$TOKENIZER" \
    --out-dir /tmp/decode-out 2>&1 | grep -v Warning | tail -20 | tee -a "$LOG"
  cp /tmp/decode-out/decode-*.json "$OUT/" 2>/dev/null
fi
step done
ls -la "$OUT" | tee -a "$LOG"
