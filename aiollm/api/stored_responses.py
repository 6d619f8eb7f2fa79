"""The routes of a kept response (response_store.py), as OpenAI's Responses API serves
them: GET /v1/responses/{id} (the Response as it was answered), DELETE /v1/responses/{id},
GET /v1/responses/{id}/input_items (a page of the conversation it answered:
response_items.py) and POST /v1/responses/{id}/cancel; and the kept items that an input's
item_reference items name (`referenced`). An id the server does not keep is told as OpenAI
tells it: a 404 of type invalid_request_error naming response_id (vLLM's
type too), and as a request's previous_response_id a 400 naming it, of code
previous_response_not_found (vLLM answers a 404 there; clients that recover a lost
conversation, by sending it whole, look for OpenAI's code).

Only a background response can be cancelled or streamed again (OpenAI's rule); the server
makes none (background is refused), so both are a 400 for a kept response, as vLLM answers
the cancel of a response that was not made in the background.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from aiollm.api.http_errors import ApiError
from aiollm.api.protocol import json_response
from aiollm.api.response_items import items_page
from aiollm.api.response_store import StoredResponse
from aiollm.api.state import ApiState, state
from aiollm.errors import check_type, missing, shown_id


def kept(st: ApiState, rid: str, param: str) -> StoredResponse:
    """The response kept under `rid`; where none is, ApiError naming `param`: 404 for the
    path's response_id, 400 (code previous_response_not_found) for the body's
    previous_response_id, as OpenAI answers them."""
    found = st.responses.get(rid)
    if found is not None:
        return found
    why = _why_not_kept(st)
    shown = shown_id(rid)  # a client's 16 MiB one is not sent back whole
    if param == "previous_response_id":  # OpenAI's code, which clients recovering look for
        raise ApiError(400, f"Previous response with id {shown} not found: {why}",
                       param=param, code="previous_response_not_found")
    raise ApiError(404, f"Response with id {shown} not found: {why}", param=param,
                   type="invalid_request_error")


def _why_not_kept(st: ApiState) -> str:
    """Why the server holds no response (or item) of an id a client sent."""
    store = st.responses
    if not store.keeps:
        return ("this server keeps no responses (--max-stored-responses 0 or "
                "--max-stored-response-bytes 0)")
    return (f"it was never kept (store false), was deleted, was dropped as one of the "
            f"oldest or was larger than the byte bound alone (this server keeps the "
            f"{store.capacity} most recent within {store.max_bytes} bytes: "
            "--max-stored-responses, --max-stored-response-bytes), or was made before "
            "the server's last restart (responses are kept in memory only)")


def referenced(value: str | list[Any], st: ApiState,
               earlier: Sequence[dict] = ()) -> tuple[str | list[Any], list[dict]]:
    """A request's `input` with each item_reference item (`{"type": "item_reference", "id":
    ...}`) replaced by the item of that id a kept response holds (one of its input or
    output items), and the items so found (response_items.input_items keeps them as they
    are), as OpenAI reads one: the Vercel AI SDK sends a conversation's earlier
    assistant items so while store is on, and was refused here. An id no kept response
    holds is a 400 naming input[i].id, in OpenAI's words ("Item with id ... not found"); so
    is one of an item the conversation already holds (`earlier`, previous_response_id's
    items, a reference before it, or an item of the input sent whole with that id), as
    OpenAI refuses a duplicate item: read twice, the turn would be rendered twice."""
    if isinstance(value, str) or not any(
            isinstance(item, dict) and item.get("type") == "item_reference" for item in value):
        return value, []
    out, found, held = [], [], {item["id"] for item in earlier}
    held.update(item["id"] for item in value if isinstance(item, dict) and isinstance(
        item.get("id"), str) and item.get("type") != "item_reference")
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("type") != "item_reference":
            out.append(item)
            continue
        at = f"input[{i}].id"
        if item.get("id") is None:
            raise missing(at, ": the id of an item of a kept response")
        iid = check_type(item["id"], (str,), at)
        if iid in held:
            raise ApiError(400, f"Duplicate item found with id {shown_id(iid)}: the "
                           "conversation holds it already (previous_response_id's items, an "
                           "item_reference before it, or an input item sent whole with that "
                           "id); leave this reference out", param=at)
        held.add(iid)
        named = st.responses.item(iid)
        if named is None:
            raise ApiError(400, f"Item with id {shown_id(iid)} not found: {_why_not_kept(st)}; "
                           "send the item itself instead of a reference to it", param=at)
        out.append(named)
        found.append(named)
    return out, found


def _kept(request: web.Request) -> StoredResponse:
    return kept(state(request), request.match_info["response_id"], "response_id")


async def retrieve_response(request: web.Request) -> web.Response:
    """GET /v1/responses/{response_id}: the Response as it was answered. stream true (a
    background response's events again) is a 400 naming stream."""
    found = _kept(request)
    if request.query.get("stream", "false").lower() not in ("false", "0"):
        raise ApiError(400, "stream is served only for background responses, and this server "
                       "makes none: leave stream out to get the Response", param="stream")
    return json_response(found.response)


async def delete_response(request: web.Request) -> web.Response:
    """DELETE /v1/responses/{response_id}: forgets it; OpenAI's deletion object."""
    rid = _kept(request).response["id"]
    state(request).responses.delete(rid)
    return json_response({"id": rid, "object": "response.deleted", "deleted": True})


async def list_input_items(request: web.Request) -> web.Response:
    """GET /v1/responses/{response_id}/input_items: a page of the items the response
    answered (response_items.items_page reads order, limit, after and before)."""
    return json_response(items_page(_kept(request).input_items, request.query))


async def cancel_response(request: web.Request) -> web.Response:
    """POST /v1/responses/{response_id}/cancel: a kept response was not made in the
    background, so it cannot be cancelled (400); an unknown one is a 404."""
    _kept(request)
    raise ApiError(400, "only a response made with background true can be cancelled; this "
                   "one ended before it was answered (this server makes no background "
                   "responses)", param="response_id")


ROUTES = [
    web.get("/v1/responses/{response_id}", retrieve_response),
    web.delete("/v1/responses/{response_id}", delete_response),
    web.get("/v1/responses/{response_id}/input_items", list_input_items),
    web.post("/v1/responses/{response_id}/cancel", cancel_response),
]
