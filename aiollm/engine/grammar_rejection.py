"""Why a request's grammar refused the token its request sampled, and the error that ends
the request: the client's (InvalidRequest naming the field at fault) where its constraints
left the grammar no token, the server's (RequestFailed) where the mask should have kept the
token out. Grammars.accept() finds the refusal; the hand-out (engine/hand_out.py) asks here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from aiollm.errors import InvalidRequest, RequestFailed


def rejection(params, n_out: int, dead_end: bool = False
              ) -> tuple[str, Callable[[str], Exception]]:
    """Why a request's grammar refused its sampled token, and what to raise with that
    message: the mask makes it a bug (RequestFailed), unless the request's other constraints
    left the grammar no token (InvalidRequest naming min_tokens when it banned the end where
    the grammar ends, allowed_token_ids when they are outside it, bad_words when they ban
    all it allows: the client's fault, a 400, not a 500 its client would retry), or the
    grammar itself allows no token of the vocabulary where it is (`dead_end`,
    Grammars.dead_end: InvalidRequest naming the grammar's field; check_writable finds it
    at compile time only where the grammar begins)."""
    c = params.constraint
    has_grammar = c is not None and c.grammar is not None
    if dead_end and has_grammar:
        p = c.grammar.param
        return (f"{p}: after {n_out - 1} tokens of output, no token of the model's vocabulary "
                "can continue it as this grammar allows (nor end it there), so the model "
                "cannot write an output that matches; loosen the grammar, or leave it out",
                partial(InvalidRequest, param=p))
    if params.min_tokens > n_out - 1:
        if not has_grammar:  # allowed_token_ids alone
            return (f"min_tokens ({params.min_tokens}) forbids ending the output, and "
                    "allowed_token_ids allow only tokens that end it (eos or a stop token "
                    "id)", partial(InvalidRequest, param="min_tokens"))
        return (f"min_tokens ({params.min_tokens}) forbids ending the output where the "
                "grammar ends it", partial(InvalidRequest, param="min_tokens"))
    allowed = c is not None and c.allowed_token_ids is not None
    if allowed and params.bad_words:  # either may be the one at fault: both are named
        where = " the grammar allows" if has_grammar else ""
        return (f"allowed_token_ids and bad_words together leave no token{where} next",
                partial(InvalidRequest, param="allowed_token_ids"))
    if params.bad_words:
        return ("bad_words ban every token the grammar allows next",
                partial(InvalidRequest, param="bad_words"))
    if allowed:
        return ("allowed_token_ids allow none of the tokens the grammar allows next",
                partial(InvalidRequest, param="allowed_token_ids"))
    return "a token was sampled against the request's grammar", RequestFailed
