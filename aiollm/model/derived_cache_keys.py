"""The keys of the GGUF cache's stored parts (aiollm/model/derived_cache.py): which of
aiollm.model's modules and which libraries' releases derive each part, and source_key, the
hash of their source and versions that names the part's file, so that a part derived by
another version (an upgrade that derives it otherwise) is derived again, never served."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util

# The modules of aiollm.model whose code decides a stored part: a change to one of them
# invalidates that part. The config: how GGUF metadata becomes a ModelConfig and what is
# refused on the way (every module weights_gguf draws on but paths.py and weights_hf.py,
# which find files and word errors), and how it is stored (derived_cache.py); the weights:
# their names (gguf_gemma.py's for Gemma's extra norms), values, and which tensors are no
# weights (gguf_phi3.py's rope factors) from a GGUF file's tensors, and from the config, which
# iter_gguf reads (the architecture and head counts decide the q/k rows' order,
# sandwich_norms the norms' names): a head count derived otherwise (gguf_metadata.py) gives
# other weights; the parameters: their layout from those, and the scalars folded into them
# (granite_scales.py).
CONFIG_DERIVING = ("config", "rope_config", "rope", "weights_gguf", "gguf_reader",
                   "gguf_metadata", "gguf_moe", "gguf_phi3", "gguf_gemma", "gguf_eog",
                   "gguf_granite")
CONFIG_CODE = (*CONFIG_DERIVING, "derived_cache")
WEIGHTS_CODE = CONFIG_DERIVING
LAYOUT_CODE = (*CONFIG_DERIVING, "llama", "mlp", "linear", "moe", "weights",
               "weights_layout", "granite_scales")
# The libraries whose version decides every keyed part too: gguf's GGUFReader parses the
# metadata and its gguf.quants.dequantize gives the weights' values (a release that fixes
# a quantization type's decoding must not leave the old values in use).
LIBRARIES = ("gguf",)
# The tokenizer: transformers' GGUF converter makes it (from the file as gguf reads it; a
# release that converts a family otherwise must not leave the old conversion served),
# tokenizers' format stores it, and tokenizer.py adds the file's named chat templates.
TOKENIZER_CODE = ("tokenizer", "derived_cache")
TOKENIZER_LIBRARIES = ("transformers", "tokenizers", "gguf")


@functools.cache
def source_key(modules: tuple[str, ...], libraries: tuple[str, ...] = LIBRARIES) -> str:
    """A hash of the source of `modules` (of aiollm.model) and of `libraries`' installed
    versions (read from their metadata: none is imported): 16 hex digits."""
    h = hashlib.sha256()
    for module in modules:
        spec = importlib.util.find_spec(f"aiollm.model.{module}")
        with open(spec.origin, "rb") as f:
            h.update(f.read())
    for library in libraries:
        try:
            version = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:  # on sys.path with no metadata
            version = "unknown"
        h.update(f"\0{library}=={version}".encode())
    return h.hexdigest()[:16]
