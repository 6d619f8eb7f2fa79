"""The KV pool's own errors, on the CPU: a pool that cannot be allocated names its size
readably and what to change."""

from __future__ import annotations

import pytest
import torch

from aiollm.model.kv_pool import KVPool


def test_a_pool_past_the_memory_names_its_size_and_the_option():
    """2**48 token slots of 8 bytes (K and V of one float32 each): 2 PiB, past any address
    space, so numpy's calloc fails on every machine; the size read "2097152.0 GiB"."""
    with pytest.raises(ValueError) as e:
        KVPool(1, 1, 1, 2**48, torch.float32, "cpu")
    message = str(e.value)
    assert message.startswith(f"a KV pool of {2**48} tokens (2.00 PiB) does not fit in the "
                              "memory of cpu: lower kv_tokens (--kv-tokens)"), message
    assert isinstance(e.value.__cause__, MemoryError)
