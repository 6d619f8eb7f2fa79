#!/usr/bin/env bash
# Attention + o_proj fused (aiollm/kernels/attention_oproj.py, issue 18) on one GPU machine:
#   1. its GPU test (the 1B and 8B shapes under every candidate config, a captured graph);
#   2. bench/decode_step.py on the Llama-3.2-1B and 3.1-8B shapes: the batch-1 decode graph
#      unfused ("base"), fused with the default config ("fused") and with each candidate
#      (bench/attn_oproj_variants.py), context 192 in a 264-token graph as bench/decode.py's.
# The fastest candidate goes into aiollm/kernels/configs/<gpu>.json under "attention_oproj"
# (its key is in the variant's spec), then bench/decode.py --batch 1 measures tok/s.
# Usage (from the repository root, after `source bench/gpu_setup.sh`):
#   AIOLLM_COMMIT=<commit> bash bench/attn_oproj_gpu.sh OUT_DIR [TOKENIZER_DIR] [SHAPES...]
set -uo pipefail  # a failed part still lets the next ones run
out=${1:?output directory}
tok=${2:-tok}
shift $(( $# < 2 ? $# : 2 ))
shapes=${*:-llama-3.2-1b llama-3.1-8b}
commit=${AIOLLM_COMMIT:?set AIOLLM_COMMIT to the commit measured}
mkdir -p "$out"
t0=$SECONDS
if [ -z "${SKIP_TEST:-}" ]; then  # SKIP_TEST=1: a second call, for the other shape
  python -m pytest -m gpu tests/test_attention_oproj.py -q -x 2>&1 | tail -5 | tee "$out/test.log"
  echo "test done at $((SECONDS - t0)) s"
fi
for shape in $shapes; do
  python bench/attn_oproj_variants.py "bench/configs/$shape" > "$out/variants-$shape.json"
  python bench/decode_step.py "bench/configs/$shape" --tokenizer "$tok" \
    --variants "$out/variants-$shape.json" \
    --out "$out/decode-step-attn-oproj-$shape-$commit.json" 2>&1 | grep -v Warning \
    | tee "$out/decode-step-$shape.log"
  echo "$shape done at $((SECONDS - t0)) s"
done
