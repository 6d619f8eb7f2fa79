"""What create_app's caller is told about its chat_template_content_format: the argument
it passed, not `aiollm serve`'s flag, which such a caller never typed (the start's log
lines and each chat request's 500 named --chat-template-content-format); `aiollm serve`
passes its flag's name (content_format_name) and is told of the flag."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aiollm.api import create_app
from aiollm.engine import Engine
from aiollm.engine.served_format import FLAG

STRING = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
# reads a string and concatenates it: a list of parts does not render
CONCAT = "{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] }}{% endfor %}"
ARGUMENT = "chat_template_content_format"


def served(tiny: str, template: str, caplog, **app_options) -> tuple[list[str], list[dict]]:
    """The log lines at info or above of an app started with `template`, and the error
    bodies of a chat and a /tokenize request it then answers."""
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=512, chat_template=template)
        app = create_app(engine, **app_options)
        errors = []
        async with TestClient(TestServer(app)) as client:
            for path, body in (
                    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                              "max_tokens": 1}),
                    ("/tokenize", {"messages": [{"role": "user", "content": "hi"}]})):
                r = await client.post(path, json=body)
                errors.append((await r.json()).get("error") if r.status != 200 else None)
        return errors

    with caplog.at_level(logging.INFO):
        errors = asyncio.run(main())
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO], errors


@pytest.mark.parametrize("template", [STRING, CONCAT])
def test_auto_names_the_argument_that_overrides_it(tiny, caplog, template):
    said, _ = served(tiny, template, caplog)
    line = next(s for s in said if s.startswith("chat template content format:"))
    assert f"; {ARGUMENT} overrides it)" in line, line
    assert FLAG not in line, line


def test_a_format_given_names_the_argument_in_the_start_log(tiny, caplog):
    said, _ = served(tiny, STRING, caplog, chat_template_content_format="openai")
    assert f"chat template content format: 'openai' ({ARGUMENT})" in said, said
    warned = [s for s in said if "is not what the chat template reads" in s]
    assert warned and warned[0].startswith(f"{ARGUMENT}='openai' is not"), said
    assert not any(FLAG in s for s in said), said


def test_a_format_the_template_cannot_render_names_the_argument(tiny, caplog):
    """The start's error line and each chat request's 500 say what to change: the
    argument create_app was given."""
    said, errors = served(tiny, CONCAT, caplog, chat_template_content_format="openai")
    failed = [s for s in said if "every chat request fails" in s]
    assert len(failed) == 1 and failed[0].startswith(f"{ARGUMENT}='openai' gives"), said
    for error in errors:
        assert error is not None and error["message"].startswith(
            f"{ARGUMENT}='openai' gives"), error
        assert FLAG not in error["message"], error


def test_aiollm_serve_names_its_flag(tiny, caplog):
    """What `aiollm serve` passes (cli/serve.py): its operator typed the flag."""
    said, errors = served(tiny, CONCAT, caplog, chat_template_content_format="openai",
                          content_format_name=FLAG)
    assert f"chat template content format: 'openai' ({FLAG})" in said, said
    assert any(s.startswith(f"{FLAG} openai gives") for s in said), said
    for error in errors:
        assert error["message"].startswith(f"{FLAG} openai gives"), error
        assert ARGUMENT not in error["message"], error
