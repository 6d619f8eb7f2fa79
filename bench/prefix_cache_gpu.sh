#!/usr/bin/env bash
# The prefix cache on one GPU, cache on vs --no-prefix-cache, with the same client and
# settings: shared-prefix (2,000-token system prompt + 100 unique tokens, 128 out, 100
# clients), multi-turn (100 conversations x 5 turns, 100-token messages, 128-token answers)
# and LightLLM's workload (unique 1,024-token prompts, outputs Gaussian around 128).
# Usage: bench/prefix_cache_gpu.sh [MODEL_DIR]
# env: TOKENIZER (an HF tokenizer dir or .gguf for server and client; default: the default
# model's), TAG (added to labels, e.g. the commit), OUT_DIR, PORT, N_SHARED (200),
# N_LIGHTLLM (400), CONVERSATIONS (100), EXTRA (server flags), PREWARM=N (a discarded first
# pass of N LightLLM requests on each server: the first server on a fresh machine otherwise
# pays Triton compiles and autotuning of missing shapes inside its measured runs, and the
# second reads what the first wrote)
set -u
MODEL=${1:-bench/configs/llama-3.1-8b}
PORT=${PORT:-8012}
OUT_DIR=${OUT_DIR:-bench/results}
NAME=$(basename "$MODEL")
TOKENIZER=${TOKENIZER:-$(python3 -c "from aiollm.model import default_model_path; print(default_model_path())")}
URL="http://127.0.0.1:$PORT"
DAY=$(date +%F)
LOG="$OUT_DIR/prefix-cache-servers-$NAME.log"
: > "$LOG"

bench() {  # label, then serve.py options
  local label=$1; shift
  python3 bench/serve.py --url "$URL" --tokenizer "$TOKENIZER" --concurrency 100 \
    --label "$label${TAG:+-$TAG}" --out "$OUT_DIR/serve-$DAY-$label${TAG:+-$TAG}.json" "$@" \
    | tee -a "$LOG"
}

source "$(dirname "$0")/server.sh"
for mode in on off; do
  flag=""; [ "$mode" = off ] && flag="--no-prefix-cache"
  start_server "/tmp/server-$mode.log" "$MODEL" --load-format dummy --max-model-len 4096 \
    --tokenizer "$TOKENIZER" $flag ${EXTRA:-}
  if [ -n "${PREWARM:-}" ]; then
    python3 bench/serve.py --url "$URL" --tokenizer "$TOKENIZER" --concurrency 100 \
      --num-requests "$PREWARM" --input-len 1024 --output-len-mean 128 --seed 9 \
      --out /tmp/prewarm.json > /dev/null
    curl -sf -X POST "$URL/flush_cache" > /dev/null
  fi
  bench "prefix-$mode-shared-$NAME" --workload shared-prefix --prefix-len 2000 --input-len 100 \
    --output-len 128 --num-requests "${N_SHARED:-200}"
  curl -sf -X POST "$URL/flush_cache" >> "$LOG"; echo >> "$LOG"
  bench "prefix-$mode-multiturn-$NAME" --workload multi-turn --turns 5 --input-len 100 \
    --output-len 128 --num-requests $((5 * ${CONVERSATIONS:-100})) --seed 1
  curl -sf -X POST "$URL/flush_cache" >> "$LOG"; echo >> "$LOG"
  bench "prefix-$mode-lightllm-$NAME" --input-len 1024 --output-len-mean 128 \
    --num-requests "${N_LIGHTLLM:-400}" --warmup 8 --seed 2
  curl -sf "$URL/metrics" | grep -E "^aiollm_(prefix_cache|evictions|kv_tokens)" >> "$LOG"
  stop_server
  grep -E "KV pool|prefix cache|captured|warm-up" "/tmp/server-$mode.log" | head -8 >> "$LOG"
done
