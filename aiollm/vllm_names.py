"""vLLM's keyword names for what LLM.generate and LLM.chat take under aiollm's own names, so
that vLLM code runs as it is: sampling_params (params), use_tqdm (progress), messages
(conversations), and the chat template's options add_generation_prompt,
continue_final_message, chat_template_kwargs and chat_template (aiollm's
template=TemplateOptions(...)); and lora_request, None alone.
A value given under both names is a TypeError naming both, as Python refuses an argument
given twice."""

from __future__ import annotations

from typing import Any

from aiollm.engine.chat_template import TemplateOptions
from aiollm.errors import InvalidRequest

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


def template_options(template: TemplateOptions | None, add_generation_prompt: bool | None,
                     continue_final_message: bool | None, chat_template_kwargs: dict | None,
                     chat_template: str | None = None) -> TemplateOptions | None:
    """`template`, or the TemplateOptions that vLLM's keywords say (None among them: not
    given, the default). Raises TypeError naming template and the keyword when both are
    given."""
    given = {"add_generation_prompt": add_generation_prompt,
             "continue_final_message": continue_final_message,
             "chat_template_kwargs": chat_template_kwargs, "chat_template": chat_template}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return template
    if template is not None:
        raise TypeError(f"got both template and {next(iter(given))} (vLLM's keyword for "
                        "one of template's options): pass one of them")
    kwargs = given.pop("chat_template_kwargs", {})
    return TemplateOptions(**given, kwargs=kwargs)
