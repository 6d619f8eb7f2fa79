"""BatchAPI: offline batch generation, generate_batch(): many prompts at once (vLLM's
LLM.generate on a list), each checked before any is submitted, then submitted as the request
table and the waiting queue make room, with a progress bar; and the one SamplingParams per
prompt that a batch's params give.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Union

from aiollm.engine.add_request import checked_params
from aiollm.engine.cache_salt import salts_of_batch
from aiollm.engine.outputs import RequestOutput
from aiollm.engine.request_group import gather_all
from aiollm.engine.submission import Prompt, off_loop, prompt_text
from aiollm.errors import InvalidRequest, naming_batch_item, naming_params_item
from aiollm.sampling_params import SamplingParams

# generate_batch's progress bar: shown or not, or (vLLM's use_tqdm) what makes it, called as
# tqdm is, with total= and desc=, and answering update(n) and close()
Progress = Union[bool, Callable[..., Any]]


class BatchAPI:
    """generate_batch, which Engine inherits (a mixin with no state of its own): it reads
    Engine's _batch_room (the room all batches share) and submits each prompt as EngineAPI's
    generate() does."""

    async def generate_batch(self, prompts: Sequence[Prompt],
                             params: SamplingParams | Sequence[SamplingParams] | None = None,
                             progress: Progress = True, *, batch_name: str = "prompts"
                             ) -> list[RequestOutput]:
        """Offline generation of many prompts at once, with a progress bar. A single string
        is one prompt (as in vLLM's LLM.generate), not a batch of its characters, and so is
        one prompt dict ({"prompt": text}, {"prompt_token_ids": ids}, either with a
        "cache_salt" as generate() takes it: InvalidRequest naming `prompts[i].cache_salt`
        for a bad one). `params`:
        one SamplingParams for every prompt, or a list (or tuple) of one per prompt, as
        vLLM's LLM.generate takes them (InvalidRequest naming `params` for another length,
        `params[i].field` for a bad one). A batch larger than the request table, or than
        the running batch and the waiting queue together, is submitted as they make room,
        which all batches share (other callers of the engine may still fill them:
        Overloaded). Raises
        InvalidRequest naming `prompts` for a value that is no list or tuple of prompts, and
        `prompts[i]` for a bad prompt; one too long for the context says which prompt and keeps
        its param (errors.of_batch_item); a bad field of params keeps its own name. Every
        prompt is checked before any is submitted.
        `batch_name`: what those errors call the batch where the caller's differs (LLM.chat:
        "conversations", whose token ids the prompts are). `progress`: a tqdm bar while
        true, none while false, or a callable that makes the bar, as vLLM's use_tqdm takes
        one (a tqdm class or a factory such as functools.partial(tqdm, leave=False)): it is
        called with total= and desc=, once the prompts are checked, and its bar is given
        update(1) per prompt done and close() at the end, on the engine's event loop."""
        from tqdm.auto import tqdm

        if isinstance(prompts, (str, dict)):  # one prompt dict too, as vLLM takes it
            prompts = [prompts]
        elif not isinstance(prompts, (list, tuple)):  # else no len()
            raise InvalidRequest("prompts must be a list of prompts (strings, lists of token "
                                 "ids or prompt dicts) or one prompt, got "
                                 f"{type(prompts).__name__}", param="prompts")
        elif prompts and all(isinstance(p, numbers.Integral) for p in prompts):
            # else each id was a prompt, refused as "got int"
            raise InvalidRequest(f"prompts is a list of {len(prompts)} integers, which looks "
                                 "like one prompt's token ids: pass [ids] (a batch of one) "
                                 'or {"prompt_token_ids": ids}', param="prompts")

        # a bad prompt late in a long batch failed it only once those before had run, their
        # results thrown away (text is tokenized here once: the ids are submitted)
        self._check_accepting()
        prompts, salts = salts_of_batch(prompts, batch_name)
        defaulted = params is None
        each = _params_of_batch(self.default_params() if defaulted else params,
                                len(prompts), batch_name)
        given = [prompt_text(p) for p in prompts]
        # one SamplingParams per prompt: a bad field is named by its place (params[i].field)
        per_prompt = isinstance(params, (list, tuple))
        prompts = await off_loop(sum(len(p) for p in prompts if isinstance(p, str)),
                                 self._checked_batch, prompts, each, batch_name, defaulted,
                                 per_prompt)
        if callable(progress):
            bar = progress(total=len(prompts), desc="generate")
        else:
            bar = tqdm(total=len(prompts), desc="generate", disable=not progress)
        async def one(i, p):
            with (naming_batch_item("prompt", i, batch_name),
                  naming_params_item(i if per_prompt else None)):
                # each choice of a prompt (n > 1) takes room of its own
                out = await self._completions(p, each[i], given[i], self._batch_room,
                                              salts[i])
            bar.update(1)
            return out

        try:  # one failure ends the batch (gather_all cancels the other prompts)
            return await gather_all([one(i, p) for i, p in enumerate(prompts)])
        finally:
            bar.close()

    def _checked_batch(self, prompts: Sequence[Prompt], params: list[SamplingParams],
                       batch_name: str, defaulted: bool = False, per_prompt: bool = False
                       ) -> list[list[int]]:
        """The prompts' ids, each checked with its params; `defaulted` (the call gave no
        params): each prompt's are the engine's defaults within its context (set in params);
        `per_prompt` (the call gave one per prompt): a bad field is named params[i].field."""
        ids = []
        for i, p in enumerate(prompts):
            with (naming_batch_item("prompt", i, batch_name),
                  naming_params_item(i if per_prompt else None)):
                if defaulted:
                    p, params[i] = self._with_defaults(p)
                ids.append(self._checked_input(p, params[i]))  # maybe off the loop's thread
        return ids


def _params_of_batch(params: SamplingParams | Sequence[SamplingParams] | None, n: int,
                     batch_name: str) -> list[SamplingParams]:
    """One SamplingParams for each of a batch's n items, copied as they are at the call:
    `params` for all or, given a list or tuple, its items, each
    checked (InvalidRequest naming `params[i]` and its field, or `params` for a list of
    another length)."""
    if not isinstance(params, (list, tuple)):
        checked_params(params)
        return [_as_called(params)] * n
    check_params_count(params, n, batch_name)
    for i, p in enumerate(params):
        with naming_params_item(i):
            checked_params(p)
    called = {id(p): _as_called(p) for p in params}  # one copy of a params given twice
    return [called[id(p)] for p in params]


def check_params_count(params: object, n: int, batch_name: str) -> None:
    """Raise InvalidRequest naming `params` where it is a list (or tuple) of another length
    than the batch's n items (one SamplingParams for all is any batch's)."""
    if isinstance(params, (list, tuple)) and len(params) != n:
        raise InvalidRequest(f"params holds {len(params)} SamplingParams for {n} {batch_name}: "
                             f"give one for all of them, or one for each", param="params")


def _as_called(params: SamplingParams) -> SamplingParams:
    """A copy of checked params as they are now, for a batch's prompts submitted later (as
    the table and the waiting queue make room): the caller may change or reuse theirs
    meanwhile (another thread's next batch), which changed those prompts, and a max_tokens
    past the context failed the whole batch it had accepted."""
    return dataclasses.replace(params, stop=list(params.stop),
                               stop_token_ids=list(params.stop_token_ids))
