"""OpenAI-compatible endpoints: the route table of /v1/completions (completions.py),
/v1/chat/completions (chat_completions.py), /v1/responses (responses.py) and /v1/models,
which this module serves, and OpenAI's routes of stored chat completions (stored_chat.py:
none are kept).

Each choice (n > 1, or each prompt of a batch) is its own engine request (a completion that
only echoes its prompt asks the engine nothing: prompt_echo.py); a seeded request gives
choice i the seed + i. Streams follow OpenAI's chunk format and end with `data: [DONE]`.
"""

from __future__ import annotations

from aiohttp import web

from aiollm.api import responses, stored_chat
from aiollm.api.chat_completions import chat_completions
from aiollm.api.completions import completions
from aiollm.api.protocol import json_response
from aiollm.api.state import ApiState, state
from aiollm.engine.loading import model_name_of


def _model_card(st: ApiState, name: str) -> dict:
    """vLLM's card: `root` is the model every served name stands for (its file's or
    directory's name, never the server's path to it), `parent` the base model of an adapter
    (none are served)."""
    e = st.engine
    return {"id": name, "object": "model", "created": st.created, "owned_by": "aiollm",
            "root": model_name_of(e.model_path, e.config.model), "parent": None,
            "max_model_len": e.max_model_len}


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: a card for each name the model is served under (as vLLM lists each
    of --served-model-name's names)."""
    st = state(request)
    cards = [_model_card(st, name) for name in st.model_names]
    return json_response({"object": "list", "data": cards})


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model} (the openai client's models.retrieve): the served model's card
    under the name asked for where it is one of the served names; where a request naming it
    is served but answered under another name (any name with LightLLM's --model_name, the
    model's path as given), the card of the reported name, as /v1/models lists it: its id
    is the name every answer carries. 404 model_not_found for any other name (which may
    hold slashes, as HF names do)."""
    st = state(request)
    name = request.match_info["model"]
    st.check_model(name)
    return json_response(_model_card(st, name if name in st.model_names else st.model_name))


ROUTES = [
    web.get("/v1/models", list_models),
    web.get("/v1/models/{model:.+}", retrieve_model),
    web.post("/v1/completions", completions),
    web.post("/v1/chat/completions", chat_completions),
] + stored_chat.ROUTES + responses.ROUTES
