#!/usr/bin/env bash
# Issue 18's serving bar: LightLLM's workload (1,024-token prompts, outputs N(128, 32), 100
# clients, 400 requests, ignore_eos) against one `aiollm serve` of the 8B shape (random weights),
# through LightLLM's /generate_stream and through the OpenAI API, with the shared peer client
# (../shared/peers/bench_client.py, the client LightLLM was measured with) and, for goodput at
# TTFT <= 1 s and TPOT <= 50 ms and the roofline fraction, bench/serve.py on /generate_stream.
# One discarded pass first; then REPS rounds of the passes, each pass with its own prompts (the
# prefix cache stays on, as users run it, and cannot reuse an earlier pass). The server's step
# log goes to $OUT_DIR/steps.jsonl unless STEP_LOG= (empty) is set; nvidia-smi's clock and power
# samples of the measured passes to $OUT_DIR/gpu-clocks-*.csv (summary printed at the end).
# Usage: CLIENT=path/to/bench_client.py TOKENIZER=dir bench/lightllm_gpu.sh [MODEL_DIR]
# (env: OUT_DIR, PORT, REPS (default 3), PASSES (default "lightllm openai goodput"), GOODPUT=1:
# one goodput pass after the rounds, EXTRA: more serve flags, TAG: a suffix for result names)
set -u
MODEL=${1:-bench/configs/llama-3.1-8b}
PORT=${PORT:-8013}
OUT_DIR=${OUT_DIR:-bench/results}
NAME=$(basename "$MODEL")
TAG=${TAG:-}
mkdir -p "$OUT_DIR"
source "$(dirname "$0")/server.sh"
export AIOLLM_STEP_LOG=${STEP_LOG-$OUT_DIR/steps.jsonl}
# this device's ceilings (copy bandwidth, bf16 matmul rate) with the shape's bytes and FLOPs of
# the committed roofline, for serve.py's roofline fraction
python3 - "bench/results/roofline-$NAME.json" "$OUT_DIR/roofline-$NAME$TAG.json" <<'EOF'
import json, sys
sys.path.insert(0, "bench")
from decode import measure_ceilings
ceil = measure_ceilings()
print("ceilings", ceil)
json.dump({**json.load(open(sys.argv[1])), **ceil}, open(sys.argv[2], "w"), indent=2)
EOF
start_server "$OUT_DIR/server-$NAME$TAG.log" "$MODEL" --load-format dummy --tokenizer "$TOKENIZER" \
  --max-model-len 4096 ${EXTRA:-}
peer() {  # api seed label
  python3 "$CLIENT" --url "http://127.0.0.1:$PORT" --api "$1" --seed "$2" --tokenizer "$TOKENIZER" \
    --label "$3" --model "$NAME"
}
goodput() {  # bench/serve.py on /generate_stream: goodput, roofline fraction
  python3 bench/serve.py --url "http://127.0.0.1:$PORT" --backend lightllm \
    --concurrency 100 --num-requests 400 --input-len 1024 --output-len-mean 128 \
    --tokenizer "$TOKENIZER" --seed "$((1000 + $1))" --slo-ttft 1 --slo-tpot 0.05 \
    --roofline-json "$OUT_DIR/roofline-$NAME$TAG.json" --label "lightllm-$NAME-r$1" \
    --out "$OUT_DIR/serve-$(date +%F)-lightllm-$NAME$TAG-r$1.json" | tail -12
}
peer lightllm 100 prewarm > "$OUT_DIR/prewarm.jsonl"
# SM clock and power during the measured passes (bench/gpu_clocks.py): at the power cap?
CLOCKS="$OUT_DIR/gpu-clocks-$NAME$TAG.csv"
SMI_PID=
if command -v nvidia-smi >/dev/null; then
  python3 bench/gpu_clocks.py --sample "$CLOCKS" >/dev/null 2>&1 &
  SMI_PID=$!
  trap 'kill "$SMI_PID" 2>/dev/null' EXIT  # also when a timeout ends the script
fi
for k in $(seq "${REPS:-3}"); do
  for p in ${PASSES:-lightllm openai goodput}; do
    case $p in
      lightllm) peer lightllm "$((10 * k + 1))" "lightllm-r$k" >> "$OUT_DIR/peer-$NAME$TAG.jsonl" ;;
      openai) peer openai "$((10 * k + 2))" "openai-r$k" >> "$OUT_DIR/peer-$NAME$TAG.jsonl" ;;
      goodput) goodput "$k" ;;
    esac
  done
done
[ "${GOODPUT:-0}" = 1 ] && goodput 0  # one goodput pass after the rounds
if [ -n "$SMI_PID" ]; then
  kill "$SMI_PID"; wait "$SMI_PID" 2>/dev/null
  echo "gpu clocks $(python3 bench/gpu_clocks.py "$CLOCKS")"
fi
tail -n +1 "$OUT_DIR/peer-$NAME$TAG.jsonl"
stop_server
grep -E "KV pool|captured|model |healthy" "$OUT_DIR/server-$NAME$TAG.log" | head -6
