"""ModelRunner: turns a planned Step into one forward pass and one sampling pass.

prepare() runs on the event loop thread (it reads the request table); run() runs on the
engine's model thread and only touches tensors, so the event loop keeps serving while the
model computes. Only the sampled ids (and requested logprobs) come back to the host.
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
    sample_index: torch.Tensor | None  # [S] rows of the batch that sample (None: all)
    sampling: SamplingTensors | None
    token_rows: torch.Tensor  # [T] req_to_token row of each new token (device mirror)


@dataclass(slots=True)
class StepResult:
    next_ids: np.ndarray  # [S] int32
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
        if cuda_graph:
            from aiollm.engine.cuda_graph import DecodeGraphs

            self.graphs = DecodeGraphs(model, kv_pool, req_to_token,
                                       min(cuda_graph_max_batch, req_to_token.rows),
                                       req_to_token.max_len)

    def prepare(self, step: Step, table: RequestTable) -> StepInputs:
        dev = self.device
        ext = torch.tensor(step.extend_lens, dtype=torch.int32)
        rows = torch.tensor([r.row for r in step.reqs], dtype=torch.int32)
        batch = ForwardBatch.build(
            input_ids=torch.tensor(step.input_ids, dtype=torch.int64),
            out_cache_loc=step.out_cache_loc,
            req_rows=rows,
            prefix_lens=torch.tensor(step.prefix_lens, dtype=torch.int32),
            extend_lens=ext,
            req_to_token=self.r2t.table,
            kv_pool=self.kv_pool,
            device=dev,
        )
        sampled = [r for r, s in zip(step.reqs, step.sample) if s]
        st = sample_index = None
        if sampled:
            if len(sampled) < len(step.reqs):
                sample_index = torch.tensor(np.flatnonzero(step.sample), dtype=torch.int64).to(
                    dev, non_blocking=True)
            slots = np.fromiter((r.slot for r in sampled), np.int32, len(sampled))
            history = prompt_lens = None
            pen = table.gather_fields(
                ("repetition_penalty", "presence_penalty", "frequency_penalty"), slots)
            if needs_history(pen["repetition_penalty"], pen["presence_penalty"],
                             pen["frequency_penalty"]):
                width = max(r.num_tokens for r in sampled)
                history = np.full((len(sampled), width), -1, dtype=np.int64)
                for i, r in enumerate(sampled):
                    history[i, : r.num_tokens] = r.prompt_ids + r.output_ids
                prompt_lens = np.array([len(r.prompt_ids) for r in sampled], dtype=np.int64)
            st = SamplingTensors.from_table(table, slots, vocab_size=self.vocab_size, device=dev,
                                            eos_ids=self.eos_ids, token_ids=history,
                                            prompt_lens=prompt_lens)
        token_rows = torch.from_numpy(np.repeat(rows.numpy().astype(np.int64), step.extend_lens)
                                      ).to(dev, non_blocking=True)
        return StepInputs(batch, sample_index, st, token_rows)

    @torch.inference_mode()
    def run(self, inp: StepInputs) -> StepResult | None:
        b = inp.batch
        self.r2t.write_device(inp.token_rows, b.positions, b.out_cache_loc)
        if self.graphs is not None and self.graphs.can_run(b):
            logits = self.graphs.run(b)
        else:
            logits = self.model.forward(b)
        if inp.sampling is None:
            if b.input_ids.is_cuda:
                torch.cuda.current_stream().synchronize()
            return None
        if inp.sample_index is not None:
            logits = logits.index_select(0, inp.sample_index)
        logits = logits.float()
        res = sample(logits, inp.sampling)
        bad = ~torch.isfinite(logits).all(dim=-1)
        top_ids = res.top_ids.cpu().numpy() if res.top_ids is not None else None
        top_lps = res.top_logprobs.cpu().numpy() if res.top_logprobs is not None else None
        return StepResult(
            next_ids=res.next_ids.to(torch.int32).cpu().numpy(),
            logprobs=res.logprobs.cpu().numpy(),
            top_ids=top_ids,
            top_logprobs=top_lps,
            bad=bad.cpu().numpy(),
        )
