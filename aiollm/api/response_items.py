"""The input items of a kept response (`input_items`), as GET
/v1/responses/{id}/input_items lists them (`items_page`): each with an id, in the shapes of
the openai SDK's ResponseItem types (a string input is one user message of one input_text
part; an assistant message's text parts are output_text parts, as an output message's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiollm.api.responses_output import item_id
from aiollm.engine.content_parts import TEXT_PARTS
from aiollm.errors import InvalidRequest, shown_json

MAX_PAGE = 100  # OpenAI's largest page of input items
DEFAULT_PAGE = 20
_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco",
           "reasoning": "rs"}
_REASONING = ("summary", "content", "encrypted_content", "status")  # the SDK's fields


def input_items(value: str | list[Any], earlier: Sequence[dict] = (),
                kept: Sequence[dict] = ()) -> list[dict]:
    """A request's `input` (checked: response_input.input_messages took it) as the items
    kept with its response, each with an "id": the client's where it sent one that no item
    of the conversation (`earlier`, the items of the response it continues) or of this
    input has yet, else a fresh one (a page's cursor is an id: each must be unique). The
    items of `value` that are in `kept` (kept items an item_reference named:
    stored_responses.referenced) are kept as they are, shared with the responses holding
    them, as a continued response's turns are: the store counts each item once
    (response_store.py), and a copy of each turn a client named by reference, as the
    Vercel AI SDK names every assistant turn, counted it again in each later response."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    taken = {item["id"] for item in earlier}
    shared = {id(item) for item in kept}
    out = []
    for item in value:
        kind = item.get("type", "message")
        given = item.get("id")
        if id(item) in shared and given not in taken:  # a kept item: its id, its fields
            taken.add(given)
            out.append(item)
            continue
        rid = given if isinstance(given, str) and given and given not in taken \
            else item_id(_PREFIX[kind])
        taken.add(rid)
        out.append(_shaped(item, kind, rid))
    return out


def _shaped(item: dict, kind: str, rid: str) -> dict:
    """`item` (checked) as kept: its fields (the SDK's ResponseItem's), its status as sent
    (completed where it sent none)."""
    status = item.get("status") or "completed"
    if kind == "message":
        role, content = item["role"], item["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        return {"id": rid, "type": "message", "role": role,
                "content": [_part(role, p) for p in parts], "status": status}
    if kind == "function_call":
        return {"id": rid, "type": "function_call", "call_id": item["call_id"],
                "name": item["name"], "arguments": item["arguments"], "status": status}
    if kind == "function_call_output":
        output = item["output"]  # a string, or parts: their fields (other keys dropped)
        if isinstance(output, list):
            output = [_part("tool", p) for p in output]
        return {"id": rid, "type": "function_call_output", "call_id": item["call_id"],
                "output": output, "status": status}
    # reasoning: its fields as sent but null ones (other keys dropped: kept, they would be
    # held and listed), the "summary" the SDK requires
    kept = {k: item[k] for k in _REASONING if item.get(k) is not None}
    for key in ("summary", "content"):  # their parts' type and text (checked)
        if isinstance(kept.get(key), list):
            kept[key] = [{"type": p["type"], "text": p["text"]} for p in kept[key]]
    return {"summary": [], **kept, "id": rid, "type": "reasoning"}


def _part(role: str, part: dict) -> dict:
    """A message's text part as the SDK types it: output_text in an assistant's message,
    input_text in any other role's; a refusal part its type and refusal (text_parts took
    it), other keys dropped."""
    if part.get("type") not in TEXT_PARTS:
        return {"type": "refusal", "refusal": part["refusal"]}
    if role == "assistant":
        return {"type": "output_text", "text": part["text"], "annotations": []}
    return {"type": "input_text", "text": part["text"]}


def items_page(items: Sequence[dict], query: Mapping[str, str]) -> dict:
    """One page of `items` (a kept response's input items, in input order), as OpenAI's list
    object {object, data, first_id, last_id, has_more}, from the query parameters `order`
    ("desc", the default: the newest item first, or "asc"), `limit` (1 to 100, default 20)
    and the cursors `after` and `before` (an item id: the page holds the `limit` items just
    after it, or just before it: the previous page, has_more where more precede; with both,
    the first of those between them). InvalidRequest naming the parameter for a bad value or
    an id no item has."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f'order must be "asc" or "desc", got {shown_json(order)}',
                             param="order")
    limit = _limit(query.get("limit"))
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [item["id"] for item in ordered]
    start, end = 0, len(ordered)
    for name in ("after", "before"):
        cursor = query.get(name)
        if cursor is None:
            continue
        if cursor not in ids:
            raise InvalidRequest(f"{name} {shown_json(cursor)} is the id of none of this "
                                 "response's input items", param=name)
        if name == "after":
            start = ids.index(cursor) + 1
        else:
            end = ids.index(cursor)
    window = ordered[start:end]
    # `before` alone pages back: the items just before it, as a previous page holds them
    page = window[-limit:] if "before" in query and "after" not in query else window[:limit]
    return {"object": "list", "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(window) > limit}


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    try:
        limit = int(value)
    except ValueError:
        limit = None
    if limit is None or not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_PAGE}, got "
                             f"{shown_json(value)}", param="limit")
    return limit
