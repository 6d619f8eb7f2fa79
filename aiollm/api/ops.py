"""Operations endpoints: /health (/healthz, vLLM's /ping), vLLM's /load, /metrics, /version,
/tokenize, /detokenize, /flush_cache."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aiollm import __version__
from aiollm.api import tool_request
from aiollm.api.body import check_page, decode_body
from aiollm.api.chat_request import message_dicts
from aiollm.api.http_errors import ApiError
from aiollm.api.protocol import json_response
from aiollm.api.state import ApiState, state
from aiollm.api.tokenize_request import DetokenizeRequest, TokenizeRequest
from aiollm.api.vllm_metrics import VllmMetrics
from aiollm.engine.submission import off_loop


def not_serving(st: ApiState) -> web.Response | None:
    """The 503 of a server that takes no requests (a shutdown begun, or an engine that is
    stopped or whose step loop ended), for the probes that answer it (/health,
    LightLLM's /readiness); None while it serves."""
    if st.draining:
        return json_response({"status": "shutting down"}, status=503)
    if not st.engine.serving:
        return json_response({"status": "engine not serving"}, status=503)
    return None


async def health(request: web.Request) -> web.Response:
    """200 while serving. The app only starts listening once the model is loaded; from the
    start of a shutdown on it answers 503 so load balancers move traffic away, and so it
    does when the engine takes no request for another reason (stopped, its step loop
    ended, a tensor-parallel rank lost), as vLLM's and LightLLM's checks ask their engine,
    and while its step loop runs but every step fails (Engine.failing: a sticky device
    error), with that error. While it is failing, the check runs a one-token probe request
    (Engine.check_health: shared by concurrent checks, at most one a second, within a few
    seconds), as Hugging Face TGI's does: a fault that has passed answers 200 again with
    no other traffic, which a load balancer that took the server out of rotation sends
    none of. Also at /healthz, LightLLM's (and Kubernetes') name for it, and at vLLM's
    /ping."""
    st = state(request)
    if (refused := not_serving(st)) is not None:
        return refused
    if (failing := await st.engine.check_health()) is not None:
        return json_response({"status": "engine failing", "error": failing}, status=503)
    return json_response({"status": "ok", "model": st.model_name})


async def load(request: web.Request) -> web.Response:
    """vLLM's {"server_load": N} (a router's signal for picking the least loaded server):
    N, the engine's requests in flight, running or waiting (each choice of an n > 1
    request is one). vLLM counts its HTTP requests only with --enable-server-load-tracking
    and answers 0 otherwise; the engine's count costs nothing to read, so it is always
    given."""
    counts = state(request).engine.stats()
    return json_response({"server_load": counts["running"] + counts["waiting"]})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text: aiollm's families, then the same under vLLM's names and labels
    (api/vllm_metrics.py)."""
    st = state(request)
    registry = st.engine.metrics.registry
    vllm = VllmMetrics(registry, st.model_name, st.engine.config.prefix_cache)
    body = generate_latest(registry) + generate_latest(vllm)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def version(request: web.Request) -> web.Response:
    """The aiollm version serving, as vLLM's /version reports its own."""
    return json_response({"version": __version__})


async def tokenize(request: web.Request) -> web.Response:
    """{"prompt": text} or {"messages": [...], "tools": [...]} (the chat template applied,
    the tools as a chat request with them renders them) -> token ids (and with vLLM's
    return_token_strs, their vocabulary strings: "Ġworld")."""
    st = state(request)
    req = await decode_body(request, TokenizeRequest)
    st.check_model(req.model)
    if (req.prompt is None) == (req.messages is None):
        raise ApiError(400, "give exactly one of prompt and messages", param="prompt")
    if req.tools is not None and req.messages is None:
        raise ApiError(400, "tools are rendered by the chat template: send them with "
                       "messages", param="tools")
    if req.messages is not None:
        ids, _ = await st.render_chat(await message_dicts(req.messages),
                                      # rendered only: checked as under "none", no grammar
                                      tool_request.choose(req.tools, "none")[0],
                                      req.template_options(
                                          st.trust_request_chat_template,
                                          st.chat_template_content_format,
                                          st.content_format_name,
                                          st.trust_request_chat_template_name),
                                      add_special_tokens=bool(req.add_special_tokens))
    else:
        special = req.add_special_tokens is not False  # absent: true for a prompt
        # text of no token ("", whitespace the tokenizer drops) counts none (a BOS where
        # the tokenizer adds one), as vLLM's /tokenize answers it; only a request to
        # generate refuses a prompt of no token
        ids = await st.encode(req.prompt, add_special_tokens=special)
    out = {"tokens": ids, "count": len(ids), "max_model_len": st.engine.max_model_len}
    if req.return_token_strs:
        # a long prompt's strings are looked up off the event loop, as it was tokenized
        out["token_strs"] = await off_loop(len(ids), st.engine.tokenizer.convert_ids_to_tokens,
                                           ids)
    return json_response(out)


async def detokenize(request: web.Request) -> web.Response:
    st = state(request)
    req = await decode_body(request, DetokenizeRequest)
    st.check_model(req.model)
    vocab = st.engine.model_config.vocab_size
    bad = next((t for t in req.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise ApiError(400, f"token ids must be in [0, {vocab}), got {bad}", param="tokens")
    return json_response({"prompt": await st.detokenize(req.tokens)})


async def flush_cache(request: web.Request) -> web.Response:
    """Empty the prefix cache of everything no running request uses (behind the API key:
    it changes the server's state, unlike /health, /metrics and /version). A page of a site
    CORS does not allow needs a JSON Content-Type, as on the routes that read a body."""
    check_page(request)
    freed = state(request).engine.flush_cache()
    return json_response({"flushed_tokens": freed})


ROUTES = [
    web.get("/health", health),
    web.get("/healthz", health),
    web.get("/ping", health),  # vLLM's (SageMaker's probe), GET and POST
    web.post("/ping", health),
    web.get("/load", load),
    web.get("/metrics", metrics),
    web.get("/version", version),
    web.post("/tokenize", tokenize),
    web.post("/detokenize", detokenize),
    web.post("/flush_cache", flush_cache),
]
