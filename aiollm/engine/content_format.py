"""The form in which a message's content reaches the chat template: vLLM's chat-template
content format (`aiollm serve --chat-template-content-format`, LLM.chat's
chat_template_content_format, TemplateOptions.content_format).

- "string": the text parts joined into one string, as most templates read it
  (`{{ message['content'] }}`);
- "openai": the content as a list of parts, each {"type": "text", "text": ...}, as templates
  of models that read parts take it (`{% for part in message['content'] %}`,
  `message.content[0].text`); a message given as a plain string is a list of one text part
  (vLLM wraps it so), one given no content an empty list;
- "auto" (the default): whichever the template reads, found in its Jinja syntax tree
  (`detect_content_format`).

Checked messages (chat_messages.py) keep each message's content as it was given, a string or
a list of text parts; `formed_messages` puts it in the resolved form just before the template
renders it, so the rest of the server reads one string per message (`joined_text`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jinja2
from jinja2 import nodes

from aiollm.config import CONTENT_FORMATS
from aiollm.errors import InvalidRequest

log = logging.getLogger(__name__)
PARAM = "chat_template_content_format"


def check_content_format(value: Any) -> str:
    """`value` if it is one of CONTENT_FORMATS, else InvalidRequest naming PARAM."""
    if value not in CONTENT_FORMATS:
        raise InvalidRequest(f"chat_template_content_format must be \"auto\" (what the chat "
                             "template reads), \"string\" (text parts joined into one "
                             "string) or \"openai\" (a list of text parts), got "
                             f"{value!r:.40}", param=PARAM)
    return value


def given_format(name: str, fmt: str) -> str:
    """The content format `fmt` as its giver wrote it: a flag's `--chat-template-content-format
    openai`, an argument's or keyword's `chat_template_content_format='openai'`."""
    return f"{name} {fmt}" if name.startswith("--") else f"{name}={fmt!r}"


def joined_text(content: Any) -> str:
    """A message's content (a string, or a list of text parts as checked messages hold them;
    None: none) as one string: the parts' texts joined by "\n", an empty one left out, as
    vLLM joins them for a template that reads a string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = (p if isinstance(p, str) else p.get("text") for p in content)
    return "\n".join(t for t in texts if isinstance(t, str) and t)


def echoed_text(content: Any, fmt: str) -> str:
    """A message's content as vLLM's chat `echo` writes it before the answer: as the
    template was given it in `fmt` ("string" or "openai"), one string, or each part's text
    joined by "\n" (an empty part too: the list holds it)."""
    if fmt == "string":
        return joined_text(content)
    return "\n".join(p["text"] for p in as_parts(content))


def as_parts(content: Any) -> list:
    """A message's content in the "openai" form: a string as one text part, None as no
    part, a list (of text parts, as checked messages hold them) as it is."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content


def formed_messages(messages: list[dict], fmt: str) -> list[dict]:
    """`messages` with each content in the form `fmt` ("string" or "openai") says; messages
    already in it, or whose content is no text (a message not checked, as Engine.chat_prompt
    may be given, keeps its own: None or missing, a mapping, a list of other values), are
    the same dicts."""
    form = joined_text if fmt == "string" else as_parts
    out = []
    for m in messages:
        content = m.get("content")
        want = form(content) if _is_text(content) else content
        out.append(m if want is content else {**m, "content": want})
    return out


def _is_text(content: Any) -> bool:
    """Whether `content` is a string or a list of text parts (each a string or a dict with
    a string "text"), as checked messages hold it."""
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(p, str) or (isinstance(p, dict) and isinstance(p.get("text"), str))
        for p in content)


def rendering_template(template: str | dict | None, tools: list | None = None) -> str | None:
    """The template that renders a chat with `tools` (None or []: none): `template` itself,
    or of named templates (a dict: a GGUF file's tokenizer.chat_template.<name>, a
    directory's several) the one transformers picks, "tool_use" for a chat with tools where
    there is one, else "default"; None where there is none. What is asked of the template's
    text (does it render tools, past calls; in which format does it write calls) is asked
    of this one: a dict's keys hold none of it."""
    if isinstance(template, dict):
        template = template.get("tool_use") if tools and "tool_use" in template \
            else template.get("default")
    return template if isinstance(template, str) else None


def resolve_content_format(given: str, template: str | dict | None,
                           tools: list | None = None) -> str:
    """"string" or "openai": `given` unless it is "auto", else what the template that
    renders reads (detect_content_format of rendering_template's); "string" where there is
    none."""
    if given != "auto":
        return given
    template = rendering_template(template, tools)
    return detect_content_format(template) if template is not None else "string"


def log_served_format(given: str, template: str | dict | None, name: str = PARAM) -> None:
    """Say once, at info (a server's start), the content format the served chat `template`
    is given its messages' content in: `given` (the value of what `name` names: create_app's
    chat_template_content_format, or `aiollm serve`'s --chat-template-content-format),
    for "auto" what the template reads (each named template's, for several: "default:
    'string', tool_use: 'openai'"); a warning where a format given is not what the template
    reads. Per-request templates are not logged here (detect_content_format logs each at
    debug: a client's many templates would flood the log)."""
    if not template:
        return  # no chat template: the tokenizer's loading warned that chats will fail
    named = template if isinstance(template, dict) else {"": template}
    found = {name: detect_content_format(src) for name, src in named.items()
             if isinstance(src, str)}
    read = ", ".join(f"{name}: {fmt!r}" if name else repr(fmt) for name, fmt in found.items())
    if given == "auto":
        log.info("chat template content format: %s (detected from the chat template: %s; "
                 "%s overrides it)", read, _AS[frozenset(found.values())]
                 if len(set(found.values())) == 1 else "they differ", name)
        return
    log.info("chat template content format: %r (%s)", given, name)
    if any(fmt != given for fmt in found.values()):
        log.warning("%s is not what the chat template reads (%s): message content may render "
                    "wrong; give auto to follow the template", given_format(name, given), read)


_AS = {frozenset({"string"}): "it reads message content as a string",
       frozenset({"openai"}): "it reads message content as a list of parts"}


@functools.lru_cache(maxsize=32)
def detect_content_format(source: str) -> str:
    """"openai" when the chat template `source` reads a message's content as a list of
    parts, else "string" (also for a template that does not parse, or is nested too deeply
    to: rendering it will say why). Read from its Jinja syntax tree, as vLLM's "auto" reads
    it: a message is a loop variable over `messages` (or a name set from it,
    `loop_messages = messages[1:]`), or a name set to one item of them (`messages[0]`);
    its content is `m['content']` or `m.content`, or a name set from that, or a variable
    named `content` (a macro's parameter). A loop over content (through filters and
    slices: `for part in m.content | selectattr(...)`), or an item of it by number read as a part
    (`m.content[0].text`, `m['content'][0]['type']`; not by a string's method,
    `m.content[0].upper()`, which reads a character, and not an item of the content that a
    test of `content is string` guards, which takes a string whole: _guarded_reads), is a
    list read."""
    from aiollm.model.serving_tokenizer import compile_chat_template

    try:
        root = compile_chat_template(source).environment.parse(source)
    except (jinja2.TemplateError, RecursionError):  # jinja2 parses by recursion
        return "string"
    fmt = _read_as(root)
    # once per template (a trusted request's own too: debug, not to flood the log)
    log.debug("the chat template reads message content as %s (chat template content format "
             "%r; --chat-template-content-format overrides it)",
             "a list of parts" if fmt == "openai" else "a string", fmt)
    return fmt


def _read_as(root: nodes.Template) -> str:
    """detect_content_format's reading of the parsed template `root`."""
    messages = _names_set_from(root, {"messages"}, _derived)
    holders = {n.target.name for n in root.find_all(nodes.For)
               if isinstance(n.target, nodes.Name) and _derived(n.iter, messages)}
    holders |= {n.target.name for n in root.find_all(nodes.Assign)
                if isinstance(n.target, nodes.Name) and _item(n.node, messages)}
    holders = _names_set_from(root, holders, _derived)

    def is_content(node: nodes.Node) -> bool:
        return _field(node, holders, "content") or _field(node, None, "content", messages)

    contents = _names_set_from(root, {"content"},
                               lambda value, names: _derived(value, names, is_content))
    for loop in root.find_all(nodes.For):
        if _derived(loop.iter, contents, is_content):
            return "openai"
    guarded = _guarded_reads(root, lambda node: _derived(node, contents, is_content))
    for node in root.find_all((nodes.Getattr, nodes.Getitem)):
        read = node.node  # node is `.attr` or `['key']` of read: read a part?
        if id(read) in guarded:
            continue
        if isinstance(node, nodes.Getitem) and not _const(node.arg, str):
            continue
        # a string's own method (`content[0].upper()`) reads a character, not a part
        if isinstance(node, nodes.Getattr) and hasattr(str, node.attr):
            continue
        if (isinstance(read, nodes.Getitem) and _const(read.arg, int)
                and _derived(read.node, contents, is_content)):
            return "openai"
    return "string"


def _guarded_reads(root: nodes.Template, is_content) -> set[int]:
    """The ids of the items by number (Getitem nodes) that a test of `content is string`
    (`is not string`, `not (... is string)` too) guards, `is_content(node)` saying which
    nodes are a message's content: an item of the tested content in the test's branch and
    in the branches after it (an elif's, the else; an inline if's two), each where the
    test's outcome decides the content's (_known); and each item in a
    macro whose every call passes the tested content in such a branch, or is in a macro so
    guarded and passes on its parameter (given parts, the template would read only the
    first: vLLM reads loops alone). The content is the same read as `m.content` or
    `m['content']`, through a name set once to it, filters and slices (`m.content | list`)."""
    regions = []  # (nodes a test guards, the contents it tests)
    for node in root.find_all((nodes.If, nodes.CondExpr)):
        chain = [node, *node.elif_] if isinstance(node, nodes.If) else [node]
        for i, branch in enumerate(chain):
            # a branch is guarded where its test's outcome decides the content's test:
            # `c is string and x` false lets a string through to the branches after it
            if_true, if_false = (_known(branch.test, v, is_content) for v in (True, False))
            if isinstance(node, nodes.CondExpr):
                body, after = [node.expr1], [node.expr2] if node.expr2 is not None else []
            else:
                body, after = branch.body, [*chain[i + 1:], *node.else_]
            # the tested contents as written: same() reads them without their filters
            # (`m.content | trim is string`) and aliases
            if if_true:
                regions.append(([branch.test, *body], [t.node for t in if_true]))
            if if_false:
                regions.append((after, [t.node for t in if_false]))
                break
    sets = [n for n in root.find_all(nodes.Assign) if isinstance(n.target, nodes.Name)]
    names = [n.target.name for n in sets]  # a name set once stands for its value
    aliases = {n.target.name: n.node for n in sets if names.count(n.target.name) == 1}

    def same(a: Any, b: Any) -> bool:
        return _same(_bare(a, aliases), _bare(b, aliases))

    guarded = set()
    macros = {m.name: m for m in root.find_all(nodes.Macro)}
    done = set()  # the macros whose reads are guarded
    while True:
        for region, tested in regions:
            for part in region:
                for n in [part, *part.find_all((nodes.Getitem, nodes.Call))]:
                    if isinstance(n, nodes.Getitem) and any(same(n.node, t) for t in tested):
                        guarded.add(id(n))
                    elif isinstance(n, nodes.Call) and any(
                            same(a, t) for t in tested
                            for a in [*n.args, *(k.value for k in n.kwargs)]):
                        guarded.add(id(n))
        calls = {}  # a macro's name: whether each of its calls is guarded
        for call in root.find_all(nodes.Call):
            if isinstance(call.node, nodes.Name):
                calls.setdefault(call.node.name, []).append(id(call) in guarded)
        new = [m for name, m in macros.items() if name not in done
               and calls.get(name) and all(calls[name])]
        if not new:
            break
        for macro in new:
            done.add(macro.name)
            guarded |= {id(n) for n in macro.find_all(nodes.Getitem)}
            # a guarded macro's parameters hold tested content: its calls passing them on
            # (a macro that calls another) are guarded too
            regions.append((macro.body, [nodes.Name(a.name, "load") for a in macro.args]))
    return guarded


def _bare(node: Any, aliases: dict[str, Any]) -> Any:
    """`node` without its filters, tests and slices (`m.content | list`, `c[1:]`), a name of
    `aliases` replaced by the value it was set to (`c` of `{% set c = m.content %}`),
    through names set from names."""
    for _ in range(len(aliases) + 1):
        while True:
            if isinstance(node, (nodes.Filter, nodes.Test)) and node.node is not None:
                node = node.node
            elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
                node = node.node
            else:
                break
        if not (isinstance(node, nodes.Name) and node.name in aliases):
            break
        node = aliases[node.name]
    return node


def _same(a: Any, b: Any) -> bool:
    """Whether the expressions `a` and `b` read the same value: equal nodes, a field read
    as `x.key` or `x['key']` alike (`m.content`, `m['content']`)."""
    keys = []
    for node in (a, b):
        if isinstance(node, nodes.Getattr):
            keys.append((node.attr, node.node))
        elif isinstance(node, nodes.Getitem) and _const(node.arg, str):
            keys.append((node.arg.value, node.node))
    if len(keys) == 2:
        return keys[0][0] == keys[1][0] and _same(keys[0][1], keys[1][1])
    return a == b


def _known(test: nodes.Node, value: bool, is_content) -> list[nodes.Test]:
    """The tests of content (as `is_content` says) `is string` in `test` whose outcome
    `test` being `value` decides (`not`, `and`, `or` read as logic: `c is string and x`
    being false decides nothing)."""
    if isinstance(test, nodes.Test) and test.name == "string" and is_content(test.node):
        return [test]
    if isinstance(test, nodes.Not):
        return _known(test.node, not value, is_content)
    if isinstance(test, (nodes.And, nodes.Or)):
        left, right = (_known(t, value, is_content) for t in (test.left, test.right))
        if isinstance(test, nodes.And) == value:  # each side has the outcome `value`
            return left + right
        return left + right if left and right else []  # either side may have it
    return []


def _const(node: Any, kind: type) -> bool:
    return (isinstance(node, nodes.Const) and isinstance(node.value, kind)
            and not isinstance(node.value, bool))


def _derived(node: Any, names: set[str], also=None) -> bool:
    """Whether `node` is one of `names` (a variable read), or what `also` accepts, or either
    through filters, tests and slices (`messages | selectattr(...)`, `messages[1:]`)."""
    while True:
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in names:
            return True
        if also is not None and also(node):
            return True
        if isinstance(node, (nodes.Filter, nodes.Test)) and node.node is not None:
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
            node = node.node
        else:
            return False


def _item(node: Any, names: set[str]) -> bool:
    """Whether `node` is an item by number of one of `names` (`messages[0]`, `msgs[-1]`)."""
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Neg):
        return _const(node.arg.node, int) and _derived(node.node, names)
    return (isinstance(node, nodes.Getitem) and _const(node.arg, int)
            and _derived(node.node, names))


def _field(node: Any, holders: set[str] | None, key: str, lists: set[str] = frozenset()
           ) -> bool:
    """Whether `node` reads `key` (`x[key]` or `x.key`) of a name in `holders`, or (holders
    None) of an item by number of one of `lists` (`messages[0]['content']`)."""
    if isinstance(node, nodes.Getitem) and _const(node.arg, str):
        named = node.arg.value == key
    elif isinstance(node, nodes.Getattr):
        named = node.attr == key
    else:
        return False
    if not named:
        return False
    if holders is None:
        return _item(node.node, lists)
    return _derived(node.node, holders)


def _names_set_from(root: Any, names: set[str], derived) -> set[str]:
    """`names` and every variable set (`{% set x = ... %}`) from one of them, as
    `derived(value, names)` says, to a fixed point (`a = messages; b = a[1:]`)."""
    names = set(names)
    assigns = [n for n in root.find_all(nodes.Assign)
               if isinstance(n.target, nodes.Name)]
    grew = True
    while grew:
        grew = False
        for n in assigns:
            if n.target.name not in names and derived(n.node, names):
                names.add(n.target.name)
                grew = True
    return names

