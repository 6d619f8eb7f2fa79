"""How logprobs name a token: by its text, or by its id as vLLM's return_tokens_as_token_ids
names it ("token_id:N"), which lets a client (an RL trainer) read the sampled ids back even
where a token's text is not its own (part of a UTF-8 character, a merged space)."""

from __future__ import annotations


def names_by_id(sent: bool | None, server_default: bool) -> bool:
    """Whether a request's logprobs name tokens by id: its return_tokens_as_token_ids, or
    where it sends none (null) the server's --return-tokens-as-token-ids, as vLLM decides."""
    return server_default if sent is None else sent


def id_name(token_id: int) -> str:
    """vLLM's name of a token by its id: "token_id:N"."""
    return f"token_id:{token_id}"
