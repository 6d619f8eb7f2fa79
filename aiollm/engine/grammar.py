"""Constrained decoding: what a request's next token may be, as a token bitmask.

A request may carry a `Constraint` (SamplingParams.constraint): a grammar (a JSON schema, any
JSON, a regex, an EBNF grammar or an xgrammar structural tag), a set of allowed token ids,
and logit biases. The grammar library is xgrammar (bench/grammar_libs.py measured it against
llguidance on this CPU: its masks are 3-10x faster per token, which is the cost paid on every
step; its compile step is cached here). The engine owns one `Grammars`:

- `compile()` turns a grammar into an xgrammar CompiledGrammar on the engine's compile
  threads (never on the event loop, nor in its default pool; grammar_compile.py), within
  a deadline, kept in an LRU cache keyed by (tokenizer, kind, grammar text), as is a
  refusal (the grammar's error, given again without compiling); concurrent
  requests for the same grammar from the same field share one compilation;
- `start()` gives a request its `GrammarState` (the matcher, the allowed-ids row, the bias);
- `accept()` advances the matchers by the tokens a step sampled (one batched call); a
  matcher that reaches its end finishes its request with "stop";
- `masks()` builds, for a step's sampled rows, the [B, ceil(V / 32)] int32 bitmask (bit
  t of row b set: token t allowed) and the sparse logit biases, copied to the device in one
  async copy each. The sampler applies them (model/logit_masks.py); rows without a constraint
  are all ones, so they sample exactly as without one.

Per step this is host work on the critical path of a constrained batch (the next step's
sampling waits for it), so it is kept small: xgrammar sees the tokenizer's own vocabulary,
not the model's padded one (its accept_token searches the special ids linearly, and every
padding id counts as one: an 8B model's 128,256 logits over a 49,152-token tokenizer made
each accept 7x slower); the ids past the tokenizer are disallowed by the bitmask's tail
words, which stay zero in the grammar rows of reused page-locked buffers; the bitmask rows
are filled by xgrammar's BatchGrammarMatcher on its own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from aiollm.engine.grammar_build import (allows_none, check_writable, compile_spec,
                                         grammar_error)
from aiollm.engine.grammar_compile import CompileThreads
from aiollm.engine.grammar_vocab import tokenizer_info
from aiollm.engine.logit_bias import bias_arrays, step_biases
from aiollm.engine.token_lists import check_token_lists
from aiollm.engine.token_mask import BitmaskBuffers, TokenMask
from aiollm.errors import InvalidRequest
from aiollm.sampling_params import Constraint, GrammarSpec

log = logging.getLogger(__name__)

CACHE_SIZE = 128  # compiled grammars kept per process (a JSON schema's is ~0.1-2 MB)
ENDED, REJECTED, COMPLETE = 1, -1, 2  # accept() results
# why a grammar is refused where grammars are off (EngineConfig.grammar_backend "none"):
# "here", as the Engine API (LLM(grammar_backend="none")) raises it too, where no server is
GRAMMARS_OFF = "structured output is off here (grammar backend \"none\")"


def grammars_off(param: str) -> InvalidRequest:
    """The 400 for a grammar asked of field `param` where grammars are off, as SGLang
    answers one under --grammar-backend none (LightLLM's "none" silently leaves the output
    free, which a client that asked for a schema cannot tell from a followed one)."""
    return InvalidRequest(f"{param}: {GRAMMARS_OFF}, so no grammar can hold the output to "
                          "it; send the request without it", param=param)


def compiler_threads() -> int:
    """CPU threads one xgrammar compilation may use: half the CPUs this process may run on,
    1 to 8 (xgrammar's default is 8 whatever the machine), so that compilations leave CPU to
    the event loop and the model thread. On 2 cores, one 1,000-property schema beside a
    plain 48-token request: 8 threads compiled in 4.3 s and the request took 4.09 s (4.21 s
    alone); 1 thread 3.3 s and 3.12 s (3.27 s alone); a reviewer saw plain requests 4-5x
    slower while several slow grammars compiled with 8 threads each."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cpus or 2) // 2))


@dataclass(slots=True)
class GrammarState:
    """One request's constraint while it runs."""

    matcher: object | None  # xgrammar.GrammarMatcher
    allowed: np.ndarray | None  # [W] int32 bitmask of allowed_token_ids
    bias_ids: np.ndarray | None  # [K] int64
    bias: np.ndarray | None  # [K] fp32
    terminated: bool = False
    # bad_words' token id sequences (engine/bad_words.py), and the output's latest ids that
    # could start one (the longest's length - 1 of them)
    bad_words: list[tuple[int, ...]] | None = None
    recent: list[int] = field(default_factory=list)

    @property
    def biased(self) -> bool:
        """Its mask may carry logit biases: logit_bias, or the ids bad_words ban."""
        return self.bias is not None or self.bad_words is not None


def _tokenizer_key(tokenizer, vocab_size: int) -> tuple:
    return (getattr(tokenizer, "name_or_path", ""), len(tokenizer), vocab_size,
            tokenizer.eos_token_id)


def _field(spec: GrammarSpec) -> tuple:
    """What a refusal of `spec` names: its field, and the fields of its parts (one tag of
    tools' schemas may come from different places in two requests' tools lists)."""
    return spec.param, tuple(param for param, _ in spec.parts)


@dataclass
class _Cache:
    """Process-wide: tokenizer infos and compiled grammars, shared by engines that serve the
    same tokenizer (tests start many)."""

    infos: dict = field(default_factory=dict)
    compiled: OrderedDict = field(default_factory=OrderedDict)
    # grammars refused when compiled, (cache key, field) -> (message, param): the refusal
    # depends on the grammar and the vocabulary alone, so it is given again without
    # compiling (a format beside tools is compiled alone on each new set of tools). A
    # timeout is no refusal: that grammar compiles on, into `compiled`
    refused: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # compiled's (taken on the loop)
    # infos' builds (seconds): a lock of their own, so that the loop never waits for one
    info_lock: threading.Lock = field(default_factory=threading.Lock)


_CACHE = _Cache()


class Grammars:
    """The engine's grammar compiler, cache and mask builder (see the module docstring).

    vocab_size is the model's (logits') width, which may exceed the tokenizer's; ids past the
    tokenizer are never allowed under a grammar. stop_ids end a grammar (the model's eos).
    compile_timeout: seconds a grammar may compile (and wait for a compile thread).
    enabled False (grammar_backend "none"): every grammar is refused (grammars_off) and
    xgrammar is never imported; allowed_token_ids, logit_bias and bad_words still apply."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int], device: torch.device,
                 max_rows: int = 256, compile_timeout: float = 60.0, enabled: bool = True):
        self.tokenizer = tokenizer
        self.enabled = enabled
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        # xgrammar's vocabulary: the tokenizer's ids (a model's logits may be wider)
        self.grammar_vocab = min(len(tokenizer), vocab_size)
        self.grammar_words = (self.grammar_vocab + 31) // 32
        self.stop_ids = [t for t in stop_ids if t < self.grammar_vocab]
        self._eos = frozenset(stop_ids)  # what min_tokens bans (with the request's stop ids)
        self._stops = np.asarray(self.stop_ids, dtype=np.int64)  # what ends a matcher
        self.device = device
        self.max_rows = max_rows
        self._key = _tokenizer_key(tokenizer, vocab_size)
        # Compilations run on the engine's own threads, not the loop's default pool: a large
        # schema compiles for seconds, and a few of them at once held every default worker
        # while other requests' tokenizing (also there) waited
        self._threads = CompileThreads(compile_timeout)
        self._info: asyncio.Future | None = None  # the tokenizer info's build, off the loop
        self._bitmasks: BitmaskBuffers | None = None  # made at the first constrained step
        self._batch = None  # xgrammar.BatchGrammarMatcher

    # -- compilation ----------------------------------------------------------------------
    def _compiler(self):
        import xgrammar as xgr

        compiler = _CACHE.infos.get(self._key)
        if compiler is None:
            with _CACHE.info_lock:
                compiler = _CACHE.infos.get(self._key)
                if compiler is None:
                    info = tokenizer_info(self.tokenizer, self.grammar_vocab, self.stop_ids)
                    compiler = _CACHE.infos[self._key] = xgr.GrammarCompiler(
                        info, max_threads=compiler_threads(), cache_enabled=False)
        return compiler

    async def _info_built(self) -> None:
        """The tokenizer's xgrammar info, built once (~0.1 s for a 49k vocabulary, and
        xgrammar's import; grammar_vocab.py) off the loop and outside any grammar's
        deadline, shared by the requests that wait."""
        if self._key in _CACHE.infos:
            return
        if self._info is None or self._info.done():  # a failed build is tried again
            self._info = asyncio.ensure_future(asyncio.to_thread(self._compiler))
        await asyncio.shield(self._info)

    def compile_now(self, spec: GrammarSpec):
        """The compiled grammar of `spec` (blocking: call from a thread, or see compile()).
        Raises InvalidRequest (param: spec.param) with the library's message."""
        key = self._cache_key(spec)
        with _CACHE.lock:
            hit = _CACHE.compiled.get(key)
            if hit is not None:
                _CACHE.compiled.move_to_end(key)
                return hit
        self._check_refused(spec)
        compiler = self._compiler()
        try:
            try:
                compiled = compile_spec(compiler, spec)
            except InvalidRequest:
                raise
            except Exception as e:  # the library's own error types: the grammar is bad
                raise grammar_error(spec, e) from e
            # before it is cached: a grammar cached is one start() may run
            check_writable(compiled, spec, self.stop_ids, self.grammar_vocab)
        except InvalidRequest as e:
            with _CACHE.lock:
                _CACHE.refused[(*key, *_field(spec))] = (str(e), e.param)
                while len(_CACHE.refused) > CACHE_SIZE:
                    _CACHE.refused.popitem(last=False)
            raise
        with _CACHE.lock:
            _CACHE.compiled[key] = compiled
            while len(_CACHE.compiled) > CACHE_SIZE:
                _CACHE.compiled.popitem(last=False)
        return compiled

    def _check_refused(self, spec: GrammarSpec) -> None:
        """Raises the InvalidRequest `spec` was refused with when it was compiled (from
        its field), if it was; else nothing."""
        with _CACHE.lock:
            refusal = _CACHE.refused.get((*self._cache_key(spec), *_field(spec)))
        if refusal is not None:
            raise InvalidRequest(*refusal)

    def compiled(self, spec: GrammarSpec) -> bool:
        """Whether `spec` is compiled already (cached): start() then compiles nothing."""
        with _CACHE.lock:
            return self._cache_key(spec) in _CACHE.compiled

    def _cache_key(self, spec: GrammarSpec) -> tuple:
        return (self._key, spec.kind, spec.value)

    async def compile(self, spec: GrammarSpec):
        """compile_now on a compile thread; concurrent calls for one grammar from one field
        (GrammarSpec.param) share the work. The grammars `spec` embeds (GrammarSpec.embeds)
        are compiled alone first (cached), each within its own deadline, so that a timeout
        names the field that is slow; what else they refuse alone is left to `spec`. Raises
        InvalidRequest (param: spec.param, or an embedded grammar's) when the grammar is bad
        or has not compiled within compile_timeout seconds of compiling (it compiles on,
        into the cache), Overloaded when closed or the compile threads are clogged (none
        started it within compile_timeout seconds, or too many compilations run past their
        deadline); InvalidRequest too where grammars are off (grammars_off)."""
        self.refuse_off(spec)
        key = self._cache_key(spec)
        with _CACHE.lock:
            if key in _CACHE.compiled:
                _CACHE.compiled.move_to_end(key)
                return _CACHE.compiled[key]
        self._check_refused(spec)
        await self._info_built()
        slow = spec
        try:
            for slow in spec.embeds:
                if not self.compiled(slow):
                    # a format the vocabulary cannot begin may still stand beside calls it can
                    with contextlib.suppress(InvalidRequest):
                        self._check_refused(slow)  # refused before: not compiled again
                        await self._run(slow)
            slow = spec
            return await self._run(spec)
        except TimeoutError:
            what = "grammar" if slow.kind in ("regex", "choice", "ebnf") else "schema"
            raise InvalidRequest(f"{slow.param}: the grammar did not compile within "
                                 f"{self._threads.timeout:g} s; simplify the {what}",
                                 param=slow.param) from None

    def _run(self, spec: GrammarSpec) -> Awaitable:
        # shared per field too: a refusal names the field of the request it answers
        return self._threads.run((*self._cache_key(spec), *_field(spec)), self.compile_now, spec)

    def close(self) -> None:
        """Stop compiling: queued compilations are dropped and every request waiting for one
        gets Overloaded; one under way finishes on its own thread, unwaited."""
        self._threads.close()

    # -- per request ------------------------------------------------------------------------
    def refuse_off(self, spec: GrammarSpec | None) -> None:
        """Raises grammars_off(spec.param) where grammars are off and `spec` is a grammar."""
        if spec is not None and not self.enabled:
            raise grammars_off(spec.param)

    def check(self, c: Constraint, min_tokens: int = 0, stop_token_ids: Sequence[int] = ()
              ) -> None:
        """Validate allowed_token_ids and logit_bias against the vocabulary, and
        allowed_token_ids against the request's min_tokens, which bans the eos and
        `stop_token_ids` until that many tokens are out (InvalidRequest naming the field);
        refuse a grammar where grammars are off (refuse_off)."""
        self.refuse_off(c.grammar)
        check_token_lists(c, self.vocab_size, self._eos, min_tokens, stop_token_ids)

    def start(self, c: Constraint | None,
              bad_words: list[tuple[int, ...]] | None = None) -> GrammarState:
        """A running request's state: of its constraint, and of the token id sequences of
        its bad_words (engine/bad_words.py). Its grammar must be compiled already
        (compile()); if it is not, it is compiled here, blocking (the Engine API's direct
        users)."""
        c = c or Constraint()
        self.check(c)
        matcher = None
        if c.grammar is not None:
            import xgrammar as xgr

            matcher = xgr.GrammarMatcher(self.compile_now(c.grammar),
                                         override_stop_tokens=self.stop_ids or None)
            if not self.stop_ids:  # the tokenizer's own, as xgrammar found them
                self._stops = np.asarray(matcher.stop_token_ids, dtype=np.int64)
        allowed = None
        if c.allowed_token_ids is not None:
            allowed = np.zeros(self.words, dtype=np.int32)
            ids = np.asarray(sorted(set(c.allowed_token_ids)), dtype=np.int64)
            np.bitwise_or.at(allowed.view(np.uint32), ids >> 5,
                             (np.uint32(1) << (ids & 31).astype(np.uint32)))
        bias_ids, bias = bias_arrays(c.logit_bias) if c.logit_bias else (None, None)
        return GrammarState(matcher, allowed, bias_ids, bias, bad_words=bad_words or None)

    def accept(self, states: list[GrammarState], tokens: np.ndarray) -> list[int]:
        """Advance each matcher by its request's new token. Per request: ENDED when its
        grammar has reached its end (the request finishes with "stop"), REJECTED when the
        grammar or allowed_token_ids refuse the token, COMPLETE when the vocabulary has no
        stop token (no eos) and the output matches the grammar whole with no token left to
        go on with (it finishes with "stop" too, this token its last), else 0. The mask
        keeps refused tokens out unless it left no token at all (min_tokens banning the
        only ones allowed): then the sampler's draw among -inf logits is refused here."""
        status = [0] * len(states)
        for k, s in enumerate(states):
            if s.bad_words is not None:
                keep = max(map(len, s.bad_words)) - 1
                s.recent.append(int(tokens[k]))
                del s.recent[: max(0, len(s.recent) - keep)]
            if s.allowed is not None:
                t = int(tokens[k])
                if not (int(s.allowed[t >> 5]) >> (t & 31)) & 1:
                    status[k] = REJECTED
        live = [k for k, s in enumerate(states) if s.matcher is not None and not s.terminated
                and status[k] != REJECTED]
        if not live:
            return status
        # imported here, where a matcher (compiled on a worker thread) proves it imported:
        # a first import (xgrammar and transformers, 1-2 s) on the loop, for a request of
        # logit_bias, allowed_token_ids or bad_words alone, held every stream that long
        import xgrammar as xgr

        toks = tokens[live]
        ok = xgr.BatchGrammarMatcher.batch_accept_token([states[k].matcher for k in live],
                                                        toks.tolist())
        # a matcher ends only by accepting a stop token: ask the others nothing
        stop = np.isin(toks, self._stops)
        for j, k in enumerate(live):
            s = states[k]
            if not ok[j]:
                status[k] = REJECTED
            elif stop[j]:
                s.terminated = s.matcher.is_terminated()
                status[k] = ENDED if s.terminated else 0
            elif not len(self._stops) and s.matcher.is_completed() and allows_none(
                    s.matcher, self.grammar_vocab):
                # nothing can end the matcher: the next mask would allow no token, and the
                # sampler's draw was refused as if the grammar could not be followed
                s.terminated = True
                status[k] = COMPLETE
        return status

    def dead_end(self, state: GrammarState | None) -> bool:
        """Whether `state`'s grammar allows no token of the vocabulary where its matcher is
        now (neither one that continues the output nor a stop token that ends it): what
        made the sampler draw a refused token, on a vocabulary the grammar cannot follow.
        Costs one mask; asked only when a token was refused."""
        if state is None or state.matcher is None or state.terminated:
            return False
        return allows_none(state.matcher, self.grammar_vocab)

    def masks(self, states: list[GrammarState | None], grammar_part: bool = False
              ) -> TokenMask | None:
        """The device constraints of a step's sampled rows (None where no row has one).
        A finished request's row (a discarded token) is left unconstrained. grammar_part:
        the step reports raw logprobs, which need the grammars' part (TokenMask.grammar)."""
        rows = [i for i, s in enumerate(states) if s is not None]
        if not rows:
            return None
        b = len(states)
        grammar_rows = [i for i in rows
                        if states[i].matcher is not None and not states[i].terminated]
        allowed_rows = [i for i in rows if states[i].allowed is not None]
        bitmask = grammar = None
        if grammar_rows or allowed_rows:
            if self._bitmasks is None:
                self._bitmasks = BitmaskBuffers(self.max_rows, self.words, self.grammar_words,
                                                 self.grammar_vocab, self.device)
            if grammar_rows and self._batch is None:  # xgrammar imported: as in accept()
                import xgrammar as xgr

                self._batch = xgr.BatchGrammarMatcher()
            bitmask, grammar = self._bitmasks.fill(b, grammar_rows, allowed_rows, states,
                                                   self._batch, grammar_part)
        out = TokenMask(bitmask, grammar)
        # a row's biases: its logit_bias, then -inf on the ids its bad words ban now
        if (biases := step_biases(states, rows, self.device)) is not None:
            out.bias_ids, out.bias = biases
        return out

