"""ModelRunner: turns a planned Step into one forward pass and one sampling pass.

prepare() runs on the event loop thread: it reads the request table and starts the batch
metadata's copies to the device (from page-locked memory, so they queue behind the running
step instead of waiting for it). launch() runs on the engine's model thread: it queues the
forward pass, the sampling and the copy of the sampled ids into page-locked host memory,
then records a CUDA event and returns without waiting. collect() turns a finished launch
into numpy. On the CPU, launch() computes everything before it returns.

Tokens sampled by the step still running are not on the host when the next step is
planned: the planner writes them as placeholders -(row + 1), and launch() replaces them on
the device with the ids that step sampled (kept in self._prev_ids).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aiollm.engine.planner import Step
from aiollm.engine.request import TokenLogprob
from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.kv_pool import KVPool, ReqToTokenTable
from aiollm.model.sampler import SamplingTensors, needs_history, sample
from aiollm.native import RequestTable


@dataclass(slots=True)
class StepInputs:
    batch: ForwardBatch
    sampling: SamplingTensors | None
    placeholders: bool  # some input ids are the previous step's sampled ids
    start: torch.cuda.Event | None  # recorded before the step's first copy (GPU timing)


@dataclass(slots=True)
class Launched:
    """A step queued on the device: host tensors that fill in when `done` completes."""

    next_ids: torch.Tensor | None  # [S] int64 (None: nothing sampled)
    logprobs: torch.Tensor | None
    top_ids: torch.Tensor | None
    top_logprobs: torch.Tensor | None
    bad: torch.Tensor | None
    start: torch.cuda.Event | None
    done: torch.cuda.Event | None


@dataclass(slots=True)
class StepResult:
    next_ids: np.ndarray  # [S] int64
    logprobs: np.ndarray | None  # [S] fp32
    top_ids: np.ndarray | None  # [S, K]
    top_logprobs: np.ndarray | None
    bad: np.ndarray | None  # [S] bool: non-finite logits

    def logprob_entry(self, row: int, n_top: int) -> TokenLogprob:
        top = []
        if n_top and self.top_ids is not None:
            top = [(int(t), float(lp)) for t, lp in
                   zip(self.top_ids[row, :n_top], self.top_logprobs[row, :n_top])]
        return TokenLogprob(int(self.next_ids[row]), float(self.logprobs[row]), top)


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
                 cuda_graph: bool = False, cuda_graph_max_batch: int = 256):
        self.model = model
        self.config = model_config
        self.kv_pool = kv_pool
        self.r2t = req_to_token
        self.device = device
        self.eos_ids = list(eos_ids)
        self.vocab_size = model_config.vocab_size
        self.graphs = None
        self._prev_ids: torch.Tensor | None = None  # [S] what the last launched step sampled
        if cuda_graph:
            from aiollm.engine.cuda_graph import DecodeGraphs

            self.graphs = DecodeGraphs(model, kv_pool, req_to_token,
                                       min(cuda_graph_max_batch, req_to_token.rows),
                                       req_to_token.max_len)

    def prepare(self, step: Step, table: RequestTable) -> StepInputs:
        dev = self.device
        start = None
        if dev.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        ids = np.array(step.input_ids, dtype=np.int64)
        sampled = [r for r, s in zip(step.reqs, step.sample) if s]
        sample_index = None
        if sampled and len(sampled) < len(step.reqs):
            sample_index = np.flatnonzero(step.sample)
        batch = ForwardBatch.build(
            input_ids=ids,
            out_cache_loc=step.out_cache_loc.numpy(),
            req_rows=np.fromiter((r.row for r in step.reqs), np.int64, len(step.reqs)),
            prefix_lens=np.array(step.prefix_lens, dtype=np.int64),
            extend_lens=np.array(step.extend_lens, dtype=np.int64),
            req_to_token=self.r2t.table,
            kv_pool=self.kv_pool,
            device=dev,
            sample_index=sample_index,
        )
        st = None
        if sampled:
            slots = np.fromiter((r.slot for r in sampled), np.int32, len(sampled))
            history = prompt_lens = None
            pen = table.gather_fields(
                ("repetition_penalty", "presence_penalty", "frequency_penalty"), slots)
            if needs_history(pen["repetition_penalty"], pen["presence_penalty"],
                             pen["frequency_penalty"]):
                # the engine plans such steps only once no earlier token is pending (see
                # Engine._must_wait_for): the history is every token on the host
                known = [r.prompt_ids + r.output_ids for r in sampled]
                history = np.full((len(sampled), max(map(len, known))), -1, dtype=np.int64)
                for i, toks in enumerate(known):
                    history[i, : len(toks)] = toks
                prompt_lens = np.array([len(r.prompt_ids) for r in sampled], dtype=np.int64)
            st = SamplingTensors.from_table(table, slots, vocab_size=self.vocab_size, device=dev,
                                            eos_ids=self.eos_ids, token_ids=history,
                                            prompt_lens=prompt_lens,
                                            step=np.array(step.out_pos, dtype=np.int64))
        return StepInputs(batch, st, bool((ids < 0).any()), start)

    @torch.inference_mode()
    def launch(self, inp: StepInputs) -> Launched:
        """Queue the step on the device; on the CPU this computes it."""
        b = inp.batch
        if inp.placeholders:
            ids = b.input_ids
            prev = self._prev_ids[(-ids - 1).clamp(min=0)]
            b.input_ids = torch.where(ids < 0, prev, ids)
        self.r2t.write_device(b.token_rows, b.positions, b.out_cache_loc)
        if self.graphs is not None and self.graphs.can_run(b):
            logits = self.graphs.run(b)
        else:
            logits = self.model.forward(b)
        res = bad = None
        if inp.sampling is not None:
            if b.sample_index is not None:
                logits = logits.index_select(0, b.sample_index)
            logits = logits.float()
            res = sample(logits, inp.sampling)
            bad = ~torch.isfinite(logits).all(dim=-1)
        self._prev_ids = res.next_ids if res is not None else None
        done = None
        if b.input_ids.is_cuda:
            done = torch.cuda.Event(enable_timing=inp.start is not None)
        out = Launched(
            next_ids=_to_host(res.next_ids) if res else None,
            logprobs=_to_host(res.logprobs) if res else None,
            top_ids=_to_host(res.top_ids) if res else None,
            top_logprobs=_to_host(res.top_logprobs) if res else None,
            bad=_to_host(bad),
            start=inp.start,
            done=done,
        )
        if done is not None:
            done.record()
        return out

    @staticmethod
    def collect(out: Launched) -> StepResult | None:
        """The results of a launch whose `done` event has completed."""
        if out.next_ids is None:
            return None

        def np_(t):
            return None if t is None else t.numpy()

        return StepResult(next_ids=out.next_ids.numpy(), logprobs=np_(out.logprobs),
                          top_ids=np_(out.top_ids), top_logprobs=np_(out.top_logprobs),
                          bad=np_(out.bad))
