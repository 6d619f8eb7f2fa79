"""`metadata`, the client's own key-value pairs on /v1/responses (kept with the response and
echoed in every Response of it) and /v1/chat/completions (read, and otherwise unused),
checked against OpenAI's documented bounds: at most 16 pairs, keys of 1 to 64
characters, values strings of at most 512. Unbounded, a client's megabytes of metadata were
kept with each stored response and repeated in each of its stream's events.
"""

from __future__ import annotations

from typing import Any

from aiollm.errors import InvalidRequest, check_type, shown_json

MAX_PAIRS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512


def check_metadata(metadata: dict[str, Any] | None) -> None:
    """InvalidRequest where `metadata` (None: not sent; a JSON object's keys are strings)
    is past OpenAI's bounds, naming the field: `metadata` for too many pairs or a key
    empty or too long, `metadata.<key>` for a value not a string or too long; the key or
    value quoted as JSON spells it, cut to errors.ID_CHARS characters."""
    if metadata is None:
        return
    if len(metadata) > MAX_PAIRS:
        raise InvalidRequest(f"metadata has {len(metadata)} key-value pairs: at most "
                             f"{MAX_PAIRS} are taken", param="metadata")
    for key, value in metadata.items():
        if not key:  # a key that names nothing: likelier a client's slip than a name
            raise InvalidRequest('metadata has an empty key "": keys have 1 to '
                                 f"{MAX_KEY_CHARS} characters", param="metadata")
        if len(key) > MAX_KEY_CHARS:
            raise InvalidRequest(f"metadata key {shown_json(key)} has {len(key)} characters: "
                                 f"at most {MAX_KEY_CHARS} are taken", param="metadata")
        param = f"metadata.{key}"
        check_type(value, (str,), param, required=True)
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidRequest(f"{param}: the value {shown_json(value)} has {len(value)} "
                                 f"characters: at most {MAX_VALUE_CHARS} are taken",
                                 param=param)
