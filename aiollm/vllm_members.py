"""Members of vLLM's LLM that aiollm's LLM lacks on purpose, and names of the vllm package
that the aiollm package lacks, each with what to use instead: a script that reaches for one
(llm.llm_engine, llm.embed(...), `from aiollm import AsyncLLMEngine`) gets an error that
says so, rather than Python's bare "no attribute" or "cannot import name". An attribute's
is an AttributeError, which keeps hasattr() False, so code that probes for a member
(hasattr(llm, "beam_search")) takes its other path; a from-import's is an ImportError
(package_lacking)."""

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


_ENGINE_OPTIONS = ("options are keywords: aiollm.Engine(model, **options) takes "
                   "aiollm.config.EngineConfig's fields, and aiollm.LLM(model, ...) vLLM's "
                   "names of them too (max_num_seqs, enforce_eager, ...)")

# vllm's top-level names that aiollm's package lacks (vLLM's own are vllm/__init__.py's)
PACKAGE_LACKING = {
    "LLMEngine": ("for batches from synchronous code use aiollm.LLM (LLM(model, ...)"
                  ".generate(prompts, params)); for requests one at a time, aiollm.Engine "
                  "(asyncio: await engine.generate(prompt, params))"),
    "AsyncLLMEngine": ("aiollm.Engine is aiollm's asyncio engine: aiollm.Engine(model, "
                       "**options), then await engine.generate(prompt, params), or async "
                       "for over engine.stream(prompt, params)"),
    "EngineArgs": _ENGINE_OPTIONS,
    "AsyncEngineArgs": _ENGINE_OPTIONS,
    "ModelRegistry": ("aiollm's model families are built in (llama, mistral, qwen2, qwen3 "
                      "and their MoE kinds: aiollm.model.config.SUPPORTED_ARCHITECTURES); "
                      "none can be registered"),
    "initialize_ray_cluster": ("aiollm runs in one process, which starts its own tensor "
                               "parallel ranks (tensor_parallel_size): no Ray cluster"),
    **dict.fromkeys(("PoolingParams", "PoolingOutput", "PoolingRequestOutput",
                     "EmbeddingOutput", "EmbeddingRequestOutput", "ClassificationOutput",
                     "ClassificationRequestOutput", "ScoringOutput", "ScoringRequestOutput"),
                    GENERATIVE_ONLY),
}


def package_lacking(name: str, importing: bool) -> ImportError | AttributeError:
    """The error for the aiollm package's missing attribute `name`: PACKAGE_LACKING's
    reason where the vllm package has it, else Python's own message. `importing`: asked by
    a `from aiollm import name` (Python puts its bare "cannot import name" in place of an
    AttributeError there, losing the reason), which gets an ImportError instead."""
    if name not in PACKAGE_LACKING:
        return AttributeError(f"module 'aiollm' has no attribute {name!r}")
    message = f"aiollm has no {name} (vLLM's): {PACKAGE_LACKING[name]}"
    if importing:
        return ImportError(message, name="aiollm")
    return AttributeError(message)
