"""Start-up warm-up: run each kind of eager step once before serving.

Triton compiles a kernel variant at its first launch (a fraction of a second to seconds
each, more on a machine whose Triton cache is empty). Decode steps are captured as CUDA
graphs at start-up, so they never compile while serving; prefill chunks, mixed steps and
sampling run eagerly, and the first prompt of each length class or the first mixed step of
each decode-batch class would stall every running stream while its kernels compile.
warm_up() launches those shapes on throwaway KV slots first: prefills at each length class of
the extend kernel, and mixed steps (decodes plus one prompt chunk) at each batch and context
class of the decode kernel (and at a class's corners where a different split rule, hence a
different kernel, applies), then the sampling kernels.

Kernel configs are not tuned here (aiollm.kernels.autotune.untuned): the decodes of a
warm-up step all read one context, whose KV then sits in cache, so timings taken on it could
pick a config that is slower in serving. A shape class with no cached config keeps being
tuned at its first launch in serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

import numpy as np
import torch

from aiollm.engine.model_runner import StepInputs
from aiollm.kernels import autotune
from aiollm.kernels.decode_attention import launch_variant
from aiollm.kernels.decode_attention_configs import BATCH_CLASSES, LENGTH_CLASSES
from aiollm.kernels.extend_attention import LENGTH_CLASSES as EXTEND_CLASSES
from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.logit_masks import apply_bitmask_
from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors

log = logging.getLogger(__name__)

CHUNK = 16  # the prompt chunk of a warm-up mixed step


def plan(max_prefill: int, max_batch: int, max_context: int,
         variant: Callable[[int, int], Hashable] | None = None
         ) -> tuple[list[int], list[tuple[int, int]]]:
    """The warm-up's prefill lengths, and its mixed steps as (decodes, context length):
    each class edge within the limits, and the limit itself where it falls inside a class.
    `variant(decodes, context)` names the decode kernel such a step compiles
    (decode_attention.launch_variant); with it, each class's two other corners are added
    where they compile a kernel no step before them does: the fewest decodes at the longest
    context (the most splits) and the most decodes at the shortest context (the fewest)."""
    def classes(edges, limit):
        return sorted({min(e, limit) for e in edges}) if limit >= 1 else []

    prefills = classes(EXTEND_CLASSES, max_prefill)
    batches = classes(BATCH_CLASSES, min(max_batch, max_prefill - 1))
    contexts = classes(LENGTH_CLASSES, max_context)
    mixed = [(b, n) for b in batches for n in contexts]
    if variant is not None:
        seen = {variant(b, n) for b, n in mixed}
        for i, b in enumerate(batches):
            for j, n in enumerate(contexts):
                first_b = batches[i - 1] + 1 if i else 1  # the class's smallest batch
                first_n = contexts[j - 1] + 1 if j else 1  # and shortest context
                for corner in ((first_b, n), (b, first_n)):
                    v = variant(*corner)
                    if v not in seen:
                        seen.add(v)
                        mixed.append(corner)
    return prefills, mixed


@torch.inference_mode()
def warm_up(runner, *, max_prefill: int, max_mixed: int, max_batch: int,
            grammars: bool = True) -> None:
    """Launch the shapes plan() gives on `runner`'s model (a ModelRunner), then free every KV
    slot and req_to_token row it took. grammars False (grammar_backend "none"): xgrammar is
    not imported, and a bitmask (allowed_token_ids) is applied by the PyTorch reference."""
    kv, r2t = runner.kv_pool, runner.r2t
    max_prefill = min(max_prefill, r2t.max_len, kv.n_free // 2)
    prefills, mixed = plan(max_prefill, max_batch, min(r2t.max_len, kv.n_free - max_prefill),
                           _decode_variant(runner))
    if not prefills or r2t.n_free_rows < 2:
        return
    rows = [r2t.alloc_row(), r2t.alloc_row()]  # one context for every decode, one prompt
    n_ctx = max((n for _, n in mixed), default=0)
    slots = kv.alloc(n_ctx + max_prefill)
    t0 = time.monotonic()
    try:
        with autotune.untuned():
            ctx, new = slots[:n_ctx].numpy(), slots[n_ctx:].numpy()
            if n_ctx:
                pos = torch.arange(n_ctx, device=runner.device)
                r2t.write_device(torch.full_like(pos, rows[0]), pos,
                                 torch.from_numpy(ctx).to(runner.device))
            for n in prefills:
                _forward(runner, [rows[1]], [0], [n], new[:n])
            for b, n in mixed:
                chunk = min(CHUNK, max_mixed, max_prefill - b)  # plan() keeps b < max_prefill
                loc = np.concatenate([np.full(b, ctx[n - 1]), new[:chunk]])
                _forward(runner, [rows[0]] * b + [rows[1]], [n - 1] * b + [0], [1] * b + [chunk],
                         loc)
            _sampling(runner, grammars)
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)
    finally:
        kv.free(slots)
        for r in rows:
            r2t.free_row(r)
    log.info("warm-up: %d prefill and %d mixed step shapes, sampling, in %.1fs", len(prefills),
             len(mixed), time.monotonic() - t0)


def _decode_variant(runner) -> Callable[[int, int], Hashable] | None:
    """(decodes, context) -> the decode attention kernel a mixed step of the runner's model
    launches, for plan(); None for a model without the shard config that names its heads."""
    cfg = getattr(runner.model, "shard_config", None)
    if cfg is None:
        return None
    k_cache = runner.kv_pool.k_cache[0]
    return lambda b, n: launch_variant(b, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                       k_cache.dtype, runner.device, n)


def _forward(runner, rows, prefix_lens, extend_lens, out_cache_loc) -> None:
    """One greedy eager step through the runner's own launch (its sampled ids land in the
    runner's prev_ids, which nothing reads before the first served step writes them)."""
    batch = ForwardBatch.build(
        input_ids=np.zeros(int(sum(extend_lens)), dtype=np.int64), out_cache_loc=out_cache_loc,
        req_rows=rows, prefix_lens=prefix_lens, extend_lens=extend_lens,
        req_to_token=runner.r2t.table, kv_pool=runner.kv_pool, device=runner.device)
    runner.launch(StepInputs(batch, 0, len(rows), None, argmax_only=True, placeholders=False,
                             start=None))


def _sampling(runner, grammars: bool = True) -> None:
    """sample() on random logits with the parameter mixes that take different paths: plain
    temperature, top-k only (a draw among candidates), greedy and sampled rows with top-p,
    min-p and logprobs (a full sort), and penalties; and the bitmask of constrained steps."""
    vocab, b = runner.vocab_size, 4
    g = torch.Generator(device=runner.device).manual_seed(0)
    logits = torch.randn((b, vocab), generator=g, device=runner.device)
    ones, zeros = np.ones(b, np.float32), np.zeros(b, np.float32)
    plain = dict(temperature=ones, top_p=ones, top_k=np.full(b, -1), min_p=zeros,
                 top_logprobs=np.full(b, -1), repetition_penalty=ones)
    mixes = [
        plain,
        {**plain, "top_k": np.array([40, 5, 40, 5])},
        {**plain, "temperature": np.array([0, 0.7, 1, 1], np.float32),
         "top_k": np.array([-1, 40, -1, 5]),
         "top_p": np.full(b, 0.9, np.float32), "min_p": np.full(b, 0.05, np.float32),
         "top_logprobs": np.full(b, 5)},
        {**plain, "repetition_penalty": np.full(b, 1.1, np.float32)},
    ]
    history = np.arange(b * 8, dtype=np.int64).reshape(b, 8) % vocab
    for mix in mixes:
        st = SamplingTensors.from_numpy(
            **mix, presence_penalty=zeros, frequency_penalty=zeros,
            seed=np.arange(b, dtype=np.int64), step=np.zeros(b, np.int64), vocab_size=vocab,
            device=runner.device, token_ids=history, prompt_lens=np.full(b, 4, np.int64),
            logprobs_mode=runner.logprobs_mode)
        sample(logits, st)
    # a constrained greedy step's in-place mask: on a GPU xgrammar's kernel, which
    # apply_bitmask_ takes only once xgrammar is imported (never first on the event loop):
    # imported here, at start, so that the kernel compiles now, not in a request's step
    if logits.is_cuda and grammars:
        import xgrammar  # noqa: F401
    apply_bitmask_(logits, torch.full((b, (vocab + 31) // 32), -1, dtype=torch.int32,
                                      device=runner.device))
