#!/usr/bin/env bash
# Issue 18's batch-1 decode measurement on one GPU machine, in one call:
#   1. bench/gemv.py: time the fused decode GEMVs alone against the copy bandwidth and cuBLAS
#      (GEMV_TUNE=1: retune every GEMV key first, timed alone, and write them to
#      aiollm/kernels/configs/; by default only missing keys are tuned, so that configs picked
#      by whole-step timing, bench/decode_step.py, stay), check the model's fused path;
#   2. bench/decode.py on the Llama-3.2-1B and 3.1-8B shapes at batch 1, 4, 16 (CUDA graphs);
#   3. bench/profile_step.py: the kernels of an eager batch-1 decode step of the 1B shape.
# Usage (from the repository root, after `source bench/gpu_setup.sh`):
#   AIOLLM_COMMIT=<commit> bash bench/gemv_gpu.sh OUT_DIR [TOKENIZER_DIR]
set -uo pipefail  # a failed part still lets the next ones run
out=${1:?output directory}
tok=${2:-tok}
export AIOLLM_COMMIT=${AIOLLM_COMMIT:-${BENCH_COMMIT:?set AIOLLM_COMMIT to the commit measured}}
t0=$SECONDS
python bench/gemv.py bench/configs/llama-3.2-1b bench/configs/llama-3.1-8b \
  ${GEMV_TUNE:+--tune --warm-procs 14} --out-dir "$out" 2>&1 | grep -v Warning | tee "$out/gemv.log"
cp aiollm/kernels/configs/*H200*.json "$out/" 2>/dev/null || cp aiollm/kernels/configs/*.json "$out/"
echo "gemv done at $((SECONDS - t0)) s"
decode() {
  python bench/decode.py "$@" --no-hf --tokenizer "$tok" --out-dir "$out" 2>&1 | grep -v Warning \
    | tail -25
}
decode bench/configs/llama-3.2-1b bench/configs/llama-3.1-8b --batch 1 4 16 | tee "$out/decode.log"
if ! grep -q "^wrote" "$out/decode.log"; then  # e.g. a graph that would not capture with PDL
  echo "decode failed: again with AIOLLM_PDL=0"
  AIOLLM_PDL=0 decode bench/configs/llama-3.2-1b bench/configs/llama-3.1-8b --batch 1 4 16 \
    | tee "$out/decode.log"
else  # what programmatic dependent launch is worth: the 1B shape without it
  mkdir -p /tmp/nopdl
  AIOLLM_PDL=0 decode bench/configs/llama-3.2-1b --batch 1 4 --out-dir /tmp/nopdl \
    | tail -8 | tee "$out/decode-1b-no-pdl.log"
fi
echo "decode done at $((SECONDS - t0)) s"
python bench/profile_step.py bench/configs/llama-3.2-1b --batch 1 --tokenizer "$tok" --top 25 \
  2>&1 | tail -28 | tee "$out/profile-1b.log"
echo "all done at $((SECONDS - t0)) s"
