"""`aiollm serve` given a launch line written for `vllm serve`: flags of the same meaning are
aliases, flags that ask for what aiollm always does are accepted, and flags aiollm cannot
honour stop the start with one line naming the flag and what to use instead. Parse-level:
the parser is called directly, no model loads."""

from __future__ import annotations

import logging

import pytest

from aiollm import vllm_flags
from aiollm.cli import build_parser
from conftest import tiny_llama

VLLM_LINE = ("--max-num-seqs 256 --max-num-batched-tokens 8192 --enforce-eager "
             "--enable-prefix-caching --enable-auto-tool-choice --tool-call-parser hermes "
             "--disable-log-requests --tensor-parallel-size 2")


def parse(line: str):
    return build_parser().parse_args(["serve", "M", *line.split()])


def options(line: str) -> dict:
    """What `aiollm serve M line` sets, but the parser it reports errors through, the
    flags it logs as having no effect and the checks of MODEL its checks run."""
    return {k: v for k, v in vars(parse(line)).items()
            if k not in ("command_parser", "no_effect", "model_checks")}


def refusal(line: str, capsys) -> str:
    """The one error line `aiollm serve M line` stops with (argparse exits 2)."""
    with pytest.raises(SystemExit) as e:
        parse(line)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aiollm serve: error: "), err
    return err[-1]


def test_a_vllm_launch_line_parses_to_aiollm_options():
    args = parse(VLLM_LINE)
    assert args.max_running_requests == 256
    assert args.max_prefill_tokens == 8192  # the step's token budget, decodes included
    assert args.cuda_graph is False
    assert args.prefix_cache is True
    assert args.tool_call_parser == "hermes"
    assert args.tensor_parallel_size == 2


@pytest.mark.parametrize("line, dest, value", [
    ("--max-num-seqs 7", "max_running_requests", 7),
    ("--max-num-batched-tokens 4096", "max_prefill_tokens", 4096),
    ("--enforce-eager", "cuda_graph", False),
    ("--no-enable-prefix-caching", "prefix_cache", False),
    ("--no-prefix-cache --enable-prefix-caching", "prefix_cache", True),  # the last one wins
    ("--enable-prefix-caching --no-enable-prefix-caching", "prefix_cache", False),
    ("--dtype half", "dtype", "float16"),
    ("--dtype float", "dtype", "float32"),
    ("--tool-call-parser llama3_json", "tool_call_parser", "llama3"),
    ("--disable-log-stats", "log_stats", False),
    ("--trust-request-chat-template", "trust_request_chat_template", True),
    ("--response-role bot", "response_role", "bot"),
    # was refused for openai, taken for auto and string with no effect
    ("--chat-template-content-format openai", "chat_template_content_format", "openai"),
    ("--chat_template_content_format string", "chat_template_content_format", "string"),
    ("--return-tokens-as-token-ids", "return_tokens_as_token_ids", True),
    ("--return-tokens-as-token-ids --no-return-tokens-as-token-ids",
     "return_tokens_as_token_ids", False),
])
def test_vllm_names_set_the_aiollm_option_of_the_same_meaning(line, dest, value):
    assert getattr(parse(line), dest) == value


def test_aliases_leave_the_defaults_alone():
    args = parse("")
    assert (args.prefix_cache, args.cuda_graph, args.log_stats) == (True, True, True)
    assert args.dtype == "auto" and args.tool_call_parser is None
    assert args.trust_request_chat_template is False  # a request's template: 400, as in vLLM
    assert args.chat_template_content_format == "auto"  # what the template reads


def test_a_content_format_of_no_meaning_stops_the_start_naming_the_choices(capsys):
    err = refusal("--chat-template-content-format json", capsys)
    assert "--chat-template-content-format" in err and "'json'" in err
    assert "auto, string, openai" in err or "'auto', 'string', 'openai'" in err, err


@pytest.mark.parametrize("line", [
    "--enable-auto-tool-choice", "--enable-chunked-prefill", "--disable-log-requests",
    "--no-enable-log-requests", "--enable-log-requests", "--no-trust-remote-code",
    # vLLM too serves the architectures it implements with its own code, flag or not
    "--trust-remote-code", "--disable-custom-all-reduce",
    "--enable-request-id-headers",  # X-Request-Id is always sent
    # values that ask for what aiollm does anyway
    "--kv-cache-dtype auto", "--pipeline-parallel-size 1", "-pp 1", "-dp 1",
    "--data-parallel-size 1", "--block-size 1", "--swap-space 0", "--cpu-offload-gb 0",
    "--max-logprobs 20", "--tokenizer-mode auto",
    # vLLM server flags of what aiollm always does: prompt_tokens_details and /load are
    # always served, it is one process, it serves no API docs, its access log is --log-level
    # debug's alone; they stopped a vLLM launch line with "unrecognized arguments"
    "--enable-prompt-tokens-details", "--enable-server-load-tracking",
    "--disable-frontend-multiprocessing", "--disable-fastapi-docs",
    "--disable-uvicorn-access-log", "--response-role assistant",
    "--distributed-executor-backend mp",
    # vLLM's async scheduling is what aiollm's loop always does (step N+1 planned while
    # step N runs), and first come, first served is its only policy: both stopped a vLLM
    # launch line with argparse's bare "unrecognized arguments"
    "--async-scheduling", "--scheduling-policy fcfs",
    # no cascade attention to turn off; no request contents logged to cut short
    "--disable-cascade-attn", "--max-log-len 100",
    # vLLM's quantization of a .gguf model: it was refused saying to serve a GGUF file
    "--quantization gguf", "-q gguf",
    # vLLM's switches off of what aiollm never does
    "--no-enable-expert-parallel", "--no-enable-eplb",
    # vLLM's MoE options of expert parallelism (and its load balancing), which vLLM itself
    # uses only with --enable-expert-parallel (--enable-eplb): aiollm is vLLM without them
    "--all2all-backend deepep_low_latency", "--all2all-backend allgather_reducescatter",
    "--expert-placement-strategy round_robin",
    '--eplb-config {"window_size":1000,"step_interval":3000,"num_redundant_experts":0}',
    # vLLM's EPLBConfig (pydantic) reads a whole number's string, or 0.0, as the number
    '--eplb-config {"num_redundant_experts":"0"}', '--eplb-config {"num_redundant_experts":0.0}',
    # launch lines of vLLM's docs that stopped at "unrecognized arguments": the graphs'
    # context bound (aiollm's cover --max-model-len), a text-only model's multimodal limits
    # (JSON, a modality's {"count": N}, the older image=0 form), Hugging Face's config
    "--max-seq-len-to-capture 8192", '--limit-mm-per-prompt {"image":0,"video":0}',
    '--limit-mm-per-prompt {"video":{"count":0,"num_frames":32}}',
    "--limit-mm-per-prompt image=0,audio=0", "--config-format hf", "--config-format auto",
    # in vLLM's own --config example (uvicorn-log-level: "info"): a log level, no output
    "--uvicorn-log-level info", "--uvicorn-log-level warning",
    # vLLM's MoE flags of its recipes that stopped at "unrecognized arguments": its experts'
    # kernel; what it does only with expert parallelism (weights filtered by rank, dual
    # batch overlap's thresholds); the values and --no- forms that ask for none of it
    "--moe-backend triton", "--moe-backend flashinfer_cutlass", "--enable-ep-weight-filter",
    "--no-enable-ep-weight-filter", "--dbo-decode-token-threshold 32",
    "--dbo-prefill-token-threshold 512", "--no-enable-dbo", "--ubatch-size 0",
    "--ubatch-size 1", "--no-enable-elastic-ep", "--no-enable-return-routed-experts",
    # vLLM's older flags of --eplb-config's settings (before v0.11), as --eplb-config takes them
    "--num-redundant-experts 0", "--eplb-window-size 1000", "--eplb-step-interval 3000",
    "--eplb-log-balancedness", "--no-eplb-log-balancedness",
])
def test_flags_asking_for_what_aiollm_does_are_accepted_and_change_nothing(line):
    assert options(line) == options("")


@pytest.mark.parametrize("line, names", [
    ("--quantization awq", ("GGUF",)),
    ("-q fp8", ("GGUF",)),
    ("-pp 2", ("--tensor-parallel-size",)),
    ("--data-parallel-size 2", ("one aiollm server",)),
    ("--block-size 16", ("token",)),
    ("--swap-space 4", ("recomput",)),
    ("--cpu-offload-gb 8", ("--tensor-parallel-size",)),
    ("--enable-expert-parallel", ("--tensor-parallel-size", "leave the flag out")),
    # vLLM's short form of it, which stopped at "unrecognized arguments: -ep"
    ("-ep", ("--tensor-parallel-size", "leave the flag out")),
    # expert-parallel load balancing, which vLLM runs only with expert parallelism
    ("--enable-eplb", ("no expert parallelism", "leave the flag out")),
    # redundant experts, which vLLM too refuses without --enable-eplb
    ('--eplb-config {"num_redundant_experts":32}', ("num_redundant_experts", "32")),
    ("--eplb-config window_size=1000", ("JSON object",)),
    # vLLM's MoE flags asking for what expert parallelism does, which stopped at argparse's
    # "unrecognized arguments": its microbatch overlap of all-to-all exchanges (vLLM itself
    # refuses it without a DeepEP backend), elastic ranks, the experts chosen in outputs,
    # and its older flag of redundant experts
    ("--enable-dbo", ("dual batch overlap", "--enable-expert-parallel", "leave the flag out")),
    ("--ubatch-size 2", ("microbatches", "one batch", "leave the flag out")),
    ("--enable-elastic-ep", ("elastic expert parallelism", "leave the flag out")),
    ("--enable-return-routed-experts", ("routed experts", "leave the flag out")),
    ("--num-redundant-experts 32", ("no redundant experts", "give 0")),
    # below vLLM's bound of its thresholds (ParallelConfig's ge=0), which vLLM refuses too
    ("--dbo-decode-token-threshold -1", ("must be 0 or more, got -1",)),
    ("--dbo-prefill-token-threshold -512", ("must be 0 or more, got -512",)),
    ("--enable-lora", ("merged",)),
    ("--lora-modules a=/x", ("merged",)),
    ("--speculative-config {}", ("speculative",)),
    ("--max-logprobs 50", ("20",)),
    ("--scheduling-policy priority", ("first come", "priority")),
    ("--no-enable-chunked-prefill", ("--max-prefill-tokens",)),
    ("--download-dir /d", ("local",)),
    ("--revision main", ("local",)),
    ("--tokenizer-mode mistral", ("tokenizer.json",)),
    # vLLM server flags that stopped at argparse's bare "unrecognized arguments"
    ("--ssl-keyfile /k.pem", ("TLS", "proxy")),
    ("--ssl-certfile /c.pem", ("TLS", "proxy")),
    ("--ssl-ca-certs /ca.pem", ("TLS",)),
    ("--ssl-cert-reqs 2", ("TLS",)),
    ("--root-path /api", ("strip", "/v1/")),
    # vLLM's docs' flags that stopped at "unrecognized arguments": each now says what to do
    ("--no-async-scheduling", ("step N+1", "leave the flag out")),
    ("--enable-sleep-mode", ("no sleep mode", "stop the server")),
    ("--config-format mistral", ("config.json", "params.json")),
    ('--limit-mm-per-prompt {"image":1}', ("image 1", "text alone", "give it 0")),
    ('--limit-mm-per-prompt {"video":{"count":2}}', ("video 2", "give it 0")),
    ("--limit-mm-per-prompt image=4", ("image 4",)),
    # a modality's options with no count (it said "image None", a value never typed)
    ('--limit-mm-per-prompt {"image":{}}', ("image {}", "give it 0")),
    ("--limit-mm-per-prompt [0]", ("JSON object",)),
    ("--override-generation-config {}", ("--generation-config",)),
    ("--distributed-executor-backend ray", ("Ray",)),
    ("--middleware m.f", ("middleware",)),
    ("--hf-overrides {}", ("config.json",)),
    # vLLM's GGUF guide gives a config beside a .gguf with it: argparse's bare refusal
    ("--hf-config-path /cfg", ("GGUF", "metadata", "config.json")),
    ("--hf-token t", ("local",)),
    ("--skip-tokenizer-init", ("token ids",)),
    ("--mm-processor-kwargs {}", ("text",)),
    ("--allowed-local-media-path /m", ("text",)),
])
def test_flags_aiollm_cannot_honour_stop_with_what_to_use_instead(line, names, capsys):
    flag = line.split()[0]
    err = refusal(f"--max-num-seqs 4 {line} --port 1", capsys)
    # argparse names the flag (with its other spelling: -q/--quantization)
    assert f"argument {flag}" in err or f"/{flag}:" in err or f"{flag}/" in err, err
    for name in names:
        assert name in err, (name, err)


def test_a_uvicorn_log_level_is_logged_as_no_effect_naming_log_level(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="aiollm.cli"):
        _config(["--uvicorn-log-level", "debug"])
    said = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("--uvicorn-log-level debug has no effect: ")
    assert "--log-level" in said[0], said
    assert "invalid choice" in refusal("--uvicorn-log-level loud", capsys)


def test_a_refused_flag_is_named_even_after_unknown_ones(capsys):
    err = refusal("--quantization awq --no-such-flag", capsys)
    assert "--quantization" in err


def test_help_names_the_vllm_flags_by_kind(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--max-num-seqs", "--max-num-batched-tokens", "--enforce-eager",
                 "--enable-prefix-caching", "--no-enable-prefix-caching",
                 "--enable-auto-tool-choice", "--disable-log-requests", "--disable-log-stats",
                 "--gpu-memory-utilization", "--trust-remote-code", "--quantization"):
        assert flag in out, flag
    # one default per option, and none that reads as the opposite of the truth
    assert "(default: None)" not in out and "(default: True)" not in out
    for line in out.replace("\n", " ").split("  --")[1:]:
        assert line.count("default") <= 1, line
    assert "==SUPPRESS==" not in out


def test_disable_log_stats_silences_the_periodic_statistics(caplog):
    """The prefix cache's once-a-minute hit-rate line is aiollm's only periodic statistic;
    --disable-log-stats turns it off, as vLLM's turns its own off."""
    from aiollm.cli import configure_logging
    from aiollm.engine.prefix_cache import PrefixCache
    from aiollm.model.kv_pool import KVPool, ReqToTokenTable

    stats = logging.getLogger("aiollm.stats")
    level = stats.level
    cache = PrefixCache(KVPool(1, 1, 4, 8, dtype=__import__("torch").float32, device="cpu"),
                        ReqToTokenTable(1, 8, "cpu"), log_every_s=0)
    try:
        caplog.set_level(logging.INFO)
        caplog.clear()
        configure_logging(parse(""))
        cache._maybe_log()
        assert [r.name for r in caplog.records] == ["aiollm.stats"]
        caplog.clear()
        configure_logging(parse("--disable-log-stats"))
        cache._maybe_log()
        assert caplog.records == []
    finally:
        stats.setLevel(level)


@pytest.mark.parametrize("argv", [
    ["--model", "M"],  # vLLM's `vllm serve --model M` and its api_server's launch line
    ["--model=M"],
    ["M", "--model", "M"],  # the same model twice is that model
    ["--model", "M", "M"],
])
def test_model_flag_names_the_model_as_the_positional_does(argv):
    assert build_parser().parse_args(["serve", *argv]).model == "M"


@pytest.mark.parametrize("argv", [["A", "--model", "B"], ["--model", "B", "A"]])
def test_two_different_models_are_refused_naming_both(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--model" in err and "'A'" in err and "'B'" in err, err


def test_no_model_is_the_default_model():
    assert build_parser().parse_args(["serve"]).model is None


@pytest.mark.parametrize("argv, flag", [
    (["--max-num-seqs", "0"], "--max-num-seqs"),
    (["--max-running-requests", "0"], "--max-running-requests"),
    (["--max-num-batched-tokens", "0"], "--max-num-batched-tokens"),
    (["--cuda-graph-max-bs", "0"], "--cuda-graph-max-bs"),
    (["-tp", "0"], "-tp"),
])
def test_a_bad_value_of_an_alias_names_the_spelling_typed(argv, flag, capsys):
    """`--max-num-seqs 0` was reported as "argument --max-running-requests: ...", a flag
    the user of a vLLM launch line never wrote."""
    from aiollm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"aiollm serve: error: argument {flag}: "), err


@pytest.mark.parametrize("argv, names", [
    (["M", "--served-model-name", "a", "b"], ["a", "b"]),
    (["--served-model-name", "a", "b", "--model", "M"], ["a", "b"]),
    (["--served-model-name", "a"], ["a"]),
])
def test_served_model_name_takes_several_names_as_vllm_does(argv, names):
    """`--served-model-name a b` stopped with "unrecognized arguments: b"."""
    assert build_parser().parse_args(["serve", *argv]).served_model_name == names


@pytest.mark.parametrize("argv, says", [
    # the flag takes every word after it: a MODEL there was read as a name, and the default
    # model would have been served under both
    (["--served-model-name", "a", "/models/qwen"], "'/models/qwen' was read as a name and no "
                                                   "MODEL was given"),
    (["M", "--served-model-name", "a", " "], "a name must not be empty"),
])
def test_served_names_that_cannot_be_meant_are_usage_errors(argv, says, capsys):
    from aiollm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("aiollm serve: error: argument --served-model-name: "), err
    assert says in err, err


def test_several_names_without_model_say_how_to_name_the_default_model(capsys):
    """`--served-model-name a b` with no MODEL (the default model meant under two names) is a
    usage error that told to put MODEL first, and the default model has no name to put there:
    the error gives its --model."""
    from aiollm.cli import main
    from aiollm.model.paths import default_model_path

    with pytest.raises(SystemExit):
        main(["serve", "--served-model-name", "a", "b"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--model {default_model_path()}" in err, err


def _config(argv: list[str]):
    from aiollm.cli.serve_checks import checked_config

    args = build_parser().parse_args(["serve", "M", *argv])
    return checked_config(args.command_parser, args)[0]


def test_an_inline_chat_template_has_its_backslash_escapes_decoded_as_vllm_does():
    """`--chat-template '{% ... %}\\n...'` from a shell or a Helm value: vLLM decodes the
    escapes of a template given as text (its newlines are real), aiollm rendered a literal
    backslash and n into every prompt. Characters beyond ASCII stay as typed."""
    given = "{% for m in messages %}<|im_start|>{{ m.content }} é\\n\\t{% endfor %}"
    assert _config(["--chat-template", given]).chat_template == (
        "{% for m in messages %}<|im_start|>{{ m.content }} é\n\t{% endfor %}")


def test_a_chat_template_file_is_read_as_it_is(tmp_path):
    """Escapes are the text's own in a file: left alone there, as vLLM leaves them."""
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0].content }}\\n")
    assert _config(["--chat-template", str(path)]).chat_template == (
        "{{ messages[0].content }}\\n")


def test_a_bad_escape_in_an_inline_chat_template_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        _config(["--chat-template", "{{ x }}\\x4"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("aiollm serve: error: argument --chat-template: "), err
    assert "escape" in err, err


@pytest.mark.parametrize("line, dest, value", [
    ("--max_model_len 512", "max_model_len", 512),
    ("--max_num_seqs 7", "max_running_requests", 7),
    ("--served_model_name a_b", "served_model_name", ["a_b"]),  # values keep theirs
    ("--gpu_memory_utilization=0.5", "gpu_memory_utilization", 0.5),
    ("--no_enable_prefix_caching", "prefix_cache", False),
    ("--chat_template={{x_y}}", "chat_template", "{{x_y}}"),
])
def test_flags_spelt_with_underscores_are_taken_as_vllm_takes_them(line, dest, value):
    """vLLM's parser reads --max_model_len as --max-model-len, and launch lines use both;
    aiollm stopped at "unrecognized arguments: --max_model_len"."""
    assert getattr(parse(line), dest) == value


def test_words_after_a_double_dash_keep_their_underscores():
    assert build_parser().parse_args(["serve", "--", "--my_model"]).model == "--my_model"


@pytest.mark.parametrize("argv, kv", [
    (["--dtype", "bfloat16", "--kv-cache-dtype", "bfloat16"], "bfloat16"),
    (["--dtype", "half", "--kv-cache-dtype", "float16"], "float16"),
    (["--kv-cache-dtype", "auto"], "auto"),
])
def test_a_kv_cache_dtype_equal_to_the_dtype_is_taken(argv, kv):
    """vLLM takes --kv-cache-dtype bfloat16 (or float16): the KV cache in that dtype,
    which is aiollm's when the model runs in it; aiollm refused every value but auto."""
    assert _config(argv).kv_cache_dtype == kv


@pytest.mark.parametrize("argv, says", [
    (["--dtype", "float16", "--kv-cache-dtype", "bfloat16"],
     ("kv_cache_dtype bfloat16 differs from dtype float16", "auto or float16")),
    (["--kv-cache-dtype", "fp8"], ("no fp8", "auto", "float32, bfloat16 or float16")),
    (["--kv-cache-dtype", "fp8_e5m2"], ("no fp8",)),
])
def test_a_kv_cache_dtype_other_than_the_models_is_a_usage_error(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        _config(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("aiollm serve: error: argument --kv-cache-dtype: "), err
    for text in says:
        assert text in err, (text, err)


def _checked(argv: list[str]):
    """checked_config of `aiollm serve *argv` (no MODEL added)."""
    from aiollm.cli.serve_checks import checked_config

    args = build_parser().parse_args(["serve", *argv])
    return checked_config(args.command_parser, args)[0]


@pytest.fixture
def config_dir(tmp_path) -> str:
    return tiny_llama(tmp_path, vocab_size=256, max_position_embeddings=2048)


def test_load_format_of_what_the_model_is_is_taken(config_dir):
    """vLLM's --load-format safetensors (a Hugging Face directory) and gguf (a GGUF file):
    aiollm refused both ("invalid choice"); dummy and auto stay as they were."""
    from aiollm.model.paths import default_model_path

    assert _checked([config_dir, "--load-format", "safetensors"]).load_format == "safetensors"
    assert _checked([default_model_path(), "--load-format", "gguf"]).load_format == "gguf"
    assert _checked(["--load-format", "gguf"]).load_format == "gguf"  # the default model
    assert _checked([config_dir, "--load-format", "dummy"]).load_format == "dummy"
    # a missing model is reported as before, once loading starts (exit 1), not here
    assert _checked(["/nonexistent/m", "--load-format", "gguf"]).load_format == "gguf"


@pytest.mark.parametrize("fmt, says", [("gguf", "is a Hugging Face model directory"),
                                       ("safetensors", "is a GGUF file")])
def test_load_format_of_another_kind_of_model_is_a_usage_error(fmt, says, config_dir, capsys):
    from aiollm.model.paths import default_model_path

    model = config_dir if fmt == "gguf" else default_model_path()
    with pytest.raises(SystemExit) as e:
        _checked([model, "--load-format", fmt])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("aiollm serve: error: argument --load-format: "), err
    assert says in err and model in err and "auto" in err, err


def test_a_load_format_aiollm_lacks_names_those_it_has(capsys):
    err = refusal("--load-format pt", capsys)
    assert "argument --load-format" in err, err
    for fmt in ("auto", "safetensors", "gguf", "dummy"):
        assert fmt in err, err


def test_flags_of_no_effect_are_logged_as_such(caplog):
    """A vLLM flag that changes nothing is accepted, and the start-up log says so: the flag,
    its value, and why (--all2all-backend stopped a vLLM MoE launch line with argparse's
    "unrecognized arguments")."""
    with caplog.at_level(logging.INFO, logger="aiollm.cli"):
        _config(["--all2all-backend", "deepep_low_latency", "--no-enable-eplb",
                 "--expert-placement-strategy", "round_robin"])
    said = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert len(said) == 3, said
    assert said[0].startswith("--all2all-backend deepep_low_latency has no effect: ")
    assert "expert parallelism" in said[0], said
    assert said[1].startswith("--no-enable-eplb has no effect: "), said
    assert said[2].startswith("--expert-placement-strategy round_robin has no effect: "), said
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="aiollm.cli"):
        _config([])
    assert not [r for r in caplog.records if "has no effect" in r.getMessage()]


@pytest.mark.parametrize("value", ["-1", '"two"', "1.5", "[]"])
def test_an_eplb_config_of_no_count_of_experts_says_so(value, capsys):
    """num_redundant_experts that is no whole number of 0 or more (vLLM's EPLBConfig refuses
    it whatever the flags) was refused as "asking for redundant experts", which -1 does
    not; a string of 0 was refused so too, where vLLM reads it as 0."""
    line = refusal(f'--eplb-config {{"num_redundant_experts":{value}}}', capsys)
    assert "num_redundant_experts must be a whole number, 0 or more" in line, line
    assert "asks for redundant experts" not in line, line


@pytest.mark.parametrize("line, json", [
    ("--eplb-config.window_size 1000 --eplb-config.step_interval=3000",
     '{"window_size": 1000, "step_interval": 3000}'),
    ("--eplb_config.log_balancedness true", '{"log_balancedness": true}'),
    ("--eplb-config.policy default", '{"policy": "default"}'),
])
def test_a_json_flags_keys_given_one_by_one_are_its_json(line, json):
    """vLLM's parser takes a JSON flag's keys one by one (--eplb-config.window_size 1000
    is --eplb-config '{"window_size": 1000}'), its keys' underscores kept: such a vLLM launch
    line stopped at "unrecognized arguments"."""
    assert parse(line).no_effect == [(f"--eplb-config {json}", NO_EXPERT_BALANCING)]


NO_EXPERT_BALANCING = next(i.why for i in vllm_flags.NO_EFFECT_VALUES
                           if i.names == ("--eplb-config",))


@pytest.mark.parametrize("line, said", [
    ("--eplb-config.num_redundant_experts 32", "num_redundant_experts 32"),
    ("--compilation-config.mode 7", "mode takes 0, 1, 2, 3"),
    ("--speculative-config.method ngram --speculative-config.num_speculative_tokens 4",
     "speculative decoding is not supported"),
])
def test_a_refused_json_flag_given_key_by_key_is_refused_as_itself(line, said, capsys):
    assert said in refusal(line, capsys)


def test_json_keys_reads_lists_nesting_and_stops_at_a_double_dash():
    from aiollm.cli.flag_spelling import json_keys

    assert json_keys(["--x.a+", "1,2", "--x.a+=3", "--x.b.c", "v", "--y", "--", "--z.k=1"]) == [
        "--y", "--x", '{"a": ["1", "2", "3"], "b": {"c": "v"}}', "--", "--z.k=1"]
    assert json_keys(["--x.a"]) == ["--x.a"]  # no value: argparse says so


@pytest.mark.parametrize("flag", ["-q", "--quantization"])
def test_quantization_gguf_with_a_hugging_face_directory_is_a_usage_error(flag, config_dir,
                                                                          capsys):
    """vLLM's --quantization gguf names what a GGUF file is: taken with a .gguf model (the
    default one too), and a usage error naming both with an HF directory, which vLLM would
    fail to load as GGUF; it was taken silently there."""
    from aiollm.model.paths import default_model_path

    assert _checked([default_model_path(), flag, "gguf"]).model == default_model_path()
    _checked([flag, "gguf"])  # the default model
    _checked(["/nonexistent/m", flag, "gguf"])  # missing: reported once loading starts
    with pytest.raises(SystemExit) as e:
        _checked([config_dir, flag, "gguf"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"aiollm serve: error: argument {flag} gguf: "), err
    assert "Hugging Face model directory" in err and config_dir in err, err
    assert "leave the flag out" in err, err
