"""vLLM's keyword names for what LLM(...), LLM.generate and LLM.chat take under aiollm's own
names, so that vLLM code runs as it is: sampling_params (params), use_tqdm (progress),
messages (conversations), and the chat template's options add_generation_prompt,
continue_final_message, chat_template_kwargs, chat_template and chat_template_content_format
(aiollm's template=TemplateOptions(...)); and lora_request, None alone.
A value given under both names is a TypeError naming both, as Python refuses an argument
given twice.

LLM(...)'s options (`engine_options`) are `aiollm serve`'s vLLM flags as keywords, from the
CLI's own tables (aiollm/vllm_flags.py): its aliases (max_num_seqs, max_num_batched_tokens,
enforce_eager, enable_prefix_caching; dtype="half"/"float" or a torch.dtype); its
NO_EFFECT switches, accepted; its NO_EFFECT_VALUES, accepted with a log line saying so
(but for a value they refuse, a ValueError as the CLI's); its REFUSED flags, a ValueError
with the flag's message, its flags written as keywords; optimization_level and
compilation_config, read as the CLI's -O and -cc are (aiollm/vllm_compilation.py: no CUDA
graphs where vLLM would have none, the largest graph as cuda_graph_max_batch, the rest
logged as having no effect), and so are cudagraph_capture_sizes (cuda_graph_sizes),
max_cudagraph_capture_size and performance_mode, as the CLI's flags of those names
(aiollm/vllm_graph_keywords.py reads all of these); structured_outputs_config, read as
the CLI's --structured-outputs-config (aiollm/vllm_structured_config.py: its backend as
grammar_backend, its reasoning_parser as reasoning_parser); seed=None, vLLM's default, is
aiollm's (0), and so is max_model_len=-1 (vLLM's "the longest that fits", as
`aiollm serve --max-model-len -1`).
Keywords vLLM and aiollm share by name are EngineConfig's fields and pass as they are
(tensor_parallel_size, gpu_memory_utilization, which lm-eval-harness passes on every call and
which on a GPU sizes the KV pool as vLLM's does, and kv_cache_memory_bytes, the pool's size in
bytes: aiollm/model/kv_pool_size.py). swap_space, which vLLM's LLM takes and ignores
(lm-eval-harness passes 4), is taken with a warning.
A flag of vLLM's server alone (SERVER_ONLY) stays unknown, as in vLLM's LLM: a TypeError
naming it, as is any keyword neither vLLM's nor aiollm's.
"""

from __future__ import annotations

import difflib
import logging
import numbers
import re
from dataclasses import fields
from typing import Any

from aiollm import (vllm_flags, vllm_graph_keywords, vllm_structured_config,
                    vllm_value_checks)
from aiollm.config import EngineConfig
from aiollm.engine.content_format import check_content_format
from aiollm.engine.template_options import TemplateOptions
from aiollm.errors import InvalidRequest
from aiollm.flag_kinds import Ignored, Refusal

log = logging.getLogger(__name__)

UNSET: Any = object()  # an argument not passed (where None is a value of its own)


def _both(ours: str, theirs: str) -> TypeError:
    return TypeError(f"got both {ours} and {theirs} (vLLM's name for {ours}): pass one of "
                     "them")


def either(ours: Any, ours_name: str, theirs: Any, theirs_name: str,
           ours_unset: Any = None) -> Any:
    """The value given under aiollm's name (`ours`; `ours_unset` when not given) or vLLM's
    (`theirs`; None when not given). Raises TypeError naming both when both are given."""
    if theirs is None:
        return ours
    if ours is not ours_unset:
        raise _both(ours_name, theirs_name)
    return theirs


def no_lora(lora_request: Any) -> None:
    """vLLM's lora_request keyword of LLM.generate and LLM.chat: None (no adapter, which
    callers such as lm-eval-harness pass always) is taken; an adapter raises InvalidRequest
    naming lora_request."""
    if lora_request is not None:
        raise InvalidRequest("LoRA adapters are not supported (lora_request must be None): "
                             "serve a checkpoint with the adapter merged into its weights",
                             param="lora_request")


def no_priority(priority: Any, prompts: Any) -> None:
    """vLLM's priority keyword of LLM.generate: None, or one integer per prompt, all 0 (vLLM
    itself takes only 0s unless its priority scheduling is on; aiollm has none: requests
    are admitted in arrival order). Raises InvalidRequest naming priority otherwise."""
    if priority is None:
        return
    n = (1 if isinstance(prompts, (str, dict))
         else len(prompts) if isinstance(prompts, (list, tuple)) else None)
    if (not isinstance(priority, (list, tuple)) or (n is not None and len(priority) != n)
            or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool)
                       for p in priority)):
        count = "" if n is None else f" ({n} prompts)"
        raise InvalidRequest(f"priority must be None or a list of integers, one per "
                             f"prompt{count}, got {priority!r:.80}", param="priority")
    if any(p != 0 for p in priority):
        raise InvalidRequest("priority scheduling is not supported: every priority must be 0 "
                             "(requests are admitted in arrival order)", param="priority")


def no_multimodal_chat(mm_processor_kwargs: Any) -> None:
    """vLLM's keyword of LLM.chat for image processing: None alone (no model here takes
    images); InvalidRequest naming mm_processor_kwargs otherwise."""
    if mm_processor_kwargs is not None:
        raise InvalidRequest("mm_processor_kwargs is not supported: aiollm's models take "
                             "text alone (no images or audio to process)",
                             param="mm_processor_kwargs")


def template_options(template: TemplateOptions | None, add_generation_prompt: bool | None,
                     continue_final_message: bool | None, chat_template_kwargs: dict | None,
                     chat_template: str | None = None,
                     content_format: str = "auto") -> TemplateOptions | None:
    """`template`, or the TemplateOptions that vLLM's keywords say (None among them, and
    content_format "auto": not given, the default). Raises InvalidRequest naming
    chat_template_content_format for a content format not of CONTENT_FORMATS, TypeError
    naming template and the keyword when both are given."""
    check_content_format(content_format)
    given = {"add_generation_prompt": add_generation_prompt,
             "continue_final_message": continue_final_message,
             "chat_template_kwargs": chat_template_kwargs, "chat_template": chat_template,
             "chat_template_content_format": None if content_format == "auto"
             else content_format}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return template
    if template is not None:
        raise TypeError(f"got both template and {next(iter(given))} (vLLM's keyword for "
                        "one of template's options): pass one of them")
    kwargs = given.pop("chat_template_kwargs", {})
    fmt = given.pop("chat_template_content_format", "auto")
    return TemplateOptions(**given, kwargs=kwargs, content_format=fmt,
                           content_format_name="chat_template_content_format")


# vLLM's keyword -> aiollm's option (EngineConfig field) of the same meaning, as
# aiollm/cli/serve_parser.py aliases the flags (tests/test_offline_vllm_options.py checks
# that they agree)
_ALIASES = {"max_num_seqs": "max_running_requests",
            "max_num_batched_tokens": "max_prefill_tokens",
            "enforce_eager": "cuda_graph",  # negated: eager means no CUDA graphs
            "enable_prefix_caching": "prefix_cache"}
_ALIAS_SWITCHES = {"enforce_eager", "enable_prefix_caching"}
# vLLM's LLM sets it by default; aiollm's configures no logging: the periodic statistics go
# to the "aiollm.stats" logger at INFO and show where the program's logging shows them
_SWITCHES_OF_NO_EFFECT = {"disable_log_stats"}
# aiollm's options that vLLM's LLM takes under the same name with None as its default:
# None is that default, which is aiollm's (seed: vLLM's V1 engine seeds None as 0)
_NONE_IS_DEFAULT = {"seed"}
_DTYPE_NAMES = ("float32", "bfloat16", "float16")


def _torch_dtype_name(value: Any) -> Any:
    """A torch.dtype aiollm takes (torch.float16, torch.half...) as its name; anything
    else as it is, for EngineConfig to refuse naming it. torch is not imported here."""
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        name = str(value).removeprefix("torch.")
        if name in _DTYPE_NAMES:
            return name
    return value


def _keyword(flag: str) -> tuple[str, bool]:
    """A `vllm serve` flag as vLLM's LLM keyword, and the value a switch of that name sets:
    --no-enable-x is (enable_x, False), --x is (x, True)."""
    name = flag.removeprefix("--")
    return name.removeprefix("no-").replace("-", "_"), not name.startswith("no-")


def _tables() -> tuple[set[str], dict[tuple[str, bool], Refusal], dict[str, Refusal]]:
    """The CLI's NO_EFFECT and REFUSED flags (but SERVER_ONLY) as keywords: those taking
    True or False; the (keyword, value) pairs of switches refused; the keywords taking a
    value, refused but for None and refusal.same."""
    switches = set(_SWITCHES_OF_NO_EFFECT)
    refused_switches, refused_values = {}, {}
    for flag in vllm_flags.NO_EFFECT:
        if flag not in vllm_flags.SERVER_ONLY:
            switches.add(_keyword(flag)[0])
    for refusal in vllm_flags.REFUSED:
        if refusal.names[-1] in vllm_flags.SERVER_ONLY:
            continue
        keyword, value = _keyword(refusal.names[-1])
        if refusal.takes_value:
            refused_values[keyword] = refusal
        else:
            switches.add(keyword)
            refused_switches[keyword, value] = refusal
    return switches, refused_switches, refused_values


_SWITCHES, _REFUSED_SWITCHES, _REFUSED_VALUES = _tables()
# keywords taking a value that changes nothing (all2all_backend...), as the CLI's flags
_NO_EFFECT_VALUES = {_keyword(i.names[-1])[0]: i for i in vllm_flags.NO_EFFECT_VALUES
                     if i.names[-1] not in vllm_flags.SERVER_ONLY}

# a flag, and the one-letter value name after it (--kv-tokens N), outside `commands`
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?: ([A-Z])\b)?")


def _as_keywords(message: str) -> str:
    """A CLI message in Python's terms: --kv-tokens N as kv_tokens=N, --dtype as dtype, the
    flag as the keyword, MODEL as model; a `command` in backquotes is left as written."""
    parts = re.split(r"(`[^`]*`)", message)
    for i in range(0, len(parts), 2):  # the even parts are outside backquotes
        text = _FLAG.sub(lambda m: m[1].replace("-", "_") + (f"={m[2]}" if m[2] else ""),
                         parts[i])
        parts[i] = re.sub(r"\bMODEL\b", "model", text.replace("the flag", "the keyword"))
    return "".join(parts)


def _refused(keyword: str, value: Any, refusal: Refusal) -> ValueError:
    message = refusal.message() if callable(refusal.message) else refusal.message
    return ValueError(f"{keyword}={value!r}: {_as_keywords(message)}")


def _asks_for_ours(value: Any, same: tuple[str, ...]) -> bool:
    """Whether `value` is one of a refusal's accepted values (written as the CLI takes
    them: swap_space=0.0 is "0")."""
    for text in same:
        if value == text:
            return True
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                if float(text) == value:
                    return True
            except ValueError:
                pass
    return False


def _take_no_effect(keyword: str, value: Any, ignored: Ignored) -> None:
    """A keyword of no effect given `value`: logged as such (None, vLLM's 'not set',
    silently); raises ValueError naming it and its value where the CLI refuses the value
    (ignored.refuse), or where it is none of ignored.choices, or no string where the flag
    takes any text (a backend's name: all2all_backend=3), or no whole number where it takes
    an int (max_seq_len_to_capture="x"; "8192" and 8192.0 taken, as vLLM's pydantic config
    reads them: vllm_value_checks.whole_number), as vLLM's config refuses those."""
    if value is None:
        return
    if ignored.choices is not None and value not in ignored.choices:
        raise ValueError(f"{keyword}={value!r}: must be one of {', '.join(ignored.choices)}")
    if ignored.kind is str and ignored.refuse is None and not isinstance(value, str):
        raise ValueError(f"{keyword}={value!r}: must be a string")  # a name, any name
    if ignored.kind is int and vllm_value_checks.whole_number(value) is None:
        raise ValueError(f"{keyword}={value!r}: must be a whole number")  # as the CLI's int
    if ignored.refuse is not None and (why := ignored.refuse(value)):
        raise ValueError(f"{keyword}={value!r}: {_as_keywords(why)}")
    log.info("%s=%r has no effect: %s", keyword, value, _as_keywords(ignored.why))


def _check_switch(keyword: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):  # not "no" would be False
        raise ValueError(f"{keyword} must be True or False, got {value!r}")


def _as_aiollm_values(options: dict[str, Any]) -> None:
    """vLLM's values of aiollm's options, in `options`, as aiollm's: dtype "half"/"float"
    or a torch.dtype as its name, tool_call_parser llama3_json as llama3, seed=None
    (vLLM's default) left out, max_model_len=-1 (vLLM's "the longest that fits", as
    `aiollm serve --max-model-len -1`) as None, kv_cache_memory_bytes a float with no
    fraction (4e9) as that int, served_model_name a list or tuple of
    names (vLLM's EngineArgs takes one; its first names the model, an empty one none) as
    that first name (each entry checked as a name: ValueError naming
    served_model_name)."""
    if isinstance(options.get("dtype"), str):
        options["dtype"] = vllm_flags.dtype_name(options["dtype"])
    elif "dtype" in options:
        options["dtype"] = _torch_dtype_name(options["dtype"])
    if isinstance(options.get("tool_call_parser"), str):
        options["tool_call_parser"] = vllm_flags.tool_call_parser_name(
            options["tool_call_parser"])
    for keyword in _NONE_IS_DEFAULT:
        if keyword in options and options[keyword] is None:
            del options[keyword]
    names = options.get("served_model_name")
    if isinstance(names, (list, tuple)):
        for name in names:  # each a name, as EngineConfig holds one
            if not isinstance(name, str):
                raise ValueError(f"served_model_name: each name must be a string, got "
                                 f"{names!r}")
            EngineConfig(served_model_name=name)
        options["served_model_name"] = names[0] if names else None
    mml = options.get("max_model_len")
    if isinstance(mml, numbers.Integral) and not isinstance(mml, bool) and mml == -1:
        options["max_model_len"] = None
    kv_bytes = options.get("kv_cache_memory_bytes")
    if isinstance(kv_bytes, float) and kv_bytes.is_integer():  # 4e9, as vLLM's (pydantic,
        options["kv_cache_memory_bytes"] = int(kv_bytes)  # lax) CacheConfig reads it


# EngineConfig's fields: the options LLM(...) takes under aiollm's own names
_OPTIONS = frozenset(f.name for f in fields(EngineConfig))

# keywords vLLM's own LLM(...) takes and ignores (its V1 engine swaps nothing to the CPU;
# lm-eval-harness passes swap_space=4 on every call): taken, with a warning, as there.
# `aiollm serve --swap-space N` stays refused, as vLLM's CLI no longer knows the flag.
# Their CLI refusal (_REFUSED_VALUES) gives the values taken silently and the reason.
_IGNORED_BY_VLLM = frozenset({"swap_space"})


def _unknown(keyword: str) -> TypeError:
    """Python's TypeError for an unknown keyword, named as LLM()'s, with the names near it."""
    known = [*_OPTIONS, *_ALIASES, *_SWITCHES, *_REFUSED_VALUES, *_NO_EFFECT_VALUES,
             vllm_structured_config.KEYWORD]
    near = difflib.get_close_matches(keyword, known, n=3, cutoff=0.8)
    hint = f" (did you mean {' or '.join(near)}?)" if near else ""
    return TypeError(f"LLM() got an unexpected keyword argument {keyword!r}{hint}")


def check_model_fits(model: str | None, options: dict[str, Any]) -> None:
    """Raise ValueError naming the keyword, its value and why, where a refused keyword's
    value asking for aiollm's own behaviour does not fit `model` (quantization='gguf' with
    a Hugging Face directory: refusal.model_check)."""
    for keyword, value in options.items():
        refusal = _REFUSED_VALUES.get(keyword)
        if (refusal is not None and refusal.model_check is not None and value is not None
                and _asks_for_ours(value, refusal.same)
                and (why := refusal.model_check(model)) is not None):
            raise ValueError(f"{keyword}={value!r}: {_as_keywords(why)}")


def engine_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """LLM(...)'s keyword `options` as Engine takes them (EngineConfig's fields), and, for
    each option set by vLLM's name, that name (option -> keyword, for `named_as_given`).
    Aliases set their option (None: not given, vLLM's default); vLLM's values of aiollm's
    own options become aiollm's (_as_aiollm_values); NO_EFFECT switches, and refused
    keywords given None or the value that asks for aiollm's own behaviour
    (pipeline_parallel_size=1, max_logprobs=20), are dropped, and so is swap_space
    (_IGNORED_BY_VLLM), with a warning unless 0 or None. EngineConfig's own
    fields pass unchanged, for it to check; any other keyword is a TypeError naming it (and
    the near names, a misspelling's).
    Raises ValueError naming a refused keyword, its value and what to use instead, or a
    switch given other than True, False or None; TypeError naming both names of an option
    given under both with different values."""
    ours: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    graphs: dict[str, Any] = {}
    structured = None
    for keyword, value in options.items():
        if keyword in _ALIASES:
            theirs[keyword] = value
        elif keyword in _IGNORED_BY_VLLM:
            refusal = _REFUSED_VALUES[keyword]
            if value is not None and not _asks_for_ours(value, refusal.same):
                log.warning("%s=%r has no effect, as in vLLM's LLM: %s", keyword, value,
                            refusal.message)
        elif keyword in _SWITCHES:
            _check_switch(keyword, value)
            if (refusal := _REFUSED_SWITCHES.get((keyword, value))) is not None:
                raise _refused(keyword, value, refusal)
        elif keyword in _NO_EFFECT_VALUES:
            _take_no_effect(keyword, value, _NO_EFFECT_VALUES[keyword])
        elif keyword in vllm_graph_keywords.KEYWORDS:
            if value is not None:
                graphs[keyword] = value
        elif keyword == vllm_structured_config.KEYWORD:
            structured = value
        elif keyword in _REFUSED_VALUES:
            refusal = _REFUSED_VALUES[keyword]
            if value is not None and not _asks_for_ours(value, refusal.same):
                raise _refused(keyword, value, refusal)
        elif keyword in _OPTIONS:
            ours[keyword] = value
        else:
            raise _unknown(keyword)
    _as_aiollm_values(ours)
    named = {}
    for keyword, value in theirs.items():
        if value is None:
            continue
        option = _ALIASES[keyword]
        if keyword in _ALIAS_SWITCHES:
            _check_switch(keyword, value)
        if keyword == "enforce_eager":
            value = not value
        if option in ours and ours[option] != value:
            raise TypeError(f"got both {option}={ours[option]!r} and {keyword}="
                            f"{options[keyword]!r} (vLLM's name for {option}={value!r}), "
                            "which disagree: pass one of them")
        ours[option] = value
        named[option] = keyword
    for line in vllm_graph_keywords.taken(graphs, ours, named, _as_keywords):
        log.info("%s", _as_keywords(line))
    for line in vllm_structured_config.keyword_taken(structured, ours, _as_keywords):
        log.info("%s", _as_keywords(line))
    return ours, named


def named_as_given(error: ValueError, named: dict[str, str]) -> ValueError | None:
    """EngineConfig's `error` about an option the caller set by vLLM's name ("max_running_
    requests must be ..."), led by that name ("max_num_seqs (aiollm's max_running_requests)
    must be ..."); None when it is about another option."""
    text = str(error)
    for option, keyword in named.items():
        if text.startswith(option + " "):
            return ValueError(f"{keyword} (aiollm's {option}){text[len(option):]}")
    return None
