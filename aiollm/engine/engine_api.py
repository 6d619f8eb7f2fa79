"""EngineAPI: the Engine's request API, the half of Engine that callers use to submit
requests (engine.py holds the other half: start-up, shutdown and the step loop).

Every method checks at the edge, before anything is held: a usage error (not started)
raises RuntimeError, bad input InvalidRequest naming the field, a full queue or a
shutdown Overloaded, a stopped engine EngineStopped; the checks on the prompt and params
themselves and the table writes are submission.py's.
"""

from __future__ import annotations

from aiollm.engine.output_text import OutputText
from aiollm.engine.request import Request
from aiollm.engine.submission import Prompt, check_request, new_request, tokenize
from aiollm.errors import EngineStopped, InvalidRequest, Overloaded
from aiollm.sampling_params import SamplingParams


class EngineAPI:
    """The request methods of Engine, which inherits them. They read the state Engine
    sets up in start() (config, tokenizer, model_config, max_model_len, table, planner,
    grammars, prefix_cache, metrics, the started/accepting flags) and hand finished
    streams to Engine._finish."""

    # -- submission ------------------------------------------------------------------------
    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (text, or ids checked against the vocabulary); raises
        InvalidRequest naming "prompt" (see submission.tokenize)."""
        return tokenize(self.tokenizer, prompt, self.model_config.vocab_size, self.max_model_len)

    def _check_started(self) -> None:
        if not self._started and self._loop_task is None:  # never started: a usage error
            raise RuntimeError("the engine is not started: use `async with Engine() as engine`")

    def _check_accepting(self) -> None:
        self._check_started()
        # stopped: after stop(), or during it (a request tokenized or compiled off the loop
        # meanwhile, or a server's handler during its shutdown: an Overloaded, so HTTP 503)
        if not self._started:
            raise EngineStopped("the engine is stopped (Engine.stop() ran before this request "
                                "was submitted); it takes no request until started again")
        if not self._accepting:
            raise Overloaded("the server is shutting down")

    def _checked(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """The prompt's token ids, once the engine takes requests and the prompt and params
        fit the model (what stream() checks before a grammar compiles)."""
        self._check_accepting()
        if not isinstance(params, SamplingParams):
            raise InvalidRequest(f"params must be SamplingParams, got {type(params).__name__}")
        ids = self.tokenize(prompt)
        check_request(len(ids), params, self.model_config.vocab_size, self.max_model_len)
        return ids

    def _submit(self, prompt: Prompt, params: SamplingParams) -> tuple[Request, OutputText]:
        ids = self._checked(prompt, params)
        if len(self.planner.waiting) >= self.config.max_waiting_requests:
            raise Overloaded(f"too many waiting requests ({self.config.max_waiting_requests})")
        grammar = self.grammars.start(params.constraint) if params.constraint else None
        # everything that can raise comes before the table slot: nothing would give it back
        detok = OutputText.of_request(self.tokenizer, ids, params)
        req = new_request(self.table, ids, params, self._rng, grammar,
                          keep_prompt_array=self.prefix_cache is not None)
        self._requests[req.rid] = req
        self.planner.enqueue(req)
        self.metrics.prompt_tokens.inc(len(ids))
        self._wake.set()
        return req, detok
