"""Members of vLLM's LLM that aiollm's LLM lacks on purpose, each with what to use instead:
a script that reaches for one (llm.llm_engine, llm.embed(...)) gets an AttributeError that
says so, rather than Python's bare "no attribute". AttributeError keeps hasattr() False,
so code that probes for a member (hasattr(llm, "beam_search")) takes its other path."""

from __future__ import annotations

from aiollm.vllm_flags import GENERATIVE_ONLY

_POOLING = (f"{GENERATIVE_ONLY}; generate(..., SamplingParams(max_tokens=0, "
            "prompt_logprobs=0)) gives a text's token logprobs")

LACKING = {
    "llm_engine": ("vLLM's engine object: aiollm's engine is llm.engine (an aiollm Engine: "
                   "its context length llm.engine.max_model_len, its options "
                   "llm.engine.config), its tokenizer llm.get_tokenizer()"),
    "embed": _POOLING,
    "encode": _POOLING,
    "classify": _POOLING,
    "score": _POOLING,
    "reward": _POOLING,
    "beam_search": ("beam search is not supported: generate SamplingParams(n=k, "
                    "logprobs=0) and rank the outputs by cumulative_logprob"),
    "get_metrics": ("the engine's counts of now are llm.engine.stats(); its throughput is "
                    "logged to the \"aiollm.stats\" logger"),
    "start_profile": "profile with torch.profiler around the call",
    "stop_profile": "profile with torch.profiler around the call",
    "sleep": "close() gives back the weights and the KV pool; a new LLM loads them again",
    "wake_up": "close() gives back the weights and the KV pool; a new LLM loads them again",
    "collective_rpc": "the model runs in this process: no workers to call",
    "apply_model": "the model runs in this process: no workers to call",
}


def lacking(name: str) -> AttributeError:
    """The AttributeError for LLM's missing attribute `name`: LACKING's reason where vLLM's
    LLM has it, else Python's own message."""
    if name in LACKING:
        return AttributeError(f"aiollm's LLM has no {name} (vLLM's LLM has): {LACKING[name]}")
    return AttributeError(f"'LLM' object has no attribute {name!r}")
