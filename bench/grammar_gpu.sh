#!/usr/bin/env bash
# Constrained decoding under LightLLM's workload (issue 17): one `aiollm serve` of the 8B shape
# (random weights), then three runs against it: every request unconstrained, every request under
# one JSON schema (compiled during the warm-up: the cached case), and a mixed batch where every
# second request is constrained. The prefix cache is off: every run sends the same prompts,
# which a cache would serve to the later runs from the earlier ones.
# Usage: bench/grammar_gpu.sh (env: N requests per run, OUT_DIR, PORT, TOKENIZER, PREWARM=N: a
# discarded first pass, RUNS="none all mixed", REPS=k: the runs k times in turn, labelled
# -r1..-rk; STEP_LOG=path: the server's per-step log (AIOLLM_STEP_LOG); for a dry run on the
# CPU: MODEL_ARGS= (the bundled model) INPUT=64 OUTPUT=8)
set -u
MODEL_ARGS=${MODEL_ARGS-bench/configs/llama-3.1-8b --load-format dummy}
INPUT=${INPUT:-1024}
OUTPUT=${OUTPUT:-128}
PORT=${PORT:-8012}
N=${N:-400}
OUT_DIR=${OUT_DIR:-bench/results}
DAY=$(date +%F)
# an array of records that cannot end within the run's output lengths (ignore_eos does not
# outlast a grammar's end): structure, enums, integers and short strings on every step
SCHEMA='{"type": "array", "minItems": 200, "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "qty": {"type": "integer", "minimum": 0, "maximum": 999}, "kind": {"enum": ["tool", "part", "kit"]}, "ok": {"type": "boolean"}}, "required": ["name", "qty", "kind", "ok"], "additionalProperties": false}}'
BODY="{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"items\", \"schema\": $SCHEMA}}}"
source "$(dirname "$0")/server.sh"
export AIOLLM_STEP_LOG=${STEP_LOG:-}  # empty: no step log
start_server "$OUT_DIR/server-grammar.log" $MODEL_ARGS ${TOKENIZER:+--tokenizer "$TOKENIZER"} \
  --max-model-len 4096 --no-prefix-cache ${EXTRA:-}
run() {  # label, then extra serve.py flags
  local label=$1; shift
  python3 bench/serve.py --url "http://127.0.0.1:$PORT" --backend openai --concurrency 100 \
    --num-requests "$N" --input-len "$INPUT" --output-len-mean "$OUTPUT" --warmup 8 \
    ${TOKENIZER:+--tokenizer "$TOKENIZER"} --label "$label" \
    --out "$OUT_DIR/serve-$DAY-$label.json" "$@"
}
if [ -n "${PREWARM:-}" ]; then  # a discarded pass: the kernels' variants compile first
  run grammar-prewarm --num-requests "$PREWARM" --out /tmp/grammar-prewarm.json > /dev/null
fi
REPS=${REPS:-1}
for k in $(seq "$REPS"); do
  sfx=$([ "$REPS" -gt 1 ] && echo "-r$k")
  for r in ${RUNS:-none all mixed}; do
    case $r in
      none) run grammar-none$sfx ;;
      all) run grammar-all$sfx --extra-body "$BODY" ;;
      mixed) run grammar-mixed$sfx --extra-body "$BODY" --constrained-every 2 ;;
    esac
  done
done
stop_server
grep -E "KV pool|captured|model " "$OUT_DIR/server-grammar.log" | head -5
