"""`aiollm serve --config FILE`: flags read from a YAML file, as vLLM's and SGLang's --config
read theirs. Parse-level (the parser called directly, nothing loads), but for one server
started on the default model with its flags from a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cli_lines import refusal as checks_refusal
from cli_lines import started
from serve_log import wait_for_base

from aiollm.cli import build_parser
from aiollm.cli.serve_checks import checked_config

AIOLLM = str(Path(sys.executable).with_name("aiollm"))


def parse(tmp_path: Path, text: str, *line: str):
    """What `aiollm serve LINE --config FILE` sets, FILE holding `text`."""
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return build_parser().parse_args(["serve", *line, "--config", str(path)])


def refusal(tmp_path: Path, text: str | None, capsys, *line: str) -> str:
    """The one error line `aiollm serve --config FILE LINE` stops with (exit 2); FILE
    holds `text` (None: there is no FILE)."""
    path = tmp_path / "serve.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", "--config", str(path), *line])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aiollm serve: error: "), err
    return err[-1].removeprefix("aiollm serve: error: ").replace(str(path), "FILE")


def test_the_files_flags_replace_the_defaults(tmp_path):
    args = parse(tmp_path, "port: 9001\nmax-model-len: 4k\nhost: 0.0.0.0\n"
                           "dtype: half\nseed: 7\nkv_memory_fraction: 0.5\n")
    assert (args.port, args.max_model_len, args.host) == (9001, 4000, "0.0.0.0")
    assert (args.dtype, args.seed, args.kv_memory_fraction) == ("float16", 7, 0.5)
    assert args.model is None  # the bundled model, as without the file
    assert build_parser().parse_args(["serve"]).port == 8000
    # SGLang's and LightLLM's spellings, as on the command line
    args = parse(tmp_path, "context-length: 2048\nmax_total_token_num: 6000\n")
    assert (args.max_model_len, args.kv_tokens) == (2048, 6000)


def test_the_command_line_wins_over_the_file(tmp_path):
    args = parse(tmp_path, "port: 9001\nmax-num-seqs: 8\nmax-model-len: 512\n",
                 "--port", "9002", "--max-running-requests", "3")
    # another spelling of the option on the command line replaces the file's, as its own
    # flag does: not "two values of one option", which the file alone refuses
    assert (args.port, args.max_running_requests, args.max_model_len) == (9002, 3, 512)
    assert args.flags_typed["max_running_requests"] == "--max-running-requests"
    # a bound that other engines keep the smallest of: the command line's, even larger
    args = parse(tmp_path, "chunked-prefill-size: 4096\n", "--max-prefill-tokens", "8192")
    assert args.max_prefill_tokens == 8192
    # vLLM's two spellings of the graph sizes, one in each place: the command line's
    args = parse(tmp_path, "cudagraph-capture-sizes: [1, 2, 8]\n", "--cuda-graph-sizes", "4")
    assert args.vllm_graphs["flags"]["cudagraph_capture_sizes"][2] == [4]
    # where the command line says nothing, the file's spelling is the one named
    args = parse(tmp_path, "max-num-seqs: 8\n", "--port", "1")
    assert args.flags_typed["max_running_requests"] == "--max-num-seqs"


def test_model_on_the_command_line_wins_over_the_files(tmp_path):
    assert parse(tmp_path, "model: /from/file\n").model == "/from/file"
    assert parse(tmp_path, "model: /from/file\n", "/typed").model == "/typed"
    # SGLang's and LightLLM's names of it, in the file or on the command line
    assert parse(tmp_path, "model-path: /f\n", "--model", "/typed").model == "/typed"
    assert parse(tmp_path, "model_dir: /f\n", "--model-path", "/typed").model == "/typed"
    assert parse(tmp_path, "port: 1\n", "/typed").model == "/typed"


def test_booleans_are_switches_and_their_no_forms(tmp_path):
    args = parse(tmp_path, "enforce-eager: true\nno-prefix-cache: true\n"
                           "trust-request-chat-template: true\n")
    assert (args.cuda_graph, args.prefix_cache, args.trust_request_chat_template) == (
        False, False, True)
    # false: the --no- form where there is one, else the switch left out
    args = parse(tmp_path, "enable-prefix-caching: false\nenforce-eager: false\n"
                           "return-tokens-as-token-ids: false\n", "--enable-prefix-caching")
    assert args.prefix_cache is True  # the command line's
    assert (args.cuda_graph, args.return_tokens_as_token_ids) == (True, False)
    assert parse(tmp_path, "enable-prefix-caching: false\n").prefix_cache is False
    # a JSON flag's key takes the JSON value
    args = parse(tmp_path, "compilation-config.use_cudagraph: false\n")
    assert args.vllm_graphs["config"][1] == {"use_cudagraph": False}


def test_lists_give_several_values_or_a_json_list(tmp_path):
    args = parse(tmp_path, "served-model-name: [a, b]\nallowed-origins: [http://x]\n"
                           "api-key: [k1, k2]\ncuda-graph-bs: [1, 2, 16]\n")
    assert args.served_model_name == ["a", "b"]
    assert args.allowed_origins == ["http://x"]  # a flag of one value: its JSON list
    assert args.api_key == ["k1", "k2"]
    assert args.cuda_graph_max_batch == 16 and args.graph_sizes_typed == "1 2 16"
    # one value for a flag of several: a list of one, as on the command line
    args = parse(tmp_path, "served-model-name: solo\ncuda-graph-bs: 8\n")
    assert (args.served_model_name, args.cuda_graph_max_batch) == (["solo"], 8)
    # a negative number is a value, as on the command line; an item that reads as a flag
    # is refused (above), but is taken as the flag's one value
    assert parse(tmp_path, "api-key: [-1, k]\n").api_key == ["-1", "k"]
    assert parse(tmp_path, "served-model-name: -x\n").served_model_name == ["-x"]
    # an empty list, and null, leave the key out
    args = parse(tmp_path, "served-model-name: []\nmax-model-len: null\nport:\n")
    assert (args.served_model_name, args.max_model_len, args.port) == (None, None, 8000)


def test_numbers_are_read_as_the_file_writes_them(tmp_path):
    """A top-level number is its text, as the command line gives it: not YAML 1.1's octal
    0123 (83) nor the float 1.10 (1.1), which would change a key or a name; inside a JSON
    flag's object, a number."""
    args = parse(tmp_path, "api-key: 0123\nserved-model-name: 1.10\nseed: 1_000\n"
                           "max-model-len: 32_768\ngpu-memory-utilization: .5\n"
                           "compilation-config: {max_cudagraph_capture_size: 016}\n")
    assert (args.api_key, args.served_model_name) == (["0123"], ["1.10"])
    assert (args.seed, args.max_model_len) == (1000, 32768)  # Python's int reads 1_000
    assert args.vllm_graphs["config"][1] == {"max_cudagraph_capture_size": 14}
    # a list's items are YAML's values (a list may be a JSON flag's): quote "1.10" there
    args = parse(tmp_path, "served-model-name: [1.10, '1.10']\n")
    assert args.served_model_name == ["1.1", "1.10"]


def test_mappings_are_a_json_flags_object(tmp_path):
    args = parse(tmp_path, "compilation-config:\n  max_cudagraph_capture_size: 16\n"
                           "  cudagraph_capture_sizes: [4, 16]\n"
                           "limit-mm-per-prompt: {image: 0}\n")
    assert args.vllm_graphs["config"] == (
        "--compilation-config", {"max_cudagraph_capture_size": 16,
                                 "cudagraph_capture_sizes": [4, 16]})
    assert args.no_effect[0][0] == '--limit-mm-per-prompt {"image": 0}'
    # a key given with its object's key after a dot, as on the command line
    args = parse(tmp_path, "compilation-config.max_cudagraph_capture_size: 1k\n")
    assert args.vllm_graphs["config"][1] == {"max_cudagraph_capture_size": 1000}


def test_moe_keys_of_vllms_and_sglangs_recipes_are_taken_as_their_flags(tmp_path):
    """A vLLM or SGLang MoE recipe's YAML: keys that change nothing here are taken as the
    command line's flags are, each noted for the start's log (they stopped the file at
    "unknown key")."""
    args = parse(tmp_path, "moe-backend: triton\nenable-expert-parallel: false\n"
                           "enable-ep-weight-filter: true\ndbo-decode-token-threshold: 32\n"
                           "expert-distribution-recorder-mode: stat\nmoe-dense-tp-size: 1\n"
                           "ep-num-redundant-experts: 0\n")
    assert [shown for shown, _ in args.no_effect] == [
        "--moe-backend triton", "--no-enable-expert-parallel", "--enable-ep-weight-filter",
        "--dbo-decode-token-threshold 32", "--expert-distribution-recorder-mode stat",
        "--moe-dense-tp-size 1"], args.no_effect


def test_config_equals_file(tmp_path, capsys):
    """--config=FILE, as argparse reads any flag's =VALUE; the file's errors name it."""
    path = tmp_path / "serve.yaml"
    path.write_text("port: 9001\n")
    args = build_parser().parse_args(["serve", f"--config={path}", "--seed", "3"])
    assert (args.port, args.seed) == (9001, 3)
    path.write_text("prot: 1\n")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", f"--config={path}"])
    assert f"error: --config {path}: unknown key 'prot'" in capsys.readouterr().err


def test_a_json_file_is_read_as_yaml(tmp_path):
    """JSON is YAML (SGLang's --config takes a .json file too); the name is not checked."""
    path = tmp_path / "serve.json"
    path.write_text('{"port": 9001, "enforce_eager": true, "served-model-name": ["a"]}')
    args = build_parser().parse_args(["serve", "--config", str(path)])
    assert (args.port, args.cuda_graph, args.served_model_name) == (9001, False, ["a"])


def test_the_files_flags_go_through_serves_checks(tmp_path, caplog, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text("max_num_seqs: 4\ndisable-log-requests: true\nmax-log-len: 100\n")
    config, log = started(f"--config {path}", caplog)
    assert config.max_running_requests == 4
    assert any("--disable-log-requests" in line and "no effect" in line for line in log), log
    assert any("--max-log-len 100" in line for line in log), log
    # refused after parsing: led by the file, the flag named as the file spells it
    path.write_text("max_num_seqs: 0\nport: 1\n")
    assert checks_refusal(f"--config {path}", capsys).startswith(
        f"aiollm serve: error: --config {path}: argument --max_num_seqs: max_running_requests "
        "must be ")
    # ... but not where the command line replaced it (with another spelling too)
    for line in ("--max-num-seqs 0", "--max-running-requests 0"):
        assert checks_refusal(f"--config {path} {line}", capsys).startswith(
            f"aiollm serve: error: argument {line.split()[0]}: max_running_requests "), line


def test_the_files_dense_tp_size_is_held_to_the_tp_size_the_flags_give(tmp_path, capsys):
    """SGLang's moe-dense-tp-size takes 1 or the TP size, from the file or the command line;
    refused after parsing, led by the file where the file gave it."""
    path = tmp_path / "serve.yaml"
    path.write_text("tp-size: 2\nmoe-dense-tp-size: 2\n")
    args = build_parser().parse_args(["serve", "M", "--config", str(path)])
    assert checked_config(args.command_parser, args)[0].tensor_parallel_size == 2
    args = build_parser().parse_args(["serve", "M", "--config", str(path), "--tp-size", "4"])
    with pytest.raises(SystemExit):
        checked_config(args.command_parser, args)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"aiollm serve: error: --config {path}: argument --moe-dense-tp-size: SGLang takes 1 "
        "(each dense MLP layer whole on every rank) or the tensor-parallel size (--tp-size), "
        "4: the layer split over the ranks, as aiollm splits it; got 2")
    # the command line's value replaces the file's
    args = build_parser().parse_args(["serve", "M", "--config", str(path), "--tp-size", "4",
                                      "--moe-dense-tp-size", "4"])
    assert checked_config(args.command_parser, args)[0].tensor_parallel_size == 4


def test_the_files_several_names_with_no_model(tmp_path, capsys):
    """A list of names (or keys) in the file cannot have taken a MODEL typed after it, as
    the command line's flag can: the default model is served under them."""
    path = tmp_path / "serve.yaml"
    path.write_text("served-model-name: [llama, llama-3.1]\napi-key: [k1, org/k2]\n")
    args = build_parser().parse_args(["serve", "--config", str(path), "--device", "cpu"])
    config, keys = checked_config(args.command_parser, args)
    assert (config.served_model_name, args.served_model_name) == ("llama", ["llama",
                                                                           "llama-3.1"])
    assert keys == ("k1", "org/k2")
    # on the command line, the same names with no MODEL are still refused as MODEL taken
    path.write_text("port: 9001\n")
    with pytest.raises(SystemExit):
        args = build_parser().parse_args(["serve", "--config", str(path),
                                          "--served-model-name", "a", "b"])
        checked_config(args.command_parser, args)
    assert "argument --served-model-name: it takes every word after it, so 'b' was read " \
        "as a name and no MODEL was given" in capsys.readouterr().err


@pytest.mark.parametrize("text, line, error", [
    ("prot: 1\n", (), "--config FILE: unknown key 'prot': `aiollm serve` has no such flag "
                      "(did you mean port?)"),
    ("1: 2\n", (), "--config FILE: unknown key 1: `aiollm serve` has no such flag "
                   "(`aiollm serve --help` lists them)"),
    ("--port: 1\n", (), "--config FILE: unknown key '--port': `aiollm serve` has no such flag "
                        "(did you mean port?)"),
    # a key given twice: refused, not the last one taken (PyYAML's); nested keys too
    ("port: 1\nseed: 2\nport: 3\n", (),
     "--config FILE: is not valid YAML: key 'port' is given twice, on lines 1 and 3: keep one"),
    ("compilation-config:\n  mode: 1\n  mode: 2\n", (),
     "--config FILE: is not valid YAML: key 'mode' is given twice, on lines 2 and 3: keep one"),
    ("max-num-seqs: 8\nmax_num_seqs: 9\n", (),
     "--config FILE: keys 'max-num-seqs' and 'max_num_seqs' are one flag: keep one"),
    ("config: other.yaml\n", (),
     "--config FILE: key 'config': a config file cannot name another; give its flags in "
     "this one"),
    ("help: true\n", (), "--config FILE: key 'help' is no setting: `aiollm serve --help` "
                         "lists the flags"),
    (None, (), "--config FILE: cannot be read: No such file or directory"),
    ("a: [1\nb: 2\n", (),
     "--config FILE: is not valid YAML: expected ',' or ']', but got ':' (line 2, column 2)"),
    ("port: 1\n\tseed: 2\n", (), "--config FILE: is not valid YAML: found character '\\t' "
                               "that cannot start any token (line 2, column 1); use spaces, "
                               "not tabs"),
    ("port: 1\x00\n", (), "--config FILE: is not YAML text: character #x00 at position 7: "
                         "special characters are not allowed"),
    ("- port\n- 1\n", (), "--config FILE: holds a list, not a mapping of flag names to "
                          "values (`port: 8000` lines)"),
    ("port 8000\n", (), "--config FILE: holds a string, not a mapping of flag names to "
                        "values (`port: 8000` lines)"),
    ("enforce-eager: yes please\n", (),
     "--config FILE: key 'enforce-eager' is a switch: give true or false (unquoted), got "
     "'yes please'"),
    ('enforce-eager: "true"\n', (), "--config FILE: key 'enforce-eager' is a switch: give "
                                    "true or false (unquoted), got 'true'"),
    ("served-model-name: [a, -x]\n", (),
     "--config FILE: key 'served-model-name': the item '-x' reads as a flag: give it as the "
     "flag's only value (`served-model-name: -x`)"),
    ("port: 0x1F90\n", (), "--config FILE: argument --port: invalid int value: '0x1F90'"),
    # the flag's own errors, led by the file
    ("port: abc\n", (), "--config FILE: argument --port: invalid int value: 'abc'"),
    ("max_num_seqs: abc\n", (),
     "--config FILE: argument --max-running-requests/--max_num_seqs: invalid int value: "
     "'abc'"),
    ("speculative-config: {method: ngram}\n", (),
     "--config FILE: argument --speculative-config: speculative decoding is not supported"),
    ("max-num-seqs: 4\nmax-running-requests: 5\n", (),
     "--config FILE: argument --max-running-requests: 5 and --max-num-seqs 4 are two "
     "values of one option: give one"),
    # MoE keys of vLLM's and SGLang's recipes asking for expert parallelism's features
    ("enable-dbo: true\n", (),
     "--config FILE: argument --enable-dbo: there is no dual batch overlap: vLLM splits a "
     "step into microbatches to overlap the expert-parallel all-to-all exchanges of one with "
     "the compute of the other, only with --enable-expert-parallel and a DeepEP all-to-all "
     "backend; a step runs as one batch; leave the flag out"),
    ("ep-num-redundant-experts: 32\n", (),
     "--config FILE: argument --ep-num-redundant-experts: there is no expert parallelism, so "
     "no redundant experts: every rank holds its share of every expert's features "
     "(--tensor-parallel-size); leave the flag out or give 0"),
    # the command line's own errors are not the file's
    ("port: 1\n", ("--port", "abc"), "argument --port: invalid int value: 'abc'"),
    ("port: 1\n", ("--config", "x.yaml"),
     "argument --config: given 2 times (FILE, x.yaml): give one file"),
])
def test_each_error_names_the_file_and_why(tmp_path, capsys, text, line, error):
    assert refusal(tmp_path, text, capsys, *line) == error


def test_config_with_no_file_and_a_directory(tmp_path, capsys):
    for line in (["--config"], ["--config="], ["--config", "--port", "1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *line])
        assert capsys.readouterr().err.strip().endswith(
            "argument --config: expected one argument"), line
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--config", str(tmp_path)])
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path}: cannot be read: Is a "
                                                    "directory")
    path = tmp_path / "serve.yaml"  # binary, not UTF-8
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xf6\xff")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--config", str(path)])
    assert capsys.readouterr().err.strip().endswith(
        f"--config {path}: is not YAML text: character #x89 at position 0: invalid start byte")


def test_an_empty_file_gives_nothing(tmp_path):
    def options(args) -> dict:
        return {k: v for k, v in vars(args).items() if k != "command_parser"}

    defaults = options(build_parser().parse_args(["serve", "M"]))
    assert options(parse(tmp_path, "# nothing yet\n", "M")) == defaults
    assert options(parse(tmp_path, "", "M")) == defaults


def test_a_server_started_with_its_flags_from_a_file_answers(tmp_path):
    """`aiollm serve --config FILE` on the default model (the file's served-model-name
    replaced by the command line's) answers a completion."""
    config = tmp_path / "serve.yaml"
    config.write_text("port: 0\ndevice: cpu\nmax-model-len: 256\nkv_tokens: 1024\n"
                      "served-model-name: [from-file]\nno-warm-up: true\n")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([AIOLLM, "serve", "--config", str(config),
                                 "--served-model-name", "from-line"],
                                stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        base = wait_for_base(proc, log)
        with urllib.request.urlopen(base + "/v1/models", timeout=30) as r:
            assert [m["id"] for m in json.load(r)["data"]] == ["from-line"]
        body = json.dumps({"model": "from-line", "prompt": "The capital of France is",
                           "max_tokens": 2, "temperature": 0}).encode()
        request = urllib.request.Request(base + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.load(r)
        assert answer["usage"]["completion_tokens"] == 2 and answer["choices"][0]["text"]
        assert "KV capacity 1024 tokens" in log.read_text()
    finally:
        proc.kill()
        proc.wait()

