"""Which layers of a Hugging Face config attend through a sliding window, as transformers 5
decides it family by family (hf_config.py's config_from_hf reads it into ModelConfig's
sliding_window and sliding_layers). A window that transformers would fail on is refused
naming its config.json field."""

from __future__ import annotations

from typing import Any


# the families whose every layer slides when config.json has a sliding_window (transformers'
# Mistral, Mixtral, Phi-3 and Qwen3-MoE models build one sliding-window mask for all layers; its
# Qwen3-MoE config drops the window unless use_sliding_window); Qwen2, Qwen3 and Qwen2-MoE
# slide the layers their layer_types marks "sliding_attention"; Llama, Gemma, Granite and
# GraniteMoe never slide (window fields in their config.json are left by a conversion from
# another family, and transformers reads none of them)
_EVERY_LAYER_SLIDES = ("mistral", "mixtral", "qwen3_moe", "phi3")
_NEVER_SLIDES = ("llama", "gemma", "granite", "granitemoe")
# Gemma 2 and 3 slide the layers their layer_types marks "sliding_attention" (their configs
# derive it when absent: Gemma 2 every other layer from the first, Gemma 3 five of six) by
# sliding_window, with no use_sliding_window field
_GEMMA_SLIDES = ("gemma2", "gemma3_text")


def sliding_window(hf: Any, arch: str) -> tuple[int | None, tuple[int, ...] | None]:
    """(window in tokens, the layers that slide: None for all) of a config as transformers 5
    runs it; (None, None) when no layer slides. Raises ValueError naming config.json's field
    for a window below 1 (transformers' mask then hides every key) or sliding layers
    without use_sliding_window or with a null sliding_window (its mask then fails)."""
    if arch in _NEVER_SLIDES:
        return None, None
    window = getattr(hf, "sliding_window", None)
    if arch in _GEMMA_SLIDES:
        types = getattr(hf, "layer_types", None) or []
        layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
        if not layers:
            return None, None
        if window is None:  # transformers' sliding mask fails on it
            raise ValueError(f"config.json: layer_types marks layers {list(layers)} "
                             "sliding_attention but sliding_window is null: set it")
    elif arch in _EVERY_LAYER_SLIDES:
        layers = None
    else:
        types = getattr(hf, "layer_types", None)
        if types is None:  # derived as transformers 5's configs derive it
            on = bool(getattr(hf, "use_sliding_window", False) and window)
            bound = int(getattr(hf, "max_window_layers", 0) or 0)
            n = int(hf.num_hidden_layers)
            if arch == "qwen2_moe":  # the even layers below max_window_layers
                layers = tuple(i for i in range(0, min(n, bound), 2) if on)
            else:  # Qwen2, Qwen3: the layers from max_window_layers on
                layers = tuple(i for i in range(bound, n) if on)
        else:
            layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
        if not layers:
            return None, None
        # transformers' Qwen2/3 configs set sliding_window null (Qwen2-MoE's 0) without
        # use_sliding_window, and the mask of a sliding layer then fails or hides all; a
        # null sliding_window fails it too
        if not getattr(hf, "use_sliding_window", False):
            raise ValueError(f"config.json: layer_types marks layers {list(layers)} "
                             "sliding_attention but use_sliding_window is false (no "
                             "sliding_window): set use_sliding_window and sliding_window")
        if window is None:
            raise ValueError(f"config.json: layer_types marks layers {list(layers)} "
                             "sliding_attention but sliding_window is null: set it")
    if window is None:
        return None, None
    if int(window) < 1:  # transformers fails on 0 (no position seen)
        raise ValueError(f"config.json: sliding_window must be >= 1, or null for none, got "
                         f"{window}")
    return int(window), layers
