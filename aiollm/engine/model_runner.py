"""ModelRunner: turns a planned Step into one forward pass and one sampling pass.

prepare() reads the request table and starts the batch metadata's copies to the device
(from page-locked memory, so they queue behind the running step instead of waiting for it).
launch() queues the forward pass, the sampling and the copy of the sampled ids into
page-locked host memory (a greedy decode batch's graph writes them there itself), then
records a CUDA event and returns without waiting: a Launched (step_results.py), whose
collect() gives the results as numpy once that event has completed. On a GPU both run on
the event loop's thread (queuing kernels does not block); on the CPU launch() computes the
step, on the engine's model thread.

Decode batches (every request feeds one token and samples one) take the short way:
their inputs go through DecodeGraphs' static buffers in one copy, and when every request is
plain greedy the graph's own argmax is the result, which the graph writes into page-locked
host memory itself (DecodeGraphs.host_result): no sampling pass and no copy back.

A step with constrained rows (a grammar, allowed ids or logit biases: engine/grammar.py)
is launched in two parts: launch() queues the forward pass and returns a Launched whose
`deferred` holds the logits; sample_deferred() queues the sampling once the engine has the
previous step's tokens, has advanced the grammars and built the masks. The forward never
waits for a mask, and the mask's host time hides behind it. When every sampled row is
greedy (the constrained ones under a bitmask only, no biases), the sampling is the mask
applied in place to the logits and the argmax: a decode batch keeps its graph, and its
result (the graph's [2, bs], the masked argmax in its first row) comes back in one copy.

Tokens sampled by the step still running are not on the host when the next step is
planned: the planner writes them as placeholders -(row + 1), and the device replaces them
with the ids that step sampled (kept in self._prev_ids, which every step writes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aiollm.engine.planner import Step
from aiollm.engine.step_results import Launched
from aiollm.kernels.decode_io import greedy_pick, resolve_placeholders
from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.kv_pool import KVPool, ReqToTokenTable
from aiollm.model.logit_masks import apply_bitmask_
from aiollm.model.penalties import needs_history, token_history
from aiollm.model.prompt_logprobs import plan_scoring
from aiollm.model.sampler import SampleResult, sample
from aiollm.model.sampling_tensors import SamplingTensors
from aiollm.native import RequestTable


@dataclass(slots=True)
class StepInputs:
    """A step prepared for launch: its batch metadata on the device and how it samples."""

    batch: ForwardBatch | None  # the eager path's batch (None: a staged decode batch)
    decode_bs: int  # > 0: a decode batch staged in DecodeGraphs, run at this bucket size
    n: int  # requests in the step
    sampling: SamplingTensors | None  # None with argmax_only
    argmax_only: bool  # every sampled row is plain greedy: the argmax is all it needs
    placeholders: bool  # some input ids are the previous step's sampled ids
    start: torch.cuda.Event | None  # recorded before the step's first copy (GPU timing)
    constrained: bool = False  # some sampled row has a constraint: sampling is deferred
    # tensor parallelism (aiollm.distributed): rank 0's step message for the followers, and
    # on a follower, that rank 0 samples this step and broadcasts the ids
    msg: tuple | None = None
    remote_sampling: bool = False
    # every sampled row greedy, some under a bitmask: mask in place, then the argmax
    masked_argmax: bool = False


def _deferred(inp: StepInputs, logits: torch.Tensor, bad: torch.Tensor) -> Launched:
    end = None
    if inp.start is not None:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
    return Launched(None, None, None, None, None, inp.start, None, deferred=(inp, logits, bad),
                    forward_end=end)


def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    """Queue a device-to-host copy into page-locked memory (no wait); CPU tensors as-is."""
    if t is None or not t.is_cuda:
        return t
    h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    h.copy_(t, non_blocking=True)
    return h


class ModelRunner:
    def __init__(self, model: torch.nn.Module, model_config, kv_pool: KVPool,
                 req_to_token: ReqToTokenTable, device: torch.device, *, eos_ids=(),
                 cuda_graph: bool = False, cuda_graph_max_batch: int = 256, dist=None,
                 logprobs_mode: str = "raw_logprobs"):
        from aiollm.engine.cuda_graph import STAGING, DecodeGraphs
        from aiollm.engine.prefill_graphs import PrefillGraphs
        from aiollm.engine.prefill_graphs import enabled as prefill_graphs_enabled

        self.model = model
        self.dist = dist  # an aiollm.distributed.TensorParallel, or None
        if dist is not None and dist.rank == 0:  # the prefix cache's row writes reach the ranks
            req_to_token.mirror = dist.row_writes
        self.config = model_config
        self.kv_pool = kv_pool
        self.r2t = req_to_token
        self.device = device
        self.eos_ids = list(eos_ids)
        self.vocab_size = model_config.vocab_size
        self.logprobs_mode = logprobs_mode  # what sampled tokens' logprobs report (sampler.py)
        # a LongRoPE model served past its original context: its long prompts' first tokens
        # read other rotary rows than their positions (model/rope_rows.py); None for others
        self.long_prompts = getattr(model, "long_prompts", None)
        # [rows + 1] what the last launched step sampled, by sampled row (static: the decode
        # graphs read and write it too)
        self._prev_ids = torch.zeros(req_to_token.rows + 1, dtype=torch.int64, device=device)
        # decode batches run from static buffers: captured as CUDA graphs when asked for,
        # else the same step function eagerly (the CPU)
        capture = cuda_graph and device.type == "cuda"
        max_bs = min(cuda_graph_max_batch, req_to_token.rows) if capture else req_to_token.rows
        self.graphs = DecodeGraphs(model, kv_pool, req_to_token, self._prev_ids, max_bs,
                                   capture=capture)
        # eager steps (prompt tokens) replay their dense parts as graphs between attention
        # calls (prefill_graphs.py); None runs them as model.forward
        segments = capture and getattr(model, "graph_segments", False)
        self.prefill_graphs = (PrefillGraphs(model, kv_pool)
                               if segments and prefill_graphs_enabled() else None)
        pin = device.type == "cuda"
        self._out = [torch.zeros(2 * max_bs, dtype=torch.int64, pin_memory=pin)
                     for _ in range(STAGING)]
        self._out_turn = 0
        # tensor parallelism: a step launched with its sampling deferred, until sampled (the
        # followers wait in broadcast_ids for its ids: settle())
        self._owed: Launched | None = None

    def prepare(self, step: Step, table: RequestTable) -> StepInputs:
        dev = self.device
        start = None
        if dev.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        reqs = step.reqs
        n = len(reqs)
        sampled = [r for r, s in zip(reqs, step.sample) if s]
        argmax_only = all(r.argmax_only for r in sampled)
        constrained = any(r.grammar is not None for r in sampled)
        # (not under tensor parallelism: rank 0 alone has the masks, so it broadcasts ids)
        masked = (constrained and self.dist is None
                  and all(r.argmax_only or r.masked_argmax for r in sampled))
        if step.num_tokens == n and len(sampled) == n and n <= self.graphs.max_bs:
            # a decode batch: every request feeds one token and samples one (its rotary row
            # is its position, long prompt or not: rope_rows.py)
            rows, positions = step.token_coords
            bs = self.graphs.stage(n, step.input_ids, positions, step.out_cache_loc, rows)
            st = None if argmax_only or masked else self._sampling(step, sampled, table)
            inp = StepInputs(None, bs, n, st, argmax_only, min(step.input_ids) < 0, start,
                             constrained, masked_argmax=masked)
            if self.dist is not None:
                inp.msg = self.dist.step_message(inp, n, -1, (step.input_ids, positions,
                                                              step.out_cache_loc, rows))
            return inp
        lp, long = self.long_prompts, None  # [n] bool: the long requests, for their rows
        if lp is not None:
            long = lp.long_requests(np.fromiter((len(r.prompt_ids) for r in reqs), np.int64, n))
        ids = np.array(step.input_ids, dtype=np.int64)
        sample_index = None
        if sampled and len(sampled) < n:
            sample_index = np.flatnonzero(step.sample)
        batch = ForwardBatch.build(
            input_ids=ids,
            out_cache_loc=step.out_cache_loc,
            req_rows=(rows := np.fromiter((r.row for r in reqs), np.int64, n)),
            prefix_lens=np.array(step.prefix_lens, dtype=np.int64),
            extend_lens=np.array(step.extend_lens, dtype=np.int64),
            req_to_token=self.r2t.table,
            kv_pool=self.kv_pool,
            device=dev,
            sample_index=sample_index,
            token_coords=step.token_coords,
            long_prompts=lp,
            long_requests=long,
        )
        if any(r.prompt_logprobs is not None for r in reqs):
            batch.prompt_scoring = plan_scoring(reqs, step.prefix_lens, step.extend_lens, dev)
        st = (self._sampling(step, sampled, table) if sampled and not (argmax_only or masked)
              else None)
        inp = StepInputs(batch, 0, n, st, argmax_only and bool(sampled),
                         bool((ids < 0).any()), start, constrained, masked_argmax=masked)
        if self.dist is not None:
            sidx = () if sample_index is None else (sample_index,)
            inp.msg = self.dist.step_message(
                inp, len(ids), -1 if sample_index is None else len(sample_index),
                (ids, step.out_cache_loc, rows, step.prefix_lens, step.extend_lens)
                + (() if long is None else (long,)) + sidx)
        return inp

    def _sampling(self, step: Step, sampled: list, table: RequestTable) -> SamplingTensors:
        dev = self.device
        slots = np.fromiter((r.slot for r in sampled), np.int32, len(sampled))
        history = prompt_lens = None
        pen = table.gather_fields(
            ("repetition_penalty", "presence_penalty", "frequency_penalty"), slots)
        if needs_history(pen["repetition_penalty"], pen["presence_penalty"],
                         pen["frequency_penalty"]):
            # the engine plans such steps only once no earlier token is pending (see
            # Engine._must_wait_for): the history is every token on the host
            history, prompt_lens = token_history(
                [r.prompt_ids for r in sampled], [r.output_ids for r in sampled],
                [r.params.penalty_scope for r in sampled])
        return SamplingTensors.from_table(table, slots, vocab_size=self.vocab_size, device=dev,
                                          eos_ids=self.eos_ids, token_ids=history,
                                          prompt_lens=prompt_lens,
                                          step=np.array(step.out_pos, dtype=np.int64),
                                          logprobs_mode=self.logprobs_mode)

    @torch.inference_mode()
    def launch(self, inp: StepInputs) -> Launched:
        """Queue the step on the device; on the CPU this computes it."""
        out = self._launch(inp)
        if out.deferred is not None and self.dist is not None:
            self._owed = out
        return out

    def settle(self) -> None:
        """Under tensor parallelism, sample the step launched with its sampling deferred that
        sample_deferred() never got (the engine stopped in between, or the step loop's
        catch-all caught an error there: StepLoop._settle_ranks), unconstrained, its
        tokens discarded: the followers wait in broadcast_ids for its ids, and a STOP sent
        first would meet them in another collective, every rank waiting forever. Nothing
        to do otherwise. (A step that fails ends the group: the engine stops serving.)"""
        owed, self._owed = self._owed, None
        if owed is not None:
            self.sample_deferred(owed, None)

    def _launch(self, inp: StepInputs) -> Launched:
        if inp.msg is not None:  # tensor parallel: the followers run the same step
            self.dist.send_step(*inp.msg)
        if inp.decode_bs:
            return self._launch_decode(inp)
        b = inp.batch
        if inp.placeholders:
            b.input_ids = resolve_placeholders(b.input_ids, self._prev_ids)
        self.r2t.write_device(b.token_rows, b.positions, b.out_cache_loc)
        pg = self.prefill_graphs
        logits = pg.forward(b) if pg is not None and pg.covers(b) else self.model.forward(b)
        res = bad = None
        if inp.argmax_only or inp.sampling is not None or inp.remote_sampling or \
                inp.masked_argmax:
            if b.sample_index is not None:
                logits = logits.index_select(0, b.sample_index)
            bad = ~torch.isfinite(logits).all(dim=-1)
            if inp.constrained:
                return _deferred(inp, logits, bad)
            if inp.argmax_only:
                res = SampleResult(logits.argmax(dim=-1), None, None, None)
            else:
                res = self._sample(logits, inp)
        return self._queue_results(inp, res, bad)

    def _launch_decode(self, inp: StepInputs) -> Launched:
        n, bs = inp.n, inp.decode_bs
        logits, packed = self.graphs.run(bs)
        if inp.argmax_only:  # the graph's argmax is the result, which it wrote to the host
            return self._packed_launch(inp, self.graphs.host_result(bs))
        if inp.masked_argmax:  # the argmax once the mask is known
            return _deferred(inp, logits[:n], packed)
        if inp.constrained:
            return _deferred(inp, logits[:n], packed[1, :n] != 0)
        res = self._sample(logits[:n], inp)
        return self._queue_results(inp, res, packed[1, :n] != 0)

    def _packed_result(self, inp: StepInputs, packed: torch.Tensor) -> Launched:
        """Queue the copy of a decode batch's [2, bs] argmax and non-finite flags."""
        bs = inp.decode_bs
        host = self._out[self._out_turn]
        self._out_turn = (self._out_turn + 1) % len(self._out)
        host[: 2 * bs].copy_(packed.view(-1), non_blocking=True)
        return self._packed_launch(inp, host[: 2 * bs])

    def _packed_launch(self, inp: StepInputs, host: torch.Tensor) -> Launched:
        """The launch of a decode batch whose [2 * bs] result (argmaxes, then non-finite
        flags) lands in host memory `host` by the time the step's done event completes."""
        return Launched(None, None, None, None, None, inp.start, self._record_done(inp),
                        packed=host.numpy(), n=inp.n, bs=inp.decode_bs)

    def _sample(self, logits: torch.Tensor, inp: StepInputs) -> SampleResult:
        """sample(); under tensor parallelism rank 0 samples and broadcasts the ids (the
        followers need them as the next step's inputs), where a greedy step needs nothing:
        every rank takes the same argmax of the same all-gathered logits."""
        if inp.remote_sampling:
            ids = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
            return SampleResult(self.dist.broadcast_ids(ids), None, None, None)
        res = sample(logits.float(), inp.sampling)
        if self.dist is not None:
            self.dist.broadcast_ids(res.next_ids)
        return res

    @torch.inference_mode()
    def sample_deferred(self, out: Launched, mask) -> Launched:
        """Queue the sampling of a constrained step launched without it, under `mask` (an
        engine.token_mask.TokenMask for its sampled rows, or None: nothing to constrain)."""
        self._owed = None
        inp, logits, bad = out.deferred
        if inp.masked_argmax:
            assert mask is None or mask.bias_ids is None
            res = self._masked_argmax(inp, logits, bad, mask)
        else:
            st = inp.sampling
            if mask is not None:
                st.allowed, st.bias_ids, st.bias = mask.bitmask, mask.bias_ids, mask.bias
                st.grammar = mask.grammar
            res = self._queue_results(inp, self._sample(logits, inp), bad)
        res.forward_end = out.forward_end
        return res

    def _masked_argmax(self, inp: StepInputs, logits: torch.Tensor, bad: torch.Tensor,
                       mask) -> Launched:
        """Greedy rows under a bitmask: the disallowed logits set to -inf in place (rows
        without a constraint have all bits set), then the argmax. A decode batch's `bad` is
        the graph's packed [2, bs] result, whose argmax row the masked one replaces."""
        masked = mask is not None and mask.bitmask is not None
        if masked:
            apply_bitmask_(logits, mask.bitmask)
        if inp.decode_bs:
            packed = bad
            if masked:  # the graph's own pick, so unconstrained rows keep theirs exactly
                packed[0, : inp.n].copy_(greedy_pick(logits, self._prev_ids)[0])
            return self._packed_result(inp, packed)
        return self._queue_results(inp, SampleResult(logits.argmax(dim=-1), None, None, None),
                                   bad)

    def _record_done(self, inp: StepInputs) -> torch.cuda.Event | None:
        if self.device.type != "cuda":
            return None
        done = torch.cuda.Event(enable_timing=inp.start is not None)
        done.record()
        return done

    def _queue_results(self, inp: StepInputs, res: SampleResult | None, bad) -> Launched:
        """Leave the sampled ids in prev_ids (the next step's placeholders) and queue the
        results' copies to the host."""
        sc = inp.batch.prompt_scoring if inp.batch is not None else None
        if sc is not None:
            sc.logprobs, sc.ranks = _to_host(sc.logprobs), _to_host(sc.ranks)
            sc.top_ids, sc.top_logprobs = _to_host(sc.top_ids), _to_host(sc.top_logprobs)
        if res is not None:
            self._prev_ids[: res.next_ids.shape[0]].copy_(res.next_ids)
        out = Launched(
            next_ids=_to_host(res.next_ids) if res else None,
            logprobs=_to_host(res.logprobs) if res else None,
            top_ids=_to_host(res.top_ids) if res else None,
            top_logprobs=_to_host(res.top_logprobs) if res else None,
            bad=_to_host(bad),
            start=inp.start,
            done=None,
            scoring=sc,
            ranks=_to_host(res.ranks) if res else None,
        )
        out.done = self._record_done(inp)
        return out
