#!/usr/bin/env bash
# One bench/sim.py workload on the real server under each admission policy, one server per
# policy in sequence, goodput under the Past-Future paper's SLA from bench/serve.py: checks the
# simulator against the engine. The scheduler is blind to the fixed lengths bench/serve.py asks
# for (--scheduler-blind-cap), as in the simulator, and the KV pool is the workload's.
# Usage: bench/pastfuture_gpu.sh [MODEL_DIR] ("" for the default model; env: WORKLOAD, CLIENTS, N, KV, CAP, MAXLEN,
# POLICIES, OUT_DIR, PORT, EXTRA, MAX_DURATION)
set -u
MODEL=${1-bench/configs/llama-3.1-8b}
WORKLOAD=${WORKLOAD:-decode_heavy_s8}
CLIENTS=${CLIENTS:-160}
N=${N:-240}
KV=${KV:-16384}
CAP=${CAP:-512}
MAXLEN=${MAXLEN:-2048}
POLICIES=${POLICIES:-"pf_paper pf_quantile aggressive conservative"}
PORT=${PORT:-8013}
OUT_DIR=${OUT_DIR:-bench/results}
source "$(dirname "$0")/server.sh"
for policy in $POLICIES; do
  case $policy in
    pf_paper) args="--scheduler past_future --past-future-estimator paper" ;;
    pf_quantile) args="--scheduler past_future --past-future-estimator quantile" ;;
    *) args="--scheduler $policy" ;;
  esac
  t0=$(date +%s)
  start_server "$OUT_DIR/server-$policy.log" ${MODEL:+"$MODEL" --load-format dummy} \
    --max-model-len "$MAXLEN" --kv-tokens "$KV" --scheduler-blind-cap "$CAP" $args ${EXTRA:-}
  echo "== $policy: server up in $(( $(date +%s) - t0 )) s"
  python3 bench/serve.py --url "http://127.0.0.1:$PORT" --concurrency "$CLIENTS" --num-requests "$N" \
    --sim-workload "$WORKLOAD" --slo-ttft 10 --slo-max-tpot 1.5 ${MAX_DURATION:+--max-duration $MAX_DURATION} \
    --label "pastfuture-$WORKLOAD-c$CLIENTS-$policy" \
    --out "$OUT_DIR/serve-$(date +%F)-pastfuture-$WORKLOAD-c$CLIENTS-$policy.json" | grep -E "completed|throughput|goodput|TTFT|MAX_TP"
  curl -sf "http://127.0.0.1:$PORT/metrics" | grep -E "^aiollm_evictions" || true
  stop_server
done
