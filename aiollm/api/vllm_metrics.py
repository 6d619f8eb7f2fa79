"""The engine's metrics under vLLM's names, served by /metrics beside aiollm's own: what a
deployment set up for vLLM reads (its Grafana dashboard, autoscalers on
vllm:num_requests_waiting, alerts on vllm:kv_cache_usage_perc) finds the same families, of
the same types, with vLLM's labels (`model_name`: the served name; `engine`: "0").

Nothing is counted twice: each vLLM family is the engine's own family renamed when scraped,
so the hot path updates one metric. The time histograms keep aiollm's bucket bounds (a
histogram_quantile() over them works alike); the token counts have vLLM's (1, 2, 5, 10...
up to the context; n: 1, 2, 5, 10, 20).

A request's n choices run as engine requests of their own; vllm:request_params_n and
vllm:request_max_num_generation_tokens measure them as one (request_group.ChoiceGroup: each
prompt of an API request, n 1 too) once the last has ended, as vLLM measures its parent
request; not when a choice was aborted (its client gone, a shutdown): vLLM measures only
the requests its engine ended. (aiollm's other per-request families count aborted requests
too, in vllm:request_success's "abort"; vLLM leaves them out, its issue #31503.)

vllm:iteration_tokens_total counts the tokens each model step computed: the prompt tokens
it prefilled (one chunk of a long prompt; the prefix cache's left out) and one per request
it decoded. vLLM (since its PR #43346) observes, per engine iteration that returned outputs,
the prompt tokens computed of the requests whose prefill ended in it, every chunk at once,
plus the tokens it generated: a chunked prompt is one sample past the step's token budget,
a step of prefill chunks alone none, and each request one token more (its first, sampled by
its last prefill step). aiollm keeps what the family's name says, each step's batch, as
vLLM's open PR #51261 does.

vllm:prompt_tokens_by_source splits each prompt once its prefill is done; its sources add
up to vllm:prompt_tokens (vLLM counts as a cache hit too the last token of a prompt its
cache held whole, which it computes all the same: a match one token short of the prompt
here does not say whether that token was cached). Every waiting request waits for capacity
(vllm:num_requests_waiting_by_reason); the engine has no sleep mode
(vllm:engine_sleep_state: awake). vllm:cache_config_info gives the fields of vLLM's
CacheConfig that aiollm has: a block of one token (token-level KV), the pool's size in
tokens as its blocks, whether prefix caching is on.

Families vLLM has that aiollm does not measure are absent rather than made up: LoRA's,
speculative decoding's, the KV connector's and the multimodal cache's, the KV block
residency histograms (vLLM's --kv-cache-metrics), the MFU estimates, vllm:corrupted_requests
(NaN logits, under VLLM_COMPUTE_NANS_IN_LOGITS: such a request fails here, "error") and
vllm:prompt_tokens_recomputed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

_P = "aiollm_"

# aiollm family -> the vLLM families it is served as (vLLM renamed some and kept the old
# names a while: a dashboard of either version finds its own)
RENAMED = {
    _P + "prompt_tokens": ("vllm:prompt_tokens",),
    _P + "generation_tokens": ("vllm:generation_tokens",),
    _P + "evictions": ("vllm:num_preemptions",),
    _P + "prefix_cache_queried_tokens": ("vllm:prefix_cache_queries",
                                        "vllm:gpu_prefix_cache_queries"),
    _P + "prefix_cache_hit_tokens": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
    _P + "time_to_first_token_seconds": ("vllm:time_to_first_token_seconds",),
    _P + "inter_token_latency_seconds": ("vllm:inter_token_latency_seconds",
                                         "vllm:time_per_output_token_seconds"),
    _P + "e2e_request_latency_seconds": ("vllm:e2e_request_latency_seconds",),
    _P + "queue_time_seconds": ("vllm:request_queue_time_seconds",),
    _P + "request_prompt_tokens": ("vllm:request_prompt_tokens",),
    _P + "request_generation_tokens": ("vllm:request_generation_tokens",),
    _P + "request_prefill_time_seconds": ("vllm:request_prefill_time_seconds",),
    _P + "request_decode_time_seconds": ("vllm:request_decode_time_seconds",),
    _P + "request_inference_time_seconds": ("vllm:request_inference_time_seconds",),
    _P + "request_prefill_time_per_token_seconds": (
        "vllm:time_per_prefill_token_request_seconds",),
    _P + "request_max_tokens": ("vllm:request_params_max_tokens",),
    _P + "request_n": ("vllm:request_params_n",),
    _P + "request_max_generation_tokens": ("vllm:request_max_num_generation_tokens",),
    _P + "request_prefill_kv_computed_tokens": ("vllm:request_prefill_kv_computed_tokens",),
    _P + "request_time_per_output_token_seconds": (
        "vllm:request_time_per_output_token_seconds",),
    _P + "prompt_tokens_by_source": ("vllm:prompt_tokens_by_source",),
    _P + "prompt_tokens_cached": ("vllm:prompt_tokens_cached",),
    _P + "step_tokens": ("vllm:iteration_tokens_total",),
}
# vLLM's, each a series from the start; "error": the engine failed the request (500),
# "abort": its client went away or the server stopped. (vLLM's "repetition" is left out:
# aiollm detects no repetition.)
FINISH_REASONS = ("stop", "length", "abort", "error")


class VllmMetrics:
    """A collector (prometheus_client's protocol: collect()) of the families of `registry`
    (an EngineMetrics registry) under vLLM's names, labelled with `model_name`;
    `prefix_caching`: whether the engine's prefix cache is on (for vllm:cache_config_info)."""

    def __init__(self, registry: CollectorRegistry, model_name: str,
                 prefix_caching: bool = True):
        self._registry, self._labels = registry, {"model_name": model_name, "engine": "0"}
        self._prefix_caching = prefix_caching

    def collect(self):
        families = {f.name: f for f in self._registry.collect()}

        def gauge(name: str) -> float:
            return next((s.value for s in families[_P + name].samples), 0.0)

        labels = self._labels
        for name, doc, value in (
                ("vllm:num_requests_running", "Requests in model execution batches.",
                 gauge("requests_running")),
                ("vllm:num_requests_waiting", "Requests waiting to be processed.",
                 gauge("requests_waiting"))):
            yield _gauge(name, doc, labels, value)
        # every waiting request waits for room (KV, a running place): none is deferred by
        # what vLLM defers for (LoRA slots, a KV transfer)
        yield _labelled("vllm:num_requests_waiting_by_reason", "Waiting requests by reason: "
                        "capacity (room to run), deferred (none here).", labels, "reason",
                        {"capacity": gauge("requests_waiting"), "deferred": 0.0})
        # an engine that never sleeps (vLLM's sleep mode: LLM.close() frees it instead)
        yield _labelled("vllm:engine_sleep_state", "Engine sleep state: awake 1 (the "
                        "engine has no sleep mode).", labels, "sleep_state",
                        {"awake": 1.0, "weights_offloaded": 0.0, "discard_all": 0.0})
        total = gauge("kv_tokens_total")
        usage = gauge("kv_tokens_used") / total if total else 0.0
        yield _gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                     labels, usage)
        yield _gauge("vllm:gpu_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage "
                     "(vLLM's older name of vllm:kv_cache_usage_perc).", labels, usage)
        # an info metric as vLLM serves it: a gauge at 1, the facts in its labels (vLLM's
        # carry no model_name)
        yield _gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                     {"block_size": "1", "num_gpu_blocks": str(int(total)),
                      "enable_prefix_caching": str(self._prefix_caching), "engine": "0"}, 1.0)
        yield self._request_success(families[_P + "requests_finished"])
        for source, names in RENAMED.items():
            for name in names:
                yield _renamed(families[source], name, labels)

    def _request_success(self, finished: Metric) -> Metric:
        counts = {s.labels["finish_reason"]: s.value for s in finished.samples
                  if s.name.endswith("_total")}
        out = Metric("vllm:request_success", "Count of successfully processed requests "
                     "(each ended request, by its finish reason).", "counter")
        for reason in dict.fromkeys(FINISH_REASONS + tuple(counts)):
            out.add_sample("vllm:request_success_total",
                           {**self._labels, "finished_reason": reason}, counts.get(reason, 0.0))
        return out


def _gauge(name: str, doc: str, labels: dict[str, str], value: float) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=list(labels))
    fam.add_metric(list(labels.values()), value)
    return fam


def _labelled(name: str, doc: str, labels: dict[str, str], key: str,
              values: dict[str, float]) -> GaugeMetricFamily:
    """A gauge of one series per entry of `values`, labelled `labels` and `key`: the entry's
    key."""
    fam = GaugeMetricFamily(name, doc, labels=[*labels, key])
    for label, value in values.items():
        fam.add_metric([*labels.values(), label], value)
    return fam


def _renamed(family: Metric, name: str, labels: dict[str, str]) -> Metric:
    """`family` (a counter or histogram) as `name`, its samples carrying `labels` too."""
    out = Metric(name, family.documentation, family.type)
    for s in family.samples:
        out.add_sample(name + s.name[len(family.name):], {**labels, **s.labels}, s.value,
                       s.timestamp, s.exemplar)
    return out
