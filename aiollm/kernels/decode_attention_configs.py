"""Launch configs of decode attention (decode_attention.py): the shape classes a config is
tuned for (batch size and longest context), the default and CPU configs, the tuning
candidates, and the lookup of a shape's config in the GPU's table (autotune.py, under the
kernel name "decode_attention").
"""

from __future__ import annotations

import torch
import triton

from aiollm.kernels.autotune import Config, bucket, get_config

# the shape classes of the tuned configs: batch size and longest context
BATCH_CLASSES = (1, 4, 16, 64, 256)
LENGTH_CLASSES = (512, 1024, 2048, 4096, 8192, 16384, 32768)
# Default when nothing is tuned; CPU_CONFIG uses small blocks so the interpreter runs quickly
# and short test sequences still span several blocks.
DEFAULT_CONFIG: Config = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "split_tokens": 64}
CPU_CONFIG: Config = {"BLOCK_N": 16, "num_warps": 1, "num_stages": 1, "split_tokens": 32}
# K/V rows past WIDE_ROW_BYTES (head_dim 256 in float32: Gemma's) would take the default's two
# pipelined stages of 64-row K and V blocks to 256 KiB of shared memory, past an H100's
# 227 KiB: those shapes default to one stage of 32-row blocks (a bound, not a measurement;
# tuning replaces it where it runs)
WIDE_ROW_BYTES = 512
WIDE_ROW_CONFIG: Config = {"BLOCK_N": 32, "num_warps": 4, "num_stages": 1, "split_tokens": 64}
CANDIDATES: list[Config] = [
    {"BLOCK_N": bn, "num_warps": w, "num_stages": s, "split_tokens": st}
    for bn, w, s in ((32, 2, 2), (32, 4, 2), (64, 4, 2), (64, 4, 3), (64, 8, 3), (128, 4, 2),
                     (128, 8, 2))
    # 32: one block a split at batch 1 (each split's K/V load precedes the dependent-launch
    # wait; bench/README.md, "Decode")
    for st in (32, 64, 256, 1024)
]


def _config(batch: int, num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
            device: torch.device, max_seq_len: int, bench) -> Config:
    """The tuned config of this shape class (autotune.get_config; `bench` times a candidate)."""
    key = (f"hq{num_q_heads}-hkv{num_kv_heads}-d{head_dim}-{str(dtype).removeprefix('torch.')}"
           f"-b{bucket(batch, BATCH_CLASSES)}-n{bucket(max_seq_len, LENGTH_CLASSES)}")
    wide = triton.next_power_of_2(head_dim) * dtype.itemsize > WIDE_ROW_BYTES
    default = WIDE_ROW_CONFIG if wide else DEFAULT_CONFIG
    return get_config("decode_attention", key, device, default, CANDIDATES, bench,
                      classes={"b": BATCH_CLASSES, "n": LENGTH_CLASSES})
