"""vLLM's chat-template content format: a template that reads a message's content as a list
of parts (`for part in message['content']`, `message.content[0].text`) is given the parts
("openai"), one that reads a string the parts joined ("string"); "auto" reads which from
the template's Jinja syntax tree. Served by `aiollm serve --chat-template-content-format`
(chat, the Responses API, /tokenize) and LLM.chat(chat_template_content_format=...), on a
tiny random-weight model. aiollm joined the parts always and refused "openai", so such
templates rendered a string's characters as parts."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from chat_templates import ALTERNATING

from aiollm import LLM, SamplingParams
from aiollm.api import create_app
from aiollm.engine import Engine
from aiollm.engine.content_format import detect_content_format
from aiollm.engine.served_format import FLAG
from aiollm.errors import ChatTemplateError, InvalidRequest
from conftest import tiny_llama

# reads parts: each one's text in brackets (a string's characters have no text: "[]" each)
PARTS = ("{% for m in messages %}<{{ m['role'] }}>{% for p in m['content'] %}[{{ p['text'] }}]"
         "{% endfor %}{% endfor %}")
# reads the first part by index, as some models' templates do
INDEXED = "{% for m in messages %}<{{ m.role }}>{{ m.content[0].text }}{% endfor %}"
# reads a string
STRING = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
TWO_PARTS = [{"role": "user", "content": [{"type": "text", "text": "Once"}, "upon"]}]
GREEDY = SamplingParams(max_tokens=1, temperature=0)


@pytest.mark.parametrize("template, want", [
    (PARTS, "openai"), (INDEXED, "openai"), (STRING, "string"), (ALTERNATING, "string"),
    ("{% for m in messages[1:] %}{% for p in m.content | selectattr('type', 'equalto', "
     "'text') %}{{ p.text }}{% endfor %}{% endfor %}", "openai"),
    ("{% set rest = messages %}{% for m in rest %}{% set c = m['content'] %}"
     "{{ c[0]['text'] }}{% endfor %}", "openai"),
    ("{% macro render(content) %}{% for item in content %}{{ item.text }}{% endfor %}"
     "{% endmacro %}{% for m in messages %}{{ render(m.content) }}{% endfor %}", "openai"),
    ("{{ messages[-1]['content'][0]['text'] }}", "openai"),
    # string reads: a character by index, lines of the string, the first message trimmed
    ("{% for m in messages %}{% if m.content[0] == ' ' %}x{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% for line in m.content.split('\\n') %}{{ line }}"
     "{% endfor %}{% endfor %}", "string"),
    ("{% set system = messages[0]['content'] | trim %}{{ system }}", "string"),
    # a string's method on its first character (capitalized) is no part's field
    ("{% for m in messages %}{{ m.content[0].upper() + m.content[1:] }}{% endfor %}",
     "string"),
    ("{% for m in messages %}{% if m['content'][0].isspace() %}x{% endif %}{% endfor %}",
     "string"),
    # a part (a dict) read by its own method is a list read
    ("{% for m in messages %}{{ m.content[0].get('text') }}{% endfor %}", "openai"),
    # a template that tests `is string` takes a string whole (its index is the other
    # branch's): given parts it would render only the first; a loop over parts still wins
    ("{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}"
     "{{ m.content[0].text }}{% endif %}{% endfor %}", "string"),
    # the content tested through a filter guards its reads too
    ("{% for m in messages %}{% if m.content | trim is string %}{{ m.content }}{% else %}"
     "{{ m.content[0].text }}{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}"
     "{% for p in m.content %}{{ p.text }}{% endfor %}{% endif %}{% endfor %}", "openai"),
    # ... in a macro's branch, or a macro of the list branch (its caller's test guards it),
    # or an inline if; a test of one message guards no other message's index
    ("{% macro parts(content) %}{{ content[0].text }}{% endmacro %}{% for m in messages %}"
     "{% if m.content is string %}{{ m.content }}{% else %}{{ parts(m.content) }}{% endif %}"
     "{% endfor %}", "string"),
    ("{% for m in messages %}{{ m.content if m.content is string else m.content[0].text }}"
     "{% endfor %}", "string"),
    ("{% if messages[0].content is string %}{{ messages[0].content }}{% endif %}"
     "{% for m in messages[1:] %}{{ m.content[0].text }}{% endfor %}", "openai"),
    # an elif's test guards its own branch and those after it (the else); a test of one
    # message's content guards no other message's index in its branch; a macro's reads are
    # guarded only where each call of it is
    ("{% for m in messages %}{% if m.role == 'x' %}X{% elif m.content is string %}"
     "{{ m.content }}{% else %}{{ m.content[0].text }}{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% if m.content is string %}{{ m.content }}{% elif m.role %}"
     "{{ m.content[0].text }}{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% if m.content[0].type %}{{ m.content[0].text }}"
     "{% elif m.content is string %}{{ m.content }}{% endif %}{% endfor %}", "openai"),
    ("{% if messages[0].content is string %}{{ messages[0].content }}"
     "{% for m in messages[1:] %}{{ m.content[0].text }}{% endfor %}{% endif %}", "openai"),
    ("{% macro parts(content) %}{{ content[0].text }}{% endmacro %}"
     "{% if messages[0].content is string %}S{% endif %}"
     "{% for m in messages[1:] %}{{ parts(m.content) }}{% endfor %}", "openai"),
    ("{% for m in messages %}{% set c = m.content %}{% if c is not string %}{{ c[0].text }}"
     "{% else %}{{ c }}{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% if not (m.content is string) %}{{ m.content[0].text }}"
     "{% else %}{{ m.content }}{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% if m.content is mapping %}{{ m.content.text }}"
     "{% elif m.content is string %}{{ m.content }}{% else %}{{ m.content[0].text }}"
     "{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% if m.role %}{% if m.content is string %}{{ m.content }}"
     "{% else %}{{ m.content[0]['text'] }}{% endif %}{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
     "{{ m.content[0].text }}{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}"
     "{% set c = m['content'] %}{{ c[0].text }}{% endif %}{% endfor %}", "string"),
    # a macro called only from a guarded macro is guarded too; the guarded content passed
    # or read through a filter is the same content
    ("{% macro inner(content) %}{{ content[0].text }}{% endmacro %}{% macro outer(content) %}"
     "{{ inner(content) }}{% endmacro %}{% for m in messages %}{% if m.content is string %}"
     "{{ m.content }}{% else %}{{ outer(m.content) }}{% endif %}{% endfor %}", "string"),
    ("{% macro parts(content) %}{{ content[0].text }}{% endmacro %}{% for m in messages %}"
     "{% if m.content is string %}{{ m.content }}{% else %}{{ parts(m.content | list) }}"
     "{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}"
     "{{ (m.content | list)[0].text }}{% endif %}{% endfor %}", "string"),
    # ... and one called unguarded anywhere is not
    ("{% macro inner(content) %}{{ content[0].text }}{% endmacro %}{% macro outer(content) %}"
     "{{ inner(content) }}{% endmacro %}{% for m in messages %}{% if m.content is string %}"
     "{{ outer(m.content) }}{% endif %}{{ inner(m.content) }}{% endfor %}", "openai"),
    # a test whose outcome leaves the content's open guards nothing there: `and x` false
    # lets a string through to the else, `or x` true lets a list into its branch
    ("{% for m in messages %}{% if m.role == 'user' and m.content is string %}{{ m.content }}"
     "{% else %}{{ m.content[0].text }}{% endif %}{% endfor %}", "openai"),
    ("{% for m in messages %}{{ m.content if m.role == 'u' and m.content is string else "
     "m.content[0].text }}{% endfor %}", "openai"),
    ("{% for m in messages %}{% if m.content is string or m.role == 'x' %}"
     "{{ m.content[0].text }}{% endif %}{% endfor %}", "openai"),
    ("{% for m in messages %}{% if m.content is string or m.role == 'x' %}{{ m.content }}"
     "{% else %}{{ m.content[0].text }}{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{% if m.role == 'u' and m.content is string %}{{ m.content }}"
     "{% elif m.content is string %}{{ m.content }}{% else %}{{ m.content[0].text }}"
     "{% endif %}{% endfor %}", "string"),
    ("{% for m in messages %}{{ m.content", "string"),  # does not parse: rendering says so
    # nested past Python's recursion limit (a model's own template is not checked first):
    # rendering says so too; the reading raised RecursionError, a 500
    ("{{ " + "(" * 3000 + "x" + ")" * 3000 + " }}", "string"),
])
def test_auto_reads_the_form_the_template_takes(template, want):
    assert detect_content_format(template) == want


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), max_position_embeddings=512)


@pytest.fixture(scope="module")
def llm(tiny):
    with LLM(tiny, load_format="dummy", kv_tokens=1024, max_model_len=256) as llm:
        yield llm


def prompt(llm, conversation, template, fmt="auto", **options) -> str:
    out, = llm.chat(conversation, GREEDY, False, chat_template=template,
                    chat_template_content_format=fmt, **options)
    return out.prompt


def test_a_template_that_reads_parts_is_given_parts(llm):
    """Under auto and openai the parts reach the template as a list, each a text part (a
    plain string in the list too); a message given as a string is one text part, as vLLM
    gives it. Under string the template iterated the joined string's characters."""
    conversation = [{"role": "system", "content": "Be brief"}, *TWO_PARTS]
    want = "<system>[Be brief]<user>[Once][upon]"
    assert prompt(llm, conversation, PARTS) == want
    assert prompt(llm, conversation, PARTS, "openai") == want
    assert prompt(llm, conversation, INDEXED) == "<system>Be brief<user>Once"
    joined = prompt(llm, conversation, PARTS, "string")
    assert joined == "<system>" + "[]" * len("Be brief") + "<user>" + "[]" * len("Once\nupon")


def test_a_template_that_reads_a_string_is_given_the_parts_joined(llm):
    assert prompt(llm, TWO_PARTS, STRING) == "<user>Once\nupon"
    assert prompt(llm, TWO_PARTS, STRING, "string") == "<user>Once\nupon"
    # the default model's own template reads a string: parts and their joined text alike
    joined = [{"role": "user", "content": "Once\nupon"}]
    assert prompt(llm, TWO_PARTS, None) == prompt(llm, joined, None)


def test_openai_form_keeps_each_part_and_an_assistants_refusal(llm):
    """Every part is its own text part (an empty one too, as vLLM keeps it); an assistant's
    refusal part is a text part, as vLLM gives it; no content (a call's turn) is no part."""
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""},
                                     {"type": "input_text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}]
    # the template renders calls itself ("tool_calls" in it), so they reach it as they are
    template = (PARTS + "{% if messages[2].tool_calls %}{{ messages[2].content | length }}"
                "{% endif %}")
    assert prompt(llm, conversation, template, "openai") == (
        "<user>[a][][b]<assistant>[no]<assistant><tool>[done]0")


def test_the_offline_keyword_is_checked_and_agrees_with_template_options(llm):
    from aiollm.engine.chat_template import TemplateOptions

    with pytest.raises(InvalidRequest, match="'json'") as e:
        prompt(llm, TWO_PARTS, PARTS, "json")
    assert e.value.param == "chat_template_content_format"
    with pytest.raises(InvalidRequest) as e:
        llm.chat(TWO_PARTS, GREEDY, False, TemplateOptions(content_format="xml"))
    assert e.value.param == "chat_template_content_format"
    with pytest.raises(TypeError, match="both template and chat_template_content_format"):
        llm.chat(TWO_PARTS, GREEDY, False, TemplateOptions(),
                 chat_template_content_format="openai")
    out, = llm.chat(TWO_PARTS, GREEDY, False,
                    TemplateOptions(chat_template=PARTS, content_format="string"))
    assert out.prompt == prompt(llm, TWO_PARTS, PARTS, "string")


def test_other_part_types_are_still_refused_naming_the_part(llm):
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    with pytest.raises(InvalidRequest, match="only text content parts") as e:
        prompt(llm, [{"role": "user", "content": ["hi", image]}], PARTS, "openai")
    assert e.value.param == "conversations[0].messages[0].content[1].type"
    # the message names the part too: the openai client shows the message, not the param
    assert 'messages[0].content[1].type: "image_url" parts are refused, the model reads text ' \
        'only' in str(e.value)


def serve(tiny: str, check, template: str, **app_options):
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=1024, chat_template=template)
        async with TestClient(TestServer(create_app(engine, **app_options))) as client:
            return await check(client, engine.tokenizer)
    return asyncio.run(main())


async def chat_prompt(client, tokenizer, messages: list[dict]) -> str:
    r = await client.post("/v1/chat/completions", json={
        "messages": messages, "max_tokens": 1, "return_token_ids": True})
    assert r.status == 200, await r.text()
    return tokenizer.decode((await r.json())["prompt_token_ids"])


@pytest.mark.parametrize("flag", [None, "openai"])
def test_server_gives_a_parts_template_the_parts(tiny, flag):
    """A chat request's parts, the Responses API's input parts and /tokenize's messages reach
    a template that reads parts as parts (auto, the default, or the flag's openai); the flag's
    string forces the joined string on it."""
    responses_input = [{"role": "user", "content": [
        {"type": "input_text", "text": "Once"}, {"type": "input_text", "text": "upon"}]}]
    want = "<user>[Once][upon]"

    async def check(client, tokenizer):
        got = await chat_prompt(client, tokenizer, TWO_PARTS)
        r = await client.post("/v1/responses", json={"input": responses_input,
                                                     "max_output_tokens": 1})
        assert r.status == 200, await r.text()
        input_tokens = (await r.json())["usage"]["input_tokens"]
        r = await client.post("/tokenize", json={"messages": TWO_PARTS})
        tokenized = tokenizer.decode((await r.json())["tokens"])
        return got, input_tokens, tokenized, len(tokenizer.encode(want))

    options = {} if flag is None else {"chat_template_content_format": flag}
    got, input_tokens, tokenized, want_tokens = serve(tiny, check, PARTS, **options)
    assert got == tokenized == want
    assert input_tokens == want_tokens


def test_server_flag_string_and_a_string_template(tiny):
    async def forced(client, tokenizer):
        return await chat_prompt(client, tokenizer, TWO_PARTS)

    assert serve(tiny, forced, PARTS, chat_template_content_format="string") == (
        "<user>" + "[]" * len("Once\nupon"))
    assert serve(tiny, forced, STRING) == "<user>Once\nupon"


def test_server_refuses_other_parts_and_a_bad_format(tiny):
    async def check(client, tokenizer):
        r = await client.post("/v1/chat/completions", json={"max_tokens": 1, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "input_audio", "input_audio": {}}]}]})
        return r.status, (await r.json())["error"]["param"]

    assert serve(tiny, check, PARTS) == (400, "messages[0].content[1].type")
    with pytest.raises(ValueError, match="chat_template_content_format .*'xml'"):
        create_app(None, chat_template_content_format="xml")


# reads a string, and concatenates it: a list of parts cannot render; refuses a conversation
# that does not open with the user
CONCAT = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('the user speaks first') }}"
          "{% endif %}{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] }}"
          "{% endfor %}")


def test_a_content_format_the_template_cannot_render_names_the_flag(tiny):
    """--chat-template-content-format openai given a template that reads (and concatenates)
    a string failed every chat request with a 400 blaming `messages`: the request was
    fine, the server's flag was not. Now the server's fault (500, as a template that does
    not compile), naming the flag and what to give instead, on chat, the Responses API and
    /tokenize; a conversation the template refuses in either form is still the request's
    400 naming messages."""
    said = "the user speaks first"

    async def check(client, tokenizer):
        out = []
        for path, body in (
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                          "max_tokens": 1}),
                ("/v1/responses", {"input": "hi", "max_output_tokens": 1}),
                ("/tokenize", {"messages": [{"role": "user", "content": "hi"}]}),
                ("/v1/chat/completions", {"messages": [
                    {"role": "assistant", "content": "hi"}], "max_tokens": 1})):
            r = await client.post(path, json=body)
            out.append((r.status, (await r.json())["error"]))
        return out

    *flagged, refused = serve(tiny, check, CONCAT, chat_template_content_format="openai",
                              content_format_name=FLAG)  # as `aiollm serve` names it
    for status, error in flagged:
        assert status == 500 and error["param"] is None, error
        message = error["message"]
        assert "--chat-template-content-format openai" in message, message
        # what the server's operator typed, not LLM.chat's keyword too
        assert "chat_template_content_format" not in message, message
        assert "auto" in message and "string" in message and "concatenate" in message
    status, error = refused
    assert status == 400 and error["param"] == "messages" and said in error["message"], error

    async def fine(client, tokenizer):
        return await chat_prompt(client, tokenizer, TWO_PARTS)

    assert serve(tiny, fine, CONCAT, chat_template_content_format="string") == (
        "<user>Once\nupon")


def test_a_requests_own_template_that_cannot_render_the_format_is_the_requests_fault(tiny):
    """A request's own chat_template (--trust-request-chat-template) that cannot render the
    server's content format was a 500 blaming the server's flag, logged at error for each
    such request, though the server's own template renders fine and the client chose the
    template: a 400 naming chat_template, saying which form it is given and reads."""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
            "chat_template": CONCAT}

    async def check(client, tokenizer):
        out = []
        for path in ("/v1/chat/completions", "/tokenize"):
            r = await client.post(path, json=body)
            out.append((r.status, (await r.json())["error"]))
        return out

    for status, error in serve(tiny, check, PARTS, chat_template_content_format="openai",
                               trust_request_chat_template=True,
                               content_format_name=FLAG):  # as `aiollm serve` names it
        assert status == 400 and error["param"] == "chat_template", error
        message = error["message"]
        assert "a list of parts" in message and "reads content as a string" in message
        assert "--chat-template-content-format openai" in message, message
        assert "chat_template_content_format" not in message, message


def test_offline_a_content_format_the_template_cannot_render_names_the_keyword(tiny, llm):
    """The engine's own template (LLM(chat_template=...)) that cannot render the content
    format asked for is the engine's fault (ChatTemplateError); a template given to one call
    (LLM.chat(chat_template=...)) is that call's (InvalidRequest naming chat_template).
    Both name the keyword to change."""
    with LLM(tiny, load_format="dummy", kv_tokens=1024, max_model_len=256,
             chat_template=CONCAT) as served:
        with pytest.raises(ChatTemplateError) as e:
            served.chat(TWO_PARTS, GREEDY, False, chat_template_content_format="openai")
    # the keyword as it was given, not the server's flag too
    assert str(e.value).startswith("chat_template_content_format='openai' "), str(e.value)
    assert "--chat-template-content-format" not in str(e.value), str(e.value)
    with pytest.raises(InvalidRequest) as e:
        prompt(llm, TWO_PARTS, CONCAT, "openai")
    assert e.value.param.endswith("chat_template"), e.value.param
    assert "chat_template_content_format='openai' " in str(e.value), str(e.value)
    assert "--chat-template-content-format" not in str(e.value), str(e.value)
    # the Engine API's own option, named as its caller gave it
    from aiollm.engine.chat_template import TemplateOptions

    with pytest.raises(InvalidRequest) as e:
        llm.chat(TWO_PARTS, GREEDY, False, TemplateOptions(chat_template=CONCAT,
                                                           content_format="openai"))
    assert "content_format='openai' " in str(e.value), str(e.value)
    assert "chat_template_content_format" not in str(e.value), str(e.value)
    with pytest.raises(InvalidRequest, match="the user speaks first"):
        prompt(llm, [{"role": "system", "content": "x"}], CONCAT, "openai")


@pytest.mark.parametrize("template, flag, want", [
    (PARTS, None, "Once\n\nupon"), (PARTS, "string", "Once\nupon"), (STRING, None, "Once\nupon"),
    (STRING, "openai", "Once\n\nupon")])
def test_echo_joins_the_parts_the_template_was_given(tiny, template, flag, want):
    """vLLM's echo is the last message's content as the template was given it: the joined
    string (an empty part left out) under string, each part's text joined by "\n" (an empty
    one too) under openai. The parts were always joined as for string."""
    conversation = [{"role": "user", "content": [
        {"type": "text", "text": "Once"}, {"type": "text", "text": ""}, "upon"]}]

    async def check(client, tokenizer):
        texts = []
        for stream in (False, True):
            r = await client.post("/v1/chat/completions", json={
                "messages": conversation, "max_tokens": 1, "echo": True, "stream": stream,
                "add_generation_prompt": False})
            assert r.status == 200, await r.text()
            if not stream:
                texts.append((await r.json())["choices"][0]["message"]["content"])
                continue
            deltas = [json.loads(line.removeprefix("data: "))["choices"][0]["delta"]
                      for line in (await r.text()).splitlines()
                      if line.startswith("data: {")]
            texts.append(next(d["content"] for d in deltas if d.get("content")))
        return texts

    options = {} if flag is None else {"chat_template_content_format": flag}
    whole, streamed = serve(tiny, check, template, **options)
    assert whole.startswith(want) and streamed == want


@pytest.mark.parametrize("fmt", ["auto", "string", "openai"])
def test_engine_chat_prompt_keeps_content_that_is_no_text(llm, fmt):
    """Engine.chat_prompt takes messages as the template takes them, unchecked: content
    that is neither a string nor a list of text parts (a mapping, as Mistral's template reads
    a tool result's `message.content.content`; a list of other values) reaches the template as
    given, in any form. The string form joined a mapping's keys ("content") and raised
    AttributeError on a list of numbers."""
    from aiollm.engine.chat_template import TemplateOptions

    template = ("{% for m in messages %}<{{ m.role }}>{% if m.content is mapping %}"
                "{{ m.content.content }}{% else %}{{ m.content }}{% endif %}{% endfor %}")
    options = TemplateOptions(chat_template=template, content_format=fmt)
    engine = llm.engine

    def render(content) -> str:
        ids = engine.chat_prompt([{"role": "tool", "content": content}], None, options)
        return engine.tokenizer.decode(ids)

    assert render({"content": "sunny"}) == "<tool>sunny"
    assert render([1, 2]) == "<tool>[1, 2]"


# the system message's content tested `is string`, the others' indexed with no test
GUARDED_FIRST = ("{% if messages[0]['content'] is string %}S:{{ messages[0]['content'] }}"
                 "{% endif %}{% for m in messages[1:] %}|{{ m['content'][0]['text'] }}"
                 "{% endfor %}")


def test_an_is_string_test_excuses_only_the_index_reads_it_guards(llm):
    """`content is string` makes an item by number the list branch's only where the test
    guards that read: a template that tests the system message's content and indexes the
    other messages' with no test reads them as lists. Any test made the whole template
    "string", and each user message rendered empty (its string's first character has no
    'text')."""
    assert detect_content_format(GUARDED_FIRST) == "openai"
    conversation = [{"role": "system", "content": "Be brief"},
                    {"role": "user", "content": "Once"}]
    assert prompt(llm, conversation, GUARDED_FIRST) == "|Once"



@pytest.mark.parametrize("template, want", [
    # the else of an elif that tests `is string`: every part, joined
    ("{% for m in messages %}{% if m.role == 'x' %}X{% elif m.content is string %}"
     "{{ m.content }}{% else %}{{ m.content[0].text }}{% endif %}|{% endfor %}",
     "Be brief|Once\nupon|"),
    # a macro called where no test guards it: the parts, read by index
    ("{% macro parts(content) %}{{ content[0].text }}{% endmacro %}"
     "{% if messages[0].content is string %}{{ messages[0].content }}"
     "{% else %}{{ parts(messages[0].content) }}{% endif %}|"
     "{% for m in messages[1:] %}{{ parts(m.content) }}|{% endfor %}", "Be brief|Once|"),
    # a macro called only from a macro the test guards, and one given the tested content
    # through a filter: the parts joined (the list branch read "Once" alone, "upon" lost)
    ("{% macro inner(content) %}{{ content[0].text }}{% endmacro %}"
     "{% macro outer(content) %}{{ inner(content) }}{% endmacro %}{% for m in messages %}"
     "{% if m.content is string %}{{ m.content }}{% else %}{{ outer(m.content) }}{% endif %}"
     "|{% endfor %}", "Be brief|Once\nupon|"),
    ("{% macro parts(content) %}{{ content[0].text }}{% endmacro %}{% for m in messages %}"
     "{% if m.content is string %}{{ m.content }}{% else %}{{ parts(m.content | list) }}"
     "{% endif %}|{% endfor %}", "Be brief|Once\nupon|"),
    # an else that a user's string test with `and` leads a system message's string to:
    # the parts, each message's first (string: the system message rendered empty)
    ("{% for m in messages %}{% if m.role == 'user' and m.content is string %}{{ m.content }}"
     "{% else %}{{ m.content[0].text }}{% endif %}|{% endfor %}", "Be brief|Once|"),
])
def test_the_form_auto_picks_renders_every_message(llm, template, want):
    """An `is string` test guards the index reads of its own branch and those after it (an
    elif's else too), and a macro's reads only where each call of it is in such a branch:
    the elif's else read the parts' first alone ("upon" lost), and the macro read each
    user message's string by character and rendered it empty."""
    conversation = [{"role": "system", "content": "Be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "Once"}]}]
    if "upon" in want:
        conversation[1]["content"] = TWO_PARTS[0]["content"]
    assert prompt(llm, conversation, template) == want
