"""The checks of `aiollm serve`'s flags after parsing: each bad value is a usage error (exit 2,
serve's usage line) naming the flag as the user typed it, before anything loads; so is what
the flags give together (EngineConfig's checks, CORS options without --allowed-origins)."""

from __future__ import annotations

import argparse
import logging
import os
import re
from typing import TYPE_CHECKING

from aiollm import vllm_compilation, vllm_graph_flags, vllm_structured_config
from aiollm.cli import config_file, sglang_flags
from aiollm.cli.log_config import rewrite_flags
from aiollm.cli.serve_parser import ENGINE_OPTIONS
from aiollm.config import EngineConfig

if TYPE_CHECKING:
    from aiollm.api.cors import CorsOptions

log = logging.getLogger(__name__)


def checked_config(parser: argparse.ArgumentParser,
                   args: argparse.Namespace) -> tuple[EngineConfig, tuple[str, ...] | None]:
    """The EngineConfig the flags give (its chat template read, once) and the API keys
    (--api-key's, else $AIOLLM_API_KEY, else vLLM's $VLLM_API_KEY; None: no auth), once
    every check passed; parser.error (SystemExit 2) for the first that fails. Each vLLM
    flag given that has no effect (vllm_flags.py) is logged as such once they pass, and so
    is what vLLM's -O, -cc and --structured-outputs-config keys do."""
    names = args.served_model_name or []
    options = {name: getattr(args, name) for name in ENGINE_OPTIONS}
    graphs = _graph_options(parser, args, options)
    mode_said = vllm_graph_flags.performance_mode(args, options)
    spelt = getattr(parser, "typed_spellings", {})  # flag_spelling.ArgumentParser's
    try:
        structured_said = vllm_structured_config.applied(args, options, spelt)
    except ValueError as e:
        parser.error(str(e))
    options["served_model_name"] = names[0] if names else None  # the name reported
    if args.chat_template is not None:  # as vLLM's flag: a template's \n is a newline
        try:
            options["chat_template"] = decode_template_escapes(args.chat_template)
        except ValueError as e:
            parser.error(f"argument --chat-template: {e}")
    try:
        config = EngineConfig(model=args.model, **options)  # a usage error, before loading
    except ValueError as e:
        parser.error(_naming_flag(str(e), args))
    _check_served_names(parser, args.model, names)
    _check_load_format(parser, args)
    for flag, misfit in getattr(args, "model_checks", ()):  # -q gguf with an HF directory
        if (why := misfit(args.model)) is not None:
            parser.error(f"argument {flag}: {why}")
    # a value of no effect that its engine takes only beside others' (flag_kinds.Ignored)
    for flag, value, misfit in getattr(args, "config_checks", {}).values():
        if (why := misfit(value, config)) is not None:
            parser.error(f"argument {flag}: {rewrite_flags(why, typed_flags(args))}")
    if not args.shutdown_timeout >= 0:  # NaN too: it aborted every request at once
        parser.error(f"argument --shutdown-timeout: must be >= 0, got {args.shutdown_timeout}")
    if args.tokenizer is not None:  # else found only once the weights have loaded
        from aiollm.model.tokenizer_files import check_tokenizer_path

        try:
            check_tokenizer_path(args.tokenizer)
        except FileNotFoundError as e:  # named as typed: SGLang's --tokenizer-path too
            typed = getattr(args, "flags_typed", {}).get("tokenizer", "--tokenizer")
            parser.error(f"argument {typed}: {e}")
    api_keys = _api_keys(parser, args)
    if not args.response_role.strip():  # else refused only after loading, by create_app
        parser.error("argument --response-role: must not be empty (default: assistant)")
    if args.max_stored_responses < 0:  # else refused only after loading, by create_app
        parser.error(f"argument --max-stored-responses: must be >= 0 (0 keeps no response), "
                     f"got {args.max_stored_responses}")
    if args.max_stored_response_bytes < 0:
        parser.error("argument --max-stored-response-bytes: must be >= 0 (0 keeps no "
                     f"response), got {args.max_stored_response_bytes}")
    if not args.host.strip():  # failed only after loading: "Name or service not known"
        parser.error("argument --host: must not be empty (0.0.0.0 or :: listens on every "
                     "interface)")
    if not 0 <= args.port <= 65535:  # the OS would take 70000 as 4464, -1 only after loading
        parser.error(f"argument --port: must be in [0, 65535], got {args.port}")
    for flag, why in getattr(args, "no_effect", ()):
        name, takes, value = flag.partition(" ")  # the flag as typed (--nccl_port), its value
        shown = spelt.get(name, name) + (f" {value or repr(value)}" if takes else "")
        log.info("%s has no effect: %s", shown, why)  # an empty value as '', not a switch's
    for line in (*(graphs.said if graphs is not None else ()), *structured_said):
        log.info("%s", line)
    if mode_said is not None:
        log.info("%s", mode_said)
    if (sizes_said := sglang_flags.graph_sizes_said(args, config.cuda_graph)) is not None:
        log.info("%s", sizes_said)
    if config.grammar_backend == "none":  # LightLLM's default: said, as it refuses requests
        typed = getattr(args, "flags_typed", {}).get("grammar_backend", "--grammar-backend")
        log.info("%s none: structured output is off; a request that asks for a grammar "
                 "(a response format, tool_choice \"required\"...) gets 400 naming its field",
                 spelt.get(typed, typed))
    return config, api_keys


def _graph_options(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   options: dict) -> vllm_compilation.GraphSettings | None:
    """vLLM's -O and --compilation-config given (None: neither) as aiollm's `options`: no
    CUDA graphs where they leave vLLM with none (--enforce-eager wins over them, as in
    vLLM), their largest graph as --cuda-graph-max-batch. parser.error where
    --cuda-graph-max-batch is given too, with another size, or where -cc's two largest
    sizes disagree."""
    try:
        graphs = vllm_compilation.applied(args)
    except ValueError as e:  # -cc's keys, or -O's as vLLM's older releases took them
        if str(e).startswith("argument "):  # a size flag's (vllm_graph_flags.py)
            parser.error(str(e))
        names = ("-O/--optimization-level" if args.vllm_graphs["config"][0].startswith("-O")
                 or args.vllm_graphs["config"][0] == "--optimization-level"
                 else "-cc/--compilation-config")
        parser.error(f"argument {names}: {e}")
    if graphs is None:
        return None
    if graphs.eager:
        options["cuda_graph"] = False
    if graphs.max_batch is not None:
        typed = getattr(args, "flags_typed", {}).get("cuda_graph_max_batch")
        if typed is not None and args.cuda_graph_max_batch != graphs.max_batch:
            parser.error(f"argument {typed}: {args.cuda_graph_max_batch} and "
                         f"{graphs.max_batch_from}'s largest CUDA graph, {graphs.max_batch}, "
                         "disagree: give one")
        options["cuda_graph_max_batch"] = graphs.max_batch
    return graphs


def decode_template_escapes(value: str) -> str:
    """--chat-template's value with its backslash escapes decoded (\\n a newline, \\t a
    tab, \\u00e9...) when it is a template given as text, as vLLM's --chat-template decodes
    it (a shell or a Helm value rarely holds a real newline); the value as it is when a path
    exists there (a file's text is its own, and a pipe is not opened here) or it holds no
    "{", "}" or newline (a path, for EngineConfig's check to report). Characters beyond
    ASCII stay as typed. Raises ValueError for an escape that does not decode."""
    if os.path.exists(value) or not any(c in value for c in "{}\n"):
        return value
    try:  # non-Latin-1 characters as \\u escapes first, so that they come back unchanged
        return value.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise ValueError(f"a backslash escape does not decode ({e.reason} at character "
                         f"{e.start}); write a backslash as \\\\") from None


def _api_keys(parser: argparse.ArgumentParser,
              args: argparse.Namespace) -> tuple[str, ...] | None:
    """The keys a request may send (None: no auth): --api-key's, else the first variable
    set, one key (vLLM's VLLM_API_KEY is read too: a deployment that set it for vLLM was
    served with no auth; like vLLM, the flag's keys replace it). parser.error for an empty
    key, one with whitespace around it, and a MODEL the flag took for a key."""
    if args.api_key is None:
        source = next((n for n in ("AIOLLM_API_KEY", "VLLM_API_KEY") if os.environ.get(n)),
                      None)
        if source is None:
            return None
        keys = (os.environ[source],)
    else:
        source, keys = "argument --api-key", tuple(args.api_key)
        if not all(key.strip() for key in keys):
            # `--api-key "$KEY"` with KEY unset served every endpoint without auth, silently
            parser.error("argument --api-key: must not be empty (leave the flag out to serve "
                         "without auth)")
        if (args.model is None and len(keys) > 1 and _model_shaped(keys[-1])
                and not config_file.gave(parser, "--api-key")):
            # the flag takes every word after it: `--api-key K DIR` (or a hub's org/name, as
            # vLLM is given one) served the default model with it as a second key. Keys are
            # not printed: they are secrets
            parser.error("argument --api-key: it takes every word after it, so the MODEL "
                         "after the keys (a path or a hub's org/name) was read as a key: put "
                         "MODEL "
                         f"before the flag or give it with --model{_default_model_flag()}")
    if any(key != key.strip() for key in keys):
        # a client's key arrives without them (HTTP trims header values): every request
        # was refused 401, silently (a key file's newline, a pasted space). Not printed:
        # it is a secret
        parser.error(f"{source}: the key must not begin or end with whitespace (a "
                     "newline from a key file?)")
    return keys


# a model hub's repository name (org/name), as a vLLM command line gives MODEL
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _model_shaped(word: str) -> bool:
    """Whether `word`, the last of --api-key's, is more likely the MODEL typed after the
    keys than a key: a path that exists, one written as a path (/, ./, ../, ~; a .gguf
    file) even if mistyped, or a hub's org/name (refused later, as a MODEL, with how to
    download it). A key of base64 ("+", "=") or with two "/" not so written is not."""
    return (os.path.exists(word) or word.startswith(("/", "./", "../", "~"))
            or word.endswith(".gguf") or _HUB_NAME.fullmatch(word) is not None)


def cors_options(parser: argparse.ArgumentParser,
                 args: argparse.Namespace) -> CorsOptions | None:
    """The CORS options the flags give; None (CORS off) without --allowed-origins."""
    from aiollm.api.cors import CorsOptions

    if args.allowed_origins is None:
        for flag in ("allowed_methods", "allowed_headers", "allow_credentials"):
            if getattr(args, flag):  # alone it would do nothing, silently
                parser.error(f"argument --{flag.replace('_', '-')}: needs --allowed-origins "
                             "(without it CORS is off)")
        return None
    given = {"allowed_methods": args.allowed_methods, "allowed_headers": args.allowed_headers}
    try:  # the parser has checked the lists; what is left is an origin's form
        return CorsOptions(tuple(args.allowed_origins), allow_credentials=args.allow_credentials,
                           **{k: tuple(v) for k, v in given.items() if v is not None})
    except ValueError as e:
        parser.error(f"argument --allowed-origins: {e}")


def typed_flags(args: argparse.Namespace) -> dict[str, str]:
    """aiollm's flag of each option the user typed otherwise: the flag as typed (SGLang's
    --context-length for --max-model-len, LightLLM's --max_total_token_num for --kv-tokens;
    an option's own flag spelt with underscores, --mem_fraction for --mem-fraction)."""
    # the spelling typed, where argparse read it dashed (flag_spelling.ArgumentParser's)
    spelt = getattr(getattr(args, "command_parser", None), "typed_spellings", {})
    flags = {f"--{name.replace('_', '-')}": spelt.get(typed, typed)
             for name, typed in getattr(args, "flags_typed", {}).items()}
    for read, typed in spelt.items():  # aiollm's own flags, typed with underscores
        flags.setdefault(read, typed)
    return flags


def _naming_flag(message: str, args: argparse.Namespace) -> str:
    """EngineConfig's message about an option ("table_capacity must be ...") led by the
    option's flag as the user typed it (an alias's spelling too), as argparse names the
    flag of a value it refuses; the flags it names in parentheses, as typed too."""
    typed = getattr(args, "flags_typed", {})

    def flag(name: str) -> str:
        return typed.get(name) or "--" + name.replace("_", "-")

    if message.startswith("give one of "):  # two options that conflict: both by their flags
        return re.sub(r"\b[a-z]+(?:_[a-z]+)+\b",
                      lambda m: flag(m[0]) if m[0] in ENGINE_OPTIONS else m[0], message)
    message = rewrite_flags(message, typed_flags(args))  # the flags named in passing
    name = next((n for n in ENGINE_OPTIONS if message.startswith(n + " ")), None)
    if name is None:
        return message
    return f"argument {flag(name)}: {message}"


def _check_load_format(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--load-format safetensors or gguf against what MODEL is, before anything loads; a
    missing MODEL is left for the load to report, as without the flag."""
    from aiollm.model.paths import check_load_format

    try:
        check_load_format(args.load_format, args.model)
    except FileNotFoundError:
        pass
    except ValueError as e:
        parser.error(f"argument --load-format: {e}")


def _check_served_names(parser: argparse.ArgumentParser, model: str | None,
                        names: list[str]) -> None:
    """--served-model-name's names: none empty (EngineConfig checks the first), and not a
    MODEL taken for a name: the flag takes every word after it, so `--served-model-name A
    DIR` read DIR as a second name and served the default model under both (not so
    for the names of --config's file)."""
    for name in names[1:]:
        if not name.strip():
            parser.error(f"argument --served-model-name: a name must not be empty, got "
                         f"{name!r}")
    if model is None and len(names) > 1 and not config_file.gave(parser,
                                                                   "--served-model-name"):
        parser.error(f"argument --served-model-name: it takes every word after it, so "
                     f"{names[-1]!r} was read as a name and no MODEL was given: put MODEL "
                     f"before the flag or give it with --model{_default_model_flag()}")


def _default_model_flag() -> str:
    """How to name the default model on the command line, for a usage error; '' without it."""
    from aiollm.model.paths import default_model_path

    try:
        return f" (the default model: --model {default_model_path()})"
    except FileNotFoundError:
        return ""
