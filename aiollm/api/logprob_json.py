"""A logprob as the JSON answers carry it: JSON has no -inf, so a token the request made
impossible (cut by top-k, top-p or min-p under a processed --logprobs-mode, forbidden by a
grammar, banned) is reported at -9999.0, the number OpenAI's API and vLLM's server send for
it. The engine's own values (TokenLogprob, the offline LLM's Logprob) keep -inf, as vLLM's
Logprob objects do.
"""

from __future__ import annotations

# OpenAI's and vLLM's stand-in for the logprob of an impossible token
IMPOSSIBLE = -9999.0


def json_logprob(value: float) -> float:
    """`value` (a natural-log probability, or a logit under a *_logits mode), with -inf and
    anything below -9999.0 raised to -9999.0, as vLLM's OpenAI server reports them."""
    return value if value >= IMPOSSIBLE else IMPOSSIBLE
