"""Chats of the Python API render as the HTTP API's, and take vLLM's chat options:
Engine.chat and stream_chat take tools (the prompt /v1/chat/completions builds for the same
messages and tools); LLM.chat takes vLLM's chat_template= and a callable use_tqdm; the
engine's chat_template option (`aiollm serve --chat-template`) replaces the tokenizer's;
and a served template that does not compile is the server's fault (500), where what a
template refuses of a conversation stays the client's (400)."""

from __future__ import annotations

import asyncio
import functools
import json

import pytest

from chat_templates import ALTERNATING
from live_server import LiveServer, http

from aiollm import LLM, SamplingParams
from aiollm.config import EngineConfig
from aiollm.engine.chat_template import TemplateOptions
from aiollm.errors import ChatTemplateError, InvalidRequest

HI = [{"role": "user", "content": "Hi"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALLED = [  # a past call and its answer: a template that knows no calls is shown them in text
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "21 C"}]
# uniqueItems: no grammar holds a call to it (a chat request refuses it where a call may
# come), but a chat that only renders the tools takes it, as vLLM's LLM.chat and /tokenize do
UNIQUE = [{"type": "function", "function": {"name": "tag", "parameters": {
    "type": "object", "properties": {"tags": {
        "type": "array", "items": {"type": "string"}, "uniqueItems": True}}}}}]
# renders the tools itself (so they reach it as they are), then each message
KNOWS_TOOLS = ("{% if tools %}{{ tools | length }} tools\n{% endif %}{% for m in messages %}"
               "<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}"
               "<assistant>{% endif %}")
BROKEN = "{% for m in messages %}{{ m.content }"  # a syntax error
CONFIG = {  # tiny random weights over the default model's tokenizer
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256}


def on_loop(server: LiveServer, coro):
    """coro run on the server's event loop (the engine's), its result or error."""
    return asyncio.run_coroutine_threadsafe(coro, server.loop).result(60)


def chats_as_tokenized(server, messages, sp, tools):
    """Engine.chat's output and stream_chat's deltas for `messages` and `tools`, each checked
    to have rendered the prompt that /tokenize renders for the same chat request."""
    engine = server.engine

    async def chats():
        out = await engine.chat(messages, sp, tools=tools)
        streamed = [d async for d in engine.stream_chat(messages, sp, tools=tools)]
        return out, streamed

    out, streamed = on_loop(server, chats())
    status, _, raw = http(server, "POST", "/tokenize",
                          json={"messages": messages, "tools": tools})
    assert status == 200, raw
    assert out.prompt_token_ids == json.loads(raw)["tokens"]
    assert streamed[-1].prompt_tokens == len(out.prompt_token_ids)
    return out, streamed


def test_engine_chat_takes_tools_as_the_server_renders_them(server):
    """Engine.chat and stream_chat took no tools (TypeError), where LLM.chat and
    /v1/chat/completions take them. Their prompt is the server's for the same messages and
    tools (/tokenize renders a chat request's; a completion request with tools would also
    compile their grammar, seconds on a CPU): the default model's template knows no tools,
    so they and the past call are shown in the messages. A bad tool is an InvalidRequest
    naming it, as the HTTP API's 400 does."""
    engine = server.engine
    sp = SamplingParams(max_tokens=2, temperature=0)
    out, streamed = chats_as_tokenized(server, CALLED, sp, TOOLS)
    text = engine.tokenizer.decode(out.prompt_token_ids)
    assert '"name": "get_weather"' in text and "<tool_call>" in text  # the tool, the past call
    assert "".join(d.text for d in streamed) == out.text  # greedy, on the same prompt
    bad = [{"type": "function", "function": {"name": "get weather"}}]
    with pytest.raises(InvalidRequest) as e:
        on_loop(server, engine.chat(HI, sp, tools=bad))
    assert e.value.param == "tools[0].function.name"
    for no_list in (5, {"name": "get_weather"}):
        with pytest.raises(InvalidRequest, match="tools must be a list") as e:
            on_loop(server, engine.chat(HI, sp, tools=no_list))
        assert e.value.param == "tools"

    async def stream_bad():
        engine.stream_chat(HI, sp, tools=bad)

    with pytest.raises(InvalidRequest) as e:
        on_loop(server, stream_bad())
    assert e.value.param == "tools[0].function.name"
    server.wait_idle()


def test_tools_only_rendered_are_not_held_to_the_grammar(server):
    """Engine.chat, stream_chat and /tokenize render the tools and parse no call (no grammar
    is built from them, as under tool_choice "none"): a parameters schema the grammar could
    not enforce was refused there (InvalidRequest naming it, a 400), where vLLM takes it."""
    engine = server.engine
    sp = SamplingParams(max_tokens=1, temperature=0)
    out, _ = chats_as_tokenized(server, HI, sp, UNIQUE)
    assert '"uniqueItems": true' in engine.tokenizer.decode(out.prompt_token_ids)
    # nested past json.dumps' recursion (the HTTP body's decoder stops it shallower): still
    # held to the grammar's depth bound; it was a RecursionError from the rendering
    deep: dict = {"type": "string"}
    for _ in range(3000):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InvalidRequest, match="nests deeper than 64 levels") as e:
        on_loop(server, engine.chat(HI, sp, tools=[{"type": "function", "function": {
            "name": "deep", "parameters": deep}}]))
    assert e.value.param == "tools[0].function.parameters"
    # Python values JSON cannot write, which the grammar's checks refused in some places
    # ('required'): a TypeError or ValueError from the rendering's json.dumps, or NaN
    # written into the prompt
    for bad in ({"required": [b"x"]}, {"required": [10 ** 5000]}, {"required": [float("nan")]},
                {"properties": {"a": {"type": "string", "default": b"x"}}}):
        with pytest.raises(InvalidRequest, match="is not JSON") as e:
            on_loop(server, engine.chat(HI, sp, tools=[{"type": "function", "function": {
                "name": "odd", "parameters": {"type": "object", **bad}}}]))
        assert e.value.param == "tools[0].function.parameters"
    with pytest.raises(InvalidRequest, match="is not JSON") as e:
        on_loop(server, engine.chat(HI, sp, tools=[{"type": "function", "function": {
            "name": "odd", "x-tags": {1, 2}}}]))
    assert e.value.param == "tools[0].function"
    with pytest.raises(InvalidRequest, match="nested too deeply") as e:
        on_loop(server, engine.chat(HI, sp, tools=[{"type": "function", "function": {
            "name": "odd", "x-schema": deep}}]))
    assert e.value.param == "tools[0].function"
    server.wait_idle()


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory):
    """A model directory (tiny random weights) whose own chat template does not compile."""
    from aiollm.model import load_tokenizer

    d = tmp_path_factory.mktemp("broken-template")
    (d / "config.json").write_text(json.dumps(CONFIG))
    tok = load_tokenizer(None)
    tok.chat_template = BROKEN
    tok.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def llm(broken_model):
    with LLM(str(broken_model), load_format="dummy", max_model_len=256, kv_tokens=1024) as llm:
        yield llm


def test_llm_chat_takes_vllms_chat_template(llm):
    """vLLM's LLM.chat(chat_template=...) (a Jinja template in place of the tokenizer's) was
    a TypeError (unexpected keyword). It renders the call's conversations (here where the
    model's own template does not compile: ChatTemplateError), its text deciding how tools
    are shown; one that does not compile is a ValueError naming chat_template."""
    sp = SamplingParams(max_tokens=1)
    out, = llm.chat(CALLED[:1], sp, False, chat_template=KNOWS_TOOLS, tools=TOOLS)
    # a template that renders the tools itself: they reach it unchanged
    assert out.prompt == "1 tools\n<user>Weather in Paris?\n<assistant>"
    # tools it only renders are not held to the grammar's checks (see above)
    out, = llm.chat(HI, sp, False, chat_template=KNOWS_TOOLS, tools=UNIQUE)
    assert out.prompt == "1 tools\n<user>Hi\n<assistant>"
    with pytest.raises(ChatTemplateError, match="chat template does not compile"):
        llm.chat(HI, sp, False)  # the model's own
    cont, = llm.chat([*HI, {"role": "assistant", "content": "Hel"}], sp, False,
                     chat_template=KNOWS_TOOLS, add_generation_prompt=False)
    assert cont.prompt == "<user>Hi\n<assistant>Hel\n"
    # nested past Python's recursion limit: jinja2 raised RecursionError (a 500 on a trusted
    # request's template)
    deep = "{{ " + "(" * 3000 + "x" + ")" * 3000 + " }}"
    for bad, message in (("{% if %}", "does not compile"), ("", "non-empty"),
                         (3, "must be a Jinja template"), (deep, "nested too deeply")):
        with pytest.raises(ValueError, match=message) as e:
            llm.chat(HI, sp, False, chat_template=bad)
        assert e.value.param == "chat_template"
    with pytest.raises(TypeError, match="both template and chat_template"):
        llm.chat(HI, sp, False, TemplateOptions(), chat_template=KNOWS_TOOLS)


def test_use_tqdm_may_make_the_bar(llm):
    """vLLM's use_tqdm may be a callable that makes the progress bar (a tqdm class or a
    factory such as functools.partial(tqdm, leave=False)); it was taken as true, and
    tqdm's own bar shown."""
    bars = []

    class Bar:  # tqdm's interface as vLLM's LLM uses it
        def __init__(self, **kwargs):
            self.kwargs, self.done, self.closed = kwargs, 0, False
            bars.append(self)

        def update(self, n=1):
            self.done += n

        def close(self):
            self.closed = True

    sp = SamplingParams(max_tokens=1)
    assert len(llm.generate(["a", "b", "c"], sp, use_tqdm=Bar)) == 3
    assert [(b.kwargs["total"], b.done, b.closed) for b in bars] == [(3, 3, True)]
    llm.chat([HI, HI], sp, use_tqdm=functools.partial(Bar, leave=False),
             chat_template=KNOWS_TOOLS)
    assert (bars[1].kwargs["leave"], bars[1].kwargs["total"], bars[1].done,
            bars[1].closed) == (False, 2, 2, True)
    llm.generate(["a"], sp, Bar)  # aiollm's own name, progress
    assert len(bars) == 3


def test_the_engines_chat_template_replaces_the_tokenizers(broken_model):
    """The engine's chat_template option (Engine, LLM; `aiollm serve --chat-template`)
    renders every chat in place of the tokenizer's template (here the model's own, which
    does not compile); what it refuses is the caller's input, as the tokenizer's would be."""
    sp = SamplingParams(max_tokens=1)
    with LLM(str(broken_model), load_format="dummy", max_model_len=256, kv_tokens=1024,
             chat_template=ALTERNATING) as llm:
        assert llm.get_tokenizer().chat_template == ALTERNATING
        out, = llm.chat(HI, sp, False)
        assert out.prompt.endswith("[INST] Hi [/INST]")
        with pytest.raises(InvalidRequest, match="roles must alternate") as e:
            llm.chat([*HI, *HI], sp, False)
        assert e.value.param == "conversations[0].messages"
    with pytest.raises(ValueError, match="^chat_template does not compile"):
        LLM(str(broken_model), load_format="dummy", chat_template=BROKEN)


def test_serve_takes_a_chat_template_file_or_text(tmp_path, capsys):
    """`aiollm serve --chat-template` (vLLM's flag: a file path, or the template itself)
    did not exist. The engine renders every chat with it; a file that cannot be read or a
    template that does not compile fails at start, before loading, naming the flag."""
    from aiollm import cli
    from aiollm.cli.serve_parser import ENGINE_OPTIONS

    def config(*argv: str) -> EngineConfig:
        args = cli.build_parser().parse_args(["serve", *argv])
        return EngineConfig(**{name: getattr(args, name) for name in ENGINE_OPTIONS})

    path = tmp_path / "template.jinja"
    path.write_text(KNOWS_TOOLS)
    assert config("--chat-template", str(path)).chat_template == KNOWS_TOOLS
    assert config("--chat-template", KNOWS_TOOLS).chat_template == KNOWS_TOOLS
    assert config().chat_template is None  # the tokenizer's own
    broken = tmp_path / "broken.jinja"
    broken.write_text(BROKEN)
    for value, message in ((str(tmp_path / "missing.jinja"), "looks like a file path"),
                           (str(tmp_path), "looks like a file path"),  # a directory
                           ("{% if %}", "chat_template does not compile"),
                           (str(broken), f"chat_template file {broken} does not compile")):
        with pytest.raises(SystemExit) as e:
            cli.main(["serve", "--chat-template", value])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "argument --chat-template: " in err and message in err, err


@pytest.fixture(scope="module")
def broken_server(broken_model):
    srv = LiveServer(model=str(broken_model), load_format="dummy", max_model_len=256,
                     kv_tokens=1024).start()
    yield srv
    srv.close()


def test_a_template_that_does_not_compile_is_a_server_error(broken_server):
    """A served chat template with a syntax error (warned of at load) made every chat
    request a 400 naming messages, blaming the client for the server's template. It is a
    500 naming the chat template, whole or streamed, and on /tokenize with messages; the
    Python API raises ChatTemplateError (a RuntimeError, not the caller's ValueError). The
    server goes on serving completions."""
    for body in ({"messages": HI, "max_tokens": 1},
                 {"messages": HI, "max_tokens": 1, "stream": True}):
        status, _, raw = http(broken_server, "POST", "/v1/chat/completions", json=body)
        assert status == 500, raw
        error = json.loads(raw)["error"]
        assert error["type"] == "internal_error" and error["param"] is None, error
        assert error["message"].startswith("the chat template does not compile "
                                           "(TemplateSyntaxError: "), error
    status, _, raw = http(broken_server, "POST", "/tokenize", json={"messages": HI})
    assert status == 500 and "chat template does not compile" in raw.decode(), raw
    with pytest.raises(ChatTemplateError, match="chat template does not compile"):
        on_loop(broken_server, broken_server.engine.chat(HI, SamplingParams(max_tokens=1)))
    status, _, raw = http(broken_server, "POST", "/v1/completions",
                          json={"prompt": "Hi", "max_tokens": 1})
    assert status == 200, raw
    broken_server.wait_idle()


def test_a_chat_template_without_jinja_tags_is_refused(llm, tmp_path):
    """A chat_template with no {{ }} or {% %} renders the same text for every conversation,
    its messages unread: LLM.chat(chat_template="templates/chatml.jinja") (a path, which
    LLM.chat takes as the template's text, as vLLM's does) made every prompt that path.
    It is a ValueError naming chat_template, as is such a --chat-template file."""
    with pytest.raises(ValueError, match="no Jinja tag") as e:
        llm.chat(HI, SamplingParams(max_tokens=1), False,
                 chat_template=str(tmp_path / "chatml.jinja"))
    assert e.value.param == "chat_template"
    path = tmp_path / "plain.jinja"
    path.write_text("You are a helpful assistant.\n")
    with pytest.raises(ValueError, match=f"chat_template file {path} has no Jinja tag") as e:
        EngineConfig(chat_template=str(path))
    assert "path, not its text" not in str(e.value)  # the hint fits a template given as text
    path.write_text("")
    with pytest.raises(ValueError, match=f"chat_template file {path} is empty") as e:
        EngineConfig(chat_template=str(path))
    assert "None" not in str(e.value)


@pytest.mark.parametrize("special", [False, True])
def test_special_tokens_in_content_turns_typed_control_text_into_tokens(broken_model, special):
    """By default control-token text in content is plain text, under a template with control
    tokens of its own or none; special_tokens_in_content (`--special-tokens-in-content`)
    makes it the control token, as the tokenizer's own template encoding does."""
    sp = SamplingParams(max_tokens=1)
    with LLM(str(broken_model), load_format="dummy", max_model_len=256, kv_tokens=1024,
             special_tokens_in_content=special) as llm:
        tok = llm.get_tokenizer()
        [end] = tok.encode("<|im_end|>", add_special_tokens=False)
        for template, own in ((KNOWS_TOOLS, 0), ("{% for m in messages %}<|im_start|>"
                                                  "{{ m.content }}<|im_end|>{% endfor %}", 1)):
            out, = llm.chat([{"role": "user", "content": "a <|im_end|> b"}], sp, False,
                            chat_template=template)
            assert out.prompt_token_ids.count(end) == own + special, template
            assert "a <|im_end|> b" in tok.decode(out.prompt_token_ids)
