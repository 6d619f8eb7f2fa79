"""bench/decode.py with Gemma 2/3's one-token steps on the layered path, as main ran them
before 76cdb3e (LlamaForCausalLM.fused_small False for models with sandwich norms): the
baseline of that change, measured in the same call as decode.py on the same machine.

Usage: python bench/decode_layered.py bench/configs/gemma-2-2b ... (decode.py's arguments)
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from aiollm.model import llama

_init = llama.LlamaForCausalLM.__init__


def _layered_one_token_steps(self, config, max_len=None):
    _init(self, config, max_len)
    if config.sandwich_norms:
        self.fused_small = False


llama.LlamaForCausalLM.__init__ = _layered_one_token_steps
decode = str(Path(__file__).resolve().parent / "decode.py")
sys.argv = [decode, *sys.argv[1:]]
runpy.run_path(decode, run_name="__main__")
