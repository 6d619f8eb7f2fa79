"""Broken model directories and files: each fails with a ValueError or FileNotFoundError (the
errors `aiollm serve` reports in one line) that names the bad file, tensor or field, never
with an error from deep inside safetensors, json or torch, and never as a silently wrong model.

The checkpoint is a tiny random Mixtral (8 experts, top-2) saved sharded by transformers, then
damaged one way per test in a copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from transformers import MixtralConfig

from aiollm.model import load_model
from test_loader import save_random_hf_model

CONFIG = MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, num_local_experts=8,
                       num_experts_per_tok=2, max_position_embeddings=128, sliding_window=None,
                       tie_word_embeddings=False)
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixtral-sharded")
    save_random_hf_model(CONFIG, str(path), max_shard_size="20KB")
    return path


@pytest.fixture
def copy(sharded, tmp_path):
    """A fresh copy of the sharded checkpoint and its shard file names, in order."""
    dst = tmp_path / "model"
    shutil.copytree(sharded, dst)
    return dst, sorted(n for n in os.listdir(dst) if n.startswith("model-"))


def set_field(path, field, value):
    """config.json of the model directory `path` with `field` set to `value`."""
    fields = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**fields, field: value}))


def qwen2_moe_dir(path, field, value):
    """A config-only tiny Qwen2-MoE directory (shared expert, 8 experts, top-2) at `path`,
    with `field` set to `value`."""
    from transformers import Qwen2MoeConfig

    Qwen2MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                   shared_expert_intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, num_experts=8,
                   num_experts_per_tok=2, max_position_embeddings=128).save_pretrained(path)
    set_field(path, field, value)


def load(path):
    return load_model(str(path), dtype=torch.float32, device="cpu")


def start_engine(path, **options) -> None:
    """Start (and stop) an Engine on the model at `path`: what its start raises."""
    import asyncio

    from aiollm import Engine

    async def start():
        async with Engine(str(path), **options):
            pass

    asyncio.run(start())


def forbid_loading_weights(monkeypatch, why: str) -> None:
    """Any load of weights from here on fails the test with `why`."""
    import aiollm.model

    def no_load(*args, **kwargs):
        raise AssertionError(why)

    monkeypatch.setattr(aiollm.model, "load_model", no_load)


def test_the_intact_copy_loads(copy):
    path, shards = copy
    assert len(shards) > 2 and os.path.exists(path / INDEX)
    assert load(path).config.moe.num_experts == 8


def test_a_shard_the_index_lists_but_the_directory_lacks_is_named(copy):
    path, shards = copy
    os.remove(path / shards[1])
    with pytest.raises(FileNotFoundError, match=f"{INDEX} lists {shards[1]}, missing from"):
        load(path)


def test_an_index_that_names_no_file_is_named(copy):
    """An index whose weight_map is empty was read as a checkpoint of no tensors: every
    weight of the model was then listed as missing, the index not named."""
    path, _ = copy
    (path / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": {}}))
    with pytest.raises(ValueError, match=f"{INDEX} names no safetensors file"):
        load(path)


def test_a_shard_missing_beside_no_index_is_named(copy):
    """Without the index, every *.safetensors file is read: a numbered shard missing among
    them was told only as the weights it held (model.layers.0.... missing), not as the file."""
    path, shards = copy
    os.remove(path / INDEX)
    os.remove(path / shards[2])
    with pytest.raises(FileNotFoundError, match=rf"{shards[2]} is missing from .* \(the other "
                                                rf"shards of {len(shards)} are there, with "
                                                rf"no {INDEX}\)"):
        load(path)


def test_a_config_json_linked_to_nothing_is_named_with_its_target(copy):
    """It was told as a directory with no config.json (nor a .gguf file), though `ls`
    lists one: an HF cache snapshot whose blob is gone."""
    path, _ = copy
    os.remove(path / "config.json")
    os.symlink("../blobs/0123abcd", path / "config.json")
    with pytest.raises(FileNotFoundError, match=r"config\.json is a link to \.\./blobs/"
                                                r"0123abcd, which does not exist"):
        load(path)


def test_mistrals_own_consolidated_file_is_named_as_its_format(copy):
    """Mistral's repositories hold its own format (consolidated.safetensors, names such as
    layers.0.attention.wq.weight) beside transformers'. A directory of that file alone was
    refused as 'tensor layers.0.attention.wq.weight has no place in the model', naming
    neither the file nor its format; beside the shards of a lost index it was read with
    them, and refused so too."""
    from safetensors.torch import save_file

    path, shards = copy
    os.remove(path / INDEX)
    save_file({"layers.0.attention.wq.weight": torch.zeros(4, 4)},
              str(path / "consolidated.safetensors"))
    assert load(path).config.moe.num_experts == 8
    for shard in shards:
        os.remove(path / shard)
    with pytest.raises(FileNotFoundError, match=r"consolidated\.safetensors alone: Mistral's "
                                                r"own format, not transformers'"):
        load(path)


def test_mistrals_own_shards_alone_are_named_in_one_short_line(copy):
    """Mistral's larger repositories shard its own format too (consolidated-00001-of-00032
    .safetensors and on): every one was listed in the message."""
    from safetensors.torch import save_file

    path, shards = copy
    for name in [INDEX, *shards]:
        os.remove(path / name)
    for i in range(1, 33):
        save_file({f"layers.{i}.attention.wq.weight": torch.zeros(4, 4)},
                  str(path / f"consolidated-{i:05d}-of-00032.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"holds consolidated-00001-of-00032\.safetensors, "
                                                r"consolidated-00002-of-00032\.safetensors, "
                                                r"consolidated-00003-of-00032\.safetensors and 29 "
                                                r"more alone: Mistral's own format"):
        load(path)


@pytest.mark.parametrize("of_shards", [False, True], ids=["one-file", "sharded"])
def test_a_weights_link_to_a_missing_file_is_named_with_its_target(copy, of_shards):
    """The Hugging Face cache's snapshot directory links each file to a blob: a download
    cut short leaves a link whose blob is gone. model.safetensors was then reported as
    '[Errno 2] No such file or directory' though `ls` lists it, and a shard as missing
    from the directory that holds it."""
    path, shards = copy
    if of_shards:
        name = shards[1]
        os.remove(path / name)
    else:
        name = "model.safetensors"
        os.remove(path / INDEX)
        for shard in shards:
            os.remove(path / shard)
    blob = path.parent / "blobs" / "0123abcd"
    os.symlink(os.path.relpath(blob, path), path / name)
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(path / name))} is a link to "
                                                rf"\.\./blobs/0123abcd, which does not exist"):
        load(path)


def test_a_link_to_nothing_beside_a_tokenizer_leaves_the_tokenizer_readable(tmp_path):
    """The tokenizer's cache key stats every file of the directory through its links: a
    weights link to nothing stopped the start there, before the weights' loader could name
    it, with a bare '[Errno 2] No such file or directory' naming a file `ls` lists."""
    from aiollm.model import load_tokenizer

    load_tokenizer(None).save_pretrained(str(tmp_path))
    os.symlink("../blobs/0123abcd", tmp_path / "model.safetensors")
    assert load_tokenizer(str(tmp_path)).encode("Hello world") == \
        load_tokenizer(None).encode("Hello world")


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_a_tokenizer_file_linked_to_nothing_is_named_with_its_target(tmp_path, name):
    """An HF cache snapshot whose tokenizer blob is gone was told as 'cannot read the
    tokenizer ... Couldn't instantiate the backend tokenizer' (or a tokenizer class it
    could not find), though `ls` lists the file: the link, like the weights', is named."""
    from aiollm.model import load_tokenizer

    load_tokenizer(None).save_pretrained(str(tmp_path))
    os.remove(tmp_path / name)
    os.symlink("../blobs/0123abcd", tmp_path / name)
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(name)} is a link to "
                                                r"\.\./blobs/0123abcd, which does not exist"):
        load_tokenizer(str(tmp_path))


def test_tokenizer_files_all_linked_to_nothing_are_named_before_the_weights_load(tmp_path):
    """The check of a model's (or --tokenizer's) directory before the weights load told a
    snapshot whose tokenizer blobs are all gone as 'a directory without a tokenizer: it has
    none of tokenizer.json, ...', though `ls` lists them."""
    from aiollm.model.tokenizer_files import check_tokenizer_path

    for name in ("tokenizer.json", "tokenizer_config.json"):
        os.symlink(f"../blobs/{name}", tmp_path / name)
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(repr(str(tmp_path)))}: "
                                                r"tokenizer\.json is a link to \.\./blobs/"
                                                r"tokenizer\.json, which does not exist"):
        check_tokenizer_path(str(tmp_path))


@pytest.mark.parametrize("keep", [0.5, 4 / 1e9], ids=["half", "4-bytes"])
def test_a_truncated_shard_is_named(copy, keep):
    """safetensors' own error (SafetensorError, not a ValueError: a traceback from the CLI)
    named no file."""
    path, shards = copy
    size = os.path.getsize(path / shards[1])
    os.truncate(path / shards[1], max(4, int(size * keep)))
    with pytest.raises(ValueError, match=f"{shards[1]} is not a readable safetensors file "
                       ".*: a truncated or corrupt file"):
        load(path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "{}", '{"weight_map": {"a": 3}}'])
def test_an_index_that_is_not_one_is_named(copy, text):
    """json's error named no file; an index without weight_map raised KeyError."""
    path, _ = copy
    (path / INDEX).write_text(text)
    with pytest.raises(ValueError, match=f"{INDEX} (is not a safetensors index|has no weight_map)"):
        load(path)


@pytest.mark.parametrize("text", ["{bad", "[]", "\xff\xfe"])
def test_a_config_json_that_is_not_a_json_object_is_named(copy, text):
    """json's own error named no file; a list raised AttributeError."""
    path, _ = copy
    (path / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match="config.json (is not valid JSON|holds a JSON list)"):
        load(path)


@pytest.mark.parametrize("text, message", [
    ("{bad", "is not valid JSON"), ("[1]", "holds a JSON list, not an object"),
    ('{"eos_token_id": "x"}', "eos_token_id must be a token id or a list of them, got 'x'"),
    ('{"eos_token_id": [2, null]}', r"eos_token_id must be .*, got \[2, None\]"),
])
def test_a_generation_config_json_that_is_not_one_is_named(copy, text, message):
    """generation_config.json (read for its end-of-turn ids) failed as json's error naming no
    file, int()'s "invalid literal for int() with base 10: 'x'", or an AttributeError
    traceback for a list."""
    path, _ = copy
    (path / "generation_config.json").write_text(text)
    with pytest.raises(ValueError, match=f"generation_config.json:? {message}"):
        load(path)


def _real_gguf(path) -> bytes:
    from transformers import LlamaConfig

    from test_loader import write_gguf

    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128)
    write_gguf(save_random_hf_model(config, str(path / "hf")), str(path / "real.gguf"))
    return (path / "real.gguf").read_bytes()


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "lone-in-a-directory"])
def test_a_gguf_path_that_is_not_a_gguf_file_is_named(tmp_path, kind):
    """The gguf package's errors ("GGUF magic invalid", "cannot mmap an empty file", a numpy
    reshape or IndexError of a truncated file) named no file."""
    data = {"text": b"this is not a GGUF file\n" * 8, "empty": b""}.get(kind)
    if data is None:
        data = _real_gguf(tmp_path)
        data = data[: len(data) // 2] if kind == "truncated" else data[:40]
    (tmp_path / "dir").mkdir()
    gguf = tmp_path / "dir" / "model.gguf"
    gguf.write_bytes(data)
    with pytest.raises(ValueError, match="model.gguf is not a readable GGUF file "
                       ".*: a truncated or corrupt file"):
        load(gguf.parent if kind == "lone-in-a-directory" else gguf)


def _edit(path, edit) -> None:
    """Apply `edit` to the tensors of each shard of the checkpoint at `path`, in place."""
    from safetensors.torch import load_file, save_file

    for name in sorted(n for n in os.listdir(path) if n.startswith("model-")):
        tensors = load_file(path / name)
        edit(tensors)
        save_file(tensors, path / name, metadata={"format": "pt"})


EXPERT = "model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight"


def test_a_missing_expert_tensor_is_named_by_expert(copy):
    """The message named the stacked parameter (layers.1.mlp.experts.gate_up_proj), not which
    of the 8 experts' tensors the checkpoint lacks."""
    path, _ = copy
    gone = [EXPERT.format(layer=1, e=5, w="w3"), "model.layers.0.self_attn.k_proj.weight"]
    _edit(path, lambda t: [t.pop(n, None) for n in gone])
    with pytest.raises(ValueError, match=f"missing weights: {gone[1]}, {gone[0]}$"):
        load(path)


def test_an_expert_past_num_experts_is_refused(copy):
    """Expert 8 of a config with 8 experts was skipped as if another expert-parallel rank
    held it: a checkpoint of more experts than its config loaded without a word."""
    path, _ = copy
    first = EXPERT.format(layer=0, e=0, w="w2")
    _edit(path, lambda t: t.update({first.replace(".0.w2", ".8.w2"): t[first].clone()} if first in t
                                   else {}))
    with pytest.raises(ValueError, match="'model.layers.0.block_sparse_moe.experts.8.w2.weight' "
                       "is of expert 8, but config.json's num_local_experts is 8"):
        load(path)


def test_a_repeated_tensor_is_refused_even_when_another_is_missing(copy):
    """Without an index every *.safetensors file of the directory is read: here a stray file
    repeats expert 3's w1 while expert 5's is missing. The element counts came out even and
    expert 5 ran on uninitialised memory; the repeat is now refused as it comes."""
    from safetensors.torch import load_file, save_file

    path, shards = copy
    os.remove(path / INDEX)
    kept, gone = EXPERT.format(layer=0, e=3, w="w1"), EXPERT.format(layer=0, e=5, w="w1")
    stray = {}
    for name in shards:
        tensors = load_file(path / name)
        stray.update({kept: tensors[kept]} if kept in tensors else {})
    _edit(path, lambda t: t.pop(gone, None))
    save_file(stray, path / "zz-stray.safetensors")
    with pytest.raises(ValueError, match=f"{kept!r} is given twice"):
        load(path)


@pytest.mark.parametrize("field", ["num_key_value_heads", "head_dim", "num_attention_heads"])
def test_a_zero_head_count_or_size_is_named(copy, field):
    """0 was read as absent (num_attention_heads KV heads, hidden / heads wide): the load then
    failed on k_proj's shape, naming no field of config.json. num_attention_heads 0 failed
    in transformers' own check (hidden_size % 0): a ZeroDivisionError traceback."""
    path, _ = copy
    set_field(path, field, 0)
    with pytest.raises(ValueError, match=f"config.json: {field} must be >= 1, got 0"):
        load(path)


@pytest.mark.parametrize("field, value", [
    ("max_position_embeddings", -5), ("num_hidden_layers", 0), ("vocab_size", 0),
    ("intermediate_size", -1), ("hidden_size", 0),
    # Mistral's window: 0 was read as none (transformers fails on it, a mask of no
    # positions), -1 capped the context at -1 and was named "max_position"
    ("sliding_window", 0), ("sliding_window", -1),
])
def test_a_size_below_one_is_named_as_config_json_spells_it(copy, field, value):
    """A size below 1 was refused by the name of aiollm's own ModelConfig field
    ("model config: max_position must be >= 1"), which config.json does not have."""
    path, _ = copy
    set_field(path, field, value)
    with pytest.raises(ValueError, match=rf"config.json: {field} must be >= 1"
                                         rf"(, or null for none)?, got {value}"):
        load(path)


def test_kv_heads_that_do_not_divide_the_heads_are_named_as_config_json_spells_them(copy):
    path, _ = copy
    set_field(path, "num_key_value_heads", 3)
    with pytest.raises(ValueError, match="config.json: num_attention_heads 4 is not a multiple "
                                         "of num_key_value_heads 3"):
        load(path)


def test_a_model_path_that_does_not_exist_says_so(tmp_path):
    """It was 'neither a .gguf file nor a directory', as for a file of another kind."""
    with pytest.raises(FileNotFoundError, match=r"model path '.*nope' does not exist"):
        load(tmp_path / "nope")


@pytest.mark.parametrize("field, value, message", [
    ("num_experts_per_tok", 0, r"num_experts_per_tok must be in \[1, num_local_experts = 8\], "
                               "got 0"),
    ("num_experts_per_tok", 9, r"num_experts_per_tok must be in \[1, num_local_experts = 8\], "
                               "got 9"),
    # Mixtral has no dense form (Qwen's num_experts 0 is one): blamed on num_experts_per_tok
    ("num_local_experts", 0, r"num_local_experts must be >= 1, got 0"),
])
@pytest.mark.parametrize("load_format", ["auto", "dummy"])
def test_a_bad_moe_field_of_config_json_is_named(copy, field, value, message, load_format):
    """MoeConfig's message spoke of top_k, a name no config.json has."""
    path, _ = copy
    set_field(path, field, value)
    with pytest.raises(ValueError, match=f"config.json: {message}"):
        load_model(str(path), dtype=torch.float32, device="cpu", load_format=load_format)


@pytest.mark.parametrize("model_type, field, value", [
    ("mixtral", "num_experts", None), ("mixtral", "num_experts", "8"),
    ("qwen3_moe", "num_local_experts", None), ("qwen3_moe", "num_local_experts", 8.0)])
def test_an_expert_count_of_another_type_under_the_undeclared_spelling_is_named(
        tmp_path, model_type, field, value):
    """transformers type-checks the expert count its config class declares (Mixtral's
    num_local_experts, Qwen3-MoE's num_experts) but takes the other spelling as given, and
    the model reads that one: null was a TypeError traceback naming nothing, "8" was read
    as 8 (a model transformers cannot build)."""
    from test_moe_model import FAMILIES

    fields = FAMILIES[model_type].to_dict()
    fields.pop("num_local_experts", None)
    type(FAMILIES[model_type])(**fields).save_pretrained(tmp_path)
    set_field(tmp_path, field, value)
    with pytest.raises(ValueError, match=re.escape(
            f"config.json: {field} must be an integer, got {value!r}")):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


@pytest.mark.parametrize("field, value", [("decoder_sparse_step", 0),
                                          ("moe_intermediate_size", 0)])
def test_a_bad_qwen_moe_field_of_config_json_is_named(tmp_path, field, value):
    """decoder_sparse_step 0 was read as 1 (every layer sparse, where transformers fails
    dividing by zero); MoeConfig's messages spoke of sparse_step and intermediate_size."""
    qwen2_moe_dir(tmp_path, field, value)
    with pytest.raises(ValueError, match=f"config.json: {field} must be >= 1, got {value}"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


@pytest.mark.parametrize("field, value, message", [
    ("num_experts_per_tok", None, "Field 'num_experts_per_tok' expected int, got NoneType"),
    ("num_experts_per_tok", 1.5, "Field 'num_experts_per_tok' expected int, got float"),
    ("num_local_experts", "8", "Field 'num_local_experts' expected int, got str"),
    ("layer_types", ["full_attention"], "`num_hidden_layers` .2. must be equal to the number "
                                        "of `layer_types` .1."),
    # transformers' rope validation raises KeyError
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4},
     r"Missing required keys in `rope_parameters` for 'rope_type'='yarn': \{'factor'\}$"),
    # ... and only warns of this one, which float() then refused naming nothing:
    # "could not convert string to float: 'x'"
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": "x"},
     "rope_parameters factor must be a number, got 'x'"),
])
def test_a_config_json_field_transformers_refuses_is_named(copy, field, value, message):
    """transformers 5 checks each field's type, and some fields against others, as it reads
    config.json, raising huggingface_hub's StrictDataclass errors (or a KeyError for a rope
    type's missing parameter), which are no ValueError: `aiollm serve` printed a traceback
    instead of its one-line error."""
    path, _ = copy
    set_field(path, field, value)
    with pytest.raises(ValueError, match=rf"config.json: {message}"):
        load(path)


LLAMA3 = {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
YARN = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
        "original_max_position_embeddings": 64}


# after transformers has read config.json, a value is known only as rope_parameters (it
# moves rope_scaling there): named so
AFTER = "rope_parameters (rope_scaling)"


@pytest.mark.parametrize("field, value, message", [
    # transformers divides by these: ZeroDivisionError, a traceback from aiollm serve (in
    # transformers' own check of yarn as config.json is read, or in our llama3 table)
    ("rope_parameters", {**YARN, "original_max_position_embeddings": 0},
     "rope_parameters original_max_position_embeddings must be > 0, got 0"),
    ("rope_parameters", {**LLAMA3, "low_freq_factor": 0.0},
     "rope_parameters low_freq_factor must be > 0, got 0.0"),
    ("rope_parameters", {**LLAMA3, "low_freq_factor": 0.5, "high_freq_factor": 0},
     "rope_parameters high_freq_factor must be > 0, got 0"),
    # transformers' rotary table of these is inf/NaN (or a TypeError): they were read as the
    # defaults (theta 10000, factor 1) and served another model than the file describes
    ("rope_parameters", {"rope_type": "default", "rope_theta": 0.0},
     "rope_parameters rope_theta must be > 0, got 0.0"),
    ("rope_parameters", {**YARN, "rope_theta": 0},
     "rope_parameters rope_theta must be > 0, got 0"),
    ("rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 0},
     "rope_parameters factor must be > 0, got 0"),
    ("rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": None},
     f"{AFTER} factor must be a number for rope_type 'linear', got None"),
    ("rope_parameters", {**LLAMA3, "factor": -2.0},
     "rope_parameters factor must be > 0, got -2.0"),
    ("rope_scaling", {"type": "dynamic", "factor": 0.0},
     "rope_scaling factor must be > 0, got 0.0"),
    # an unknown type names the field it is read from
    ("rope_scaling", {"type": "su", "factor": 2.0}, f"{AFTER} rope_type 'su' is not supported"),
])
def test_a_rope_parameter_no_rotary_table_can_be_made_of_is_named(copy, field, value, message):
    """A rope parameter of config.json (transformers 5's rope_parameters or 4.x's
    rope_scaling) that transformers divides by, or computes no finite rotary table of, is
    refused naming the file, the key and its value."""
    path, _ = copy
    fields = json.loads((path / "config.json").read_text())
    fields.pop("rope_parameters", None)
    (path / "config.json").write_text(json.dumps({**fields, field: value}))
    with pytest.raises(ValueError, match=rf"config.json: {re.escape(message)}"):
        load(path)


@pytest.mark.parametrize("rope, message", [
    ({"rope_theta": 0}, "rope_theta must be > 0, got 0"),
    ({"rope_theta": 0.0, "rope_scaling": {"type": "linear", "factor": 2.0}},
     "rope_theta must be > 0, got 0.0"),
    ({"rope_theta": "1e6"}, "rope_theta must be a number, got '1e6'"),
    ({"rope_theta": 5e5, "rope_scaling": {**LLAMA3, "rope_theta": None, "high_freq_factor": 0}},
     "rope_scaling high_freq_factor must be > 0, got 0"),
])
def test_a_transformers_4_rope_value_is_named_by_its_own_key(copy, rope, message):
    """config.json files written by transformers 4 (every published Llama, Mistral and Qwen
    one) keep rope_theta beside the rope_scaling dict: a bad value of either was named
    'rope_parameters (rope_scaling) rope_theta' (or high_freq_factor), keys such a file
    does not have."""
    path, _ = copy
    fields = json.loads((path / "config.json").read_text())
    fields.pop("rope_parameters", None)
    (path / "config.json").write_text(json.dumps({**fields, **rope}))
    with pytest.raises(ValueError, match=rf"^config.json: {re.escape(message)}$"):
        load(path)


@pytest.mark.parametrize("field, value", [("num_experts", -2),
                                          ("shared_expert_intermediate_size", -1)])
def test_a_negative_qwen_moe_size_is_named(tmp_path, field, value):
    """num_experts -2 was refused as "num_experts_per_tok must be in [1, -2]", naming the
    field that was right; shared_expert_intermediate_size -1 was read as "no shared expert"
    and the checkpoint's shared-expert tensors refused as having no place in the model."""
    qwen2_moe_dir(tmp_path, field, value)
    with pytest.raises(ValueError, match=f"config.json: {field} must be >= 0, got {value}"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


def test_a_tokenizer_path_that_does_not_exist_is_called_the_tokenizer_path(sharded, tmp_path):
    """The message called the --tokenizer value the 'model path'."""
    with pytest.raises(FileNotFoundError, match=r"tokenizer path '.*nope' does not exist"):
        start_engine(str(sharded), tokenizer=str(tmp_path / "nope"), kv_tokens=256)


def test_a_tokenizer_directory_without_a_tokenizer_fails_before_the_weights_load(tmp_path):
    """An existing --tokenizer directory without tokenizer files failed once the weights had
    loaded, as "<dir> has no tokenizer files": the Engine refuses it before loading (its
    model path here does not exist, so loading would fail otherwise), naming the files."""
    with pytest.raises(FileNotFoundError, match=r"tokenizer path '.*' is a directory without "
                                                r"a tokenizer: it has none of tokenizer.json"):
        start_engine(str(tmp_path / "no-model"), tokenizer=str(tmp_path), kv_tokens=256)


@pytest.mark.parametrize("used", [None, 0, 9])
def test_a_moe_gguf_without_a_valid_expert_used_count_names_it(tmp_path, used):
    """A missing count was int(None), a TypeError traceback from aiollm serve; a count out of
    range was refused as 'top_k', a name the file does not use."""
    import numpy as np
    from transformers import Qwen3MoeConfig

    from test_loader import finish_gguf, gguf_writer

    config = Qwen3MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=48,
                            moe_intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_experts=8, num_experts_per_tok=2, max_position_embeddings=128)
    path = str(tmp_path / "moe.gguf")
    w = gguf_writer(config, path, "qwen3moe")
    w.add_expert_count(8)
    if used is not None:
        w.add_expert_used_count(used)
    w.add_tensor("token_embd.weight", np.zeros((96, 32), dtype=np.float32))
    finish_gguf(w)
    with pytest.raises(ValueError, match="'?qwen3moe.expert_used_count'?( metadata| must be)"):
        load(path)


@pytest.mark.parametrize("fields", [{"mlp_only_layers": []}, {"decoder_sparse_step": 2}])
def test_a_config_whose_dense_layers_disagree_with_the_checkpoint_says_so(tmp_path, fields):
    """A checkpoint saved with layer 1 dense (mlp_only_layers [1]) under a config that makes
    it sparse, or layer 0 sparse under one that makes it dense: the message named the tensor
    only ("has no place in the model"), not the config fields that decide a layer's MLP."""
    from transformers import Qwen2MoeConfig

    config = Qwen2MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=48,
                            moe_intermediate_size=16, shared_expert_intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            num_experts=8, num_experts_per_tok=2, max_position_embeddings=128,
                            mlp_only_layers=[1])
    save_random_hf_model(config, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, **fields}))
    # decoder_sparse_step 2 with mlp_only_layers [1] leaves both layers dense
    want = (r"layer 1 has experts by the config \(mlp_only_layers \[\], decoder_sparse_step 1\)"
            if "mlp_only_layers" in fields else
            r"layer 0 has a dense MLP by the config, as every layer has \(its mlp_only_layers, "
            r"decoder_sparse_step and num_experts leave no layer sparse\)")
    with pytest.raises(ValueError, match=want):
        load(tmp_path)


LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0"
               "ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 16777216\n")


def test_git_lfs_pointers_in_place_of_weights_say_git_lfs_pull(copy, tmp_path):
    """A repository cloned without git-lfs holds small text pointers in place of its weights:
    the message called them truncated or corrupt and advised a new download."""
    path, shards = copy
    (path / shards[0]).write_text(LFS_POINTER)
    with pytest.raises(ValueError, match=f"{shards[0]} .*Git LFS pointer.*git lfs pull"):
        load(path)
    (tmp_path / "model.gguf").write_text(LFS_POINTER)
    with pytest.raises(ValueError, match="model.gguf .*Git LFS pointer.*git lfs pull"):
        load(tmp_path / "model.gguf")


def _moe_gguf(tmp_path, family: str, edit, per_expert: bool = False) -> str:
    from test_moe_model import save_moe_model, write_moe_gguf

    path = str(tmp_path / "moe.gguf")
    write_moe_gguf(save_moe_model(family, tmp_path / "hf"), path, per_expert, edit)
    return path


@pytest.mark.parametrize("family, gone, per_expert", [
    ("qwen3_moe", "blk.2.ffn_gate_exps.weight", False),
    ("qwen3_moe", "blk.0.ffn_down_exps.weight", False),
    ("mixtral", "blk.1.ffn_up.3.weight", True),
    ("qwen2_moe", "blk.0.ffn_gate_inp_shexp.weight", False)])
def test_a_moe_gguf_missing_a_tensor_names_it_as_the_file_does(tmp_path, family, gone,
                                                                per_expert):
    """The message listed transformers' per-expert names (experts.0.gate_proj.weight ... and
    26 more), among them the up_proj halves the file did give: a stacked copy was counted
    at its first expert only. It names the file's own tensor now."""
    path = _moe_gguf(tmp_path, family, lambda name, t: None if name == gone else t,
                     per_expert)
    with pytest.raises(ValueError, match=rf"checkpoint is missing weights: {gone}$"):
        load(path)


def test_a_moe_gguf_tensor_of_a_wrong_shape_is_named_as_the_file_does(tmp_path):
    bad = "blk.0.ffn_down_exps.weight"
    path = _moe_gguf(tmp_path, "qwen3_moe",
                     lambda name, t: t[..., :-1].copy() if name == bad else t)
    with pytest.raises(ValueError, match=rf"tensor '{bad}' has shape \(16, 64, 31\), the "
                       r"model expects \(16, 64, 32\)"):
        load(path)


def test_a_moe_gguf_without_a_router_names_the_router(tmp_path):
    """A layer without ffn_gate_inp is dense in a GGUF file (no mlp_only_layers there): the
    message spoke of mlp_only_layers and decoder_sparse_step, which the file has not."""
    path = _moe_gguf(tmp_path, "qwen3_moe",
                     lambda name, t: None if name == "blk.0.ffn_gate_inp.weight" else t)
    with pytest.raises(ValueError, match=r"tensor 'blk.0.ffn_\w+_exps.weight' has no place in "
                       r"the model: layer 0 has a dense MLP by the file \(it has no router "
                       r"blk.0.ffn_gate_inp.weight\)$"):
        load(path)


@pytest.mark.parametrize("gone", ["model.layers.0.mlp.experts.gate_up_proj",
                                  "model.layers.2.mlp.experts.down_proj"])
def test_a_checkpoint_of_stacked_experts_missing_one_names_it(tmp_path, gone):
    """transformers 5 holds a layer's experts stacked (experts.gate_up_proj [E, 2I, H],
    experts.down_proj [E, H, I]); a checkpoint saved from its state dict has those names.
    One missing was reported as 16 or 32 per-expert names the file never had."""
    from safetensors.torch import save_file

    from test_moe_model import save_moe_model

    hf = save_moe_model("qwen3_moe", tmp_path)
    save_file({n: t.contiguous() for n, t in hf.state_dict().items() if n != gone},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"checkpoint is missing weights: {gone}$"):
        load(tmp_path)


@pytest.mark.parametrize("name,text", [("tokenizer.json", "{}"),
                                       ("tokenizer.json", "{not json"),
                                       ("tokenizer_config.json", "{oops")])
def test_a_damaged_tokenizer_file_is_named_with_its_directory(tmp_path, name, text):
    """A tokenizer file cut short or replaced ('{}': a KeyError traceback from aiollm serve;
    bad JSON: 'Expecting property name...' without a path) is a ValueError that names the
    directory and its tokenizer files, which aiollm serve reports as one line."""
    from aiollm.model import load_tokenizer

    load_tokenizer(None).save_pretrained(str(tmp_path))
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=rf"cannot read the tokenizer in {tmp_path} \(.*"
                                         rf"{name}.*\): "):
        load_tokenizer(str(tmp_path))


def test_a_chat_template_that_does_not_compile_is_warned_of_at_start_up(tmp_path, caplog):
    """A chat template with a syntax error loaded without a word: the server started, and
    every chat request was a 400 blaming the client's messages. Loading the tokenizer now
    warns, as it does of a missing template, with the template's error."""
    from aiollm.model import load_tokenizer

    load_tokenizer(None).save_pretrained(str(tmp_path))
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    with caplog.at_level("WARNING", logger="aiollm.model.tokenizer"):
        load_tokenizer(str(tmp_path))
    assert any(f"chat template of {tmp_path} does not compile" in r.getMessage()
               and "unexpected '}'" in r.getMessage() for r in caplog.records), caplog.text


def test_a_model_directory_without_a_tokenizer_fails_before_the_weights_load(sharded,
                                                                              monkeypatch):
    """A model directory with weights but no tokenizer files was refused only once all its
    weights had loaded (minutes for a large model): the Engine checks it first, naming the
    files and --tokenizer."""
    forbid_loading_weights(monkeypatch, "the weights were loaded before the tokenizer was "
                                        "checked")
    with pytest.raises(FileNotFoundError, match=r"model path '.*' is a directory without a "
                                                r"tokenizer: .*give one with --tokenizer"):
        start_engine(str(sharded), kv_tokens=256)


def test_dummy_weights_with_a_damaged_tokenizer_name_it(tmp_path):
    """--load-format dummy falls back to the default model's tokenizer for a directory with
    none (a config-only directory for benchmarks); it did so for a damaged one too, logging
    "has no tokenizer" and serving another model's vocabulary. A damaged one is an error."""
    from aiollm.model import load_tokenizer

    CONFIG.save_pretrained(str(tmp_path))
    load_tokenizer(None).save_pretrained(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")

    with pytest.raises(ValueError, match=rf"cannot read the tokenizer in {tmp_path}"):
        start_engine(str(tmp_path), load_format="dummy", kv_tokens=256)


def test_a_damaged_tokenizer_of_a_model_directory_fails_before_the_weights_load(copy,
                                                                                monkeypatch):
    """A model directory whose tokenizer.json is present but unreadable passed the early
    check (the file exists) and failed only once all its weights had loaded: the Engine
    loads the tokenizer first."""
    from aiollm.model import load_tokenizer

    path, _ = copy
    load_tokenizer(None).save_pretrained(str(path))
    (path / "tokenizer.json").write_text("{not json")

    forbid_loading_weights(monkeypatch, "the weights were loaded before the tokenizer was "
                                        "read")

    with pytest.raises(ValueError, match=rf"cannot read the tokenizer in {path}"):
        start_engine(str(path), kv_tokens=256)


@pytest.mark.parametrize("field, text, message", [
    (None, "{bad", "config.json is not valid JSON"),
    (None, "[1]", "config.json holds a JSON list, not an object"),
    ("num_attention_heads", "4", "config.json: Field 'num_attention_heads' expected int"),
])
def test_a_damaged_config_json_beside_a_tokenizer_is_named_not_the_tokenizer(
        copy, monkeypatch, field, text, message):
    """transformers' AutoTokenizer reads config.json too, and the tokenizer is read before
    the weights: a config.json that is not JSON (or a field of the wrong type) was reported
    as "cannot read the tokenizer in DIR (tokenizer.json, tokenizer_config.json)", sending
    the user to intact tokenizer files. The config is read first and named."""
    from aiollm.model import load_tokenizer

    path, _ = copy
    load_tokenizer(None).save_pretrained(str(path))
    if field is None:
        (path / "config.json").write_text(text)
    else:
        set_field(path, field, text)
    forbid_loading_weights(monkeypatch, "the weights were loaded before the config was read")

    with pytest.raises(ValueError, match=re.escape(message)) as e:
        start_engine(str(path), kv_tokens=256)
    assert "tokenizer" not in str(e.value)


def test_a_gguf_file_without_a_tokenizer_says_to_give_one(tmp_path):
    """A GGUF file whose metadata holds no tokenizer (written without one, or with one
    transformers cannot convert) failed at start-up with transformers' KeyError: 'tokens',
    naming neither the file nor the way out: a tokenizer given with --tokenizer."""
    from test_loader import FAMILIES, write_gguf

    from aiollm.model import load_tokenizer

    hf = save_random_hf_model(FAMILIES["qwen2-qkv-bias-tied"], str(tmp_path / "hf"))
    write_gguf(hf, str(tmp_path / "model.gguf"))
    with pytest.raises(ValueError, match=r"cannot read the tokenizer of .*model\.gguf "
                                         r"\(its tokenizer\.ggml\.\* metadata\).*'tokens'.*"
                                         r"--tokenizer"):
        load_tokenizer(str(tmp_path / "model.gguf"))


def test_a_gguf_file_named_without_gguf_loads(tmp_path):
    """A GGUF file is told by its first bytes, as vLLM tells it (check_gguf_file), not by
    its name alone: Ollama's model blobs (sha256-...) and files named .bin by old
    conversions are GGUF files; they were refused as 'neither a .gguf file nor a
    directory'."""
    (tmp_path / "sha256-0123abcd").write_bytes(_real_gguf(tmp_path))
    loaded = load(tmp_path / "sha256-0123abcd")
    assert (loaded.config.architecture, loaded.config.num_layers) == ("llama", 1)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "notes.txt"])
def test_a_model_path_that_is_another_file_says_what_to_give(sharded, tmp_path, name):
    """A file of an HF directory given for the model is answered with that directory (the
    path to give); another file with what a model path is. Both were 'neither a .gguf
    file nor a directory', which left the user to guess."""
    folder = sharded if name == "config.json" else tmp_path
    if name == "model.safetensors":
        shutil.copy(sharded / "config.json", folder)
    if not (folder / name).exists():
        (folder / name).write_text("x")
    want = (f"give the directory that holds it: '{folder}'" if name != "notes.txt" else
            r"give a Hugging Face model directory \(config.json and \*.safetensors files\) "
            "or a GGUF file")
    with pytest.raises(FileNotFoundError, match=rf"model path '.*{name}' is a file but not a "
                                                rf"GGUF file: {want}"):
        load(folder / name)


def test_a_directory_of_several_gguf_files_names_them(tmp_path):
    """Without config.json, a directory's one .gguf file is the model; with two, the user
    must give one, and is told which there are. It said 'has no config.json (nor a single
    .gguf file)'."""
    data = _real_gguf(tmp_path)
    (tmp_path / "two").mkdir()
    for name in ("model-Q8_0.gguf", "model-Q4_K_M.gguf"):
        (tmp_path / "two" / name).write_bytes(data)
    with pytest.raises(FileNotFoundError, match=r"two has no config.json and 2 .gguf files "
                                                r"\(model-Q4_K_M.gguf, model-Q8_0.gguf\): "
                                                "give one of them"):
        load(tmp_path / "two")


def test_a_part_of_a_split_gguf_model_says_to_merge_the_parts(tmp_path):
    """llama.cpp's gguf-split leaves a large model in parts (name-00001-of-00003.gguf...),
    each a GGUF file, the metadata in the first. aiollm reads one file, as vLLM does: the
    first part was refused as missing weights, the others as 'GGUF architecture None'."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama", split_max_tensors=2)
    w.add_block_count(1)
    for name in ("token_embd.weight", "output_norm.weight", "output.weight"):
        w.add_tensor(name, np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for part in (1, 2):
        with pytest.raises(ValueError, match=rf"model-0000{part}-of-00002.gguf is part {part} "
                                             r"of 2 of a split GGUF model .*llama-gguf-split "
                                             r"--merge .*model-00001-of-00002.gguf"):
            load(tmp_path / f"model-0000{part}-of-00002.gguf")


@pytest.mark.parametrize("field, value", [("torch_dtype", "bf16"), ("dtype", "fp16"),
                                          ("torch_dtype", "torch.bfloat16")])
def test_a_dtype_of_config_json_that_is_no_torch_dtype_is_named(copy, field, value):
    """transformers reads config.json's dtype (torch_dtype before 5.0) as a name in torch:
    'bf16' raised AttributeError: module 'torch' has no attribute 'bf16', a traceback from
    aiollm serve naming neither the file nor the field."""
    path, _ = copy
    fields = json.loads((path / "config.json").read_text())
    fields.pop("dtype", None)
    (path / "config.json").write_text(json.dumps({**fields, field: value}))
    with pytest.raises(ValueError, match=rf"config.json: {field} {value!r} is not a torch "
                                         "dtype: give one of float32, float16, bfloat16"):
        load(path)


@pytest.mark.parametrize("field, value, tensor, fields", [
    ("vocab_size", 90, r"(lm_head|model\.embed_tokens)\.weight", "vocab_size, hidden_size"),
    ("num_key_value_heads", 4, "model.layers.0.self_attn.k_proj.weight",
     "num_key_value_heads, head_dim, hidden_size"),
    ("intermediate_size", 20, r"model\.layers\.0\.block_sparse_moe\.experts\.0\.w\d\.weight",
     "intermediate_size, hidden_size"),
])
def test_a_config_that_does_not_size_the_checkpoint_names_its_fields(copy, field, value,
                                                                    tensor, fields):
    """A tensor of another shape than the config gives (the config.json of another size of
    the model, or an edited one) named the tensor and both shapes, not which fields of
    config.json size it, nor that the config is what to replace."""
    path, _ = copy
    set_field(path, field, value)
    with pytest.raises(ValueError, match=rf"tensor '{tensor}' has shape .*, the model expects "
                                         rf".* \(config.json's {fields}\): use the "
                                         "config.json saved with these weights"):
        load(path)


def test_a_directory_of_a_config_and_a_gguf_file_says_to_give_the_file(tmp_path):
    """A GGUF file downloaded beside its model's config.json and tokenizer (for --tokenizer,
    as vLLM's docs advise) makes the directory an HF one with no weights: the error spoke
    of .bin checkpoints and save_pretrained, not of the .gguf file there to give."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model-Q4_K_M.gguf").write_bytes(_real_gguf(tmp_path))
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "model")
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors file in .*model; it has "
                                                r"model-Q4_K_M\.gguf: give that file"):
        load(tmp_path / "model")


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_a_weight_of_a_quantized_type_is_named(copy, dtype):
    """A weight stored as integers or float8 is quantized (its scales elsewhere, or a
    quantization_config stripped from config.json): it was cast to the run dtype as if its
    numbers were the weights, and the model served whatever came of it."""
    path, shards = copy
    name = "model.layers.1.self_attn.q_proj.weight"

    def quantize(tensors):
        if name in tensors:
            tensors[name] = tensors[name].to(dtype)

    _edit(path, quantize)
    with pytest.raises(ValueError, match=rf"tensor '{name}' has dtype {dtype}: .*quantized"):
        load(path)


def test_a_layer_past_the_configs_layers_names_num_hidden_layers(copy):
    """A checkpoint with more layers than config.json gives (a config of a smaller variant,
    or one edited to try fewer layers) was refused as a tensor with 'no place in the model',
    without the field that counts the layers."""
    path, _ = copy

    def add_layer(tensors):
        for name in [n for n in tensors if n.startswith("model.layers.1.")]:
            tensors[name.replace("layers.1.", "layers.2.")] = tensors[name].clone()

    _edit(path, add_layer)
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.2\..*' has no place in the "
                                         r"model: it has 2 layers \(config.json's "
                                         r"num_hidden_layers\): use the config.json saved with "
                                         "these weights"):
        load(path)


def test_a_model_hub_name_points_to_its_local_copy_or_to_the_download(tmp_path, monkeypatch):
    """`aiollm serve Qwen/Qwen2.5-0.5B-Instruct`, a new user's first line: the name is not
    fetched, and the error said so without the way on. A model already in the Hugging Face
    cache (hf download) is named by its snapshot directory; another gets the download line.
    Nothing is fetched either way."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # were anything fetched, the test would fail
    with pytest.raises(FileNotFoundError, match=rf"'org/tiny' does not exist .*: it is in the "
                                                rf"Hugging Face cache: give '{snapshot}'"):
        load("org/tiny")
    with pytest.raises(FileNotFoundError, match=r"'org/other' does not exist .*: download it "
                                                r"with `hf download org/other` and give the "
                                                "directory it prints"):
        load("org/other")


def test_a_lone_lm_head_of_a_tied_directory_is_told_as_a_directory(copy):
    """An lm_head.weight alone under a tied config.json is read as the embedding (as
    transformers swaps them), and the checkpoint's other faults are still told as a
    directory's: the name mapping made the messages speak of a GGUF file's block_count
    and drop the config.json advice."""
    path, _ = copy
    set_field(path, "tie_word_embeddings", True)
    index = json.loads((path / INDEX).read_text())

    def drop_embed_add_layer(tensors):
        tensors.pop("model.embed_tokens.weight", None)
        for name in [n for n in tensors if n.startswith("model.layers.1.")]:
            tensors[name.replace("layers.1.", "layers.2.")] = tensors[name].clone()

    _edit(path, drop_embed_add_layer)
    weight_map = index["weight_map"]
    del weight_map["model.embed_tokens.weight"]
    weight_map.update({n.replace("layers.1.", "layers.2."): f for n, f in weight_map.items()
                       if n.startswith("model.layers.1.")})
    (path / INDEX).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"has no place in the model: it has 2 layers "
                                         r"\(config.json's num_hidden_layers\)"):
        load(path)
    set_field(path, "num_hidden_layers", 3)
    set_field(path, "vocab_size", 90)
    with pytest.raises(ValueError, match=r"tensor 'lm_head\.weight' has shape \(96, 32\), the "
                                         r"model expects \(90, 32\) \(config.json's vocab_size, "
                                         "hidden_size\\): use the config.json saved"):
        load(path)


@pytest.mark.parametrize("damage", ["ref-is-a-directory", "ref-not-utf8"])
def test_a_model_hub_name_over_an_unreadable_cache_is_still_told_it_does_not_exist(
        tmp_path, monkeypatch, damage):
    """The Hugging Face cache is read only for a hint: a cache that cannot be read (a ref
    that is no file, or not text) must leave the error the path's own, not raise the
    cache's IsADirectoryError or UnicodeDecodeError in its place."""
    import huggingface_hub.constants

    refs = tmp_path / "hub" / "models--org--tiny" / "refs"
    refs.mkdir(parents=True)
    if damage == "ref-is-a-directory":
        (refs / "main").mkdir()
    else:
        (refs / "main").write_bytes(b"\xff\xfe\x00")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"model path 'org/tiny' does not exist"):
        load("org/tiny")
