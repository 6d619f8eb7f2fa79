#!/usr/bin/env bash
# LightLLM's published workload against `aiollm serve` on one GPU: input 1024 tokens, outputs
# Gaussian around 128, 100 concurrent clients, 400 requests, an 8B-shaped model with random
# weights. Usage: bench/serve_gpu.sh [MODEL_DIR] (env: TOKENIZER, OUT_DIR, PORT, EXTRA,
# PREWARM=N: a discarded first pass of N requests, NUM_REQUESTS: default 400, PLOT=0: no
# plot, BENCH_COMMIT: the commit to name in the results, for a copy of the tree without git)
set -u
MODEL=${1:-bench/configs/llama-3.1-8b}
PORT=${PORT:-8011}
OUT_DIR=${OUT_DIR:-bench/results}
NAME=$(basename "$MODEL")
source "$(dirname "$0")/server.sh"
client() {  # the measured pass: 400 requests after 8 discarded ones
  python3 bench/serve.py --url "http://127.0.0.1:$PORT" --backend openai --concurrency 100 \
    --num-requests "${NUM_REQUESTS:-400}" --input-len 1024 --output-len-mean 128 \
    ${TOKENIZER:+--tokenizer "$TOKENIZER"} --roofline-json "bench/results/roofline-$NAME.json" \
    --warmup 8 --label "aiollm-$NAME" "$@" \
    --out "$OUT_DIR/serve-$(date +%F)-aiollm-$NAME${BENCH_COMMIT:+-$BENCH_COMMIT}.json" \
    $([ "${PLOT:-1}" = 1 ] && echo --plot)
}
if [ -z "${PREWARM:-}" ]; then  # the client builds its prompts while the server starts
  client --wait-ready 900 & client_pid=$!
fi
start_server "$OUT_DIR/server-$NAME.log" "$MODEL" --load-format dummy \
  ${TOKENIZER:+--tokenizer "$TOKENIZER"} --max-model-len 4096 ${EXTRA:-}
if [ -n "${PREWARM:-}" ]; then  # a first pass, discarded: the kernels' variants compile
  python3 bench/serve.py --url "http://127.0.0.1:$PORT" --backend openai --concurrency 100 \
    --num-requests "$PREWARM" --input-len 1024 --output-len-mean 128 \
    ${TOKENIZER:+--tokenizer "$TOKENIZER"} --out /tmp/prewarm.json > /dev/null
  client
else
  wait "$client_pid"
fi
curl -sf "http://127.0.0.1:$PORT/metrics" > "$OUT_DIR/metrics-$NAME.txt"  # step-time histograms
stop_server
grep -E "KV pool|captured|model " "$OUT_DIR/server-$NAME.log" | head -5
