#!/usr/bin/env bash
# Start-up time (cold and warm Triton cache) and decode speed of two checkouts in one device
# call: bench/startup_gpu.py does the measuring; this sets up the bare GPU machine first.
# Run from the root of the copied tree (main's code), with the other checkout beside it:
#   bash .gpu-NAME/bench/startup_gpu.sh main:MAINSHA=. NAME:SHA=.gpu-NAME
# Needs .whl (carried) at the root and a tokenizer at .gpu-NAME/tok (TOK=dir overrides).
# Writes to $OUT (else bench/results): one JSON and a tarball of the logs.
set -u
OUT=${OUT:-bench/results}
me=$(dirname "$(dirname "$(readlink -f "$0")")")
TOK=${TOK:-$me/tok}
source bench/gpu_setup.sh || exit 1
for spec in "$@"; do  # the native table, built once, into every checkout
  dir=${spec#*=}
  [ "$(readlink -f "$dir")" = "$(readlink -f .)" ] || cp aiollm/native/_table*.so "$dir/aiollm/native/"
done
# the first process on a fresh machine reads torch's libraries from disk: not a start-up cost
python3 -c "import torch, transformers, triton; torch.cuda.init()"
args=()
for spec in "$@"; do args+=(--checkout "$spec"); done
STARTUP_EXTRA_PYTHONPATH=/tmp/site python3 "$me/bench/startup_gpu.py" "${args[@]}" \
  --tokenizer "$TOK" --out-dir "$OUT" --log-dir /tmp/startup-logs \
  --decode-batches ${BATCHES:-1 8 64 100 200 256} ${STARTUP_ARGS:-}
rc=$?
tar -czf "$OUT/startup-logs.tar.gz" -C /tmp startup-logs
exit $rc
