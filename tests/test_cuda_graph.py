"""The decode-graph batch sizes: every batch has a graph, padding stays small."""

import pytest

from aiollm.engine.cuda_graph import batch_buckets


@pytest.mark.parametrize("max_bs", [1, 2, 3, 8, 17, 64, 100, 256, 512])
def test_every_batch_has_a_bucket_with_bounded_padding(max_bs):
    buckets = batch_buckets(max_bs)
    assert buckets == sorted(set(buckets)) and buckets[0] == 1 and buckets[-1] == max_bs
    for b in range(1, max_bs + 1):
        pad = next(x for x in buckets if x >= b) - b
        # powers of two to 16 (at most b - 1 rows of padding), then steps of 16 to 64, of 32
        assert pad < max(b, 1) if b <= 16 else pad < (16 if b <= 64 else 32)


def test_default_max_batch_captures_14_graphs():
    assert batch_buckets(256) == [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256]
    with pytest.raises(ValueError, match="max_bs"):
        batch_buckets(0)
