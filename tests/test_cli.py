"""`aiollm serve` as users run it: the console script in a subprocess, on a free port. Usage
errors, which end before anything loads, run through cli.main (what the console script runs)
in this process (usage_errors); the runs that end at the model's load, one after another in
one process (serve_each)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import aiohttp
import openai
import pytest
from serve_log import logged_base

AIOLLM = str(Path(sys.executable).with_name("aiollm"))
KEY = "test-key-123"


def test_serve_help():
    out = subprocess.run([AIOLLM, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for opt in ("--host", "--port", "--dtype", "--device", "--max-model-len", "--kv-tokens",
                "--kv-memory-fraction", "--max-running-requests", "--max-prefill-tokens",
                "--served-model-name", "--api-key", "--load-format", "--log-level",
                "--scheduler", "--max-waiting-requests", "--queue-timeout", "--no-cuda-graph",
                "--shutdown-timeout", "--table-capacity", "--cuda-graph-max-batch",
                "--cuda-graph-max-bs", "--grammar-compile-timeout", "--grammar-backend",
                "--allowed-origins",
                "--allowed-methods", "--allowed-headers", "--allow-credentials", "MODEL"):
        assert opt in out.stdout
    # every endpoint it serves: test_api_ops.test_serve_help_names_every_endpoint
    # one default per option, and none that reads as the opposite of the truth
    assert "(default: None)" not in out.stdout and "(default: True)" not in out.stdout
    for line in out.stdout.replace("\n", " ").split("  --")[1:]:
        assert line.count("default") <= 1, line


def test_version_flag_prints_the_version():
    """`aiollm --version` (vLLM's `vllm --version`, `-v`) was a usage error ("the following
    arguments are required: command"), exit 2: the version was only to be had from a
    running server's /version."""
    import aiollm

    for flag in ("--version", "-v"):
        out = subprocess.run([AIOLLM, flag], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == aiollm.__version__


def test_version_is_the_installed_distributions(tmp_path):
    """The version printed (and served at /version) is the installed package's metadata, as
    vLLM's `importlib.metadata.version("vllm")`: it was a literal in aiollm/__init__.py, a
    copy of pyproject.toml's that a release could bump without it. A distribution's metadata
    found first on the path (9.9.9 here) is the one printed."""
    dist = tmp_path / "aiollm-9.9.9.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aiollm\nVersion: 9.9.9\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([AIOLLM, "--version"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "9.9.9"


def test_what_cli_py_offered_importers_is_still_there():
    """aiollm/cli.py became the package aiollm/cli/: the names its importers used (the
    console script's main, the parser, the logging set-up and its logger names) still
    import from aiollm.cli."""
    import aiollm.cli as cli
    from aiollm.engine.prefix_cache import stats_log

    assert cli.STATS_LOGGER == stats_log.name
    for name in ("LOG_FORMAT", "build_parser", "configure_logging", "main"):
        assert callable(getattr(cli, name)) or isinstance(getattr(cli, name), str), name


def test_python_m_aiollm_is_the_command():
    """`python -m aiollm serve` failed ('aiollm' is a package and cannot be directly
    executed): the way to start a server whose scripts are not on PATH."""
    out = subprocess.run([sys.executable, "-m", "aiollm", "serve", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--max-model-len" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "aiollm", "serve", "--port", "-1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "argument --port: must be in [0, 65535]" in out.stderr


def usage_errors(arg_lists: list[list[str]], capsys, monkeypatch
                 ) -> list[tuple[int | str | None, str]]:
    """`aiollm serve` with each of arg_lists, run in this process by cli.main (what the
    console script runs; a usage error exits before anything loads, so a process each cost
    ~0.3 s of CPU for Python's start-up alone): (exit status, stderr) of each, in order. One
    whose check let its bad value through fails the test as it reaches the model's load
    (Engine.from_config), where a process of its own loaded, or served."""
    from aiollm.cli import main
    from aiollm.engine import Engine

    def loads(config):
        raise AssertionError(f"it went on to load the model: {config}")

    monkeypatch.setattr(Engine, "from_config", loads)
    outs = []
    for args in arg_lists:
        with pytest.raises(SystemExit) as e:
            main(["serve", *args])
        outs.append((e.value.code, capsys.readouterr().err))
    return outs


def test_serve_rejects_bad_options(capsys, monkeypatch, refused_at_load):
    """Each bad option is a usage error (exit 2) that says what is wrong, before anything
    loads; a --device that is no CUDA GPU of this process fails `aiollm serve` with exit 1
    and one line, no traceback."""
    checks = [  # (args, exit status, what stderr says)
        (["--scheduler", "fifo"], 2, ["--scheduler"]),
        (["--max-running-requests", "0"], 2, ["max_running_requests"])]
    # 70000 served on port 4464; -1 failed only after loading; the error's form is every
    # other bad value's, "argument --port: ..." (it lacked the prefix)
    checks += [(["--port", port], 2, [f"argument --port: must be in [0, 65535], got {port}"])
               for port in ("70000", "-1", "99999")]
    # NaN passed every check: no queue timeout at all, and a shutdown that aborted at once
    checks += [([opt, "nan"], 2, [says]) for opt, says in (
        ("--queue-timeout", "argument --queue-timeout: queue_timeout must be"),
        ("--shutdown-timeout", "argument --shutdown-timeout: must be >= 0"))]
    # each names its flag as typed (an alias too); 2**31 table slots passed every check,
    # then failed after loading
    checks += [(args, 2, [f"argument {args[0]}", says])
               for args, says in ((["--table-capacity", "0"], "must be an integer >= 1"),
                                  (["--table-capacity", str(2**31)], "at most 1048576"),
                                  (["--table-capacity", "1e3"], "invalid int value"),
                                  (["--cuda-graph-max-batch", "0"], "must be an integer >= 1"),
                                  (["--cuda-graph-max-bs", "-3"], "must be an integer >= 1"),
                                  (["--grammar-compile-timeout", "0"],
                                   "finite number of seconds > 0"),
                                  (["--grammar-compile-timeout", "nan"],
                                   "finite number of seconds > 0"),
                                  (["--max-running-requests", "0"], "must be an integer >= 1"))]
    # started with a warning, serving at most 100 tokens a request; vLLM refuses it
    checks += [(["--max-model-len", "4096", "--kv-tokens", "100"], 2,
                ["argument --kv-tokens: kv_tokens 100", "max_model_len 4096",
                 "--max-model-len"])]
    # CORS: lists as JSON or comma-separated; the other options alone would do nothing
    checks += [(args, 2, [says]) for args, says in (
        (["--allowed-methods", "GET"], "argument --allowed-methods: needs --allowed-origins"),
        (["--allow-credentials"], "argument --allow-credentials: needs --allowed-origins"),
        (["--allowed-origins", "[1]"], "must be a list of strings"),
        (["--allowed-origins", "a,,b"], "without empty names"),
        (["--allowed-origins", "http://localhost:3000/"], "not an origin"))]
    # both ended in a traceback (torch's RuntimeError; "Torch not compiled with CUDA enabled")
    checks += [(["--device", "tpu"], 2, ["device must be auto, cpu, cuda or cuda:N"])]
    for (args, status, says), (code, err) in zip(
            checks, usage_errors([c[0] for c in checks], capsys, monkeypatch), strict=True):
        assert code == status, (args, code, err)
        assert all(s in err for s in says), (args, err)
        assert "Traceback" not in err
    code, err, *_ = refused_at_load["cuda:99"]  # (a check at the model's load)
    assert code == 1, err
    assert "device cuda:99 is not available" in err and "Traceback" not in err


def test_each_bad_option_names_its_own_flag(capsys, monkeypatch):
    """--nnodes 0 was reported as --tensor-parallel-size's, --scheduler-blind-cap 0 as
    "blind_cap" (no flag), --past-future-estimator by the scheduler's own name; an empty
    --host and --served-model-name were taken (the host failed after loading, "Name or
    service not known"), and --kv-tokens 2**31 (past the int32 slot ids) and a rendezvous
    port past 65535 ("Port out of range", with -tp 2 after its ranks started) only after
    loading; a --scheduler-blind-cap past int64 failed every step; an empty --api-key
    (`--api-key "$KEY"`, KEY unset) served without auth. Each is a usage error now (exit
    2, no traceback) naming its flag."""
    checks = ((["--nnodes", "0"], "argument --nnodes: nnodes must be >= 1"),
              (["--tensor-parallel-size", "0"],
               "argument --tensor-parallel-size: tensor_parallel_size must be >= 1"),
              (["--scheduler-blind-cap", "0"], "argument --scheduler-blind-cap: "
               "scheduler_blind_cap must be an integer in [1, 2147483646]"),
              # past int64, it failed every model step ("Python int too large to convert
              # to C long"), each request a 500, on a server that had started
              (["--scheduler-blind-cap", str(10**20)], "argument --scheduler-blind-cap: "
               "scheduler_blind_cap must be an integer in [1, 2147483646]"),
              (["--kv-tokens", str(2**31)], "argument --kv-tokens: kv_tokens must "
               "be in [1, 2147483646]"),
              (["--served-model-name", " "], "argument --served-model-name: "
               "served_model_name must not be empty"),
              (["--model_name", ""], "argument --model_name: served_model_name must not "
               "be empty (left out, the model's own name is served)"),
              (["--host", ""], "argument --host: must not be empty"),
              (["--api-key", " "], "argument --api-key: must not be empty"),
              (["--dist-init-addr", "127.0.0.1:99999"],
               "argument --dist-init-addr: dist_init_addr must be HOST:PORT with a "
               "port in [1, 65535]"))
    for (args, says), (code, err) in zip(
            checks, usage_errors([args for args, _ in checks], capsys, monkeypatch),
            strict=True):
        assert code == 2 and says in err, (args, err)
        assert "Traceback" not in err
    from aiollm.config import EngineConfig

    with pytest.raises(ValueError, match="past_future_estimator must be one of"):
        EngineConfig(past_future_estimator="median")


def test_an_api_key_with_whitespace_around_it_is_a_usage_error():
    """A key that begins or ends with whitespace (AIOLLM_API_KEY from a key file with its
    newline, a pasted space) was taken as it was, while a client's key arrives without it
    (HTTP trims header values): every request got 401, silently. A usage error (exit 2,
    before loading) names the flag or the variable, and not the key (a secret)."""
    clean = {k: v for k, v in os.environ.items() if k != "AIOLLM_API_KEY"}
    for args, env, says in ((["--api-key", "secret "], clean, "argument --api-key: the key "
                             "must not begin or end with whitespace"),
                            ([], {**clean, "AIOLLM_API_KEY": "secret\n"},
                             "AIOLLM_API_KEY: the key must not begin or end with whitespace")):
        out = subprocess.run([AIOLLM, "serve", *args], capture_output=True, text=True,
                             timeout=60, env=env)
        assert out.returncode == 2 and says in out.stderr, (args, out.stderr)
        assert "secret" not in out.stderr and "Traceback" not in out.stderr


def test_allowed_headers_help_names_every_header_always_allowed():
    """--allowed-headers' help named Content-Type and Accept as always allowed; the server
    (and the README) always allow the four CORS-safelisted headers."""
    from aiollm.api.cors import _SAFELISTED_HEADERS
    from aiollm.cli import build_parser

    serve = build_parser().parse_args(["serve"]).command_parser
    action = next(a for a in serve._actions if "--allowed-headers" in a.option_strings)
    for header in _SAFELISTED_HEADERS:
        assert header in action.help, header


def test_checks_after_parsing_report_as_serve_usage_errors(capsys):
    """A bad --port, say, printed the top-level usage ("usage: aiollm [-h] {serve} ...",
    "aiollm: error: ...") where argparse's own errors of the same command (--dtype fp8)
    print serve's usage and "aiollm serve: error: ..."."""
    from aiollm.cli import main

    gc.enable()  # the default, whatever ran before in this process
    for args in (["--dtype", "fp8"], ["--port", "70000"], ["--kv-tokens", "0"],
                 ["--allowed-methods", "GET"]):
        with pytest.raises(SystemExit) as e:
            main(["serve", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2, args
        assert err.startswith("usage: aiollm serve ") and "\naiollm serve: error: " in err, err
        # serve.run turns the collector off while it loads: a usage error after that (the
        # CORS options') left it off in the caller's process
        assert gc.isenabled(), args


SERVE_USAGE = "usage: aiollm serve [-h] [MODEL] [options]"


@pytest.mark.parametrize("args, error", [
    (["--port", "x"], "argument --port: invalid int value: 'x'"),  # argparse's own
    (["--port", "70000"], "argument --port: must be in [0, 65535], got 70000"),  # a check after it
    (["--quantization", "awq"], "argument -q/--quantization: quantized"),  # a vLLM flag's
    # a flag aiollm lacks: said by serve, not by the top-level parser ("aiollm: error")
    (["M", "--no-such-flag", "1"], "unrecognized arguments: --no-such-flag 1"),
])
def test_a_usage_error_is_one_usage_line_and_the_error(args, error, capsys):
    """A bad argument printed argparse's whole synopsis of serve's ~100 flags (~50 lines)
    above the one line that says what is wrong; now one short usage line and the error, as
    `vllm serve` answers (exit 2, as argparse). --help still lists every flag."""
    from aiollm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0] == SERVE_USAGE, err
    assert err[1].startswith(f"aiollm serve: error: {error}"), err
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aiollm serve [-h] [--model MODEL] [--config FILE] "
                          "[--host HOST]"), out[:200]
    assert "--eplb-config JSON" in out and len(out.splitlines()) > 200


def test_the_commands_usage_error_is_unchanged(capsys):
    from aiollm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run"])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "usage: aiollm [-h] [-v] {serve} ...", err


def test_tokenizer_directory_without_a_tokenizer_is_a_usage_error(tmp_path, capsys):
    """A --tokenizer directory that exists but holds no tokenizer failed once the weights had
    loaded, exit code 1, its message calling it the model path or naming no flag. It is a
    usage error before anything loads (no "loaded" line), naming the flag, the directory
    and the files it lacks; so are a directory holding only a model's config.json and a
    file that is not a .gguf."""
    from aiollm.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run([AIOLLM, "serve", "--device", "cpu", "--port", "0", "--tokenizer",
                          str(empty)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("usage: aiollm serve ") and "loaded" not in out.stderr, out.stderr
    assert (f"aiollm serve: error: argument --tokenizer: {str(empty)!r} is a directory "
            "without a tokenizer: it has none of tokenizer.json, tokenizer_config.json") \
        in out.stderr, out.stderr
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text("{}")
    text = tmp_path / "tokenizer.txt"
    text.write_text("hi")
    for path, says in ((config_only, "is a directory without a tokenizer"),
                       (text, "is a file but not a GGUF file")):
        with pytest.raises(SystemExit) as e:
            main(["serve", "--device", "cpu", "--tokenizer", str(path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --tokenizer: " in err and str(path) in err, err
        assert says in err, err


def test_tokenizer_gguf_that_is_not_gguf_is_a_usage_error(tmp_path, capsys):
    """A --tokenizer .gguf file that is not one (empty, or an error page saved by a failed
    download), alone or as the one .gguf of a directory, passed the check and failed once
    the weights had loaded, exit code 1, as "cannot mmap an empty file": neither the flag
    nor the path named. It is a usage error naming both; the real GGUF passes the check."""
    from aiollm.cli import main
    from aiollm.model import default_model_path
    from aiollm.model.tokenizer_files import check_tokenizer_path

    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    page = tmp_path / "page"
    page.mkdir()
    (page / "model.gguf").write_text("<html>Not Found</html>")
    for path, says in ((empty, "is not a GGUF file: it is empty"),
                       (page, "is not a GGUF file: it does not start with GGUF's magic")):
        with pytest.raises(SystemExit) as e:
            main(["serve", "--device", "cpu", "--tokenizer", str(path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --tokenizer: " in err and str(path) in err, err
        assert says in err and "loaded" not in err, err
    check_tokenizer_path(default_model_path())


_CASE_END = "-- aiollm serve returned "


def serve_each(arg_lists: list[list[str]], timeout: float = 300
               ) -> list[tuple[int | str | None, str]]:
    """`aiollm serve` with each of arg_lists, one after another in one Python process, each
    run as the console script runs it (cli.main: its return value the exit status, a
    SystemExit's code; an exception a traceback on stderr and status 1, as Python's exit
    gives them): (exit status, stderr) of each, in order. For runs that end at the model's
    load: a process of their own cost each ~2 s of CPU to import torch & co. (one that
    served would hold the process to `timeout`, failing every run)."""
    script = ("import json, sys, traceback\n"
              "from aiollm.cli import main\n"
              "for args in json.loads(sys.argv[1]):\n"
              "    try:\n"
              "        code = main(['serve', *args])\n"
              "    except SystemExit as e:\n"
              "        code = e.code\n"
              "    except BaseException:\n"
              "        traceback.print_exc()\n"
              "        code = 1\n"
              f"    print({_CASE_END!r}, code, file=sys.stderr, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(arg_lists)],
                         capture_output=True, text=True, timeout=timeout)
    *runs, rest = out.stderr.split(_CASE_END)
    assert out.returncode == 0 and len(runs) == len(arg_lists), out.stderr
    # each run's stderr, and its status at the head of the next part
    errs = [runs[0]] + [r.split("\n", 1)[1] for r in runs[1:]]
    codes = [r.split("\n", 1)[0].strip() for r in [*runs[1:], rest]]
    return [(int(c) if c.lstrip("-").isdigit() else c, e) for c, e in zip(codes, errs)]


LOAD = ["--load-format", "dummy", "--port", "0"]

# the models of the tests below refused as they load: a Mixtral config transformers 5 refuses
# while reading it (a field of the wrong type; a rope type without its parameters), and a
# generation_config.json that is not an object
MOE_EDITS = {"field-type": ("config.json", {"num_experts_per_tok": None},
                            "Field 'num_experts_per_tok' expected int, got NoneType"),
             "rope-keys": ("config.json", {"rope_parameters": {"rope_type": "yarn",
                                                               "rope_theta": 1e4}},
                           "Missing required keys in `rope_parameters` for 'rope_type'='yarn'"),
             "generation-config": ("generation_config.json", [2],
                                   "generation_config.json holds a JSON list, not an object")}


class ServeRun(NamedTuple):
    """What one run of serve_each gave (status, stderr), and what it was given that its
    test names (a model directory, a port)."""
    status: int | str | None
    stderr: str
    model: Path | None = None
    port: int | None = None


@pytest.fixture(scope="module")
def refused_at_load(tmp_path_factory) -> dict[str, ServeRun]:
    """Each `aiollm serve` run the tests below check, by name, all run by serve_each in one
    process: a port another socket holds (first: no other run's log before its own),
    options the default model refuses (--max-model-len past its context, a KV pool past
    the memory), a GPU this process lacks, and the broken configs (unsupported: a partial
    rotary with a scaled rope, which transformers cannot run either; MOE_EDITS' names)."""
    from transformers import LlamaConfig, MixtralConfig

    models = {}
    models["unsupported"] = tmp_path_factory.mktemp("unsupported")
    LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, rope_parameters={
                    "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                    "original_max_position_embeddings": 64, "partial_rotary_factor": 0.5,
                }).save_pretrained(models["unsupported"])
    for name, (file, edit, _) in MOE_EDITS.items():
        models[name] = tmp_path_factory.mktemp(name)
        MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                      num_experts_per_tok=2, max_position_embeddings=64
                      ).save_pretrained(models[name])
        path = models[name] / file
        fields = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**fields, **edit} if isinstance(edit, dict) else edit))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runs = {"port-in-use": ["--port", str(port)],
                "max-model-len": ["--device", "cpu", *LOAD, "--max-model-len", "100000"],
                "kv-tokens": ["--device", "cpu", *LOAD, "--kv-tokens", "2000000000"],
                "cuda:99": ["--device", "cuda:99", "--port", "0"],
                **{name: [str(path), *LOAD] for name, path in models.items()}}
        outs = serve_each(list(runs.values()))
    return {name: ServeRun(*out, models.get(name), port if name == "port-in-use" else None)
            for name, out in zip(runs, outs)}


def test_values_the_model_refuses_name_their_flag(capsys, monkeypatch, refused_at_load):
    """A --tokenizer path that does not exist was found only once the weights had loaded;
    a --max-model-len past the model's context said so without the flag or what to set it
    to. The first is a usage error before anything loads; the second names the flag and
    the largest value."""
    [(code, err)] = usage_errors([["--tokenizer", "/nonexistent/tok"]], capsys, monkeypatch)
    assert code == 2 and "argument --tokenizer: '/nonexistent/tok' does not exist" in err, err
    code, err, *_ = refused_at_load["max-model-len"]
    assert code == 1 and "Traceback" not in err, err
    assert "set max_model_len (--max-model-len) to at most 8192" in err, err


def test_a_kv_pool_past_the_memory_names_kv_tokens(refused_at_load):
    """--kv-tokens 2000000000 on the CPU (1.4 TiB of KV for the default model) ended in a
    traceback of numpy's MemoryError after loading. It fails with one line naming
    --kv-tokens."""
    code, err, *_ = refused_at_load["kv-tokens"]
    assert code == 1 and "Traceback" not in err, err
    assert "KV pool of 2000000000 tokens" in err and "--kv-tokens" in err

def test_serve_refuses_an_unsupported_model_in_one_line(refused_at_load):
    """A config we refuse ends `aiollm serve` with its message, not a traceback (rope
    scaling raised NotImplementedError, which the CLI did not catch). (longrope, refused
    here before, is served now: a partial rotary with a scaled rope, which transformers
    cannot run either, stays refused.)"""
    code, err, *_ = refused_at_load["unsupported"]
    assert code == 1 and "Traceback" not in err, err
    assert "partial_rotary_factor 0.5 with rope scaling 'yarn'" in err


@pytest.mark.parametrize("case", MOE_EDITS)
def test_serve_refuses_a_broken_moe_config_in_one_line(refused_at_load, case):
    """A Mixtral config.json transformers 5 refuses while reading it (a field of the wrong
    type; a rope type without its parameters) and a generation_config.json that is not an
    object ended `aiollm serve` in a traceback (a StrictDataclass error, a KeyError, an
    AttributeError), not its one-line error naming the file and field."""
    file, _, says = MOE_EDITS[case]
    code, err, model, _ = refused_at_load[case]
    assert code == 1 and "Traceback" not in err, err
    assert f"{model / file}" in err and says in err, err


def test_a_port_in_use_fails_before_the_model_loads(refused_at_load):
    """A taken port was found only once the model had loaded (minutes for a large one), and
    the log then told of finishing in-flight requests that never were."""
    code, err, _, port = refused_at_load["port-in-use"]
    assert code == 1 and "Traceback" not in err, err
    assert f"('127.0.0.1', {port}): address already in use" in err, err
    assert "loaded" not in err and "in-flight" not in err, err


def test_serve_that_cannot_bind_leaves_no_signal_handler_and_names_the_host():
    """serve() on a port in use raised before the model loaded, but left its SIGINT and SIGTERM
    handlers on the caller's loop: a program that caught the OSError and went on could no
    longer be stopped by Ctrl-C (the handler set an event nobody waits on). A host that does
    not resolve was told as '[Errno -2] Name or service not known', naming no host."""
    from aiollm.api import create_app, serve
    from aiollm.engine import Engine

    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(OSError, match="address already in use"):
                await serve(create_app(Engine(None)), "127.0.0.1", taken.getsockname()[1])
        assert not loop.remove_signal_handler(signal.SIGINT)  # False: none was left
        assert not loop.remove_signal_handler(signal.SIGTERM)
        with pytest.raises(OSError, match="host 'no-such-host.invalid'"):
            await serve(create_app(Engine(None)), "no-such-host.invalid", 8000)
        assert not loop.remove_signal_handler(signal.SIGINT)

    asyncio.run(main())


def test_a_host_that_does_not_resolve_is_named_before_the_load_with_port_0(monkeypatch):
    """The address was checked before the model loaded only for a port other than 0: with
    --port 0 (any free port) a host that does not resolve (`--host "[::1]"`, brackets and
    all; `--host http://localhost`) was found once the model had loaded, told as '[Errno
    -2] Name or service not known', naming no host."""
    import re

    import aiollm.engine.engine as engine_module
    from aiollm.api import create_app, serve
    from aiollm.engine import Engine

    def no_load(self, ranks=None):
        raise AssertionError("the model was loaded before the host was checked")

    monkeypatch.setattr(engine_module.Engine, "_load_model", no_load)
    for host in ("no-such-host.invalid", "[::1]"):
        with pytest.raises(OSError, match=re.escape(f"host {host!r} does not resolve")):
            asyncio.run(serve(create_app(Engine(None)), host, 0))


def _write_tiny_config(path) -> None:
    """config.json of a tiny Llama of random weights (load_format dummy) into `path`."""
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}))


def test_a_signal_while_the_model_loads_never_opens_the_port(tmp_path, caplog):
    """SIGINT/SIGTERM while the model loads (seconds to minutes, and the load cannot be
    interrupted): once loaded, the server opened its port, logged 'serving ... on http://'
    and took connections before it shut down, so a load balancer or a client saw it up.
    It shuts down once loaded, never listening."""
    from aiollm.api import create_app, serve
    from aiollm.engine import Engine

    _write_tiny_config(tmp_path)

    async def main():
        stop, started = asyncio.Event(), []
        stop.set()  # the signal's event, set before the load ends (here before it starts)
        engine = Engine(str(tmp_path), load_format="dummy", kv_tokens=512, warm_up=False)
        await serve(create_app(engine), "127.0.0.1", 0, stop=stop,
                    on_started=lambda host, port: started.append(port))
        return started

    with caplog.at_level(logging.INFO, logger="aiollm.api.server"):
        assert asyncio.run(main()) == []
    assert "server stopped" in caplog.text and "serving" not in caplog.text, caplog.text


def test_serve_logs_an_ipv6_address_in_brackets(tmp_path, caplog):
    """The start-up line gives a URL a client can use: http://[::1]:PORT for an IPv6 host
    (it was http://::1:PORT, whose port reads as part of the address)."""
    from aiollm.api import create_app, serve
    from aiollm.engine import Engine

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    _write_tiny_config(tmp_path)

    async def main() -> list[tuple[str, int]]:
        stop, started = asyncio.Event(), []

        def on_started(host: str, port: int) -> None:
            started.append((host, port))
            stop.set()
        engine = Engine(str(tmp_path), load_format="dummy", kv_tokens=512)
        await serve(create_app(engine), "::1", 0, stop=stop, on_started=on_started)
        return started

    with caplog.at_level(logging.INFO, logger="aiollm.api.server"):
        [(host, port)] = asyncio.run(main())
    assert host == "::1"
    assert f" on http://[::1]:{port} (" in caplog.text, caplog.text


def test_serve_on_the_ipv6_wildcard_takes_ipv4_clients_too(tmp_path):
    """`--host ::` listens on every interface, IPv4 too, as vLLM's socket for it does (Linux
    dual-stack): it listened on IPv6 alone (asyncio sets IPV6_V6ONLY), and IPv4 clients of a
    launch line that works with vLLM were refused."""
    from aiollm.api import create_app, serve
    from aiollm.engine import Engine

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::", 0))
    except OSError:
        pytest.skip("no IPv6 here")
    _write_tiny_config(tmp_path)

    async def main() -> tuple[int, int]:
        stop, up, ports = asyncio.Event(), asyncio.Event(), []

        def on_started(host: str, port: int) -> None:
            ports.append(port)
            up.set()
        engine = Engine(str(tmp_path), load_format="dummy", kv_tokens=512, warm_up=False)
        server = asyncio.create_task(serve(create_app(engine), "::", 0, stop=stop,
                                           on_started=on_started))
        await asyncio.wait([server, asyncio.create_task(up.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        try:
            statuses = []
            async with aiohttp.ClientSession() as session:
                for host in ("127.0.0.1", "[::1]"):
                    async with session.get(f"http://{host}:{ports[0]}/health") as r:
                        statuses.append(r.status)
            return tuple(statuses)
        finally:
            stop.set()
            await server

    assert asyncio.run(main()) == (200, 200)


def test_binds_loopback_by_default():
    from aiollm.api import run_server, serve
    from aiollm.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    for fn in (serve, run_server):
        assert inspect.signature(fn).parameters["host"].default == "127.0.0.1"


def test_exclude_tools_when_tool_choice_none_reaches_the_engine():
    """vLLM's --exclude-tools-when-tool-choice-none is taken and handed to the engine; off
    by default (tool_choice "none" shows the model the tools)."""
    from aiollm import cli
    from aiollm.cli.serve_parser import ENGINE_OPTIONS
    from aiollm.config import EngineConfig

    def config(*flags: str) -> EngineConfig:
        args = cli.build_parser().parse_args(["serve", *flags])
        return EngineConfig(**{name: getattr(args, name) for name in ENGINE_OPTIONS})

    assert config("--exclude-tools-when-tool-choice-none").exclude_tools_when_tool_choice_none
    assert not config().exclude_tools_when_tool_choice_none


async def _get(url: str, **kw) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.request(kw.pop("method", "GET"), url, **kw) as r:
            return r.status, dict(r.headers), await r.read()


def _wait_healthy(proc: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    """The base URL of `aiollm serve --port 0` (from its log) once it answers /health."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"aiollm serve exited with {proc.returncode}:\n{log.read_text()}")
        base = logged_base(log)
        try:
            if base is not None and asyncio.run(_get(base + "/health"))[0] == 200:
                return base
        except aiohttp.ClientError:
            pass
        time.sleep(0.05)  # (0.5 s: a quarter of a second lost, on average, by each server)
    pytest.fail(f"aiollm serve did not become healthy:\n{log.read_text()}")


@contextlib.contextmanager
def _served(tmp_path: Path, *options: str, env: dict | None = None,
            command: tuple[str, ...] = (AIOLLM,), stdin: str | None = None):
    """`aiollm serve` on a port the kernel gives it with `options` (and `stdin` written to
    its standard input, then closed), healthy: yields (process, base URL, log path); the
    process is killed on the way out if it still runs."""
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*command, "serve", "--port", "0", *options], stdout=out,
                                stderr=subprocess.STDOUT, env=env, text=True,
                                stdin=None if stdin is None else subprocess.PIPE)
    if stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.close()
    try:
        base = _wait_healthy(proc, log)
        yield proc, base, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_subprocess(tmp_path):
    env = {**os.environ, "AIOLLM_API_KEY": KEY}
    # one running and one waiting request at most: the third concurrent request is refused
    with _served(tmp_path, "--kv-tokens", "4096", "--max-model-len", "1024",
                 "--max-running-requests", "1", "--max-waiting-requests", "1",
                 "--table-capacity", "64", "--shutdown-timeout", "60",
                 "--allowed-origins", '["*"]', env=env) as (proc, base, log):
        text = log.read_text()
        assert base in text and "dtype float32" in text
        assert "KV capacity 4096 tokens" in text

        # auth: everything but the probes, /metrics and /version needs the key
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert asyncio.run(_get(base + "/v1/chat/completions", method="POST",
                                json=chat))[0] == 401
        status, headers, _ = asyncio.run(_get(
            base + "/v1/models", headers={"Authorization": "Bearer wrong-key-12"}))
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        status, _, metrics = asyncio.run(_get(base + "/metrics"))
        assert status == 200 and b"\naiollm_request_table_slots_total 64.0\n" in metrics

        # CORS for any page: its preflight needs no key, its request does
        page = {"Origin": "http://localhost:5173"}
        status, headers, _ = asyncio.run(_get(base + "/v1/chat/completions", method="OPTIONS",
                                              headers={**page, "Access-Control-Request-Method":
                                                       "POST"}))
        assert status == 200 and headers["Access-Control-Allow-Origin"] == page["Origin"]
        status, headers, _ = asyncio.run(_get(base + "/v1/models", headers=page))
        assert status == 401 and headers["Access-Control-Allow-Origin"] == page["Origin"]

        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        out = client.chat.completions.create(
            model=model, temperature=0, max_tokens=24,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in out.choices[0].message.content

        # overload: 503 with Retry-After once the waiting queue is full
        async def burst():
            body = {"prompt": "Count:", "max_tokens": 8, "ignore_eos": True}
            auth = {"Authorization": f"Bearer {KEY}"}
            return await asyncio.gather(*(_get(base + "/v1/completions", method="POST",
                                               json=body, headers=auth) for _ in range(4)))
        results = asyncio.run(burst())
        statuses = sorted(r[0] for r in results)
        assert statuses[0] == 200 and statuses[-1] == 503, statuses
        assert all("Retry-After" in h for s, h, _ in results if s == 503)

        # graceful shutdown: a stream in flight when SIGTERM comes still finishes
        stream = client.completions.create(model=model, prompt="Count:", max_tokens=40,
                                           extra_body={"ignore_eos": True}, stream=True)
        chunks = []
        for chunk in stream:
            if not chunks:
                proc.send_signal(signal.SIGTERM)
            chunks.append(chunk)
        assert chunks[-1].choices[0].finish_reason == "length"
        assert proc.wait(timeout=60) == 0
        assert "server stopped" in log.read_text()
        assert "leaked" not in log.read_text()  # nanobind's exit report (gc.freeze)


def test_a_chat_template_is_checked_before_torch_imports(tmp_path):
    """--chat-template was checked through modules that import torch: before serve's Ctrl-C
    handling existed (Ctrl-C in those seconds printed a traceback of torch's imports), and
    for seconds before a bad template's usage error. The check imports no torch; the error
    is what it was."""
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% if %}")
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "aiollm", "serve",
                          "--chat-template", str(broken)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    assert (f"aiollm serve: error: argument --chat-template: chat_template file {broken} "
            "does not compile (TemplateSyntaxError: ") in out.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "aiollm.config" in imported and "torch" not in imported


def test_a_chat_template_from_a_pipe_is_read_once(tmp_path):
    """`--chat-template /dev/stdin` (or bash's `<(...)`): a pipe reads once. The template
    was read twice at start (checked, then read again for the engine), the second time
    from the pipe it had emptied: the server exited 1 ("chat_template must be a Jinja
    template"). It is read once, and every chat renders with it."""
    template = "TEMPLATE{% for m in messages %} {{ m.content }}{% endfor %}"

    async def rendered(base: str) -> str:
        async with aiohttp.ClientSession() as s:
            async with s.post(base + "/tokenize", json={
                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                ids = (await r.json())["tokens"]
            async with s.post(base + "/detokenize", json={"tokens": ids}) as r:
                return (await r.json())["prompt"]

    with _served(tmp_path, "--kv-tokens", "64", "--no-warm-up", "--chat-template",
                 "/dev/stdin", stdin=template) as (_, base, _):
        assert asyncio.run(rendered(base)) == "TEMPLATE hi"


def test_ctrl_c_while_importing_exits_130_without_a_traceback():
    """Ctrl-C in the seconds `aiollm serve` imports torch & co. (before its signal handlers
    and its own Ctrl-C handling) printed a traceback of those imports and died by SIGINT;
    it exits 130 quietly, as during loading."""
    proc = subprocess.Popen([AIOLLM, "serve", "--port", "0", "--kv-tokens", "64"],
                            stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{proc.pid}/maps")
    if not maps.exists():
        proc.kill()
        pytest.skip("needs /proc to see the import under way")
    with _killed_at_the_end(proc):
        deadline = time.monotonic() + 60
        while "libtorch" not in maps.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)  # torch's libraries are mapped: its modules are importing
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err)


@contextlib.contextmanager
def _killed_at_the_end(proc: subprocess.Popen):
    """proc killed and reaped on the way out if it still runs (a test that failed or timed
    out left a server running into the next tests)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# `python -m aiollm`, with Ctrl-C sent (by the process to itself) as it starts importing one
# module: at once, whatever the machine's speed, where a Ctrl-C by hand lands by chance
CTRL_C_AT_IMPORT = """
import importlib.abc, os, runpy, signal, sys

MODULE = sys.argv.pop(1)

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == MODULE:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

# Python raises KeyboardInterrupt only where it found SIGINT's default at its start, as a
# terminal's foreground job does; a background job (a test runner's) inherits it ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.meta_path.insert(0, CtrlC())
runpy.run_module("aiollm", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", ["numpy", "aiollm.cli.serve_parser"])
def test_ctrl_c_while_the_command_itself_imports_exits_130_without_a_traceback(module):
    """Ctrl-C while `aiollm` imports what comes before its own Ctrl-C handling (numpy for
    `aiollm`'s SamplingParams, its parser's modules: a tenth of a second warm, seconds from
    a cold disk) printed a traceback of the imports and died by SIGINT; it exits 130
    quietly, as Ctrl-C later in the start does."""
    out = subprocess.run([sys.executable, "-c", CTRL_C_AT_IMPORT, module, "serve", "--port",
                          "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 130 and out.stderr == "", (out.returncode, out.stderr)


def test_ctrl_c_while_waiting_for_a_chat_template_pipe_exits_130_without_a_traceback(
        tmp_path):
    """--chat-template read from a named pipe waits for its writer while the flags are
    checked, before serve's Ctrl-C handling: Ctrl-C there printed a traceback of the read
    and died by SIGINT; it exits 130 quietly, as Ctrl-C later in the start does."""
    fifo = tmp_path / "template.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([AIOLLM, "serve", "--port", "0", "--chat-template", str(fifo)],
                            stderr=subprocess.PIPE, text=True)
    with _killed_at_the_end(proc):
        deadline = time.monotonic() + 30
        while True:  # a writer's open succeeds once the server has the pipe open to read
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:  # ENXIO: no reader yet
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.01)
        try:  # the server now waits for the template's text, which never comes
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            err = proc.communicate(timeout=30)[1]
        finally:
            os.close(writer)
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err)


async def _logged(log: Path, text: str, timeout: float = 30) -> None:
    """Once `text` is in the server's log (polled: a loaded CPU handles a signal late)."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{log.read_text()}"
        await asyncio.sleep(0.02)


async def _stream_through_sigint(proc: subprocess.Popen, base: str, max_tokens: int,
                                 after_signal) -> list[bytes]:
    """A completions stream of `max_tokens` (eos ignored) during which the server gets SIGINT
    once the first event came; `after_signal()` is awaited next. Its SSE events' data."""
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/v1/completions", json={
                "prompt": "Count:", "max_tokens": max_tokens, "ignore_eos": True,
                "stream": True}) as resp:
            assert resp.status == 200
            first = await resp.content.readline()
            proc.send_signal(signal.SIGINT)
            await after_signal()
            body = first + await resp.read()
    return [b[5:].strip() for b in body.split(b"\n\n") if b.strip()]


def test_sigint_aborts_what_outlasts_the_grace_period(tmp_path):
    """SIGINT: no new connections; a stream still running when --shutdown-timeout is over
    ends with a final error event; the process exits 0."""
    with _served(tmp_path, "--kv-tokens", "2048", "--max-model-len", "512",
                 "--shutdown-timeout", "1") as (proc, base, log):
        refused = []

        async def health_refused():
            await _logged(log, "shutting down")  # its listening socket closed before
            try:
                await _get(base + "/health")
                refused.append(False)
            except aiohttp.ClientConnectionError:
                refused.append(True)

        t0 = time.monotonic()
        events = asyncio.run(_stream_through_sigint(proc, base, 400, health_refused))
        assert refused == [True]
        assert b"[DONE]" not in events and len(events) > 1
        err = json.loads(events[-1])["error"]
        assert err["type"] == "overloaded_error" and "shut down" in err["message"]
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 20
        assert "server stopped" in log.read_text()
        assert "leaked" not in log.read_text()  # nanobind's exit report (gc.freeze)


def test_a_second_sigint_aborts_at_once(tmp_path):
    """Ctrl-C twice (as uvicorn, so vLLM, reads it): the second signal ends the drain now
    instead of waiting out --shutdown-timeout; the stream still gets its final error event
    and the process exits 0. The second signal was ignored (a 60 s wait here)."""
    with _served(tmp_path, "--kv-tokens", "2048", "--max-model-len", "512",
                 "--shutdown-timeout", "60") as (proc, base, log):

        async def second_sigint():
            await _logged(log, "shutting down")  # the first signal's drain is under way
            proc.send_signal(signal.SIGINT)

        t0 = time.monotonic()
        events = asyncio.run(_stream_through_sigint(proc, base, 480, second_sigint))
        assert b"[DONE]" not in events
        assert "shut down" in json.loads(events[-1])["error"]["message"]
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 15
        assert "second signal" in log.read_text()


def test_serve_exits_at_once_while_a_grammar_compiles(tmp_path):
    """SIGTERM while a grammar compiles past --grammar-compile-timeout: the process exits 0
    at once. A compilation cannot be interrupted; the interpreter's exit waited 5 s for it,
    then finalized for seconds beside its threads (13 s in all with a 2,000-property schema),
    and aborted ("terminate called without an active exception", 134) when it ended then."""
    with _served(tmp_path, "--kv-tokens", "1024", "--max-model-len", "512",
                 "--grammar-compile-timeout", "1",
                 command=(sys.executable, "-m", "aiollm.cli")) as (proc, base, log):
        props = {f"p{i}": {"type": "string"} for i in range(2000)}  # ~30 s here
        status, _, raw = asyncio.run(_get(base + "/v1/chat/completions", method="POST", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "big", "schema": {"type": "object", "properties": props}}}}))
        err = json.loads(raw)["error"]
        assert status == 400 and err["param"] == "response_format.json_schema.schema", err
        assert "did not compile within 1 s" in err["message"], err
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-2000:]
        assert time.monotonic() - t0 < 4, time.monotonic() - t0
        text = log.read_text()
        assert "exiting with 1 grammar compilations under way" in text, text[-2000:]
        assert "terminate called" not in text


def test_make_setup_says_what_each_step_does():
    """`make serve` on a fresh machine spends about a minute installing: each install step
    is announced before it runs (issue 15, rough edges: it was a silent minute)."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["make", "-n", "-B", "setup"], cwd=root, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    installs = [i for i, line in enumerate(lines) if "pip install" in line and "--upgrade pip"
                not in line]
    assert len(installs) >= 3
    for i in installs:
        assert lines[i - 1].startswith("echo \"aiollm setup"), lines[i - 1]


def test_make_test_hides_the_gpus_so_the_cpu_suite_runs_alike_everywhere():
    """`make test` on a machine with a GPU ran the tests' engines on it, their CUDA tensors
    through Triton's interpreter (H100, 2026-12-06: hundreds of failures): the README's test
    command hides every GPU, so the suite is the one CI runs."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["make", "-n", "test"], cwd=root, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    runs = [line for line in out.stdout.splitlines() if "-m pytest" in line]
    assert len(runs) == 1 and runs[0].startswith("CUDA_VISIBLE_DEVICES= "), out.stdout


@pytest.mark.parametrize("has_torch,index", [(True, ""), (False, ""), (False, "https://x/cpu")])
def test_make_setup_keeps_a_torch_already_in_the_venv(tmp_path, has_torch, index):
    """The README's GPU set-up: install the CUDA build of torch into .venv first, then `make
    serve`. Setup installed torch==2.13.0 over it anyway, which replaced a build of any other
    version with PyPI's; a .venv without torch still gets the pinned one, from TORCH_INDEX
    alone when that is set (the README's CPU-only set-up). Run on a copy of the build files,
    with a .venv whose python and pip only record what they are asked."""
    root = Path(__file__).resolve().parent.parent
    for name in ("Makefile", "pyproject.toml", "meson.build"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls.txt"
    fakes = {  # python: "import torch" succeeds only with has_torch; pip records its args
        "python": f'if [ "$1" = -c ]; then exit {0 if has_torch else 1}; fi\n',
        "pip": f'echo "pip $*" >> {calls}\n',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    out = subprocess.run(["make", "setup", f"TORCH_INDEX={index}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    installs = calls.read_text().splitlines()
    torch_installs = [line for line in installs if "torch==" in line]
    assert any("-e .[test,bench]" in line for line in installs), installs
    assert len(torch_installs) == (0 if has_torch else 1), installs
    for line in torch_installs:
        assert ("--index-url" in line) == bool(index), line
        if index:
            assert f"--no-deps --index-url {index}" in line, line


def test_engine_config_takes_a_torch_device():
    """The Python API took device=torch.device('cpu') before the CLI's device check; it still
    does (as the string), and a bad one is still refused naming it."""
    import torch

    from aiollm.config import EngineConfig

    assert EngineConfig(device=torch.device("cpu")).device == "cpu"
    assert EngineConfig(device=torch.device("cuda", 1)).device == "cuda:1"
    with pytest.raises(ValueError, match="'meta'"):
        EngineConfig(device=torch.device("meta"))


def test_mixed_prefill_tokens_zero_is_no_cap_in_python_too():
    """`--mixed-prefill-tokens 0` removes the cap; Engine(mixed_prefill_tokens=0), the same
    option under the same name (README, Python API), raised "must be >= 1"."""
    from aiollm.config import EngineConfig

    assert EngineConfig(mixed_prefill_tokens=0).mixed_prefill_tokens is None
    assert EngineConfig(mixed_prefill_tokens=None).mixed_prefill_tokens is None
    assert EngineConfig(mixed_prefill_tokens=512).mixed_prefill_tokens == 512
    with pytest.raises(ValueError, match="mixed_prefill_tokens must be >= 0"):
        EngineConfig(mixed_prefill_tokens=-1)
    for bad in (False, 1.5):
        with pytest.raises(ValueError, match="mixed_prefill_tokens"):
            EngineConfig(mixed_prefill_tokens=bad)


def test_grammar_compile_timeout_is_checked():
    """The Engine API's keyword is checked where the CLI's flag is: a timeout of 0, NaN or
    infinity is refused naming it (infinity would have failed each compile thread's wait)."""
    from aiollm.config import EngineConfig

    assert EngineConfig().grammar_compile_timeout == 60.0
    assert EngineConfig(grammar_compile_timeout=2).grammar_compile_timeout == 2
    for bad in (0, -1.0, float("nan"), float("inf"), "60", None, True):
        with pytest.raises(ValueError, match="grammar_compile_timeout must be"):
            EngineConfig(grammar_compile_timeout=bad)


def test_engine_config_checks_each_fields_kind():
    """The Python API's options were checked for their ranges only: "100" for a number (from
    an environment variable) raised TypeError naming no field, and 1.5 KV tokens, "no" for a
    switch, 5 for a path and an unknown tool_call_parser (refused only by the first request
    with tools) were taken. Each is a ValueError naming the field; numpy integers and a
    pathlib.Path still do."""
    from pathlib import Path

    import numpy as np

    from aiollm.config import EngineConfig

    for name, bad, says in (("kv_tokens", "100", "an integer or None"),
                            ("max_model_len", 1.5, "an integer or None"),
                            ("kv_memory_fraction", "0.5", "a number"),
                            ("queue_timeout", "5", "a number or None"),
                            ("seed", 1.5, "an integer"), ("table_capacity", True, "an integer"),
                            ("prefix_cache", "no", "True or False"),
                            ("warm_up", 0, "True or False"),
                            ("tokenizer", 5, "a string or None"),
                            ("served_model_name", 5, "a string or None"),
                            ("tool_call_parser", "foo", "one of hermes, llama3, mistral")):
        with pytest.raises(ValueError, match=f"^{name} must be {says}"):
            EngineConfig(**{name: bad})
    c = EngineConfig(model=Path("/models/m.gguf"), kv_tokens=np.int64(64), seed=np.int32(3))
    assert (c.model, c.kv_tokens, c.seed) == ("/models/m.gguf", 64, 3)
    assert type(c.kv_tokens) is int and type(c.seed) is int
