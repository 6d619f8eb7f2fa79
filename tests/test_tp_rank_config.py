"""A spawned rank builds its shard from the model config its lead read (tensor parallelism on
the CPU, gloo, 2 ranks): it read config.json again, through transformers' AutoConfig, whose
import alone took ~1.4 s of CPU in every rank (a third of its start-up on the CPU).

A sitecustomize on the spawned rank's PYTHONPATH records, as the rank builds its model
(engine.loading.build_rank_model), whether transformers was imported and the config it
builds from."""

from __future__ import annotations

import asyncio
import os
import pickle

from test_tensor_parallel import PROMPTS, tiny_model  # noqa: F401 - a fixture

from aiollm.engine import Engine
from aiollm.model.loader import read_config
from aiollm.sampling_params import SamplingParams

_SITECUSTOMIZE = '''
import os, pickle, sys
if os.environ.get("AIOLLM_TP_CONFIG"):  # a spawned rank
    import aiollm.engine.loading as loading
    _build = loading.build_rank_model
    def build_rank_model(cfg, loaded, *args, **kwargs):
        with open(os.environ["AIOLLM_TEST_RANK_SAW"], "wb") as f:
            pickle.dump(("transformers" in sys.modules, loaded.config), f)
        return _build(cfg, loaded, *args, **kwargs)
    loading.build_rank_model = build_rank_model
'''


def test_a_spawned_rank_builds_from_its_leads_config_without_transformers(
        tiny_model, tmp_path, monkeypatch):  # noqa: F811
    """The rank's ModelConfig equals rank 0's read_config of the model, it never imported
    transformers, and the ranks generate."""
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    saw = tmp_path / "rank-saw"
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the spawned rank's
    monkeypatch.setenv("AIOLLM_TEST_RANK_SAW", str(saw))

    async def go():
        async with Engine(tiny_model, device="cpu", tensor_parallel_size=2, kv_tokens=256,
                          max_model_len=128) as engine:
            out = await engine.generate(PROMPTS[0], SamplingParams(max_tokens=3,
                                                                   ignore_eos=True))
        return out.token_ids

    assert len(asyncio.run(go())) == 3
    with open(saw, "rb") as f:
        imported, config = pickle.load(f)
    assert config == read_config(tiny_model)
    assert not imported, "the spawned rank imported transformers"
    assert os.environ.get("AIOLLM_TP_MODEL_CONFIG") is None  # (the rank's alone)
