"""stop_conditions.StopSequences, the matcher of LightLLM's stop sequences that the
hand-out runs on the event loop for every output token of a request that has them."""

from __future__ import annotations

import random
import time

from aiollm.stop_conditions import MAX_STOP_SEQUENCE_TOKENS, MAX_STOP_SEQUENCES, StopSequences


def _brute(output: list[int], seqs: list[tuple[int, ...]]) -> bool:
    return any(len(s) <= len(output) and tuple(output[len(output) - len(s):]) == s for s in seqs)


def test_it_matches_what_a_comparison_of_every_sequence_matches():
    rng = random.Random(0)
    for _ in range(300):
        # a small alphabet: sequences that end others, repeat a token, and partial matches
        seqs = list(dict.fromkeys(tuple(rng.randrange(3) for _ in range(rng.randint(1, 4)))
                                  for _ in range(rng.randint(1, 5))))
        matcher = StopSequences(seqs)
        output = []
        for _ in range(12):
            output.append(rng.randrange(3))
            assert matcher.ends(output) == _brute(output, seqs), (seqs, output)


def _cost(matcher: StopSequences, output: list[int]) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(50):
            matcher.ends(output)
        best = min(best, time.perf_counter() - t)
    return best


def test_a_token_costs_the_same_whatever_the_number_of_sequences():
    """A client can make every sequence end like the output (allowed_token_ids=[t] and
    sequences of t but for their first id): compared one by one, each of the 64 was
    sliced and compared whole for every token, 64 times the cost of one (225 us a token
    a request on this CPU); walked backwards from the output's last token, their shared
    ends are compared once."""
    t, n = 7, MAX_STOP_SEQUENCE_TOKENS
    output = [t] * 1000
    many = [(100 + i,) + (t,) * (n - 1) for i in range(MAX_STOP_SEQUENCES)]
    one, all_ = StopSequences(many[:1]), StopSequences(many)
    assert not all_.ends(output) and all_.ends(output + [many[5][0]] + [t] * (n - 1))
    ratio = _cost(all_, output) / _cost(one, output)
    assert ratio < 4, ratio
