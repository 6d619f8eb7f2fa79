"""Cache salts (vLLM's `cache_salt`) as the Engine API takes them: a keyword of generate,
stream, chat and stream_chat, or a key of a prompt dict ({"prompt": text, "cache_salt": s},
as vLLM's LLM.generate takes one). The prefix cache shares KV only between requests of the
same salt, or of none (engine/prefix_cache.py), so that one tenant cannot learn another's
prompts by timing its cache hits. As in vLLM, a salt is a non-empty string; null (None) is
no salt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiollm.errors import InvalidRequest


def checked_salt(salt: Any, param: str = "cache_salt") -> str | None:
    """`salt` when it is None or a non-empty str; InvalidRequest naming `param` otherwise."""
    if salt is None or (isinstance(salt, str) and salt):
        return salt
    got = "an empty string" if isinstance(salt, str) else f"{type(salt).__name__} {salt!r:.40}"
    raise InvalidRequest(f"{param} must be a non-empty string (or left out for no salt), "
                         f"got {got}", param=param)


def split_salt(prompt: Any, salt: Any, param: str = "cache_salt",
               own_param: str = "prompt.cache_salt") -> tuple[Any, str | None]:
    """(the prompt without its salt, the request's salt): a prompt dict's "cache_salt"
    taken out of it (checked_salt naming `own_param`), else `salt`, the call's keyword
    (naming `param`). A dict's salt and a different keyword one are refused: which one the
    caller meant is unknown."""
    if isinstance(prompt, dict) and "cache_salt" in prompt:
        own = checked_salt(prompt["cache_salt"], own_param)
        if salt is not None and salt != own:
            raise InvalidRequest("the prompt dict's cache_salt and the cache_salt argument "
                                 "differ: give one of them", param=param)
        return {k: v for k, v in prompt.items() if k != "cache_salt"}, own
    return prompt, checked_salt(salt, param)


def salts_of_batch(prompts: Sequence[Any], batch_name: str
                   ) -> tuple[list[Any], list[str | None]]:
    """A batch's prompts without their dicts' "cache_salt", and each one's salt (None:
    none); InvalidRequest naming `<batch_name>[i].cache_salt` for a bad one."""
    pairs = [split_salt(p, None, own_param=f"{batch_name}[{i}].cache_salt")
             for i, p in enumerate(prompts)]
    return [p for p, _ in pairs], [s for _, s in pairs]
