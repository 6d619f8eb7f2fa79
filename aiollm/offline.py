"""LLM: a synchronous wrapper for offline batch generation: no server, no event loop to
manage. It works the same from plain code, async code and a notebook's cell (whose thread
runs the kernel's event loop): its engine runs on an event loop of its own thread
(loop_thread.py), and each call blocks its caller until the engine is done with it.

    llm = LLM()                                   # default model
    outs = llm.generate(["Hello", "Bonjour"], SamplingParams(max_tokens=32))
    llm.close()
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

from aiollm.engine import Engine, RequestOutput
from aiollm.engine.add_request import checked_params, params_bound
from aiollm.engine.batch_api import Progress, check_params_count
from aiollm.engine.chat_messages import checked_messages
from aiollm.engine.chat_template import checked_options
from aiollm.engine.chat_tools import check_tools
from aiollm.engine.template_options import TemplateOptions
from aiollm.errors import EngineStopped, InvalidRequest, naming_params_item
from aiollm.loop_thread import POLL_S, LoopThread
from aiollm.sampling_params import SamplingParams
from aiollm.vllm_members import lacking
from aiollm.vllm_names import (UNSET, check_model_fits, either, engine_options,
                                named_as_given, no_lora, no_multimodal_chat, no_priority,
                                template_options)


class LLM:
    """An Engine (model and options as Engine takes them, or as vLLM's LLM takes them:
    vllm_names.engine_options) started on a thread of its own,
    with blocking generate() and chat(). Calls from several threads take turns. Ctrl-C
    (KeyboardInterrupt) during a call cancels its requests in the engine, then goes on; the
    LLM serves the next call. close() (or the end of a `with` block) stops the engine and
    ends the thread, as does dropping the LLM unclosed. A call from code that runs on the
    LLM's own loop (code the engine calls) raises RuntimeError: it would wait for itself.
    Raises what Engine() and Engine.start() raise (TypeError or ValueError for a bad option,
    OSError for a model it cannot read), once what it made has ended; a bad value of an
    option given by vLLM's name is named so (max_num_seqs=0), and engine_options' errors:
    ValueError for a vLLM keyword aiollm cannot honour (quantization,
    trust_remote_code=True, cpu_offload_gb=8, ...: its message says what to use instead),
    TypeError for an option given under both names with different values."""

    def __init__(self, model: str | None = None, **options):
        check_model_fits(model, options)
        options, named = engine_options(options)
        try:
            self.engine = Engine(model, **options)  # a bad option raises before any thread
        except ValueError as e:
            if (renamed := named_as_given(e, named)) is None:
                raise
            raise renamed from None
        # a lost tensor-parallel rank fails the call in flight and every later one (naming
        # the rank): the process is the user's, not a server's to exit
        self.engine.exit_on_lost_rank = False
        # the loop runs one call at a time: another thread's call waits for its turn
        self._turn = threading.Lock()
        # the engine stops whenever its loop ends: close(), a failed start, dropped unclosed,
        # the interpreter's exit
        self._thread = LoopThread("aiollm-llm", last=self.engine.stop)
        self._loop = self._thread.loop
        try:
            self._thread.call(self.engine.start())
        except BaseException:
            # a model it cannot load, Ctrl-C: the loop and its thread were left running
            self._thread.end()
            self._thread.join()
            raise
        # dropped unclosed (a notebook's cell run again binds `llm` to a new LLM), the engine
        # stops and the thread ends: they held the model's memory to the end of the process
        self._finalizer = weakref.finalize(self, self._thread.end)
        self._finalizer.atexit = False  # the interpreter's exit ends it (loop_thread._end_all)

    def generate(self, prompts: Sequence[str | Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 progress: Progress = UNSET, *,
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: Progress | None = None,
                 lora_request: None = None,
                 priority: list[int] | None = None) -> list[RequestOutput]:
        """The outputs of `prompts` (a string or a prompt dict is one prompt), in order, one
        per prompt with its SamplingParams.n completions in `.outputs`; `params` one
        SamplingParams for all or a list of one per prompt (Engine.generate_batch);
        `progress`: a tqdm bar unless false (default: shown), or, as vLLM's use_tqdm
        takes it, a callable that makes the bar (a tqdm-like class or factory, e.g.
        functools.partial(tqdm, leave=False); Engine.generate_batch). `sampling_params` and
        `use_tqdm` are vLLM's names for `params` and `progress`; vLLM's `lora_request` is
        taken as None alone (InvalidRequest naming it for an adapter), its `priority` as
        None or 0 for every prompt (vllm_names.no_priority: no priority scheduling here).
        Raises TypeError naming both when a value is given under both names,
        EngineStopped once close() has run."""
        no_lora(lora_request)
        no_priority(priority, prompts)
        params = either(params, "params", sampling_params, "sampling_params")
        progress = either(progress, "progress", use_tqdm, "use_tqdm", UNSET)
        return self._generate(prompts, params, progress, "prompts")

    def _generate(self, prompts, params, progress, batch_name: str) -> list[RequestOutput]:
        self._check_open()
        outs = self._run(self.engine.generate_batch(
            prompts, params, progress=True if progress is UNSET else progress,
            batch_name=batch_name))
        each = params if isinstance(params, (list, tuple)) else [params] * len(outs)
        for out, p in zip(outs, each):  # here, on the caller's thread: not the engine's loop
            if p is None or p.detokenize:  # detokenize=False: no text, decoded_token None
                out.decode_alternatives(self.engine.tokenizer)
        return outs

    def chat(self, conversations: Sequence[list[dict]] | list[dict] = UNSET,
             params: SamplingParams | Sequence[SamplingParams] | None = None,
             progress: Progress = UNSET,
             template: TemplateOptions | None = None, *,
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: Progress | None = None,
             messages: Sequence[list[dict]] | list[dict] | None = None,
             add_generation_prompt: bool | None = None,
             continue_final_message: bool | None = None,
             chat_template_kwargs: dict | None = None,
             chat_template: str | None = None,
             tools: list[dict] | None = None,
             lora_request: None = None,
             chat_template_content_format: str = "auto",
             mm_processor_kwargs: None = None) -> list[RequestOutput]:
        """generate() on conversations, each checked as Engine.chat checks one and rendered by
        the chat template as `template` says (Engine.chat's options: add_generation_prompt,
        continue_final_message, chat_template_kwargs such as enable_thinking; default: the
        assistant's turn opened), with `tools` (OpenAI's function tools, checked as the
        HTTP API checks them under tool_choice "none": no grammar is built from them)
        given to the template for every conversation. A single
        conversation (a list of message dicts) is a batch of one, as in vLLM's LLM.chat;
        each output's `prompt` is its conversation rendered (the prompt's tokens decoded,
        control tokens included), as vLLM's. vLLM's keywords: `sampling_params` and
        `use_tqdm` as generate() takes them, `messages` for conversations, and
        add_generation_prompt, continue_final_message, chat_template_kwargs and
        chat_template (a Jinja template rendering the conversations in place of the
        tokenizer's) for the template's options of those names (None: not given, the
        default); chat_template_content_format, the form of message content the template
        is given (engine/content_format.py: "string", text parts joined into one string;
        "openai", a list of text parts; "auto", the default: whichever the template reads);
        `lora_request` as generate() takes it; mm_processor_kwargs None
        (vllm_names.no_multimodal_chat: no images). The prompt is the one
        /v1/chat/completions renders for the same messages, tools and options
        (Engine.render_chat); the output is the model's text,
        any calls in it unparsed, as vLLM's LLM.chat gives it.
        Raises InvalidRequest (a ValueError) naming the conversation and its field (param
        `conversations[2].messages[1].role`; a bad template option by its own name,
        `continue_final_message`, `chat_template` for a template that does not compile,
        `chat_template_content_format` for a value not "auto", "string" or "openai"; a
        bad tool by its place, `tools[0].function.name`), or
        `conversations` for a value that is neither a list (or tuple) of conversations nor
        one, before any is generated; bad params as generate() names them (`params` for a
        list of another length, `params[i].field`), before any conversation is rendered;
        and `conversations[i]` for one too long for the
        context (or the param to change, as Engine.generate_batch names prompts);
        TypeError naming both names of a value given twice (template and one of its
        options) or no conversations at all; EngineStopped once close() has run."""
        no_lora(lora_request)
        no_multimodal_chat(mm_processor_kwargs)
        params = either(params, "params", sampling_params, "sampling_params")
        progress = either(progress, "progress", use_tqdm, "use_tqdm", UNSET)
        conversations = either(conversations, "conversations", messages, "messages", UNSET)
        if conversations is UNSET:
            raise TypeError("chat() missing its conversations (or vLLM's messages)")
        template = template_options(template, add_generation_prompt, continue_final_message,
                                    chat_template_kwargs, chat_template,
                                    chat_template_content_format)
        self._check_open()
        if not isinstance(conversations, (list, tuple)):
            # else None, a message dict or a generator raised Python's own errors, and a
            # string was read as a batch of one-letter conversations
            raise InvalidRequest("conversations must be a list of conversations (each a list "
                                 "of message dicts) or one conversation, got "
                                 f"{type(conversations).__name__}", param="conversations")
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        # once, before any conversation: a bad option is no conversation's field
        template = checked_options(self.engine.tokenizer, template)
        if tools is not None:
            # rendered only, as Engine.chat renders them: no grammar is built from them
            tools = check_tools(list(tools) if isinstance(tools, tuple) else tools,
                                enforced=False)
        # every params checked before any conversation is rendered, as generate() checks
        # them before any prompt is tokenized; one the context cannot hold is refused
        # before it is encoded, as Engine.chat refuses it
        bounds = self._bounds(params, len(conversations))
        prompts = []
        for i, conversation in enumerate(conversations):
            try:
                prompts.append(self.engine.render_chat(checked_messages(conversation), tools,
                                                       template, most=bounds[i])[0])
            except InvalidRequest as e:
                # the same check serves one conversation (Engine.chat, HTTP), whose names
                # start at messages: say which of the batch it was
                raise e.within(f"conversations[{i}]") from e
        # one too long for the context is named as the caller knows it: conversations[i]
        outs = self._generate(prompts, params, progress, "conversations")
        for out in outs:
            text = self.engine.tokenizer.decode(out.prompt_token_ids)
            for choice in (out, *out.other_choices):
                choice.prompt = text
        return outs

    def _bounds(self, params: object, n: int) -> list[int | None]:
        """The most tokens each of n conversations, generated from with `params` (one for
        all, or a list of one each), may render to (render_chat's most: params_bound),
        every params checked first as generate() checks them: InvalidRequest naming
        `params` for a list of another length, `params[i]` (a None too: the engine's
        defaults are for params given none) or `params[i].field` for a bad one of a
        list, the field for a bad one for all."""
        most = self.engine.max_model_len
        if not isinstance(params, (list, tuple)):
            # a batch of none has no prompt for the context to bound (generate() takes it)
            return [params_bound(params, most)] * n if n else []
        check_params_count(params, n, "conversations")
        bounds = []
        for i, p in enumerate(params):
            with naming_params_item(i):
                if p is None:
                    checked_params(p)  # refused: no SamplingParams
                bounds.append(params_bound(p, most))
        return bounds

    def get_tokenizer(self):
        """The tokenizer the engine encodes prompts and decodes outputs with (vLLM's
        LLM.get_tokenizer, which gives transformers' tokenizer): transformers' own for a
        model directory; for a GGUF file (the default model) an
        aiollm.model.serving_tokenizer.ServingTokenizer, which answers encode, decode,
        convert_ids_to_tokens, apply_chat_template and the special tokens as transformers'
        tokenizer of the same vocabulary does, and anything else from that tokenizer (its
        `hf_tokenizer`, loaded on first use). Encoding text with it gives the ids
        generate() submits for that text."""
        return self.engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """The SamplingParams generate() and chat() use when given none (vLLM's name):
        SamplingParams' defaults, or the model's generation_config.json's in their place
        (the generation_config option: auto, vllm or a folder)."""
        return self.engine.default_params()

    def reset_prefix_cache(self, device: None = None) -> bool:
        """Empty the prefix cache of what no request uses (vLLM's name; POST /flush_cache
        over HTTP), e.g. between the runs of a benchmark; True, as vLLM's when it could.
        `device` (vLLM's) is taken as None alone. EngineStopped once close() has run."""
        if device is not None:
            raise TypeError(f"reset_prefix_cache takes device=None alone, got {device!r:.40}")
        self._check_open()
        self._run(self._flush_cache())
        return True

    async def _flush_cache(self) -> int:
        return self.engine.flush_cache()

    def __getattr__(self, name: str):
        # vLLM's members aiollm lacks (llm_engine, embed, beam_search...) say so and what to
        # use instead; only reached for names the LLM has not
        raise lacking(name)

    def _run(self, coro):
        """coro run to completion on the LLM's loop. Interrupted (Ctrl-C, in a notebook too:
        a KeyboardInterrupt in the caller's thread, which waits), its requests are aborted
        before the interrupt goes on: they held their table slots and KV, and ran on inside
        the next call, for results nobody would read. A KeyboardInterrupt raised inside the
        engine's step loop ends the call as Ctrl-C does, and that loop: the engine is
        started again (the next call raised EngineStopped). Calls from several threads take
        turns."""
        try:
            if not self._take_turn():
                self._check_open()  # the loop is closed: EngineStopped
        except BaseException:  # Ctrl-C while another thread's call ran: asyncio then
            coro.close()       # warned of a coroutine never awaited
            raise
        try:
            if self._loop.is_closed():  # by another thread's close() while this one waited
                coro.close()
                self._check_open()
            try:
                return self._thread.call(coro)
            except BaseException:
                # not once the loop ends (close() from another thread, the interpreter's
                # exit: a Ctrl-C there stopped the engine under a non-daemon thread's call,
                # which started it again, cancelled, and raised CancelledError)
                if not self._loop.is_closed() and not self._thread.ending:
                    self._thread.call(self.engine.start())  # a no-op unless its step loop ended
                raise
        finally:
            self._turn.release()

    def _take_turn(self) -> bool:
        """Wait for the call under way of another thread to end, in slices, as
        LoopThread.call waits: an interrupt another thread took raises here at once. The
        waiting thread is a caller the interpreter's exit waits for (when non-daemon), as
        for one whose call is under way. False, without the turn, once the loop has
        closed: the exit ended it under a daemon thread's call, which keeps its turn
        forever, and a non-daemon thread waiting here hung the exit."""
        self._thread.add_caller()
        while not self._turn.acquire(timeout=POLL_S):
            if self._loop.is_closed():
                return False
        return True

    def _check_thread(self) -> None:
        if self._thread.on_own_thread():
            # (the call's turn and its wait would block the loop that must end them)
            raise RuntimeError("the LLM was called from its own event loop (code the engine "
                               "runs): the call would wait for itself; call it from "
                               "another thread")

    def _check_open(self) -> None:
        self._check_thread()
        if self._loop.is_closed():  # else asyncio's "Event loop is closed", and a warning
            raise EngineStopped("this LLM is closed (close() ran): make a new LLM")

    def close(self) -> None:
        """Stop the engine and end the LLM's thread, after the call under way of another
        thread; later calls raise EngineStopped. Ctrl-C raises at once and leaves the stop
        running to its end on the LLM's thread (a later close() waits for it). A close()
        after one that returned does nothing."""
        self._check_thread()
        if not self._take_turn():
            return
        try:
            if self._loop.is_closed():
                return
            self._finalizer.detach()
            # the engine's stop runs as the loop's last (not a call: an interrupt would
            # cancel it, and the cancelled stop ran to its end while Ctrl-C waited)
            self._thread.end()
            self._thread.join()
        finally:
            self._turn.release()

    def __enter__(self) -> "LLM":
        """The LLM itself; EngineStopped once close() has run, as its calls raise."""
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
