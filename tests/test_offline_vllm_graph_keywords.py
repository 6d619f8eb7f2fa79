"""vLLM's LLM(...) keywords of its top-level CUDA-graph flags, cudagraph_capture_sizes (its
older cuda_graph_sizes), max_cudagraph_capture_size and performance_mode, read as
`aiollm serve` reads the flags (aiollm/vllm_graph_flags.py): each was a TypeError, an
unexpected keyword. No model loads: engine_options is LLM's reading of its keywords."""

from __future__ import annotations

import pytest

from aiollm.vllm_names import engine_options


@pytest.mark.parametrize("options, ours", [
    ({"max_cudagraph_capture_size": 64}, {"cuda_graph_max_batch": 64}),
    ({"cudagraph_capture_sizes": [1, 2, 8]}, {"cuda_graph_max_batch": 8}),
    ({"cuda_graph_sizes": [1, 16]}, {"cuda_graph_max_batch": 16}),
    ({"max_cudagraph_capture_size": 0}, {"cuda_graph": False}),
    ({"max_cudagraph_capture_size": None, "cudagraph_capture_sizes": None}, {}),
    ({"cudagraph_capture_sizes": [1, 32], "enforce_eager": True}, {"cuda_graph": False}),
    ({"performance_mode": "balanced"}, {}),
    ({"performance_mode": "interactivity"}, {}),
    ({"performance_mode": "throughput"}, {"max_running_requests": 512}),
    ({"performance_mode": "throughput", "max_num_seqs": 64}, {"max_running_requests": 64}),
])
def test_the_keywords_are_read_as_the_flags(options, ours):
    assert engine_options(options)[0] == ours


@pytest.mark.parametrize("options, lead", [
    ({"performance_mode": "fast"},
     "performance_mode='fast': takes one of balanced, interactivity, throughput"),
    ({"max_cudagraph_capture_size": 8, "compilation_config": {"max_cudagraph_capture_size": 8}},
     "max_cudagraph_capture_size=8: compilation_config's max_cudagraph_capture_size is given "
     "too"),
    ({"cuda_graph_sizes": [1], "cudagraph_capture_sizes": [1]},
     "cudagraph_capture_sizes=[1]: cuda_graph_sizes is given too"),
    ({"cudagraph_capture_sizes": [0, 8]}, "cudagraph_capture_sizes=[0, 8]: takes batch sizes"),
    ({"max_cudagraph_capture_size": "1k"}, "max_cudagraph_capture_size='1k': takes a whole "
                                           "number >= 0"),
    ({"cudagraph_capture_sizes": [1, 2, 128], "max_cudagraph_capture_size": 64},
     "max_cudagraph_capture_size=64: max_cudagraph_capture_size 64 and the largest of "
     "cudagraph_capture_sizes, 128, disagree"),
])
def test_values_vllm_refuses_name_the_keyword(options, lead):
    with pytest.raises(ValueError) as e:
        engine_options(options)
    assert str(e.value).startswith(lead), e.value


@pytest.mark.parametrize("options, lead", [
    ({"cuda_graph_max_batch": 32, "max_cudagraph_capture_size": 64},
     "cuda_graph_max_batch=32 and max_cudagraph_capture_size's largest CUDA graph, 64, "
     "disagree"),
    ({"cuda_graph_max_batch": 32, "cuda_graph_sizes": [1, 64]},
     "cuda_graph_max_batch=32 and cuda_graph_sizes's largest CUDA graph, 64, disagree"),
    ({"cuda_graph_max_batch": 32, "compilation_config": {"max_cudagraph_capture_size": 64}},
     "cuda_graph_max_batch=32 and compilation_config's largest CUDA graph, 64, disagree"),
])
def test_cuda_graph_max_batch_beside_another_size_names_the_keyword_given(options, lead):
    """The refusal names the keyword the caller gave the other size with: it named
    compilation_config, never given, for max_cudagraph_capture_size's or the sizes'."""
    with pytest.raises(ValueError) as e:
        engine_options(options)
    assert str(e.value).startswith(lead), e.value
