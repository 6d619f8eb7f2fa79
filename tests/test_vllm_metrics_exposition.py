"""/metrics as the Prometheus text format requires it, for a served name with a quote, a
backslash and a newline: one HELP and one TYPE per family, the name escaped in every
label (a scraper rejects the whole page otherwise), each histogram's buckets cumulative
and ending at its _count, after requests streamed, cancelled and with n > 1."""

from __future__ import annotations

import asyncio
import collections

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from test_vllm_metrics import tiny  # noqa: F401

from aiollm.api import create_app
from aiollm.engine import Engine

ODD = 'we"ird\\name\nnext'


def test_exposition_is_valid_for_an_odd_served_name(tiny):
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=512)
        app = create_app(engine, served_model_name=[ODD])
        async with TestClient(TestServer(app)) as client:
            body = {"model": ODD, "prompt": [5, 6, 7], "max_tokens": 4, "ignore_eos": True}
            assert (await client.post("/v1/completions", json={**body, "n": 2})).status == 200
            resp = await client.post("/v1/completions", json={**body, "stream": True,
                                                                 "max_tokens": 200})
            await resp.content.readline()
            resp.close()  # cancelled mid-stream
            while engine.stats()["kv_used"]:
                await asyncio.sleep(0.01)
            return await (await client.get("/metrics")).text()

    text = asyncio.run(main())
    for kind in ("HELP", "TYPE"):
        seen = collections.Counter(line.split()[2] for line in text.splitlines()
                                   if line.startswith(f"# {kind} "))
        assert not [n for n, c in seen.items() if c > 1], kind
    fams = list(text_string_to_metric_families(text))
    # (vllm:cache_config_info carries the cache's fields, no model_name, as vLLM's)
    vllm = [f for f in fams if f.name.startswith("vllm:") and f.name != "vllm:cache_config_info"]
    assert vllm and all(s.labels["model_name"] == ODD for f in vllm for s in f.samples)
    for f in fams:
        if f.type != "histogram":
            continue
        series = collections.defaultdict(list)
        for s in f.samples:
            series[tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))].append(s)
        for samples in series.values():
            buckets = [s.value for s in samples if s.name.endswith("_bucket")]
            count = [s.value for s in samples if s.name.endswith("_count")]
            assert buckets == sorted(buckets) and buckets[-1] == count[0], f.name
    success = {s.labels["finished_reason"]: s.value for f in vllm
               if f.name == "vllm:request_success" for s in f.samples}
    assert success["length"] == 2 and success["abort"] == 1, success
