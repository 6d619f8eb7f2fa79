"""transformers' LlamaForCausalLM on the default GGUF model, as conftest's hf_reference
serves it: loaded by transformers' own GGUF path once per test run, not once per xdist worker.

The first process of a run that needs it loads it from the GGUF file (transformers' config and
de-quantized tensors, 10-25 s of CPU on a 2-core machine) and leaves the config (pickled) and
the tensors (safetensors, the same fp32 values bit for bit) in the run's shared folder; another
worker of the same run reads those back in well under a second, or waits for the first where
it is still loading (a file lock) instead of de-quantizing the same file beside it."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import pickle
from unittest import mock

import torch

# $AIOLLM_TEST_SHARED_DIR: made by the run's first process (conftest.py), inherited by the
# xdist workers it starts, removed at that process's exit


def from_gguf(path: str):
    """(config, tensors, model): transformers' LlamaConfig of the GGUF file at `path`, its
    tensors (name -> fp32 tensor, transformers' names; no lm_head: the embedding is tied), as
    from_pretrained(..., gguf_file=) reads them, and the LlamaForCausalLM (uninitialised, not
    loaded) whose names the tensors took. Two costs are left out that change no name
    or value: the file's metadata (a 49,152-token vocabulary) is parsed once, not once for
    the config and again for the tensors; gguf's tensor-name map (a pure function of the
    architecture and the layer count) is built once, not for each of the 397 submodules."""
    import gguf
    from transformers import AutoConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with mock.patch.object(gguf, "GGUFReader", functools.lru_cache(maxsize=1)(gguf.GGUFReader)), \
            mock.patch.object(gguf, "get_tensor_name_map",
                              functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)):
        config = AutoConfig.from_pretrained(os.path.dirname(path),
                                            gguf_file=os.path.basename(path))
        with no_init_weights():  # (the checkpoint's tensor names and shapes come from it)
            model = LlamaForCausalLM(config)
        tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    return config, tensors, model


def _cache_folder(path: str) -> str | None:
    """The run's folder for the model at `path` (by its path, size, mtime and transformers'
    version), or None outside a run that made a shared folder."""
    shared = os.environ.get("AIOLLM_TEST_SHARED_DIR")
    if not shared:
        return None
    import transformers

    st = os.stat(path)
    key = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
    return os.path.join(shared, "hf-reference-" + hashlib.sha256(key.encode()).hexdigest()[:16])


def config_and_tensors(path: str):
    """from_gguf(path), computed once per test run: the first caller loads the GGUF file and
    saves the config and tensors in the run's shared folder; later callers (other workers)
    read them back, their model None. Without a shared folder, from_gguf(path)."""
    from safetensors.torch import load_file, save_file

    folder = _cache_folder(path)
    if folder is None:
        return from_gguf(path)
    os.makedirs(folder, exist_ok=True)
    config_file = os.path.join(folder, "config.pkl")
    tensor_file = os.path.join(folder, "model.safetensors")
    with open(os.path.join(folder, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a worker loading it now: wait, then read its files
        if os.path.exists(config_file):
            with open(config_file, "rb") as f:
                config = pickle.load(f)
            return config, load_file(tensor_file), None
        config, tensors, model = from_gguf(path)
        save_file({k: v.contiguous() for k, v in tensors.items()}, tensor_file)
        with open(config_file + ".part", "wb") as f:  # written last: its presence says done
            pickle.dump(config, f)
        os.replace(config_file + ".part", config_file)
        return config, tensors, model


def load(path: str):
    """transformers' LlamaForCausalLM (fp32, eval mode) of the GGUF file at `path`, its
    weights those of config_and_tensors(path); the model's random initialisation is not run
    (as from_pretrained skips it): every parameter is loaded (lm_head, the one missing, is
    tied to the embedding, both checked) and the rotary buffers come from the constructor.
    AssertionError where a parameter is left unloaded or a tensor matches none."""
    from transformers import LlamaForCausalLM
    from transformers.initialization import no_init_weights

    config, tensors, model = config_and_tensors(path)
    if model is None:
        with no_init_weights():
            model = LlamaForCausalLM(config)
    model.eval()
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected, (missing, unexpected)
    model.tie_weights()
    assert torch.equal(model.lm_head.weight, tensors["model.embed_tokens.weight"])
    assert model.dtype == torch.float32
    return model
