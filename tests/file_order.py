"""The order in which a test run hands its files out: the slowest files first.

`make test` runs the files over 2 xdist workers, each file whole in one worker (--dist
loadfile), in the order of the collection (--no-loadscope-reorder; xdist's default order is
by number of tests, which put one-test files of 12-15 s of processes last). A worker that
takes a long file last finishes that much after the other, its core idle meanwhile: handed
out longest first, the last files are the short ones and the two workers end within seconds
of each other (longest-processing-time-first scheduling, Graham 1969).

SLOWEST: the files that took 5 s or more in a whole run at 5e85fac (2 workers, pytest's
--durations summed by file), longest first, and five files added since, placed by their
seconds run alone (test_api_many_messages 17 s, test_sglang_constraint_fields 18 s,
test_cli_config_file 11 s, test_tp_deferred_sampling 17 s, test_grammar_import_off_loop
5 s); test_gguf_reader (56 s in a loaded run at 29394f2, ~30 s since its map test's
small file) and test_offline_vllm (38 s there, ~20 s on its tiny model) placed by estimate;
test_responses_constraints (16 s there) left out since its tests ask the session's tiny
random Llama server (~1 s of calls).
Only the order counts; a file missing here runs after them in the collection's order.
A file that grows or shrinks a lot moves in the list; a stale entry only costs balance."""

SLOWEST = (
    "test_tp_rendezvous.py",
    "test_engine.py",
    "test_structured.py",
    "test_tensor_parallel.py",
    "test_cli.py",
    "test_tp_rank_failures.py",
    "test_engine_lifecycle.py",
    "test_offline_exit.py",
    "test_reliability.py",
    "test_tp_lost_in_group_making.py",
    "test_moe_kernels.py",
    "test_moe_model.py",
    "test_tp_start_checks.py",
    "test_tp_own_errors.py",
    "test_api_outputs.py",
    "test_gguf_reader.py",
    "test_api.py",
    "test_responses_store.py",
    "test_kernels.py",
    "test_tp_rendezvous_store.py",
    "test_tool_call_stream.py",
    "test_prefix_cache.py",
    "test_api_many_messages.py",
    "test_sglang_constraint_fields.py",
    "test_api_long_prompt_refusal.py",
    "test_gemv.py",
    "test_fuzz.py",
    "test_tensor_parallel_scores.py",
    "test_soak.py",
    "test_offline_vllm.py",
    "test_tools_with_format.py",
    "test_tool_call_stream_cost.py",
    "test_api_ops.py",
    "test_tp_idle.py",
    "test_responses_api.py",
    "test_tool_call_end.py",
    "test_model.py",
    "test_api_logprobs_mode.py",
    "test_sliding_window_kernels.py",
    "test_waiting_limit.py",
    "test_lightllm_stop_sequences.py",
    "test_attention_oproj.py",
    "test_cli_config_file.py",
    "test_tp_deferred_sampling.py",
    "test_cors.py",
    "test_granite.py",
    "test_tool_call_mistral_args.py",
    "test_gemma_kernels.py",
    "test_content_format.py",
    "test_generation_defaults.py",
    "test_api_review.py",
    "test_offline_vllm_calls.py",
    "test_reasoning.py",
    "test_api_vllm_requests.py",
    "test_responses_store_bytes.py",
    "test_softcap_kernels.py",
    "test_planner.py",
    "test_http_transport.py",
    "test_vllm_metrics.py",
    "test_serving_tokenizer.py",
    "test_api_edges.py",
    "test_prompt_scores_shared.py",
    "test_return_token_ids.py",
    "test_tp_rank_files.py",
    "test_phi3_model.py",
    "test_api_token_ids_echo.py",
    "test_engine_freed.py",
    "test_prefill_graphs.py",
    "test_tool_call_mistral_ids.py",
    "test_loader_errors.py",
    "test_api_stop_reason.py",
    "test_gpu_memory_utilization.py",
    "test_grammar_import_off_loop.py",
)


def longest_first(items: list) -> None:
    """Sort pytest `items` in place, file by file: the files of SLOWEST first in its order,
    then the rest as collected; the tests of each file keep their order (a stable sort)."""
    rank = {name: i for i, name in enumerate(SLOWEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST)))
