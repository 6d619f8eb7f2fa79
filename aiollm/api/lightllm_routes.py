"""LightLLM's routes besides /generate and /generate_stream (api/lightllm.py), so that its
clients and deploy scripts find them: the probes /liveness and /readiness, /get_model_name,
/tokens (a prompt's length in tokens), /token_load (the KV pool's load, now and predicted),
POST / (generate, or stream with "stream": true), and /get_score, a reward model's route,
answered with a 404 that says why.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from msgspec import Struct

from aiollm.api import lightllm, ops
from aiollm.api.body import decode_body
from aiollm.api.http_errors import ApiError
from aiollm.api.lightllm_errors import lightllm_errors
from aiollm.api.generate_request import GenerateParameters, GenerateRequest, refuse_media
from aiollm.api.protocol import json_response
from aiollm.api.state import state


class TokensRequest(Struct, kw_only=True):
    """LightLLM's /tokens body: the text to count, the `parameters` of the /generate
    request it is the prompt of (or null: none), and images or audios, which are refused
    as /generate refuses them.

    Of the parameters, add_special_tokens alone changes a count, and it is read; the others
    are checked as /generate checks them (lightllm.check_parameters), as LightLLM's /tokens
    builds and verifies the same SamplingParams its /generate does (api_http.py) and
    answers a value /generate refuses with its 417: its clients count the prompt of the
    request they are about to send, parameters and all, and learn then that it would be
    refused. An unknown field is named in the log, as on every endpoint."""

    text: str
    parameters: GenerateParameters | None = None
    multimodal_params: dict[str, Any] | None = None


async def liveness(request: web.Request) -> web.Response:
    """200 {"status": "ok"} while the process answers (the health of the engine is
    /health's and /readiness's to tell)."""
    return json_response({"status": "ok"})


async def readiness(request: web.Request) -> web.Response:
    """200 {"status": "ok"} while the server takes requests; 503 from the start of a
    shutdown on and while the engine takes none (stopped, its step loop ended), so that a
    load balancer moves traffic away. LightLLM's always answers 200."""
    return ops.not_serving(state(request)) or json_response({"status": "ok"})


async def get_model_name(request: web.Request) -> web.Response:
    """{"model_name": the served model's name}, as /v1/models lists it first."""
    return json_response({"model_name": state(request).model_name})


async def tokens(request: web.Request) -> web.Response:
    """{"ntokens": how many tokens `text` is}, tokenized as /generate tokenizes its inputs
    (special tokens added unless parameters.add_special_tokens is false; the parameters
    are checked as /generate checks them: TokensRequest says why). A text past the context
    is counted (only /generate refuses it). Text of no token ("", or
    whitespace the tokenizer drops) is counted too: the special tokens alone, or 0, as
    LightLLM's /tokens and vLLM's /tokenize count it. GET reads the body too, as LightLLM's
    does; the query string is not read. A request without a body (GET or POST, a query
    string or none) is refused naming `text`. Any Content-Type is read as JSON, as on
    /generate."""
    st = state(request)
    if not request.body_exists:  # `curl host/tokens`: told where the text goes
        query = (f", not from the query string (which gave {', '.join(sorted(request.query))})"
                 if request.query else "; the request has no body")  # LightLLM reads none
        raise ApiError(400, f"/tokens reads the text from the request's JSON body "
                       f"({{\"text\": ...}}, with GET as with POST){query}", param="text")
    req = await decode_body(request, TokensRequest, any_content_type=True)
    refuse_media(req.multimodal_params)
    parameters = req.parameters or GenerateParameters()
    lightllm.check_parameters(st, GenerateRequest(inputs=req.text, parameters=parameters))
    special = parameters.add_special_tokens
    # text of no token counts 0: LightLLM counts what its tokenizer gives
    ids = await st.encode(req.text, add_special_tokens=special)
    return json_response({"ntokens": len(ids)})


async def token_load(request: web.Request) -> web.Response:
    """LightLLM's load report, as its PD master and routers poll it: fractions of the KV
    pool's tokens (floats, 1.0 the whole pool), one number each (LightLLM's lists are per
    data-parallel rank; one rank answers numbers, as here).

    current_load: tokens held now by requests (cached prefixes no request uses are free,
    as LightLLM counts them). dynamic_max_load: the most the running requests are
    predicted to hold at once as they finish (the admission policy's predicted lengths;
    Planner.predicted_peak). LightLLM's estimate is taken every few seconds, this one as
    asked. logical_max_load: dynamic_max_load again, as LightLLM sets it (its older naive
    estimate is no longer computed there). Waiting requests hold nothing and are in
    neither; vLLM's /load counts them."""
    engine = state(request).engine
    counts = engine.stats()
    total = counts["kv_total"]
    peak = engine.predicted_kv_peak() / total
    return json_response({"current_load": counts["kv_used"] / total,
                          "logical_max_load": peak, "dynamic_max_load": peak})


async def get_score(request: web.Request) -> web.Response:
    """LightLLM's /get_score returns a reward model's score of a conversation, which only
    a model with a score head computes; the models served here generate text. A 404 that
    says so, in place of the router's bare "no such route"."""
    raise ApiError(404, "/get_score returns a reward model's score, and the model served "
                   "is a text-generating model without a score head: no score is computed "
                   "here")


async def root(request: web.Request) -> web.StreamResponse:
    """POST /: /generate_stream's answer when the body's "stream" is true, else
    /generate's."""
    req = await decode_body(request, GenerateRequest, any_content_type=True)
    return await (lightllm.stream if req.stream else lightllm.answer)(request, req)


ROUTES = [
    web.get("/liveness", liveness),
    web.post("/liveness", liveness),
    web.get("/readiness", readiness),
    web.post("/readiness", readiness),
    web.get("/get_model_name", get_model_name),
    web.post("/get_model_name", get_model_name),
    web.get("/tokens", lightllm_errors(tokens)),
    web.post("/tokens", lightllm_errors(tokens)),
    web.get("/token_load", token_load),
    # GET and POST, as LightLLM serves it: a "*" route would clash with CORS preflight
    # (aiohttp-cors adds OPTIONS to each route under --allowed-origins)
    web.get("/get_score", lightllm_errors(get_score)),
    web.post("/get_score", lightllm_errors(get_score)),
    web.post("/", lightllm_errors(root)),
]
