"""What llama.cpp's gemma2 and gemma3 GGUF files say beyond a Gemma 1 file, read as llama.cpp
reads them (its llama-model.cpp, LLM_ARCH_GEMMA2 / LLM_ARCH_GEMMA3).

Its converter (convert_hf_to_gguf.py's Gemma2Model, Gemma3Model) stores every norm weight as
1 + w, as for Gemma 1, the extra norms as post_attention_norm (transformers'
post_attention_layernorm), ffn_norm (pre_feedforward_layernorm: not Llama's
post_attention_layernorm) and post_ffw_norm (post_feedforward_layernorm), and Gemma 3's q/k
norms as attn_q_norm / attn_k_norm. Metadata:
- attention.sliding_window; which layers slide is fixed by the architecture, as llama.cpp
  sets it (set_swa_pattern): Gemma 2 every other layer from the first, Gemma 3 five of six
  (transformers' defaults for configs without layer_types);
- Gemma 2's attn_logit_softcapping and final_logit_softcapping (llama.cpp's defaults 50 and
  30 when absent); Gemma 3's final_logit_softcapping where the file has one (llama.cpp reads
  it, absent or 0 for none), no attention cap (llama.cpp reads none for gemma3);
- no query_pre_attn_scalar: llama.cpp's softmax scale is 1 / sqrt(hidden / heads) for the
  27B models (46 layers for Gemma 2, 62 for Gemma 3) and 1 / sqrt(head_dim) otherwise, which
  are those checkpoints' query_pre_attn_scalar (144, 168; 256);
- Gemma 3's sliding layers rotate by base 10,000 unscaled (llama.cpp's fixed
  rope_freq_base_train_swa, transformers' rope_local_base_freq default), its global layers
  by rope.freq_base with the file's rope scaling.
"""

from __future__ import annotations

import math
from typing import Any

from aiollm.model.gguf_metadata import field
from aiollm.model.rope_config import RopeConfig

# llama.cpp's layer tensor names whose transformers module differs in Gemma 2 and 3
LAYER_NAMES = {"post_attention_norm": "post_attention_layernorm",
               "ffn_norm": "pre_feedforward_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"}
# block counts of the 27B models, whose softmax scale llama.cpp takes from hidden / heads
_27B_LAYERS = {"gemma2": 46, "gemma3_text": 62}
_SWA_PATTERN = {"gemma2": 2, "gemma3_text": 6}  # llama.cpp's set_swa_pattern
_SOFTCAP_DEFAULTS = {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}


def gemma_fields(reader: Any, p: str, arch: str, hidden: int, heads: int, head_dim: int,
                 num_layers: int) -> dict:
    """ModelConfig's Gemma 2/3 fields of a file of architecture `arch` (transformers'
    model_type; `p` its metadata prefix): the sliding window and layers, the softmax scale as
    query_pre_attn_scalar, Gemma 2's soft-caps, Gemma 3's final cap (if any) and local rotary.
    Raises ValueError naming a key with a value no model has."""
    window = int(field(reader, p + "attention.sliding_window", 0) or 0)
    if window < 0:
        raise ValueError(f"GGUF metadata {p}attention.sliding_window must be >= 0, got {window}")
    pattern = _SWA_PATTERN[arch]
    layers = tuple(i for i in range(num_layers) if i % pattern < pattern - 1)
    scalar = hidden / heads if num_layers == _27B_LAYERS[arch] else head_dim
    fields: dict = {"sliding_window": window or None,
                    "sliding_layers": layers if window else None,
                    "query_pre_attn_scalar": float(scalar)}
    if arch == "gemma2":
        for name, default in _SOFTCAP_DEFAULTS.items():
            value = float(field(reader, p + name, default))
            if not value > 0:
                raise ValueError(f"GGUF metadata {p}{name} must be > 0, got {value}")
            fields[name] = value
    else:
        cap = float(field(reader, p + "final_logit_softcapping", 0.0) or 0.0)
        if not 0 <= cap < math.inf:
            raise ValueError(f"GGUF metadata {p}final_logit_softcapping must be >= 0 (0: none), "
                             f"got {cap}")
        fields["final_logit_softcapping"] = cap or None
        fields["rope_local"] = RopeConfig(theta=10000.0)
    return fields
