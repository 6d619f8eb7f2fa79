"""The on-disk cache of what is derived from GGUF files (aiollm/model/derived_cache.py): what
a load stores, that a later load reads it back to the same model, and that a cache turned off,
a damaged entry or a changed file never gives a wrong model."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from test_loader import FAMILIES, save_random_hf_model, write_gguf

from aiollm.model import load_model
from aiollm.model.loader import read_config
from aiollm.model.config import ModelConfig, MoeConfig
from aiollm.model.derived_cache import (
    GGUFCache,
    config_from_dict,
    config_to_dict,
    file_digest,
)
from aiollm.model.rope_config import RopeConfig
from aiollm.model.weights_gguf import iter_gguf, read_gguf


@pytest.fixture
def gguf_file(tmp_path, monkeypatch):
    """A tiny llama GGUF file, and an empty cache of this test's own."""
    monkeypatch.setenv("AIOLLM_CACHE_DIR", str(tmp_path / "cache"))
    hf = save_random_hf_model(FAMILIES["llama3-rope-untied"], str(tmp_path / "hf"))
    path = str(tmp_path / "model.gguf")
    write_gguf(hf, path)
    return path


def params(path: str) -> dict[str, torch.Tensor]:
    model = load_model(path, dtype=torch.float32, device="cpu").model
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_load_stores_config_and_parameters_and_the_next_reads_them(gguf_file):
    first = params(gguf_file)
    entry = GGUFCache(gguf_file).dir
    with open(gguf_file, "rb") as f:
        assert os.path.basename(entry) == hashlib.sha256(f.read()).hexdigest()
    stored = sorted(os.listdir(entry))
    assert stored[0].startswith("config-") and stored[1].startswith("params-")
    assert stored[1].endswith("-float32.safetensors") and len(stored) == 2
    assert config_from_dict(json.load(open(os.path.join(entry, stored[0])))) == \
        read_gguf(gguf_file).config
    second = params(gguf_file)
    assert second.keys() == first.keys()
    assert all(torch.equal(second[n], first[n]) for n in first)
    # bfloat16 is another entry of the same file
    bf16 = load_model(gguf_file, dtype=torch.bfloat16, device="cpu").model
    assert bf16.embed_tokens.weight.dtype == torch.bfloat16
    assert any(n.endswith("-bfloat16.safetensors") for n in os.listdir(entry))
    again = load_model(gguf_file, dtype=torch.bfloat16, device="cpu").model
    assert torch.equal(again.embed_tokens.weight, bf16.embed_tokens.weight)


def test_a_damaged_entry_is_derived_again(gguf_file):
    first = params(gguf_file)
    entry = GGUFCache(gguf_file).dir
    [name] = [n for n in os.listdir(entry) if n.startswith("params-")]
    with open(os.path.join(entry, name), "wb") as f:
        f.write(b"\x00not a safetensors file")
    with open(GGUFCache(gguf_file).config_path, "w") as f:
        f.write("{not json")
    second = params(gguf_file)
    assert all(torch.equal(second[n], first[n]) for n in first)
    third = params(gguf_file)  # and the entry was written again
    assert all(torch.equal(third[n], first[n]) for n in first)
    assert os.path.getsize(os.path.join(entry, name)) > 1000


def test_a_changed_file_is_another_entry(gguf_file, tmp_path):
    first = params(gguf_file)
    hf = save_random_hf_model(FAMILIES["llama3-rope-untied"], str(tmp_path / "hf2"))
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(2)
    write_gguf(hf, gguf_file)  # same path, new content
    second = params(gguf_file)
    assert not torch.equal(second["embed_tokens.weight"], first["embed_tokens.weight"])
    assert len(os.listdir(os.path.join(str(tmp_path / "cache"), "gguf-v1"))) == 2


def test_a_config_derived_by_other_code_is_not_used(tmp_path, monkeypatch):
    """A config stored by another aiollm version is derived again: one stored before GGUF
    rope.dimension_count was checked let a file with partial rotary skip the check (with the
    dequantized weights a GPU start stores, nothing parsed the file again)."""
    monkeypatch.setenv("AIOLLM_CACHE_DIR", str(tmp_path / "cache"))
    hf = save_random_hf_model(FAMILIES["qwen2-qkv-bias-tied"], str(tmp_path / "hf"))
    full, partial = str(tmp_path / "full.gguf"), str(tmp_path / "partial.gguf")
    write_gguf(hf, full)
    write_gguf(hf, partial, rope_dims=8)
    # the partial file's entry as older code left it: the config derived without the check
    # (the full file's) under the name versions before config-<code>.json used, and under
    # another code's key; the dequantized weights
    gguf = read_gguf(full)
    entry = GGUFCache(partial).dir
    os.makedirs(entry)
    for name in ("config.json", "config-0123456789abcdef.json"):
        with open(os.path.join(entry, name), "w") as f:
            json.dump(config_to_dict(gguf.config), f)
    dict(GGUFCache(partial).recording(iter_gguf(gguf), gguf.config))
    assert GGUFCache(partial).weights_path is not None
    with pytest.raises(ValueError, match="rope.dimension_count 8 differs from head_dim 16"):
        read_config(partial)
    with pytest.raises(ValueError, match="rope.dimension_count 8 differs from head_dim 16"):
        load_model(partial, dtype=torch.float32, device="cpu")


def test_storing_a_part_keeps_one_copy_under_another_key(gguf_file):
    """After an upgrade (another code key) a store keeps the most recently written copy of
    the same part under another key (two versions sharing the cache keep theirs, instead of
    deleting each other's at every start) and removes the older ones: the parameters and
    dequantized weights can be up to MAX_WEIGHT_BYTES each. Other parts, and other dtypes'
    parameters, stay."""
    gguf = read_gguf(gguf_file)
    cache = GGUFCache(gguf_file)
    os.makedirs(cache.dir)
    older = ["config.json", "model.safetensors", "params-0000000000000000-float32.safetensors"]
    newer = ["config-0123456789abcdef.json", "model-0123456789abcdef.safetensors",
             "params-0123456789abcdef-float32.safetensors"]
    other_dtype = ["params-0000000000000000-bfloat16.safetensors"]
    for t, names in ((1_000, older + other_dtype), (2_000, newer)):
        for name in names:
            path = os.path.join(cache.dir, name)
            with open(path, "wb") as f:
                f.write(b"from another version")
            os.utime(path, (t, t))
    params(gguf_file)  # stores the config and the float32 parameters
    dict(cache.recording(iter_gguf(gguf), gguf.config))  # and the dequantized weights
    left = sorted(os.listdir(cache.dir))
    assert not set(older) & set(left), left
    assert set(newer + other_dtype) <= set(left), left
    assert os.path.basename(cache.weights_path).startswith("model-")
    assert os.path.basename(cache.weights_path) != "model-0123456789abcdef.safetensors"
    assert len(left) == 7, left  # our three parts, the newer three, the other dtype's
    # a part another version reads back stays in place at our next start
    params(gguf_file)
    assert set(newer) <= set(os.listdir(cache.dir))


def test_the_cache_can_be_turned_off(gguf_file, tmp_path, monkeypatch):
    monkeypatch.setenv("AIOLLM_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert GGUFCache(gguf_file).dir is None
    first, second = params(gguf_file), params(gguf_file)
    assert all(torch.equal(second[n], first[n]) for n in first)
    assert not os.path.exists(tmp_path / "cache")
    assert not os.path.exists(tmp_path / "xdg") and not os.path.exists(tmp_path / "home")


def test_dequantized_weights_read_back_as_written(gguf_file):
    """The transformers-named weights that GPU and tensor-parallel loads store and read."""
    gguf = read_gguf(gguf_file)
    cache = GGUFCache(gguf_file)
    assert cache.weights_path is None
    direct = dict(cache.recording(iter_gguf(gguf), gguf.config))
    from aiollm.model.weights_hf import iter_safetensors

    back = dict(iter_safetensors([cache.weights_path], torch.device("cpu")))
    assert back.keys() == direct.keys()
    assert all(torch.equal(back[n], direct[n]) for n in direct)
    with open(cache.weights_path, "r+b") as f:  # damaged: a start must derive them again
        f.truncate(os.path.getsize(cache.weights_path) - 100)
    assert cache.weights_path is None
    assert dict(cache.recording(iter_gguf(gguf), gguf.config)).keys() == direct.keys()
    assert cache.weights_path is not None


def test_file_digest_is_the_sha256_of_the_content(tmp_path, monkeypatch):
    monkeypatch.setenv("AIOLLM_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    assert file_digest(str(path)) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert file_digest(str(path)) == hashlib.sha256(b"abc" * 1000).hexdigest()  # remembered
    path.write_bytes(b"abd" * 1000)
    os.utime(path, ns=(1, 1))  # a new stamp
    assert file_digest(str(path)) == hashlib.sha256(b"abd" * 1000).hexdigest()


def test_a_gguf_loads_and_is_cached_without_hashlib_file_digest(gguf_file, tmp_path,
                                                                  monkeypatch):
    """hashlib.file_digest is Python 3.11's; pyproject and the README say 3.10+, where every
    GGUF load (the default model's too) raised AttributeError. Without it files are hashed
    in blocks, to the same digests: a load stores its entry and the next reads it back."""
    monkeypatch.delattr(hashlib, "file_digest")  # as on Python 3.10
    path = tmp_path / "f.bin"
    data = os.urandom(3 << 20) + b"tail"  # more than one block
    path.write_bytes(data)
    assert file_digest(str(path)) == hashlib.sha256(data).hexdigest()
    first = params(gguf_file)
    entry = GGUFCache(gguf_file).dir
    with open(gguf_file, "rb") as f:
        assert os.path.basename(entry) == hashlib.sha256(f.read()).hexdigest()
    assert any(n.startswith("params-") for n in os.listdir(entry))
    second = params(gguf_file)
    assert all(torch.equal(second[n], first[n]) for n in first)


def test_a_cache_dir_under_home_is_expanded(tmp_path, monkeypatch):
    """AIOLLM_CACHE_DIR='~/x' (quoted, so the shell left the ~) is x in the home directory,
    not a folder named '~' in the working directory."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AIOLLM_CACHE_DIR", "~/x")
    monkeypatch.chdir(work)
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_digest(str(path)) == hashlib.sha256(b"abc").hexdigest()
    assert len(os.listdir(home / "x" / "digests")) == 1  # the digest is remembered there
    assert not (work / "~").exists()


def test_configs_round_trip_through_json():
    config = ModelConfig(
        architecture="qwen3_moe", vocab_size=100, hidden_size=64, intermediate_size=96,
        num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6,
        rope=RopeConfig(theta=5e5, freq_factors=(1.0, 2.5, 8.0)), max_position=4096,
        qk_norm=True, eos_token_ids=[5, 7], bos_token_id=1,
        moe=MoeConfig(num_experts=8, top_k=2, intermediate_size=32, norm_topk_prob=True,
                      dense_layers=(0, 2)))
    back = config_from_dict(json.loads(json.dumps(config_to_dict(config))))
    assert back == config and isinstance(back.moe.dense_layers, tuple)


def test_a_rewrite_that_keeps_size_and_mtime_is_another_digest(tmp_path, monkeypatch):
    """cp -p / rsync -t / tar x of another file of the same size over the model keep its size,
    mtime and inode: the digest must still be the new content's."""
    monkeypatch.setenv("AIOLLM_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    os.utime(path, ns=(10**18, 10**18))
    assert file_digest(str(path)) == hashlib.sha256(b"abc" * 1000).hexdigest()
    with open(path, "r+b") as f:  # in place: same inode
        f.write(b"abd" * 1000)
    os.utime(path, ns=(10**18, 10**18))
    assert file_digest(str(path)) == hashlib.sha256(b"abd" * 1000).hexdigest()


@pytest.mark.parametrize("name,damage", [
    ("tokenizer.json", "truncated"), ("tokenizer_config.json", "empty"),
    ("chat_template.jinja", "truncated"), ("tokenizer.json", "missing"),
    ("chat_template.jinja", "extra")])
def test_a_damaged_cached_tokenizer_is_removed_and_stored_again(tmp_path, monkeypatch, name,
                                                                 damage):
    from aiollm.model import load_tokenizer
    from aiollm.model.serving_tokenizer import ServingTokenizer

    hf = load_tokenizer(None)
    monkeypatch.setenv("AIOLLM_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"stand-in for a GGUF file")
    GGUFCache(str(model)).store_tokenizer(hf)
    path = os.path.join(GGUFCache(str(model)).tokenizer_dir, name)
    if damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "empty":
        open(path, "wb").close()
    elif damage == "missing":
        os.remove(path)
    else:
        open(path + ".orig", "wb").close()
    assert GGUFCache(str(model)).tokenizer_dir is None
    assert not os.path.exists(os.path.dirname(path))
    GGUFCache(str(model)).store_tokenizer(hf)
    served = ServingTokenizer(GGUFCache(str(model)).tokenizer_dir)
    assert served.chat_template == hf.chat_template
    assert served.encode("Hello 🚀<|im_end|>") == hf.encode("Hello 🚀<|im_end|>")


class _SlowTokenizer:
    """Stands in for a transformers tokenizer whose save_pretrained takes as long as the test
    wants: it writes one file, sets `started`, and waits for `finish`."""

    chat_template = None

    def __init__(self, started, finish):
        self.started, self.finish = started, finish

    def save_pretrained(self, directory: str, **options) -> None:
        os.makedirs(directory)
        with open(os.path.join(directory, "tokenizer.json"), "w") as f:
            f.write("{}")
        self.started.set()
        self.finish.wait(30)


def _temporaries(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


def test_a_killed_writers_temporary_is_removed_and_a_live_ones_kept(tmp_path, monkeypatch):
    import multiprocessing
    import signal

    monkeypatch.setenv("AIOLLM_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"stand-in for a GGUF file")
    fork = multiprocessing.get_context("fork")  # the child needs no fresh interpreter
    writers = []
    for _ in range(2):
        started, finish = fork.Event(), fork.Event()
        writer = fork.Process(target=GGUFCache(str(model)).store_tokenizer,
                              args=(_SlowTokenizer(started, finish),))
        writer.start()
        assert started.wait(30)
        writers.append((writer, finish))
    (killed, _), (live, finish_live) = writers
    entry = GGUFCache(str(model)).dir
    assert len(_temporaries(entry)) == 2  # both alive: a cache open leaves both
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(30)
    assert len(_temporaries(entry)) == 2
    os.makedirs(os.path.join(entry, ".tmp-by-an-aiollm-that-took-no-lock", "tokenizer"))
    GGUFCache(str(model))  # a later open removes the dead writers' temporaries only
    assert len(_temporaries(entry)) == 1
    finish_live.set()
    live.join(30)
    assert live.exitcode == 0
    assert _temporaries(entry) == []
    assert sorted(os.listdir(GGUFCache(str(model)).tokenizer_dir)) == ["sha256.json",
                                                                        "tokenizer.json"]


def test_a_cached_tokenizer_that_fails_to_load_is_converted_again(tmp_path, monkeypatch):
    """A cached copy that passes its checksums and still fails in transformers (tokenizers
    raises a plain Exception; another install sharing the cache may remove an old copy while
    this start reads it) is passed over for the GGUF file's own tokenizer: it stopped the
    start, as only OSError and ValueError were caught."""
    import transformers

    from aiollm.model import load_tokenizer
    from aiollm.model import tokenizer as tokenizer_module

    hf = load_tokenizer(None)
    monkeypatch.setenv("AIOLLM_CACHE_DIR", str(tmp_path / "cache"))
    model_dir, gguf_name = tokenizer_module._source(None)
    GGUFCache(os.path.join(model_dir, gguf_name)).store_tokenizer(hf)
    cached = GGUFCache(os.path.join(model_dir, gguf_name)).tokenizer_dir
    assert cached is not None
    converted = object()  # stands in for the conversion from the GGUF file

    def from_pretrained(path, **options):
        if path == cached:
            raise Exception("stand-in for tokenizers' own error")  # noqa: TRY002
        assert options.get("gguf_file") == gguf_name
        return converted

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    monkeypatch.setattr(tokenizer_module, "_add_named_templates", lambda tok, path: None)
    monkeypatch.setattr(GGUFCache, "store_tokenizer", lambda self, tok: None)
    assert tokenizer_module._load.__wrapped__(model_dir, gguf_name, 0) is converted
