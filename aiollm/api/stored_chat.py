"""OpenAI's routes of stored chat completions (those a request's `store: true` keeps there),
which this server answers as a store that keeps none (a request's store is taken and changes
nothing, as vLLM takes it): GET /v1/chat/completions lists an empty page, and the routes of
one completion (GET, POST and DELETE /v1/chat/completions/{completion_id}, GET
.../messages) a 404 naming completion_id, as OpenAI answers an id it does not keep.

The list's query parameters are still checked as OpenAI's OpenAPI document types them
(listChatCompletions: after and model strings, limit an integer, order "asc" or "desc",
metadata an object of at most 16 string values sent as metadata[key]=value), so a client
whose query OpenAI refuses learns it here too rather than from an empty page.
"""

from __future__ import annotations

import re

from aiohttp import web
from multidict import MultiMapping

from aiollm.api.http_errors import ApiError
from aiollm.api.metadata import check_metadata
from aiollm.api.protocol import json_response
from aiollm.errors import InvalidRequest, shown_id, shown_json

ORDERS = ("asc", "desc")
_METADATA_KEY = re.compile(r"metadata\[([^\[\]]*)\]")


async def list_chat_completions(request: web.Request) -> web.Response:
    """GET /v1/chat/completions (the openai SDK's chat.completions.list): OpenAI's list
    object of an empty store, {object: "list", data: [], first_id: null, last_id: null,
    has_more: false}, whatever its filters and cursor. InvalidRequest (400) naming the
    query parameter whose value OpenAI's API would refuse: limit not an integer (in ASCII
    digits; OpenAI's document gives it no range, and no count changes an empty page), order
    neither asc nor desc (each value of one sent twice), metadata not key-value pairs within
    OpenAI's bounds (metadata.py). Query parameters OpenAI does not name are ignored, as its
    list routes ignore them (metadatax, metadata.k: only metadata and metadata[key] are its)."""
    query = request.query
    # each value of a parameter sent twice: a server may read the first or the last
    for limit in query.getall("limit", ()):
        if not re.fullmatch(r"-?[0-9]+", limit):
            raise InvalidRequest(f"limit: expected an integer, got {shown_json(limit)}",
                                 param="limit")
    for order in query.getall("order", ()):
        if order not in ORDERS:
            raise InvalidRequest(f'order must be "asc" or "desc", got {shown_json(order)}',
                                 param="order")
    check_metadata(_metadata(query))
    return json_response({"object": "list", "data": [], "first_id": None, "last_id": None,
                          "has_more": False})


def _metadata(query: MultiMapping[str]) -> dict[str, object] | None:
    """The metadata filter of `query` as a dict (None where none is sent): its
    metadata[key]=value pairs (the SDK's encoding of an object in a query), a key sent
    twice as the list of its values (no string: check_metadata refuses it). InvalidRequest
    naming metadata for a `metadata` parameter of another shape (metadata=x,
    metadata[a][b]=x)."""
    pairs: dict[str, object] = {}
    for name in dict.fromkeys(query):  # each name once, in the query's order
        # metadata itself or metadata[...]; another name (metadatax) is not OpenAI's
        if name != "metadata" and not name.startswith("metadata["):
            continue
        found = _METADATA_KEY.fullmatch(name)
        if found is None:
            raise InvalidRequest(f"metadata: expected an object of string values, sent as "
                                 f"metadata[key]=value; got the query parameter "
                                 f"{shown_json(name)}", param="metadata")
        values = query.getall(name)
        pairs[found.group(1)] = values[0] if len(values) == 1 else values
    return pairs or None


async def unstored_chat_completion(request: web.Request) -> web.Response:
    """GET, POST (update) and DELETE /v1/chat/completions/{completion_id}, and GET
    .../messages: always ApiError 404 of type invalid_request_error naming completion_id,
    as OpenAI answers an id it does not keep, saying why: a client that sent store true
    learns that nothing is kept, and where answers are (/v1/responses)."""
    raise ApiError(404, f"Chat completion with id {shown_id(request.match_info['completion_id'])}"
                   " not found: this server keeps no chat completions (a request's store is "
                   "taken and changes nothing); /v1/responses keeps its responses (GET "
                   "/v1/responses/{response_id})", param="completion_id",
                   type="invalid_request_error")


_ONE = "/v1/chat/completions/{completion_id}"

ROUTES = [
    web.get("/v1/chat/completions", list_chat_completions),
    web.get(_ONE, unstored_chat_completion),
    web.post(_ONE, unstored_chat_completion),
    web.delete(_ONE, unstored_chat_completion),
    web.get(_ONE + "/messages", unstored_chat_completion),
]
