"""Serving benchmark: throughput, latency and goodput of a streaming LLM server under load.

Drives the server with a synthetic workload and reports throughput, latency percentiles,
goodput under an SLA and, optionally, the fraction of a measured roofline that it reached.

The same client measures aiollm and its peers. `--backend openai` posts to /v1/completions with
stream=true and reads `data: {json}` chunks up to `data: [DONE]`; `--backend lightllm` posts
{"inputs", "parameters"} to /generate_stream and reads one `data:{json}` event per token. Every
request sets ignore_eos and asks for exactly its drawn output length, so all servers do the
same work. Only the URL given is contacted.

Workloads (--workload): random (one prompt each, --dataset lengths), shared-prefix and
multi-turn (bench/workloads.py: prompts that repeat a prefix; the report then compares the
prompt tokens the server says it reused from its prefix cache with the workload's ideal).

Load: a closed loop of --concurrency clients (each sends its next request when its last one
ends), or Poisson arrivals at --request-rate, with --concurrency then capping requests in flight.

Per request the client keeps the send time, the arrival time of every streamed chunk and the
output token count (the server's usage / count_output_tokens when sent, else the chunks).
TTFT is first chunk - send; TPOT is (e2e - TTFT) / (n - 1); ITL is every gap between
consecutive chunks (a chunk carrying several tokens counts once); goodput counts the requests
whose TTFT and TPOT both meet --slo-ttft / --slo-tpot. Times are taken when the client reads a
line, so a saturated client inflates them: watch its CPU at very high token rates.

Roofline (--roofline-json: copy_bw_bytes_per_s, matmul_flops_per_s, weight_bytes,
kv_bytes_per_token, flops_per_token, as bench/decode.py measures them). For the completed
requests, prompt lengths P_i and output lengths O_i, with B requests decoding together:
    prefill_s = F * sum(P_i) / matmul                      F = flops_per_token (about 2 * params)
    d_i       = O_i - 1                                    the first token comes from prefill
    steps     = sum(d_i) / B                               each decode step reads the weights once
    kv_bytes  = K * sum(d_i * P_i + d_i * (d_i + 1) / 2)   step k of request i reads P_i + k tokens
    decode_s  = max((steps * W + kv_bytes) / copy_bw, F * sum(d_i) / matmul)
    roofline  = sum(O_i) / (prefill_s + decode_s)          output tokens/s
with W = weight_bytes and K = kv_bytes_per_token. B is --concurrency in a closed loop and the
measured mean number of requests in flight (Little's law: sum of e2e / duration) under Poisson
arrivals. Attention FLOPs, the ramp-up and the tail with fewer than B requests are left out, so
the bound is optimistic: no server can beat it on this hardware.

Usage: python bench/serve.py --url http://127.0.0.1:8000 --concurrency 100 --num-requests 400 \\
           --input-len 1024 --output-len-mean 128 --tokenizer MODEL --plot
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Sequence

import aiohttp
import msgspec
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import workloads  # noqa: E402  (bench/ is scripts, not a package)
from commit import tree_commit  # noqa: E402
from results_file import result_path, write_report  # noqa: E402

PAPER_SLA = (10.0, 1.5)  # Past-Future (ASPLOS'25): TTFT s, max-TPOT s, for 7B/13B models
ROOFLINE_KEYS = ("copy_bw_bytes_per_s", "matmul_flops_per_s", "weight_bytes",
                 "kv_bytes_per_token", "flops_per_token")
# Common English words: most are one token in any BPE vocabulary, so text built from them
# has a predictable length in tokens when no tokenizer is given.
WORDS = ("about after again air all along always animal answer area back base bird black blue "
         "boat body book bring build call carry change city clear close cold color come common "
         "country course cover cross dark day deep door down draw early earth east enough even "
         "every eye face fact family farm field fire first fish food foot forest form free friend "
         "front garden give gold good great green ground group half hand hard head hear heat "
         "high hold home horse house idea island just keep kind king land large late learn leave "
         "letter light line list little long low machine make map mark measure mind moon morning "
         "mother mountain move music name near never next night north number ocean open order "
         "page paper part people picture place plain plan plant point power press question quick "
         "rain reach read ready real river road rock room round rule run school science sea "
         "second ship short simple small snow song sound south space stand star start stone "
         "story street strong study summer sun surface table tell test think tree true turn "
         "under voice wait walk warm watch water weather west white whole wind window winter "
         "wood word work world write year young").split()


def option(default, help: str):
    """A BenchConfig field and its --flag's help text, kept together."""
    return field(default=default, metadata={"help": help})


@dataclass
class BenchConfig:
    url: str = option("http://127.0.0.1:8000", "server base URL")
    backend: str = option("openai", "server API family: openai | lightllm")
    endpoint: str | None = option(None, "path to post to (default: the backend's stream path)")
    model: str | None = option(None, "OpenAI model field (default: the first of /v1/models)")
    num_requests: int = option(400, "requests in the run")
    concurrency: int = option(100, "closed-loop clients; with --request-rate, the cap on "
                                   "requests in flight")
    request_rate: float | None = option(None, "Poisson arrivals per second (default: closed loop)")
    dataset: str = option("random", "random | sharegpt-like (input and output lengths drawn "
                                    "from a ShareGPT-shaped mix)")
    workload: str = option("random", "random | shared-prefix (--num-prefixes system prompts of "
                                     "--prefix-len tokens, then --input-len unique tokens) | "
                                     "multi-turn (conversations of --turns turns; each turn "
                                     "sends the conversation so far and an --input-len message)")
    prefix_len: int = option(2000, "shared-prefix: tokens of each system prompt")
    num_prefixes: int = option(1, "shared-prefix: distinct system prompts")
    turns: int = option(5, "multi-turn: turns per conversation (num_requests / turns "
                           "conversations)")
    input_len: int = option(1024, "prompt tokens (random dataset)")
    output_len: int = option(128, "fixed output tokens (random dataset)")
    output_len_mean: float | None = option(None, "Gaussian output lengths with this mean, >= 1")
    output_len_std: float | None = option(None, "their standard deviation (default: mean / 4)")
    tokenizer: str | None = option(None, "HF model dir or .gguf file, read offline: prompts of "
                                         "exact token lengths")
    # WORDS text per token, measured with SmolLM2's tokenizer
    chars_per_token: float = option(5.7, "prompt length estimate without a tokenizer")
    temperature: float = option(0.0, "0: greedy")
    seed: int = option(0, "seed of lengths, prompts and arrivals")
    timeout: float = option(600.0, "seconds per request")
    max_duration: float | None = option(None, "seconds for the whole run; requests still open "
                                              "then count as failed")
    warmup: int = option(0, "requests sent and discarded first")
    wait_ready: float = option(0.0, "seconds to wait for GET /health to answer 200 once the "
                                    "workload is built (a client started beside its server)")
    slo_ttft: float | None = option(None, "goodput SLA: TTFT bound, seconds")
    slo_tpot: float | None = option(None, "goodput SLA: TPOT bound, seconds per token")
    slo_max_tpot: float | None = option(None, "goodput SLA: bound on a request's longest gap "
                                              "between two tokens (max-TPOT), seconds")
    sim_workload: str | None = option(None, "draw lengths from this workload of bench/sim.py "
                                            "(e.g. decode_heavy_s8), as the simulator does")
    roofline_json: str | None = option(None, "measured hardware limits: report output tok/s as "
                                             "a fraction of the roofline (formula above)")
    label: str = option("run", "names the run in the report and its file")
    device_name: str | None = option(None, "device in the report (default: nvidia-smi's)")
    out: str | None = option(None, "JSON path (default: bench/results/serve-DATE-LABEL.json)")
    plot: bool = option(False, "also write a PNG of TTFT/ITL CDFs and output over time")
    extra_body: str | None = option(None, "a JSON object merged into the body of constrained "
                                          "requests (e.g. a response_format)")
    constrained_every: int = option(1, "with --extra-body: every k-th request is constrained "
                                       "(1: all, 2: half); metrics are also split by class")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {sorted(BACKENDS)}, not {self.backend!r}")
        if self.dataset not in ("random", "sharegpt-like"):
            raise ValueError("--dataset must be 'random' or 'sharegpt-like'")
        if self.workload not in ("random", "shared-prefix", "multi-turn"):
            raise ValueError("--workload must be 'random', 'shared-prefix' or 'multi-turn'")
        for name in ("prefix_len", "num_prefixes", "turns"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"--url must start with http:// or https://, got {self.url!r}")
        for name in ("num_requests", "concurrency", "input_len", "output_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.request_rate is not None and self.request_rate <= 0:
            raise ValueError("--request-rate must be positive (leave it out for a closed loop)")
        if self.output_len_mean is not None:
            if self.output_len_mean < 1:
                raise ValueError("--output-len-mean must be at least 1")
            if self.output_len_std is None:
                self.output_len_std = self.output_len_mean / 4
            if self.output_len_std < 0:
                raise ValueError("--output-len-std must not be negative")
        if self.endpoint is None:
            self.endpoint = BACKENDS[self.backend].path


@dataclass
class RequestSpec:
    prompt: str
    prompt_len: int  # tokens: counted by the tokenizer, else the target length
    output_len: int
    constrained: bool = False  # carries --extra-body
    ideal_cached: int = 0  # tokens of the prompt an earlier request sent already


@dataclass
class RequestRecord:
    prompt_len: int
    output_len: int  # asked for
    start: float = math.nan
    end: float = math.nan
    chunk_times: list[float] = field(default_factory=list)
    server_output: int | None = None  # output tokens as the server counts them
    server_prompt: int | None = None
    server_cached: int | None = None  # prompt tokens the server reused from its prefix cache
    ideal_cached: int = 0  # prompt tokens the workload repeats from earlier requests
    text_parts: list[str] | None = None  # the streamed text, when a later prompt needs it
    error: str | None = None
    constrained: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunk_times)

    @property
    def n_output(self) -> int:
        return self.server_output if self.server_output is not None else len(self.chunk_times)

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        n = self.n_output
        return (self.e2e - self.ttft) / (n - 1) if n > 1 else None

    @property
    def max_tpot(self) -> float | None:
        """The longest gap between two consecutive chunks (the Past-Future paper's max-TPOT)."""
        t = self.chunk_times
        return max(b - a for a, b in zip(t, t[1:])) if len(t) > 1 else None


# -- backends: request body and stream events of each server family -----------------------------

def openai_payload(cfg: BenchConfig, spec: RequestSpec) -> dict:
    body = {"prompt": spec.prompt, "max_tokens": spec.output_len, "ignore_eos": True,
            "temperature": cfg.temperature, "stream": True,
            "stream_options": {"include_usage": True}}
    if cfg.model:
        body["model"] = cfg.model
    if spec.constrained:
        body.update(json.loads(cfg.extra_body))
    return body


def openai_event(ev: dict, rec: RequestRecord, now: float) -> bool:
    if ev.get("error"):
        rec.error = f"server: {ev['error']}"
        return True
    if usage := ev.get("usage"):
        rec.server_output = usage.get("completion_tokens", rec.server_output)
        rec.server_prompt = usage.get("prompt_tokens", rec.server_prompt)
        details = usage.get("prompt_tokens_details") or {}
        rec.server_cached = details.get("cached_tokens", rec.server_cached)
    choices = ev.get("choices") or ()
    if rec.text_parts is not None:
        rec.text_parts.extend(c.get("text") or "" for c in choices)
    # An empty chunk without a finish_reason still carries a token (its text held back
    # mid-UTF-8); an empty one with a finish_reason only closes the stream.
    if any(c.get("text") or c.get("finish_reason") is None for c in choices):
        rec.chunk_times.append(now)
    return False


def lightllm_payload(cfg: BenchConfig, spec: RequestSpec) -> dict:
    params = {"max_new_tokens": spec.output_len, "ignore_eos": True,
              "do_sample": cfg.temperature > 0}
    if cfg.temperature > 0:
        params["temperature"] = cfg.temperature
    return {"inputs": spec.prompt, "parameters": params}


def lightllm_event(ev: dict, rec: RequestRecord, now: float) -> bool:
    if ev.get("error"):
        rec.error = f"server: {ev['error']}"
        return True
    tok = ev.get("token")
    if tok and tok.get("id") is not None:
        rec.chunk_times.append(now)
        rec.server_output = tok.get("count_output_tokens", rec.server_output)
        rec.server_prompt = tok.get("prompt_tokens", rec.server_prompt)
        rec.server_cached = tok.get("prompt_cache_len", rec.server_cached)
        if rec.text_parts is not None:
            rec.text_parts.append(tok.get("text") or "")
    return bool(ev.get("finished"))


@dataclass(frozen=True)
class Backend:
    path: str
    payload: Callable[[BenchConfig, RequestSpec], dict]
    on_event: Callable[[dict, RequestRecord, float], bool]  # True: the stream is over


BACKENDS = {"openai": Backend("/v1/completions", openai_payload, openai_event),
            "lightllm": Backend("/generate_stream", lightllm_payload, lightllm_event)}


# -- workload -----------------------------------------------------------------------------------

def draw_lengths(cfg: BenchConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths (tokens) of every request."""
    n = cfg.num_requests
    if cfg.sim_workload:
        from sim import WORKLOADS  # bench/sim.py: the same draw from the same seed

        w = WORKLOADS[cfg.sim_workload]
        prompt, out = w.draw(rng, n)
        return (np.asarray(prompt, dtype=np.int64),
                np.clip(np.asarray(out, dtype=np.int64), 1, w.max_new_tokens))
    if cfg.dataset == "sharegpt-like":
        # ShareGPT's shape without the dataset (the same as bench/sim.py's sharegpt_like, so
        # simulated and measured runs share a workload): long-tailed prompts; replies a mix of
        # short answers and a broad body of a few hundred tokens.
        prompt = np.clip(rng.lognormal(np.log(150), 0.9, n), 4, 2048)
        short = rng.random(n) < 0.2
        out = np.where(short, rng.lognormal(np.log(30), 0.7, n), rng.lognormal(np.log(260), 0.6, n))
        return prompt.astype(np.int64), np.clip(np.ceil(out), 1, 2048).astype(np.int64)
    prompt = np.full(n, cfg.input_len, dtype=np.int64)
    if cfg.output_len_mean is None:
        return prompt, np.full(n, cfg.output_len, dtype=np.int64)
    out = np.rint(rng.normal(cfg.output_len_mean, cfg.output_len_std, n))
    return prompt, np.maximum(out, 1).astype(np.int64)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    p = Path(path)
    if p.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


class PromptMaker:
    """Random text of a given length in tokens. With a tokenizer, the words are whole-word
    tokens of its own vocabulary and the text is re-encoded and trimmed until it has the
    length; without one, common words up to length * chars_per_token characters."""

    def __init__(self, rng: np.random.Generator, tokenizer=None, chars_per_token: float = 5.7):
        self.rng, self.tok, self.cpt = rng, tokenizer, chars_per_token
        self.words = WORDS
        if tokenizer is not None:
            # Byte-level BPE marks a leading space with "Ġ", SentencePiece with "▁".
            pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            found = [p[1:] for p in pieces
                     if p and p[0] in "Ġ▁" and p[1:].isascii() and p[1:].isalpha()]
            if len(found) >= 100:
                self.words = found

    def _words(self, n: int) -> str:
        return " " + " ".join(self.rng.choice(self.words, n))

    def make(self, n_tokens: int) -> tuple[str, int]:
        if self.tok is None:
            text, target = "", n_tokens * self.cpt
            while len(text) < target:
                text += self._words(max(1, int((target - len(text)) / 6)))
            return text, n_tokens
        text = self._words(n_tokens)
        for _ in range(8):
            ids = self.tok.encode(text, add_special_tokens=False)
            if len(ids) == n_tokens:
                break
            if len(ids) > n_tokens:
                text = self.tok.decode(ids[:n_tokens])
            else:
                text += self._words(n_tokens - len(ids))
        return text, len(self.tok.encode(text, add_special_tokens=False))


def make_workload(cfg: BenchConfig) -> list[RequestSpec]:
    rng = np.random.default_rng(cfg.seed)
    prompt_lens, output_lens = draw_lengths(cfg, rng)
    maker = PromptMaker(rng, load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None,
                        cfg.chars_per_token)
    if cfg.workload == "shared-prefix":
        prompts = workloads.shared_prefix_prompts(maker, cfg.num_requests, cfg.num_prefixes,
                                                  cfg.prefix_len, cfg.input_len)
        return [RequestSpec(text, n, o, ideal_cached=ideal) for (text, n, ideal), o in
                zip(prompts, output_lens.tolist())]
    specs = []
    for i, (p, o) in enumerate(zip(prompt_lens.tolist(), output_lens.tolist())):
        text, n = maker.make(p)
        specs.append(RequestSpec(text, n, o, bool(cfg.extra_body)
                                 and i % cfg.constrained_every == 0))
    return specs


# -- load ---------------------------------------------------------------------------------------

async def send(session: aiohttp.ClientSession, cfg: BenchConfig, spec: RequestSpec,
               rec: RequestRecord) -> None:
    """One streamed request; every failure ends up in rec.error, never as an exception."""
    backend = BACKENDS[cfg.backend]
    body = backend.payload(cfg, spec)
    rec.start = time.perf_counter()
    try:
        async with session.post(cfg.url.rstrip("/") + cfg.endpoint, json=body) as resp:
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            async for line in resp.content:
                now = time.perf_counter()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]" or backend.on_event(msgspec.json.decode(data), rec, now):
                    break
        if rec.error is None and not rec.chunk_times:
            rec.error = "the stream ended without a token"
    except asyncio.CancelledError:
        rec.error = "cancelled at --max-duration"
        raise
    except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash
        rec.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    finally:
        rec.end = time.perf_counter()


async def closed_loop(session, cfg, specs, records) -> None:
    pending = iter(zip(specs, records))  # shared: each client takes the next request

    async def client() -> None:
        for spec, rec in pending:
            await send(session, cfg, spec, rec)

    await asyncio.gather(*(client() for _ in range(min(cfg.concurrency, len(specs)))))


async def poisson_arrivals(session, cfg, specs, records) -> None:
    rng = np.random.default_rng(cfg.seed + 1)
    in_flight = asyncio.Semaphore(cfg.concurrency)

    async def one(spec, rec) -> None:
        async with in_flight:
            await send(session, cfg, spec, rec)

    tasks = []
    try:
        for spec, rec in zip(specs, records):
            tasks.append(asyncio.create_task(one(spec, rec)))
            await asyncio.sleep(rng.exponential(1 / cfg.request_rate))
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def first_model(session: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with session.get(url.rstrip("/") + "/v1/models") as resp:
            data = (await resp.json())["data"]
            return data[0]["id"] if data else None
    except Exception:  # noqa: BLE001 - no model list: send requests without a model field
        return None


async def wait_ready(session: aiohttp.ClientSession, url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            async with session.get(url.rstrip("/") + "/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not ready within --wait-ready {seconds} s")
        await asyncio.sleep(0.5)


async def run_load(cfg: BenchConfig, specs: list[RequestSpec]) -> tuple[list[RequestRecord], float]:
    records = [RequestRecord(s.prompt_len, s.output_len, constrained=s.constrained,
                             ideal_cached=s.ideal_cached)
               for s in specs]
    timeout = aiohttp.ClientTimeout(total=cfg.timeout)
    conn = aiohttp.TCPConnector(limit=0)  # the load generator decides how many are in flight
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, read_bufsize=2**20) as s:
        if cfg.wait_ready:
            await wait_ready(s, cfg.url, cfg.wait_ready)
        if cfg.backend == "openai" and cfg.model is None:
            cfg.model = await first_model(s, cfg.url)
        if cfg.warmup:
            # constrained when any is: the grammar is compiled (and cached) before the run
            warm = [RequestSpec(specs[0].prompt, specs[0].prompt_len, 8,
                                bool(cfg.extra_body))] * cfg.warmup
            await asyncio.gather(*(send(s, cfg, w, RequestRecord(0, 8)) for w in warm))
        load = poisson_arrivals if cfg.request_rate else closed_loop
        if cfg.workload == "multi-turn":
            def load(*args):
                return workloads.multi_turn_loop(*args, send, RequestSpec)
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(load(s, cfg, specs, records), cfg.max_duration)
        except asyncio.TimeoutError:
            pass
        duration = time.perf_counter() - t0
    for r in records:
        if math.isnan(r.start):
            r.error = "not sent before --max-duration"
    return records, duration


# -- metrics ------------------------------------------------------------------------------------

def describe(xs: Iterable[float]) -> dict[str, float | None]:
    x = np.asarray(list(xs), dtype=float)
    if x.size == 0:
        return {k: None for k in ("mean", "p50", "p90", "p99", "max")}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(x.max())}


def summarize(cfg: BenchConfig, records: list[RequestRecord], duration: float) -> dict:
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.n_output for r in ok)
    in_tokens = sum(r.server_prompt if r.server_prompt is not None else r.prompt_len for r in ok)
    tpots = [r.tpot for r in ok if r.tpot is not None]
    itls = [b - a for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    m = {
        "completed": len(ok), "failed": len(records) - len(ok),
        "errors": dict(Counter(r.error for r in records if not r.ok).most_common(5)),
        "short_outputs": sum(r.n_output != r.output_len for r in ok),
        "duration_s": duration,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "mean_in_flight": sum(r.e2e for r in ok) / duration,
        "ttft_s": describe(r.ttft for r in ok), "tpot_s": describe(tpots),
        "max_tpot_s": describe(r.max_tpot for r in ok if r.max_tpot is not None),
        "itl_s": describe(itls), "e2e_s": describe(r.e2e for r in ok),
        "itl_timeline": itl_timeline(ok),
        "goodput": None,
    }
    if cfg.extra_body and cfg.constrained_every > 1:  # a mixed batch: each class on its own
        for name, cls in (("constrained", True), ("unconstrained", False)):
            rs = [r for r in ok if r.constrained == cls]
            m[f"itl_s_{name}"] = describe(b - a for r in rs
                                          for a, b in zip(r.chunk_times, r.chunk_times[1:]))
            m[f"ttft_s_{name}"] = describe(r.ttft for r in rs)
    # The Past-Future paper's SLA (7B/13B): TTFT <= 10 s, longest gap between tokens <= 1.5 s.
    paper = [r for r in ok if r.ttft <= PAPER_SLA[0] and (r.max_tpot or 0.0) <= PAPER_SLA[1]]
    m["goodput_paper_sla"] = {"requests_per_s": len(paper) / duration,
                              "output_tokens_per_s": sum(r.n_output for r in paper) / duration,
                              "attained": len(paper) / len(records)}
    if cfg.slo_ttft is not None or cfg.slo_tpot is not None or cfg.slo_max_tpot is not None:
        good = [r for r in ok
                if (cfg.slo_ttft is None or r.ttft <= cfg.slo_ttft)
                and (cfg.slo_tpot is None or (r.tpot or 0.0) <= cfg.slo_tpot)
                and (cfg.slo_max_tpot is None or (r.max_tpot or 0.0) <= cfg.slo_max_tpot)]
        m["goodput"] = {"requests_per_s": len(good) / duration,
                        "output_tokens_per_s": sum(r.n_output for r in good) / duration,
                        "attained": len(good) / len(records)}
    return m


def itl_timeline(ok: list[RequestRecord], window: float = 1.0) -> list[dict]:
    """Where in the run the inter-token gaps are long: per window of `window` seconds (by
    the time a gap ends), the number of gaps and their p50 / p99 / max in ms."""
    if not ok:
        return []
    t0 = min(r.start for r in ok)
    ends, gaps = [], []
    for r in ok:
        t = np.asarray(r.chunk_times)
        ends.append(t[1:] - t0)
        gaps.append(np.diff(t))
    ends, gaps = np.concatenate(ends), np.concatenate(gaps) * 1e3
    out = []
    for w in range(int(ends.max() // window) + 1 if ends.size else 0):
        g = gaps[(ends >= w * window) & (ends < (w + 1) * window)]
        if g.size:
            out.append({"t_s": w * window, "n": int(g.size), "p50_ms": float(np.percentile(g, 50)),
                        "p99_ms": float(np.percentile(g, 99)), "max_ms": float(g.max())})
    return out


def read_hardware(path: str) -> dict[str, float]:
    """The measured limits the roofline needs, checked before the run rather than after it."""
    hw = json.loads(Path(path).read_text())
    missing = [k for k in ROOFLINE_KEYS if not isinstance(hw.get(k), (int, float))]
    if missing:
        raise ValueError(f"--roofline-json {path} lacks numbers for {', '.join(missing)}")
    return {k: float(hw[k]) for k in ROOFLINE_KEYS}


def roofline(hw: dict[str, float], prompt_lens: Sequence[int], output_lens: Sequence[int],
             batch: float) -> dict:
    """Output tokens/s the hardware allows for this workload (formula in the module docstring)."""
    P, O = np.asarray(prompt_lens, float), np.asarray(output_lens, float)
    d = O - 1
    flops, bw = hw["flops_per_token"], hw["copy_bw_bytes_per_s"]
    prefill_s = flops * P.sum() / hw["matmul_flops_per_s"]
    steps = d.sum() / batch
    kv_bytes = hw["kv_bytes_per_token"] * float((d * P + d * (d + 1) / 2).sum())
    decode_s = max((steps * hw["weight_bytes"] + kv_bytes) / bw,
                   flops * d.sum() / hw["matmul_flops_per_s"])
    return {"batch": batch, "prefill_s": prefill_s, "decode_s": decode_s, "decode_steps": steps,
            "output_tokens_per_s": float(O.sum()) / (prefill_s + decode_s)}


# -- report -------------------------------------------------------------------------------------

def device_name(cfg: BenchConfig) -> str:
    if cfg.device_name:
        return cfg.device_name
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if smi.returncode == 0 and smi.stdout.strip():
            return smi.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The commit this tree was copied from or is a checkout of, "-dirty" when its tracked
    files differ (bench/commit.py)."""
    return tree_commit(REPO, dirty=True)


def print_table(cfg: BenchConfig, m: dict, rf: dict | None) -> None:
    load = (f"Poisson {cfg.request_rate}/s (max {cfg.concurrency} in flight)" if cfg.request_rate
            else f"{cfg.concurrency} clients")
    print(f"{cfg.backend} {cfg.url}  {cfg.num_requests} requests, {load}  [{cfg.label}]")
    print(f"completed {m['completed']}  failed {m['failed']}  duration {m['duration_s']:.2f} s"
          + (f"  errors {m['errors']}" if m["errors"] else ""))
    print(f"throughput: {m['request_throughput']:.2f} req/s  {m['output_throughput']:.1f} output "
          f"tok/s  {m['total_token_throughput']:.1f} total tok/s")
    print(f"{'ms':>6} {'mean':>9} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}")
    for name in ("ttft", "tpot", "max_tpot", "itl", "e2e"):
        row = m[f"{name}_s"]
        cells = (f"{row[k] * 1e3:9.2f}" if row[k] is not None else f"{'-':>9}" for k in row)
        print(f"{name.upper()[:6]:>6} {' '.join(cells)}")
    for name in ("constrained", "unconstrained"):
        if (row := m.get(f"itl_s_{name}")) and row["p50"] is not None:
            print(f"{name}: ITL p50 {row['p50'] * 1e3:.2f} ms, p99 {row['p99'] * 1e3:.2f} ms; "
                  f"TTFT p50 {m[f'ttft_s_{name}']['p50'] * 1e3:.1f} ms")
    g = m["goodput_paper_sla"]
    print(f"goodput, paper's SLA (TTFT <= {PAPER_SLA[0]} s, max-TPOT <= {PAPER_SLA[1]} s): "
          f"{g['requests_per_s']:.2f} req/s ({g['attained']:.1%} of requests)")
    if g := m["goodput"]:
        print(f"goodput (TTFT <= {cfg.slo_ttft} s, TPOT <= {cfg.slo_tpot} s, max-TPOT <= "
              f"{cfg.slo_max_tpot} s): "
              f"{g['requests_per_s']:.2f} req/s  {g['output_tokens_per_s']:.1f} tok/s  "
              f"({g['attained']:.1%} of requests)")
    pc = m.get("prefix_cache")
    if pc and pc["cached_tokens"] is not None:
        ideal = pc["fraction_of_ideal"]
        print(f"prefix cache: {pc['cached_tokens']} of {pc['prompt_tokens']} prompt tokens reused "
              f"({pc['hit_rate']:.1%}); the workload's ideal {pc['ideal_hit_rate']:.1%}"
              + (f", reached {ideal:.1%} of it" if ideal is not None else ""))
    if rf:
        print(f"roofline: {rf['output_tokens_per_s']:.1f} output tok/s at batch {rf['batch']:.1f}"
              f"; achieved {rf['achieved_fraction']:.1%}")


def plot(path: Path, cfg: BenchConfig, records: list[RequestRecord], m: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.ok]
    t0 = min((r.start for r in ok), default=0.0)
    series = {"TTFT (ms)": [r.ttft * 1e3 for r in ok],
              "inter-token latency (ms)": [(b - a) * 1e3 for r in ok
                                           for a, b in zip(r.chunk_times, r.chunk_times[1:])]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (name, xs) in zip(axes, series.items()):
        xs = np.sort(xs)
        ax.plot(xs, np.arange(1, xs.size + 1) / max(xs.size, 1), drawstyle="steps-post")
        ax.set(xlabel=name, ylabel="fraction of samples", title=f"CDF of {name.split(' (')[0]}")
        ax.grid(alpha=0.3)
    times = np.sort([t - t0 for r in ok for t in r.chunk_times])
    axes[2].plot(times, np.arange(1, times.size + 1))
    axes[2].set(xlabel="time since start (s)", ylabel="chunks received",
                title="output over time")
    axes[2].grid(alpha=0.3)
    fig.suptitle(f"{cfg.label}: {cfg.backend}, {m['completed']} requests, "
                 f"{m['output_throughput']:.0f} output tok/s, {m['request_throughput']:.2f} req/s, "
                 f"TTFT p99 {(m['ttft_s']['p99'] or 0) * 1e3:.0f} ms, "
                 f"ITL p99 {(m['itl_s']['p99'] or 0) * 1e3:.1f} ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(cfg: BenchConfig, quiet: bool = False) -> dict:
    """The whole benchmark: workload, load, metrics, table, JSON (and PNG). Returns the report."""
    hw = read_hardware(cfg.roofline_json) if cfg.roofline_json else None
    specs = make_workload(cfg)
    records, duration = await run_load(cfg, specs)
    m = summarize(cfg, records, duration)
    m["prefix_cache"] = workloads.cache_report(records)
    rf = None
    if hw is not None and m["completed"]:
        ok = [r for r in records if r.ok]
        batch = min(cfg.concurrency, len(ok)) if cfg.request_rate is None else m["mean_in_flight"]
        rf = roofline(hw, [r.server_prompt or r.prompt_len for r in ok],
                      [r.n_output for r in ok], max(batch, 1.0))
        rf["inputs"] = hw
        rf["achieved_fraction"] = m["output_throughput"] / rf["output_tokens_per_s"]
    now = datetime.now()
    report = {
        "bench": "serve", "date": now.isoformat(timespec="seconds"), "commit": git_commit(),
        "label": cfg.label, "device": device_name(cfg), "config": asdict(cfg), "metrics": m,
        "roofline": rf,
        "requests": [{"prompt_len": r.server_prompt or r.prompt_len, "output_len": r.output_len,
                      "n_output": r.n_output, "ttft_s": r.ttft if r.ok else None,
                      "max_tpot_s": r.max_tpot if r.ok else None,
                      "e2e_s": r.e2e if r.ok else None, "error": r.error} for r in records],
    }
    out = Path(cfg.out or result_path("serve", tags=[cfg.label], day=now.date(),
                                      out_dir=REPO / "bench/results"))
    write_report(out, report)
    if cfg.plot:
        plot(out.with_suffix(".png"), cfg, records, m)
    if not quiet:
        print_table(cfg, m, rf)
        print(f"wrote {out}" + (f" and {out.with_suffix('.png').name}" if cfg.plot else ""))
    return report


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(BenchConfig):
        flag, help = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.type == "bool":
            ap.add_argument(flag, action="store_true", help=help)
            continue
        kind = {"int": int, "float": float}.get(f.type.split(" |")[0], str)
        if f.default is not None:
            help += f" (default: {f.default})"
        # unset options stay out of the namespace and take the dataclass default
        ap.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help)
    try:
        return BenchConfig(**vars(ap.parse_args(argv)))
    except ValueError as e:
        ap.error(str(e))


def main() -> None:
    cfg = parse_args()
    try:
        import uvloop  # the client's own overhead shows up in ITL: keep it low
    except ImportError:
        asyncio.run(run(cfg))
    else:
        uvloop.run(run(cfg))


if __name__ == "__main__":
    sys.exit(main())
