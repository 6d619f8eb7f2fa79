"""A mis-shaped tensor of a mixture-of-experts layer is refused naming the config.json fields
that give that tensor its shape, so the user knows which field disagrees with the weights; a
shared expert's tensor in a family without one names the model type, and so does an expert
tensor in a model type without experts (whose GGUF expert_count is ignored, as llama.cpp
does).

A tiny random Qwen2-MoE (8 experts, a gated shared expert) saved by transformers, its experts
restacked as transformers 5's state dict holds them (experts.gate_up_proj [E, 2I, H],
experts.down_proj [E, H, I]) where a case needs it, then damaged one way per case.
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2MoeConfig

from aiollm.model import load_model
from test_loader import save_random_hf_model

CONFIG = Qwen2MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=48,
                        moe_intermediate_size=16, shared_expert_intermediate_size=24,
                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                        num_experts=8, num_experts_per_tok=2, max_position_embeddings=128)
MLP = "model.layers.0.mlp."


def stack_experts(t: dict) -> None:
    """Replace the per-expert tensors of layer 0 by the two stacked ones, in place."""
    gate_up = torch.stack([torch.cat([t.pop(f"{MLP}experts.{e}.gate_proj.weight"),
                                      t.pop(f"{MLP}experts.{e}.up_proj.weight")])
                           for e in range(8)])
    down = torch.stack([t.pop(f"{MLP}experts.{e}.down_proj.weight") for e in range(8)])
    t[MLP + "experts.gate_up_proj"], t[MLP + "experts.down_proj"] = gate_up, down


def stacked(edit):
    def apply(t):
        stack_experts(t)
        edit(t)
    return apply


def resize(name, fn):
    return lambda t: t.__setitem__(name, fn(t[name]).contiguous())


CASES = {
    # one expert too few in the stacked tensor: it was blamed on moe_intermediate_size
    "stacked-expert-count": (stacked(resize(MLP + "experts.gate_up_proj", lambda w: w[:7])),
                             "experts.gate_up_proj' has shape (7, 32, 32), the model expects "
                             "(8, 32, 32) (config.json's num_experts, moe_intermediate_size, "
                             "hidden_size)"),
    # the same in down_proj, which is refused by its count alone: it said "but the config
    # has 8", naming no field of config.json
    "stacked-down-expert-count": (stacked(resize(MLP + "experts.down_proj", lambda w: w[:7])),
                                  "experts.down_proj' stacks 7 experts, but config.json's "
                                  "num_experts is 8: use the config.json saved with these "
                                  "weights"),
    "stacked-width": (stacked(resize(MLP + "experts.down_proj", lambda w: w[:, :, :12])),
                      "experts.down_proj' has shape (8, 32, 12), the model expects (8, 32, 16) "
                      "(config.json's num_experts, moe_intermediate_size, hidden_size)"),
    "one-expert": (resize(MLP + "experts.3.up_proj.weight", lambda w: w[:15]),
                   "experts.3.up_proj.weight' has shape (15, 32), the model expects (16, 32) "
                   "(config.json's moe_intermediate_size, hidden_size)"),
    # the shared expert's gate is [1, hidden_size]: shared_expert_intermediate_size was named
    "shared-expert-gate": (resize(MLP + "shared_expert_gate.weight", lambda w: w.repeat(2, 1)),
                           "shared_expert_gate.weight' has shape (2, 32), the model expects "
                           "(1, 32) (config.json's hidden_size)"),
    "router": (resize(MLP + "gate.weight", lambda w: w[:7]),
               "gate.weight' has shape (7, 32), the model expects (8, 32) "
               "(config.json's num_experts, hidden_size)"),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2-moe")
    save_random_hf_model(CONFIG, str(path))
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_a_mis_shaped_moe_tensor_names_its_fields(saved, tmp_path, case):
    edit, message = CASES[case]
    path = tmp_path / "model"
    shutil.copytree(saved, path)
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=re.escape(message)):
        load_model(str(path), dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("model_type, tensor, shape", [
    ("qwen3_moe", "shared_expert.up_proj.weight", (48, 64)),
    ("qwen3_moe", "shared_expert_gate.weight", (1, 64)),
    ("mixtral", "shared_expert.down_proj.weight", (64, 48)),
])
def test_a_shared_expert_tensor_of_a_family_without_one_names_the_model_type(
        tmp_path, model_type, tensor, shape):
    """Qwen2-MoE's shared expert in a checkpoint whose config.json says Qwen3-MoE or Mixtral
    (a relabelled config): the message named shared_expert_intermediate_size, a field those
    families never read (setting it changed nothing), and a lone shared_expert_gate was
    skipped without a word. It now names the model type."""
    from test_moe_model import FAMILIES

    save_random_hf_model(FAMILIES[model_type], str(tmp_path))
    tensors = load_file(tmp_path / "model.safetensors")
    prefix = "model.layers.0." + ("block_sparse_moe." if model_type == "mixtral" else "mlp.")
    tensors[prefix + tensor] = torch.zeros(shape)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=re.escape(
            f"checkpoint tensor '{prefix}{tensor}' has no place in the model: {model_type} "
            "models have no shared expert (of the supported model types only qwen2_moe has "
            "one): check config.json's model_type")):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("model_type, spelling", [("qwen3_moe", "num_local_experts"),
                                                  ("qwen3_moe", "num_experts"),
                                                  ("mixtral", "num_experts"),
                                                  ("mixtral", "num_local_experts")])
def test_the_expert_count_is_named_as_config_json_spells_it(tmp_path, model_type, spelling):
    """transformers reads a Qwen MoE's or Mixtral's expert count under either name
    (transformers 5 saves Qwen3-MoE's as num_local_experts, the Hub's configs say
    num_experts; Mixtral's the other way round): messages named the family's usual
    spelling, a field the user's config.json may not have."""
    import json

    from test_moe_model import FAMILIES

    save_random_hf_model(FAMILIES[model_type], str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    count = config.pop("num_local_experts", None) or config.pop("num_experts")
    (tmp_path / "config.json").write_text(json.dumps({**config, spelling: count}))
    tensors = load_file(tmp_path / "model.safetensors")
    router = "model.layers.0." + ("block_sparse_moe" if model_type == "mixtral" else "mlp") \
        + ".gate.weight"
    tensors[router] = tensors[router][:-1].contiguous()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=re.escape(f"(config.json's {spelling}, hidden_size)")):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({**config, spelling: count,
                                                      "num_experts_per_tok": count + 1}))
    with pytest.raises(ValueError, match=re.escape(
            f"num_experts_per_tok must be in [1, {spelling} = {count}], got {count + 1}")):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("model_type", ["qwen2_moe", "qwen3_moe", "mixtral"])
def test_a_config_of_fewer_experts_than_the_checkpoint_names_the_count_field(tmp_path,
                                                                             model_type):
    """A config.json whose expert count is smaller than the checkpoint's (another size of
    the model): the first extra expert was refused "but the config has 6 experts", naming
    no field of config.json."""
    import json

    from test_moe_model import FAMILIES

    save_random_hf_model(FAMILIES[model_type], str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    spelling = next(k for k in ("num_experts", "num_local_experts") if k in config)
    (tmp_path / "config.json").write_text(json.dumps({**config, spelling: 6}))
    with pytest.raises(ValueError, match=r"experts\.(\d+)\.\w+\.weight' is of expert \1, but "
                       + re.escape(f"config.json's {spelling} is 6 (experts 0 to 5): use the "
                                   "config.json saved with these weights")):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "qwen2_moe"])
def test_with_both_spellings_of_the_expert_count_the_one_read_is_named(tmp_path, model_type):
    """A config.json with num_experts and num_local_experts both (a config merged from two
    sources): transformers reads one of them, which one by model type (and version), and
    the messages named the family's usual spelling or whichever was alone, not the one read
    (Mixtral's num_experts, Qwen3-MoE's num_local_experts under transformers 5). They now
    name the spelling whose value the model has, as transformers builds it."""
    import json

    from transformers import AutoConfig

    from test_moe_model import FAMILIES

    save_random_hf_model(FAMILIES[model_type], str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    count = config.pop("num_local_experts", None) or config.pop("num_experts")
    # both wrong for the checkpoint, by different amounts, so the message tells them apart
    values = {"num_experts": count + 1, "num_local_experts": count + 2}
    (tmp_path / "config.json").write_text(json.dumps({**config, **values}))
    built = AutoConfig.from_pretrained(str(tmp_path))
    n = built.num_local_experts if model_type == "mixtral" else built.num_experts
    (read,) = [k for k, v in values.items() if v == n]
    with pytest.raises(ValueError, match=re.escape(f"(config.json's {read}, hidden_size)")):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({**config, **values,
                                                      "num_experts_per_tok": n + 1}))
    with pytest.raises(ValueError, match=re.escape(
            f"num_experts_per_tok must be in [1, {read} = {n}], got {n + 1}")):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")


def test_a_qwen2_moe_expert_count_spelled_as_mixtrals_is_warned_of_and_named(tmp_path,
                                                                             caplog):
    """Qwen2-MoE reads num_experts only: a config.json giving num_local_experts instead gets
    transformers' default count (60), which the checkpoint's router then disagreed with in a
    message naming num_local_experts, the field that was not read. It is now warned of at
    load, and the shape error names num_experts, the field to give."""
    import json
    import logging

    from test_moe_model import FAMILIES

    save_random_hf_model(FAMILIES["qwen2_moe"], str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    count = config.pop("num_experts")
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_local_experts": count}))
    with caplog.at_level(logging.WARNING, logger="aiollm.model.hf_moe_config"), \
            pytest.raises(ValueError, match=re.escape(
                "has shape (8, 64), the model expects (60, 64) (config.json's num_experts, "
                "hidden_size)")):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert [r.getMessage() for r in caplog.records] == [
        "config.json's num_local_experts (8) is not read for model_type qwen2_moe: the model "
        "has transformers' default num_experts = 60 experts; give num_experts"]


def test_a_qwen3_moe_gguf_with_shared_expert_tensors_is_refused(tmp_path):
    """A GGUF file of architecture qwen3moe holding Qwen2-MoE's *_shexp tensors (llama.cpp's
    qwen3moe reads none): its shared expert was sized from the tensors and run, a model no
    reference defines. It is now refused naming a tensor and the file's architecture."""
    from test_moe_model import save_moe_model, write_moe_gguf

    hf = save_moe_model("qwen2_moe", tmp_path / "hf", tokenizer=False)
    hf.config.model_type = "qwen3_moe"  # written as general.architecture qwen3moe
    write_moe_gguf(hf, str(tmp_path / "model.gguf"))
    with pytest.raises(ValueError, match=r"checkpoint tensor 'blk\.0\.ffn_\w+_shexp\.weight' "
                       r"has no place in the model: qwen3_moe models have no shared expert .*"
                       "check the file's general.architecture"):
        load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")


def test_a_gguf_whose_shared_expert_width_disagrees_with_its_tensors_names_the_key(
        tmp_path, monkeypatch):
    """A qwen2moe file whose expert_shared_feed_forward_length (40) is not its *_shexp
    tensors' width (48): llama.cpp refuses the file by the tensor's shape. It was refused
    by the tensor alone, the key that sized the model unnamed, as the routed experts' width
    is named (expert_feed_forward_length)."""
    import test_moe_model
    from test_moe_model import save_moe_model, write_moe_gguf

    plain = test_moe_model.gguf_writer

    def with_shared_width(c, path, arch):
        w = plain(c, path, arch)
        w.add_expert_shared_feed_forward_length(40)
        return w

    monkeypatch.setattr(test_moe_model, "gguf_writer", with_shared_width)
    hf = save_moe_model("qwen2_moe", tmp_path / "hf", tokenizer=False)
    write_moe_gguf(hf, str(tmp_path / "model.gguf"))
    with pytest.raises(ValueError, match=re.escape(
            "GGUF metadata qwen2moe.expert_shared_feed_forward_length = 40 disagrees with "
            "tensor blk.0.ffn_gate_shexp.weight, whose shared expert is 48 wide")):
        load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("family, arch", [("qwen3_moe", "qwen3moe"), ("mixtral", "llama")])
def test_a_gguf_whose_expert_count_disagrees_with_its_router_names_the_key(
        tmp_path, monkeypatch, family, arch):
    """An expert_count two short of the experts the file's routers and tensors hold was
    refused by a tensor's shape ("stacks 16 experts, but the config has 14", a GGUF file
    having no config; Mixtral's router shape), the key that sized the model unnamed."""
    import gguf

    from test_moe_model import save_moe_model, write_moe_gguf

    plain = gguf.GGUFWriter.add_expert_count
    monkeypatch.setattr(gguf.GGUFWriter, "add_expert_count", lambda w, n: plain(w, n - 2))
    hf = save_moe_model(family, tmp_path / "hf", tokenizer=False)
    write_moe_gguf(hf, str(tmp_path / "model.gguf"))
    n = hf.config.num_experts if family == "qwen3_moe" else hf.config.num_local_experts
    with pytest.raises(ValueError, match=re.escape(
            f"GGUF metadata {arch}.expert_count = {n - 2} disagrees with tensor "
            f"blk.0.ffn_gate_inp.weight, whose router scores {n} experts")):
        load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")


def test_an_expert_count_in_a_dense_architecture_gguf_is_ignored_as_llama_cpp_does(
        tmp_path, monkeypatch):
    """llama.cpp's qwen2 and qwen3 graphs are dense: they read no experts whatever the
    file's expert_count says. A dense Qwen3 file carrying qwen3.expert_count failed to load
    with a bare KeyError('qwen3'); it now runs as the dense model it is."""
    import test_loader
    from test_loader import FAMILIES, all_position_logits, write_gguf

    plain = test_loader.gguf_writer

    def with_expert_count(c, path, arch):
        w = plain(c, path, arch)
        w.add_expert_count(8)
        w.add_expert_used_count(2)
        return w

    monkeypatch.setattr(test_loader, "gguf_writer", with_expert_count)
    hf = save_random_hf_model(FAMILIES["qwen3-qk-norm"], str(tmp_path / "hf"))
    with torch.no_grad():  # the file holds fp16 tensors
        for p in hf.parameters():
            p.copy_(p.half().float())
    write_gguf(hf, str(tmp_path / "model.gguf"))
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert loaded.config.architecture == "qwen3" and loaded.config.moe is None
    prompts = [[3, 17, 9, 4, 50, 23, 7], [5]]
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in prompts])
    assert (all_position_logits(loaded, prompts) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("form, family, dense", [("hf", "qwen3_moe", "qwen3"),
                                                  ("gguf", "qwen3_moe", "qwen3"),
                                                  ("gguf", "mixtral", "llama")])
def test_expert_tensors_under_a_dense_model_type_name_the_field(tmp_path, monkeypatch, form,
                                                                 family, dense):
    """A Qwen3-MoE checkpoint whose config.json says model_type qwen3 (or whose GGUF file
    says general.architecture qwen3), a Mixtral GGUF file without llama.expert_count: its
    first expert tensor was refused as having "no place in the model", with no word of the
    field that made the model dense."""
    import json

    import gguf

    from test_moe_model import save_moe_model, write_moe_gguf

    hf = save_moe_model(family, tmp_path / "hf", tokenizer=False)
    if form == "hf":
        path = tmp_path / "hf"
        fields = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(
            {**fields, "model_type": dense, "architectures": ["Qwen3ForCausalLM"]}))
        where = "config.json's model_type"
    else:
        if dense == "llama":  # Mixtral's file (llama) without the count that says so
            monkeypatch.setattr(gguf.GGUFWriter, "add_expert_count", lambda self, n: None)
            where = r"the file's llama.expert_count \(llama.cpp's Mixtral files are llama"
        else:
            hf.config.model_type = dense  # written as the file's general.architecture
            where = "the file's general.architecture"
        path = tmp_path / "model.gguf"
        write_moe_gguf(hf, str(path))
    with pytest.raises(ValueError, match=r"checkpoint tensor '[\w.]+' has no place in the "
                       rf"model: {dense} models have no experts \(of the supported model "
                       r"types mixtral, qwen2_moe, qwen3_moe and granitemoe have them\): check "
                       + where):
        load_model(str(path), dtype=torch.float32, device="cpu")
