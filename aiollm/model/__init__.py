"""Models, weights and tokenizers: the Llama family over the token-level KV pool.

The public names are imported lazily (PEP 562) so that importing a light submodule such as
aiollm.model.kv_pool does not pull in transformers, gguf and triton.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "LoadedModel": "aiollm.model.loader",
    "ModelConfig": "aiollm.model.config",
    "RopeConfig": "aiollm.model.rope_config",
    "default_model_path": "aiollm.model.paths",
    "load_model": "aiollm.model.loader",
    "load_serving_tokenizer": "aiollm.model.tokenizer",
    "load_tokenizer": "aiollm.model.tokenizer",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from aiollm.model.config import ModelConfig
    from aiollm.model.loader import LoadedModel, load_model
    from aiollm.model.paths import default_model_path
    from aiollm.model.rope_config import RopeConfig
    from aiollm.model.tokenizer import load_serving_tokenizer, load_tokenizer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aiollm.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
