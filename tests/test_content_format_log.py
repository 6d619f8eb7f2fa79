"""The server says at start, once and at info, the chat template content format it gives
the served template (what "auto" detected, or the flag's), as vLLM logs its detected format;
a request's own template logs nothing at info, however many come."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aiollm.api import create_app
from aiollm.engine import Engine
from aiollm.engine.served_format import FLAG

PARTS = ("{% for m in messages %}<{{ m['role'] }}>{% for p in m['content'] %}[{{ p['text'] }}]"
         "{% endfor %}{% endfor %}")
STRING = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
# reads a string and concatenates it: a list of parts does not render
CONCAT = "{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] }}{% endfor %}"
LOGGER = "aiollm.engine.content_format"


def started(tiny: str, template: str, caplog, **app_options) -> list[logging.LogRecord]:
    """The content-format records at info or above of a server started with `template`
    as `aiollm serve` starts it (naming its flag: test_content_format_naming.py has
    create_app's own naming), which then renders chats with templates of their own (five,
    each new)."""
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=512, chat_template=template)
        app = create_app(engine, trust_request_chat_template=True,
                         content_format_name=FLAG, **app_options)
        async with TestClient(TestServer(app)) as client:
            for i in range(5):
                own = PARTS.replace("<{{", f"{i}<{{{{")
                r = await client.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                    "chat_template": own})
                assert r.status == 200, await r.text()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(main())
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.INFO]


@pytest.mark.parametrize("template, fmt, reads", [
    (STRING, "'string'", "as a string"), (PARTS, "'openai'", "as a list of parts")])
def test_the_detected_format_is_logged_once_at_start(tiny, caplog, template, fmt, reads):
    records = started(tiny, template, caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert records[0].levelno == logging.INFO
    assert message.startswith(f"chat template content format: {fmt} (detected")
    assert reads in message and "--chat-template-content-format" in message


def test_a_format_given_is_logged_and_warned_of_where_the_template_reads_another(
        tiny, caplog):
    records = started(tiny, STRING, caplog, chat_template_content_format="openai")
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING]
    assert records[0].getMessage() == ("chat template content format: 'openai' "
                                       "(--chat-template-content-format)")
    assert "reads ('string')" in records[1].getMessage()


def test_a_format_given_that_the_template_cannot_render_is_an_error_at_start(tiny, caplog):
    """The start renders one message in the format given (where it is not what the template
    reads): a template that cannot render it is logged at error, naming the flag and what
    to give, before any chat request fails on it (each a 500 saying the same). One that
    renders it (the parts' text as a list) is only warned of, as before."""
    started(tiny, CONCAT, caplog, chat_template_content_format="openai")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("--chat-template-content-format openai "), errors
    assert "give auto" in errors[0] and "every chat request fails" in errors[0], errors
    caplog.clear()
    started(tiny, STRING, caplog, chat_template_content_format="openai")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
