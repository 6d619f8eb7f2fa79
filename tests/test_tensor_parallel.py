"""Tensor parallelism on the CPU (gloo, 2 ranks, fp32): the same greedy tokens as one rank,
a lost rank ends the server loudly, shutdown leaves no process, and two "nodes" on loopback
serve a request."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest
import torch
from transformers import LlamaConfig

from serve_log import logged_base
from tp_gguf import tiny_gguf  # noqa: F401 - a fixture

from aiollm.engine import Engine
from aiollm.sampling_params import SamplingParams

AIOLLM = str(Path(sys.executable).with_name("aiollm"))
# fewer KV heads (1) than ranks (2), and a vocabulary the ranks split unevenly (161)
TINY = LlamaConfig(vocab_size=161, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
                   attention_bias=True, tie_word_embeddings=True)
PROMPTS = [[3, 17, 99, 4, 150], [42, 8, 1, 77, 159, 0, 12], [5, 6]]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from transformers import AutoModelForCausalLM

    path = str(tmp_path_factory.mktemp("tiny-tp"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(TINY).eval()
    with torch.no_grad():  # large weights: the argmax then changes from token to token
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if "norm" in name else 0.5)
                    + (1.0 if name.endswith("norm.weight") else 0.0))
    model.save_pretrained(path, safe_serialization=True)
    _save_tokenizer(path)
    return path


def _save_tokenizer(path: str) -> None:
    """A word-level tokenizer of the tiny vocabulary (the default model's takes seconds to
    parse from its GGUF file, in every process that serves)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, TINY.vocab_size)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>").save_pretrained(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _generate(model: str | None, tp: int, prompts: list = PROMPTS, **options
                    ) -> tuple[list, list]:
    """Greedy and seeded-sampled token ids of `prompts`, and the pids of the spawned ranks."""
    async with Engine(model, device="cpu", tensor_parallel_size=tp, kv_tokens=1024,
                      max_model_len=256, **options) as engine:
        ids = await _generated(engine, prompts)
        procs = list(engine.ranks.procs.values()) if engine.ranks else []
    return ids, procs


async def _generated(engine: Engine, prompts: list) -> list:
    """_generate's token ids of `prompts` from the started `engine`."""
    greedy = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    sampled = SamplingParams(max_tokens=6, temperature=1.0, seed=7, ignore_eos=True)
    outs = await asyncio.gather(*(engine.generate(p, greedy) for p in prompts),
                                engine.generate(prompts[0], sampled))
    return [o.token_ids for o in outs]


@pytest.fixture(scope="module")
def tiny_tp2(tiny_model, tmp_path_factory) -> dict:
    """What one -tp 2 engine on tiny_model (kv_tokens 1024, max_model_len 256, the prefix
    cache on: _generate's engine and _prefix_outputs' with the cache) answered, for the two
    tests that compare it with one rank: _generate's batch ("two"), then _prefix_outputs'
    requests ("prefix": ids, cached-token counts), each made as its own engine made them;
    the spawned ranks ("procs") and the folder that was the engine's temporary directory
    ("tmp_path"). One rank process started, not two (an interpreter and torch's import:
    ~2 s of CPU). The batch shares no prefix with _prefix_outputs' prompts (their first
    tokens differ), so the second finds nothing of the first's in the cache."""
    tmp_path = tmp_path_factory.mktemp("tiny-tp2")

    async def go() -> dict:
        async with Engine(tiny_model, device="cpu", tensor_parallel_size=2, kv_tokens=1024,
                          max_model_len=256, prefix_cache=True) as engine:
            two = await _generated(engine, PROMPTS)
            prefix = await _prefix_outputs_of(engine)
            procs = list(engine.ranks.procs.values())
        return {"two": two, "prefix": prefix, "procs": procs, "tmp_path": tmp_path}

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        return asyncio.run(go())


def test_tp2_equals_tp1_with_fewer_kv_heads_than_ranks(tiny_model, tiny_tp2, tmp_path,
                                                       monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    one, _ = asyncio.run(_generate(tiny_model, 1))
    two, procs = tiny_tp2["two"], tiny_tp2["procs"]  # (_generate(tiny_model, 2)'s)
    for tmp_path in (tmp_path, tiny_tp2["tmp_path"]):  # each engine's temporary directory
        assert list(tmp_path.iterdir()) == []  # the ranks' error files went with them
    assert len({tuple(t) for t in one[:3]}) > 1 and len(set(one[0])) > 2  # not degenerate
    assert two == one
    # the engine's stop ended its rank: it exited by itself, cleanly
    assert [p.poll() for p in procs] == [0]


async def _prefix_outputs(model: str, tp: int, cache: bool) -> tuple[list, list]:
    """Greedy ids and cached-token counts of prompts that share a 40-token prefix, and of a
    second turn that extends the first prompt and its answer."""
    async with Engine(model, device="cpu", tensor_parallel_size=tp, kv_tokens=1024,
                      max_model_len=256, prefix_cache=cache) as engine:
        return await _prefix_outputs_of(engine)


async def _prefix_outputs_of(engine: Engine) -> tuple[list, list]:
    """_prefix_outputs' ids and cached-token counts from the started `engine`."""
    base = [(7 * i) % 150 + 1 for i in range(40)]
    greedy = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    first = await engine.generate(base + [100], greedy)
    rest = await asyncio.gather(*(engine.generate(base + [t, t + 1], greedy)
                                  for t in (101, 120, 140)))
    turn = await engine.generate(base + [100] + first.token_ids + [7], greedy)
    outs = [first, *rest, turn]
    return [o.token_ids for o in outs], [o.cached_tokens for o in outs]


def test_tp2_prefix_cache_hits_give_the_same_tokens(tiny_model, tiny_tp2):
    # a hit's slots reach the other rank's req_to_token in the next step message
    want, _ = asyncio.run(_prefix_outputs(tiny_model, 1, cache=False))
    got, cached = tiny_tp2["prefix"]  # (_prefix_outputs(tiny_model, 2, cache=True)'s)
    assert got == want
    assert cached[0] == 0 and min(cached[1:4]) >= 40 and cached[4] >= 41 + 8 - 1, cached


def test_start_up_checks_the_heads_split(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    async def start():
        async with Engine(tiny_model, device="cpu", tensor_parallel_size=3):
            pass

    # 4 attention heads over 1 KV head: 3 ranks cannot share them out
    with pytest.raises(ValueError, match="tensor parallel size 3 does not fit this model"):
        asyncio.run(start())
    assert list(tmp_path.iterdir()) == []


def test_a_node_that_fails_to_start_leaves_no_temporary_directory(tiny_model, tmp_path,
                                                                 monkeypatch):
    """The lead process of a node other than 0 (aiollm serve --node-rank 1) whose start
    fails (here: 6 ranks cannot share out the heads) removes its ranks' error-file
    directory as rank 0's engine does: it left one aiollm-tp-* in /tmp per failed start."""
    from aiollm.config import EngineConfig
    from aiollm.distributed import rendezvous
    from aiollm.distributed.follower import follow

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # no node 0 here to tell of the failure (rendezvous.py): it is not waited for
    monkeypatch.setattr(rendezvous, "TELL_S", 0.0)
    cfg = EngineConfig(model=tiny_model, device="cpu", tensor_parallel_size=6, nnodes=2,
                       node_rank=1, dist_init_addr="127.0.0.1:1")
    with pytest.raises(ValueError, match="tensor parallel size 6 does not fit this model"):
        follow(cfg)
    assert list(tmp_path.iterdir()) == []


def _children(pid: int) -> list[int]:
    """Child pids of `pid`, read thread by thread; a thread that exits between the listing
    and the read (a pytest or gloo worker thread) has none."""
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except FileNotFoundError:
            continue
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _serve(args: list[str], log: Path, tmp: Path | None = None) -> subprocess.Popen:
    """`aiollm serve` on the CPU, its output in `log`, its temporary files under `tmp`."""
    env = {**os.environ, "TMPDIR": str(tmp)} if tmp is not None else None
    with open(log, "w") as out:
        return subprocess.Popen([AIOLLM, "serve", "--device", "cpu", "--kv-tokens", "1024",
                                 "--max-model-len", "256", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


async def _until_healthy(proc: subprocess.Popen, log: Path, timeout=240) -> str:
    """The base URL of `aiollm serve --port 0` (from its log) once it answers /health."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"aiollm serve exited:\n{log.read_text()}"
            base = logged_base(log)
            try:
                if base is not None:
                    async with s.get(base + "/health") as r:
                        if r.status == 200:
                            return base
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    pytest.fail(f"aiollm serve did not become healthy:\n{log.read_text()}")


async def _complete(base: str, prompt: list[int], max_tokens: int) -> str:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/v1/completions", json=body) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["choices"][0]["text"]


@pytest.mark.slow  # two loads of the default model in the test process and one in rank 1
def test_default_model_tp2_equals_tp1():
    # SmolLM2-135M: 9 heads over 3 KV heads, split 6 + 3 over the two ranks
    one, _ = asyncio.run(_generate(None, 1))
    two, _ = asyncio.run(_generate(None, 2))
    assert two == one


def test_a_killed_rank_ends_the_server(tiny_gguf, tmp_path):
    log, tmp = tmp_path / "serve.log", tmp_path / "tmp"
    tmp.mkdir()
    proc = _serve(["--port", "0", "-tp", "2", tiny_gguf], log, tmp)
    try:
        base = asyncio.run(_until_healthy(proc, log))
        (rank1,) = _children(proc.pid)

        async def stream_then_kill():
            body = {"prompt": PROMPTS[0], "max_tokens": 200, "temperature": 0,
                    "stream": True, "ignore_eos": True}
            async with aiohttp.ClientSession() as s:
                async with s.post(base + "/v1/completions", json=body) as r:
                    assert r.status == 200
                    await r.content.readline()  # serving has begun
                    os.kill(rank1, signal.SIGKILL)
                    t0 = time.monotonic()
                    return t0, (await r.read()).decode()

        t0, tail = asyncio.run(stream_then_kill())
        assert proc.wait(timeout=15) == 1
        assert time.monotonic() - t0 < 10
        # the client is told which rank was lost (it was told gloo's "Connection reset by
        # peer ... Check the logs of the remote worker") before the server exits
        assert "tensor parallel rank 1 was killed by SIGKILL" in tail, tail
        assert "gloo" not in tail, tail
        text = log.read_text()
        assert "tensor parallel rank 1 was killed by SIGKILL: stopping the server" in text, text
        assert not _alive(rank1)
        assert list(tmp.iterdir()) == []  # nor its error files
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_nodes_on_loopback_serve_and_stop(tiny_gguf, tmp_path):
    # the rendezvous' port must be known to both nodes before either binds it
    init = f"127.0.0.1:{_free_port()}"
    common = ["-tp", "2", "--nnodes", "2", "--dist-init-addr", init, tiny_gguf]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    tmps = [tmp_path / "tmp0", tmp_path / "tmp1"]
    for t in tmps:
        t.mkdir()
    nodes = [_serve(["--port", "0", "--node-rank", "0", *common], logs[0], tmps[0]),
             _serve(["--node-rank", "1", *common], logs[1], tmps[1])]
    try:
        base = asyncio.run(_until_healthy(nodes[0], logs[0]))
        assert _children(nodes[0].pid) == [] and _children(nodes[1].pid) == []
        text = asyncio.run(_complete(base, PROMPTS[1], 8))
        assert text
        nodes[0].send_signal(signal.SIGTERM)  # rank 0 stops rank 1 on the other node
        assert nodes[0].wait(timeout=30) == 0, logs[0].read_text()
        assert nodes[1].wait(timeout=15) == 0, logs[1].read_text()
        assert [list(t.iterdir()) for t in tmps] == [[], []]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def tp_moe(tmp_path_factory) -> tuple:
    """test_tp2_moe_matches_transformers' model, the same in each layout: the folder it was
    saved in (one tensor per expert, as transformers saves them; a layout test copies it
    before it writes another layout there), the transformers model and its greedy ids of
    PROMPTS. Built once for the three layouts (a model built and 30 steps of transformers:
    ~1.2 s of CPU each)."""
    from test_moe_model import hf_greedy, save_moe_model, variant

    model_dir = tmp_path_factory.mktemp("tp-moe") / "hf"
    hf = save_moe_model("qwen2_moe", model_dir, variant(
        "qwen2_moe", vocab_size=161, moe_intermediate_size=33,
        shared_expert_intermediate_size=50, mlp_only_layers=[1]), tokenizer=False)
    _save_tokenizer(str(model_dir))
    hf.config._experts_implementation = "eager"  # its grouped_mm takes no odd width
    want = [hf_greedy(hf, p, 10) for p in PROMPTS]
    return model_dir, hf, want


@pytest.mark.parametrize("layout", ["per-expert", "fused", "gguf"])
def test_tp2_moe_matches_transformers(tp_moe, tmp_path, monkeypatch, layout):
    """A mixture-of-experts model over two ranks (each expert's features split as an MLP's;
    the router replicated): Qwen2-MoE with its shared expert, a dense layer between sparse
    ones (mlp_only_layers) and widths the ranks split unevenly, from one tensor per expert
    (as transformers saves them), from all experts' gate/up in one tensor (transformers 5's
    state dict saved as it is) and from stacked experts (GGUF's ffn_*_exps). It was refused
    ("does not split mixture-of-experts layers yet")."""
    import shutil

    from safetensors.torch import save_file
    from test_moe_model import write_moe_gguf

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    saved, hf, want = tp_moe
    model, tokenizer = str(saved), None
    if layout == "fused":
        model_dir = shutil.copytree(saved, tmp_path / "hf")
        save_file({n: t.contiguous() for n, t in hf.state_dict().items()},
                  model_dir / "model.safetensors", metadata={"format": "pt"})
        model = str(model_dir)
    if layout == "gguf":
        model, tokenizer = str(tmp_path / "model.gguf"), str(saved)
        write_moe_gguf(hf, model)
    got, procs = asyncio.run(_generate(model, 2, tokenizer=tokenizer))
    assert got[:3] == want
    assert [p.poll() for p in procs] == [0]


@pytest.mark.parametrize("field, value", [("intermediate_size", 64),
                                          ("moe_intermediate_size", 24)])
def test_tp2_refuses_a_config_json_of_another_size_as_one_rank_does(tiny_model, tmp_path,
                                                                    monkeypatch, field, value):
    """A config.json whose MLP (or experts') width is smaller than the checkpoint's: one rank
    refuses it naming the field; two ranks each copied a slice of the wrong features and
    served the garbage (and a larger width failed in torch's narrow, naming nothing)."""
    import json
    import shutil

    from test_loader import save_random_hf_model
    from test_moe_model import FAMILIES

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = tmp_path / "model"
    if field == "intermediate_size":
        shutil.copytree(tiny_model, model)
    else:
        save_random_hf_model(FAMILIES["qwen2_moe"], str(model))
        _save_tokenizer(str(model))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, field: value}))

    async def start():
        async with Engine(str(model), device="cpu", tensor_parallel_size=2, kv_tokens=256,
                          max_model_len=128):
            pass

    with pytest.raises(ValueError, match=rf"has shape .* \(config.json's {field}, "):
        asyncio.run(start())


@pytest.mark.parametrize("arch, field, what", [
    ("qwen2_moe", "moe_intermediate_size", "experts"),
    # Qwen3-MoE's layer 1 is dense (mlp_only_layers): rank 1 failed its load instead
    # ("intermediate_size must be >= 1, got 0") and rank 0 reported gloo's "Connection
    # closed by peer"
    ("qwen3_moe", "intermediate_size", "dense MLPs"),
])
def test_start_up_checks_the_mlp_split(tmp_path, monkeypatch, arch, field, what):
    """More ranks than an expert's (or a dense MLP's) intermediate features would leave a
    rank zero-width weights: refused at start-up, naming both numbers."""
    from test_moe_model import variant

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    variant(arch, **{field: 1}).save_pretrained(tmp_path / "model")
    _save_tokenizer(str(tmp_path / "model"))

    async def start():
        async with Engine(str(tmp_path / "model"), device="cpu", tensor_parallel_size=2,
                          load_format="dummy"):
            pass

    with pytest.raises(ValueError, match="tensor parallel size 2 exceeds the 1 intermediate "
                                         f"features of this model's {what}"):
        asyncio.run(start())
    assert list((tmp_path / "tmp").iterdir()) == []


def test_tp2_runs_a_moe_model_whose_unused_dense_width_is_narrower_than_the_ranks(
        tmp_path, monkeypatch):
    """A Qwen3-MoE model whose every layer is sparse never builds a dense MLP, whatever its
    intermediate_size says (transformers leaves it unread; start-up's split check skips it
    too). Each rank's config still cut that width among the ranks, and rank 1 failed its load
    ("model config: intermediate_size must be >= 1, got 0") while rank 0 reported gloo's
    "Connection closed by peer"."""
    from test_moe_model import hf_greedy, save_moe_model, variant

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = variant("qwen3_moe", vocab_size=161, intermediate_size=1, mlp_only_layers=[])
    hf = save_moe_model("qwen3_moe", tmp_path / "model", config, tokenizer=False)
    _save_tokenizer(str(tmp_path / "model"))
    want = [hf_greedy(hf, p, 10) for p in PROMPTS]
    got, _ = asyncio.run(_generate(str(tmp_path / "model"), 2))
    assert got[:3] == want


@pytest.mark.parametrize("fields", [dict(mlp_only_layers=[0, 1, 2]),
                                    dict(decoder_sparse_step=4, mlp_only_layers=[])])
def test_the_split_check_skips_the_expert_width_of_a_model_without_sparse_layers(fields):
    """A Qwen3-MoE config whose every layer is dense (mlp_only_layers naming them all, or a
    decoder_sparse_step past the last layer) builds no experts, in transformers and here:
    its moe_intermediate_size is unread. The split check still compared it with the ranks
    and refused -tp 2 ("exceeds the 1 intermediate features of this model's experts"); each
    rank's config then cut it to 0 features (MoeConfig refused that)."""
    from test_moe_model import variant

    from aiollm.model.hf_config import config_from_hf
    from aiollm.model.parallel import ShardPlan, check_divisible

    config = config_from_hf(variant("qwen3_moe", moe_intermediate_size=1, **fields))
    assert config.moe is None  # every MLP dense: no expert field is read
    check_divisible(config, 2)
    assert [ShardPlan.of(config, r, 2).intermediate for r in (0, 1)] == [(0, 40), (40, 40)]
    sparse = config_from_hf(variant("qwen3_moe", moe_intermediate_size=1,
                                    mlp_only_layers=[0, 1]))
    with pytest.raises(ValueError, match="tensor parallel size 2 exceeds the 1 intermediate "
                                         "features of this model's experts"):
        check_divisible(sparse, 2)


def test_tp2_runs_a_moe_model_whose_every_layer_is_dense(tmp_path, monkeypatch):
    """The model of the test above, served over two ranks: transformers' greedy tokens."""
    from test_moe_model import hf_greedy, save_moe_model, variant

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = variant("qwen3_moe", vocab_size=161, moe_intermediate_size=1,
                     mlp_only_layers=[0, 1, 2])
    hf = save_moe_model("qwen3_moe", tmp_path / "model", config, tokenizer=False)
    _save_tokenizer(str(tmp_path / "model"))
    want = [hf_greedy(hf, p, 10) for p in PROMPTS]
    got, _ = asyncio.run(_generate(str(tmp_path / "model"), 2))
    assert got[:3] == want


def test_tp2_dummy_weights_of_a_moe_model_equal_tp1(tmp_path, monkeypatch):
    """--load-format dummy serves the same random model at any rank count: each rank keeps
    its part of the whole model's random tensors. A shared expert's gate/up were cut at the
    dense MLP's width (intermediate_size), which failed under -tp 2."""
    from test_moe_model import FAMILIES

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    FAMILIES["qwen2_moe"].save_pretrained(tmp_path / "model")
    _save_tokenizer(str(tmp_path / "model"))
    model = str(tmp_path / "model")
    one, _ = asyncio.run(_generate(model, 1, load_format="dummy"))
    two, _ = asyncio.run(_generate(model, 2, load_format="dummy"))
    assert two == one


_LOST_AFTER_STOP = """
import asyncio, os, signal, sys, time
from aiollm import Engine, SamplingParams
from aiollm.errors import RequestFailed

async def main():
    engine = Engine(sys.argv[1], device="cpu", tensor_parallel_size=2, kv_tokens=1024,
                    max_model_len=256)
    await engine.start()
    (rank1,) = engine.ranks.procs.values()
    stream = engine.stream([3, 17], SamplingParams(max_tokens=200, ignore_eos=True))
    await anext(stream)
    rank1.kill()
    time.sleep(2)  # the event loop busy as the rank dies (a loaded CPU, a long tokenization)
    try:
        async for _ in stream:
            pass
    except RequestFailed as e:
        print("failed:", e, flush=True)
    await engine.stop()

asyncio.run(main())
time.sleep(60)  # the lost rank ends the process meanwhile (within a second, unloaded)
"""


def test_a_rank_lost_as_an_offline_engine_stops_ends_the_process_cleanly(tiny_gguf):
    """An Engine (not a server) whose rank dies, stopped by its user once its request
    failed, before the watchdog ends the process: the watchdog's failing of the requests in
    flight met the closed event loop and logged a traceback ("Event loop is closed") under
    the rank's message. The event loop is busy for 2 s as the rank dies: the watchdog gave
    it 0.5 s to fail the requests in flight, then ended the process under them, so their
    callers never got the rank's error (a server's clients: a cut stream)."""
    proc = subprocess.run([sys.executable, "-c", _LOST_AFTER_STOP, tiny_gguf],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "failed: tensor parallel rank 1 was killed by SIGKILL" in out, out
    assert "tensor parallel rank 1 was killed by SIGKILL: stopping the server" in out, out
    assert "while failing the requests in flight" not in out, out
    assert "Event loop is closed" not in out, out


def test_tp2_gemma_matches_transformers_and_its_dummy_weights_one_rank(tmp_path, monkeypatch):
    """Gemma over two ranks: each rank adds the 1 of its norms' 1 + w (float32), scales the
    embedding after the vocabulary-parallel all-reduce, its one KV head replicated on both
    ranks; transformers' greedy tokens. Its dummy weights (norms' w 0: 1 + w = 1) are one
    rank's too."""
    from transformers import GemmaConfig

    from test_gemma import GEMMA_TINY, save_gemma
    from test_moe_model import hf_greedy

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = tmp_path / "hf"
    hf = save_gemma(GemmaConfig(**{**GEMMA_TINY, "vocab_size": TINY.vocab_size},
                                num_key_value_heads=1), model)
    _save_tokenizer(str(model))
    got, procs = asyncio.run(_generate(str(model), 2))
    assert got[:3] == [hf_greedy(hf, p, 10) for p in PROMPTS]
    one, _ = asyncio.run(_generate(str(model), 1, load_format="dummy"))
    two, _ = asyncio.run(_generate(str(model), 2, load_format="dummy"))
    assert two == one


def test_tp2_phi3_matches_transformers(tmp_path, monkeypatch):
    """Phi-3 over two ranks: its fused qkv_proj and gate_up_proj split so that each rank holds
    its own q, k and v heads and gate and up rows (one kv head each), with Phi-4-mini's
    partial rotary, LongRoPE and tied embeddings over a vocabulary the ranks split unevenly:
    greedy ids are transformers', for a prompt longer than the original context too (its
    first tokens' rotary rows, which the followers take from the step message)."""
    from transformers import Phi3Config

    from test_loader import save_random_hf_model
    from test_moe_model import hf_greedy
    from test_phi3_model import FAMILIES

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model_dir = str(tmp_path / "hf")
    config = Phi3Config(**{**FAMILIES["longrope-partial"].to_dict(), "vocab_size": 161})
    hf = save_random_hf_model(config, model_dir)
    with torch.no_grad():  # large weights: the argmax then changes from token to token
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    hf.save_pretrained(model_dir)
    _save_tokenizer(model_dir)
    prompts = PROMPTS + [[(11 * i + 5) % 160 for i in range(40)]]  # 40 > 32: all long
    want = [hf_greedy(hf, p, 10) for p in prompts]
    got, procs = asyncio.run(_generate(model_dir, 2, prompts))
    assert got[:4] == want
    assert [p.poll() for p in procs] == [0]


def test_tp2_gemma3_with_soft_caps_matches_transformers(tmp_path, monkeypatch):
    """Gemma 3 over two ranks, with Gemma 2's attention and final logit soft-caps set (one
    model covers both generations' additions): each rank holds one KV head and its q/k
    norms whole, the sandwich norms whole, both rotary tables (the sliding layer's own
    base, the global one's linear scaling), and caps its own vocabulary part's logits
    before the gather (161 tokens, split unevenly): greedy ids are transformers', and the
    seeded sample (which the final cap, monotonic, moves where greedy ids cannot) one
    rank's."""
    from transformers import Gemma3TextConfig

    from test_gemma import save_gemma
    from test_gemma3 import GEMMA3_TINY
    from test_moe_model import hf_greedy

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = tmp_path / "hf"
    config = Gemma3TextConfig(**{**GEMMA3_TINY, "vocab_size": TINY.vocab_size},
                              attn_logit_softcapping=1.0, final_logit_softcapping=2.0)
    hf = save_gemma(config, model)
    _save_tokenizer(str(model))
    want = [hf_greedy(hf, p, 10) for p in PROMPTS]
    got, procs = asyncio.run(_generate(str(model), 2))
    assert got[:3] == want
    assert [p.poll() for p in procs] == [0]
    one, _ = asyncio.run(_generate(str(model), 1))
    assert got == one
