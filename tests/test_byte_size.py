"""byte_size: sizes in start-up errors and logs read in a unit that shows them."""

from __future__ import annotations

import pytest

from aiollm.byte_size import byte_size


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (32 * 1024, "32.00 KiB"),
    (1536 * 1024, "1.50 MiB"),
    # just under a unit rounds up into it, not to "1024.00 KiB"
    (2**20 - 1, "1.00 MiB"),
    (int(106.61 * 2**30), "106.61 GiB"), (3 * 2**40, "3.00 TiB"), (2**60, "1024.00 PiB")])
def test_the_largest_unit_of_which_there_is_one(n, text):
    assert byte_size(n) == text


@pytest.mark.parametrize("n, text", [(1023.4, "1023 B"), (1023.6, "1.00 KiB"), (511.5, "512 B"),
                                     (2.5 * 1024, "2.50 KiB")])
def test_a_fraction_of_a_byte_rounds_as_the_larger_units_do(n, text):
    """Below 1 KiB bytes were cut, not rounded: 1023.6 B read "1023 B" where 1023.6 KiB
    reads "1023.60 KiB" and 1,048,575.6 B "1.00 MiB"; now the nearest whole byte, and a
    size that rounds to 1,024 B reads 1.00 KiB, as a size that rounds to 1,024 KiB reads
    1.00 MiB."""
    assert byte_size(n) == text
