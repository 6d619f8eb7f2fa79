"""A request's stop strings, stop token ids and stop token sequences: their bounds and
their checks, and the stop token sequences' matcher (StopSequences).

vLLM bounds neither of its lists. aiollm takes any number of both and bounds only what
costs the server: the characters of the stop strings (each string's, and all of them
together) and the number of distinct stop token ids. The stop token sequences (LightLLM's
stop_sequences, matched on the output's token ids) are bounded in number and length.
"""

from __future__ import annotations

from aiollm.errors import InvalidRequest, check_unicode, shown_json

# characters per stop string: bounds the text a stream holds back while a stop string may be
# completing (aiollm/engine/output_text.py)
MAX_STOP_STRING_CHARS = 1024
# characters of all stop strings of a request together: the Aho-Corasick automaton that
# matches them is built on the event loop in time linear in them (aiollm/engine/
# stop_strings.py; about 30 ms at this bound on a slow core, the cost of 16 strings of
# MAX_STOP_STRING_CHARS, the most that the former bound of 16 strings took)
MAX_STOP_CHARS = 16 * MAX_STOP_STRING_CHARS
# distinct stop token ids per request: while min_tokens are not out, the sampler bans every
# stop id of every row of the step, a [rows, ids] index array copied to the device each step
# (aiollm/model/sampling_tensors.py), so the widest request sets the batch's width. 1024 is
# past any model's special tokens (Llama 3 reserves 256)
MAX_STOP_TOKEN_IDS = 1024
# stop token sequences per request and token ids per sequence: each output token of the
# request is compared with the sequences' last ids on the event loop (engine/hand_out.py).
# LightLLM's defaults are 10 and 256 (LIGHTLLM_MAX_STOP_SEQUENCES and
# LIGHTLLM_STOP_SEQUENCE_MAX_LENGTH); more sequences are taken here
MAX_STOP_SEQUENCES = 64
MAX_STOP_SEQUENCE_TOKENS = 256


def is_int(v: object) -> bool:
    """Whether `v` is an int of JSON's kind (bool, which Python counts as int, is not)."""
    return isinstance(v, int) and not isinstance(v, bool)


def checked_stop(stop: object) -> list[str]:
    """`stop` (one string or a list of them) as a list of non-empty strings. Raises
    InvalidRequest naming "stop" for anything else (its message naming a list's first bad
    item, "stop[2]"), a string of more than MAX_STOP_STRING_CHARS characters, or more than
    MAX_STOP_CHARS characters in all, and naming the string ("stop", "stop[1]") for a lone
    surrogate, as the HTTP API names it."""
    if isinstance(stop, str) and stop:
        check_unicode(stop, "stop")
        stop = [stop]
    if not isinstance(stop, list):
        raise InvalidRequest(f"stop must be a non-empty string or a list of non-empty strings, "
                             f"got {shown_json(stop)}", param="stop")
    # the bad item quoted alone: the list, cut to 100 characters, hid one past them and
    # left a string open, whose words param_names took for the message's own and renamed
    bad = next((i for i, s in enumerate(stop) if not (isinstance(s, str) and s)), None)
    if bad is not None:
        raise InvalidRequest(f"stop[{bad}] must be a non-empty string, got "
                             f"{shown_json(stop[bad])}", param="stop")
    total = 0
    for i, s in enumerate(stop):
        if len(s) > MAX_STOP_STRING_CHARS:
            raise InvalidRequest(f"stop[{i}] has {len(s)} characters, more than the "
                                 f"{MAX_STOP_STRING_CHARS} allowed", param="stop")
        check_unicode(s, f"stop[{i}]")
        total += len(s)
    if total > MAX_STOP_CHARS:
        raise InvalidRequest(f"the stop strings have {total} characters in all, more than the "
                             f"{MAX_STOP_CHARS} allowed: send fewer or shorter ones",
                             param="stop")
    return stop


def checked_stop_token_ids(ids: object) -> list[int]:
    """`ids` (a list of ints) without repeats, in their first order: an id given twice is one
    stop (clients merge end-id lists: the model's eos, a generation config's, their own).
    Raises InvalidRequest naming "stop_token_ids" for anything else, an id outside
    [0, 2**31), or more than MAX_STOP_TOKEN_IDS distinct ids."""
    if not isinstance(ids, list) or not all(is_int(t) and 0 <= t < 2**31 for t in ids):
        raise InvalidRequest(f"stop_token_ids must be a list of integers in [0, 2**31), got "
                             f"{ids!r:.200}", param="stop_token_ids")
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidRequest(f"at most {MAX_STOP_TOKEN_IDS} distinct stop token ids, got "
                             f"{len(ids)}", param="stop_token_ids")
    return ids


def checked_stop_token_sequences(seqs: object) -> list[tuple[int, ...]]:
    """`seqs` (a list of lists of ints; None is none) as a list of tuples, without
    repeats, in their first order. Raises InvalidRequest naming "stop_token_sequences" for
    anything else, an empty sequence, an id outside [0, 2**31), a sequence of more than
    MAX_STOP_SEQUENCE_TOKENS ids, or more than MAX_STOP_SEQUENCES distinct sequences."""
    if seqs is None:  # (as stop and stop_token_ids take it)
        return []
    ok = isinstance(seqs, (list, tuple)) and all(
        isinstance(s, (list, tuple)) and s and all(is_int(t) and 0 <= t < 2**31 for t in s)
        for s in seqs)
    if not ok:
        raise InvalidRequest(f"stop_token_sequences must be a list of non-empty lists of "
                             f"integers in [0, 2**31), got {shown_json(seqs)}",
                             param="stop_token_sequences")
    long = next((i for i, s in enumerate(seqs) if len(s) > MAX_STOP_SEQUENCE_TOKENS), None)
    if long is not None:
        raise InvalidRequest(f"stop_token_sequences[{long}] has {len(seqs[long])} token ids, "
                             f"more than the {MAX_STOP_SEQUENCE_TOKENS} allowed",
                             param="stop_token_sequences")
    out = list(dict.fromkeys(tuple(s) for s in seqs))
    if len(out) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} distinct stop token sequences, "
                             f"got {len(out)}", param="stop_token_sequences")
    return out


# the key that marks, in StopSequences' tree, a node where a whole sequence was walked
_END = -1


class StopSequences:
    """A request's stop token sequences (checked_stop_token_sequences' tuples) as a tree of
    their ids from the last: ends() walks the output backwards from its last token along
    it, so the sequences' shared ends are compared once. A token costs at most the longest
    sequence's length in dict lookups, whatever the number of sequences (comparing each in
    turn cost their total length: a client's sequences that all end like the output made
    that the event loop's cost per token), and usually one: the last token is no
    sequence's last."""

    __slots__ = ("_root",)

    def __init__(self, seqs: list[tuple[int, ...]]):
        root: dict = {}
        for s in seqs:
            node = root
            for t in reversed(s):
                node = node.setdefault(t, {})
            node[_END] = True
        self._root = root

    def ends(self, output_ids: list[int]) -> bool:
        """Whether `output_ids` (a request's output tokens alone) end with a sequence."""
        node = self._root
        for t in reversed(output_ids):
            node = node.get(t)
            if node is None:
                return False
            if _END in node:
                return True
        return False
