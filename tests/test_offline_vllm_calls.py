"""vLLM scripts' calls on LLM beyond generate's and chat's basics: TokensPrompt's text,
aiollm.inputs' prompt types, reset_prefix_cache(), generate's priority, chat's
chat_template_content_format and mm_processor_kwargs, and a clear error for vLLM's members
aiollm lacks (llm_engine, the pooling and beam-search calls), on a tiny random Llama with
the default model's tokenizer and chat template."""

from __future__ import annotations

import pytest

from aiollm import LLM, SamplingParams
from aiollm.errors import InvalidRequest

HI = [{"role": "user", "content": "Hi"}]
GREEDY = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """An LLM of conftest.sharp_tiny_llama (two layers, hidden 64) with the default model's
    tokenizer: these calls' checks hold for any model's outputs, and the default model's
    30 layers cost ~0.1 s of a 2-core CPU a token."""
    from conftest import sharp_tiny_llama

    from aiollm.model import default_model_path

    path = sharp_tiny_llama(tmp_path_factory.mktemp("tiny"), hidden_size=64,
                            intermediate_size=128, num_hidden_layers=2,
                            max_position_embeddings=2048)
    with LLM(path, tokenizer=default_model_path(), kv_tokens=2048) as llm:
        yield llm


def test_tokens_prompt_may_carry_its_text(llm):
    """vLLM's TokensPrompt has an optional "prompt" beside its ids (the ids' text, given back
    as out.prompt); aiollm refused the dict (a prompt dict must hold one key)."""
    ids = llm.get_tokenizer().encode("Bonjour")
    out, = llm.generate({"prompt_token_ids": ids, "prompt": "Bonjour"}, GREEDY, False)
    alone, = llm.generate({"prompt_token_ids": ids}, GREEDY, False)
    assert out.prompt == "Bonjour" and alone.prompt is None
    assert out.prompt_token_ids == ids  # the ids are the prompt, the text is not tokenized
    assert out.token_ids == alone.token_ids
    with pytest.raises(InvalidRequest, match="must be text") as e:
        llm.generate({"prompt_token_ids": ids, "prompt": 3}, GREEDY, False)
    assert e.value.param == "prompts[0]"


@pytest.mark.parametrize("key", ["multi_modal_data", "mm_processor_kwargs",
                                 "multi_modal_uuids", "token_type_ids", "prompt_embeds"])
def test_multimodal_prompt_keys_are_named_as_unsupported(llm, key):
    """A vLLM prompt dict with images (multi_modal_data) was refused as a dict of the wrong
    keys; the error says what aiollm lacks: inputs other than text or token ids."""
    with pytest.raises(InvalidRequest, match=f"{key} is not supported") as e:
        llm.generate([{"prompt": "Hi"}, {"prompt": "Hi", key: {"image": "x"}}], GREEDY, False)
    assert e.value.param == "prompts[1]"
    with pytest.raises(InvalidRequest, match=f"{key} is not supported"):  # alone too
        llm.generate({key: [[0.5]]}, GREEDY, False)
    # None is no input of that kind, as vLLM reads it
    out, = llm.generate({"prompt": "Hi", key: None}, GREEDY, False)
    assert out.prompt == "Hi"


def test_inputs_module_gives_vllms_prompt_types(llm):
    """`from vllm.inputs import TextPrompt, TokensPrompt` becomes aiollm.inputs' (there was
    no such module: ImportError)."""
    from aiollm.inputs import TextPrompt, TokensPrompt

    ids = llm.get_tokenizer().encode("Hi")
    a, b = llm.generate([TextPrompt(prompt="Hi"), TokensPrompt(prompt_token_ids=ids)],
                        GREEDY, False)
    assert a.prompt_token_ids == b.prompt_token_ids == ids
    assert a.token_ids == b.token_ids


def test_reset_prefix_cache_empties_the_cache(llm):
    """vLLM's LLM.reset_prefix_cache() (benchmarks call it between runs) was an
    AttributeError; it empties the prefix cache as POST /flush_cache does, True when done."""
    llm.generate("The quick brown fox jumps over the lazy dog", GREEDY, False)
    assert llm._run(_stats(llm))["kv_cached"] > 0
    assert llm.reset_prefix_cache() is True
    assert llm._run(_stats(llm))["kv_cached"] == 0


async def _stats(llm):
    return llm.engine.stats()


def test_priority_of_zero_is_taken_others_are_refused(llm):
    """vLLM's generate(priority=[...]) was an unexpected keyword. Without priority
    scheduling vLLM takes only 0s; aiollm has none, so the same holds."""
    outs = llm.generate(["Hi", "Hello"], GREEDY, False, priority=[0, 0])
    assert len(outs) == 2
    assert len(llm.generate("Hi", GREEDY, False, priority=None)) == 1
    with pytest.raises(InvalidRequest, match="priority scheduling") as e:
        llm.generate(["Hi", "Hello"], GREEDY, False, priority=[0, 1])
    assert e.value.param == "priority"
    with pytest.raises(InvalidRequest, match="one per prompt") as e:
        llm.generate(["Hi", "Hello"], GREEDY, False, priority=[0])
    assert e.value.param == "priority"


def test_chat_takes_vllms_content_format_and_mm_processor_kwargs(llm):
    """LLM.chat(chat_template_content_format=..., mm_processor_kwargs=...) were unexpected
    keywords. The default model's template reads a string, so its text parts are joined
    under "auto" and "string" (tests/test_content_format.py: templates that read parts);
    a format of no meaning and multimodal kwargs are refused naming them."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    want, = llm.chat(HI, GREEDY, False)
    for fmt in ("auto", "string"):
        got, = llm.chat(parts, GREEDY, False, chat_template_content_format=fmt,
                        mm_processor_kwargs=None)
        assert got.prompt_token_ids == want.prompt_token_ids
    with pytest.raises(InvalidRequest, match="'jinja'") as e:
        llm.chat(HI, GREEDY, False, chat_template_content_format="jinja")
    assert e.value.param == "chat_template_content_format"
    with pytest.raises(InvalidRequest, match="mm_processor_kwargs") as e:
        llm.chat(HI, GREEDY, False, mm_processor_kwargs={"num_crops": 4})
    assert e.value.param == "mm_processor_kwargs"


@pytest.mark.parametrize("name", ["llm_engine", "embed", "encode", "classify", "score",
                                  "reward", "beam_search"])
def test_vllm_members_aiollm_lacks_say_so(llm, name):
    """vLLM's llm.llm_engine and its pooling / beam-search calls were a bare AttributeError;
    the error says aiollm lacks it on purpose and what to use (hasattr stays False)."""
    with pytest.raises(AttributeError, match=f"aiollm's LLM has no {name}"):
        getattr(llm, name)
    assert not hasattr(llm, name)
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        llm.nonesuch


@pytest.mark.parametrize("keyword, value", [("task", "embed"), ("task", "score"),
                                            ("runner", "pooling"), ("convert", "embed")])
def test_a_pooling_task_is_refused_naming_it(keyword, value):
    """LLM(model, task="embed") (vLLM's pooling models; runner/convert in later vLLM) was
    an unexpected keyword; it says aiollm generates text only, and task="generate" (older
    vLLM scripts pass it), runner="generate", convert="none" or "auto" ask for what
    aiollm does (the model path's missing file is the first error past the checks)."""
    with pytest.raises(ValueError, match=f"{keyword}={value!r}: .*generative models only"):
        LLM("/nonexistent/aiollm-test-model", **{keyword: value})
    for keyword, value in (("task", "generate"), ("task", "auto"), ("runner", "generate"),
                           ("runner", "auto"), ("convert", "none"), ("convert", "auto")):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            LLM("/nonexistent/aiollm-test-model", **{keyword: value})


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
def test_whole_vocabulary_logprobs_are_refused_saying_so(field):
    """vLLM reads logprobs=-1 (and prompt_logprobs=-1) as the whole vocabulary's; aiollm's
    error said only "must be an integer in [0, 20]", as if -1 were a typo."""
    with pytest.raises(InvalidRequest, match=rf"{field} -1 asks for every token of the "
                                             r"vocabulary.*at most 20") as e:
        SamplingParams(**{field: -1})
    assert e.value.param == field
    with pytest.raises(InvalidRequest, match=r"must be an integer in \[0, 20\], got -2"):
        SamplingParams(**{field: -2})


def test_sampling_params_take_keywords_only():
    """SamplingParams(2) was max_tokens=2 (the first field here) where vLLM's first field is
    n: a call written for vLLM got another meaning silently. Fields are keywords alone."""
    with pytest.raises(TypeError, match="positional"):
        SamplingParams(2)
    assert SamplingParams(n=2).n == 2


def test_vllms_top_level_names_import_from_aiollm(llm):
    """`from vllm import LLM, SamplingParams, RequestOutput, CompletionOutput, TextPrompt,
    TokensPrompt, PromptType` (type hints, isinstance checks): aiollm had the first two
    alone; PromptType, vLLM's union of the prompts generate takes, also came later."""
    import typing

    from aiollm import CompletionOutput, PromptType, RequestOutput, TextPrompt, TokensPrompt

    assert set(typing.get_args(PromptType)) == {str, list[int], TextPrompt, TokensPrompt}

    out, = llm.generate(TextPrompt(prompt="Hi"), GREEDY, False)
    assert isinstance(out, RequestOutput) and isinstance(out.outputs[0], CompletionOutput)
    assert TokensPrompt(prompt_token_ids=[1]) == {"prompt_token_ids": [1]}


def test_guided_decoding_params_take_vllms_backend(llm):
    """GuidedDecodingParams(json=..., backend="xgrammar") (vLLM before 0.11; scripts pass it)
    was an unexpected keyword. aiollm's grammars run on xgrammar: "xgrammar" (with vLLM's
    ":option" suffix) and "auto" are taken, another backend is refused naming it."""
    from aiollm.sampling_params import GuidedDecodingParams

    for backend in ("xgrammar", "auto", "xgrammar:disable-any-whitespace", None):
        sp = SamplingParams(max_tokens=4, temperature=0, guided_decoding=GuidedDecodingParams(
            choice=["yes", "no"], backend=backend))
        assert llm.generate("Yes or no?", sp, False)[0].outputs[0].text in ("yes", "no")
    with pytest.raises(InvalidRequest, match="'guidance'.*xgrammar") as e:
        GuidedDecodingParams(choice=["yes"], backend="guidance")
    assert e.value.param == "structured_outputs.backend"


def test_guided_decoding_backend_keyword_is_xgrammar_or_auto():
    """LLM(model, guided_decoding_backend="xgrammar") (vLLM before 0.11) was an unexpected
    keyword; xgrammar (aiollm's) and auto are taken, another grammar library refused."""
    for value in ("xgrammar", "auto"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            LLM("/nonexistent/aiollm-test-model", guided_decoding_backend=value)
    with pytest.raises(ValueError, match="guided_decoding_backend='outlines': .*xgrammar"):
        LLM("/nonexistent/aiollm-test-model", guided_decoding_backend="outlines")


def test_a_flat_list_of_ids_as_the_batch_says_how_to_pass_it(llm):
    """generate(ids) with one prompt's ids as the batch read each id as a prompt, and the
    error named prompts[0] as "got int"; it says the list looks like one prompt's ids."""
    ids = llm.get_tokenizer().encode("Hi there")
    with pytest.raises(InvalidRequest, match=r"one prompt's token ids.*\[ids\]") as e:
        llm.generate(ids, GREEDY, False)
    assert e.value.param == "prompts"
    out, = llm.generate([ids], GREEDY, False)  # as the message says
    assert out.prompt_token_ids == ids


LEGACY_TAG = {"type": "structural_tag", "triggers": ["<weather="], "structures": [
    {"begin": "<weather=", "end": "</weather>", "schema": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"], "additionalProperties": False}}]}


def test_structural_tag_of_vllms_example_with_structures_and_triggers(llm):
    """vLLM's structured-outputs example writes its structural tag as structures (begin,
    schema, end) and triggers, the form vLLM compiles by xgrammar's legacy call: aiollm
    refused it ("Structural tag must have a format field"). It is the same grammar as
    the triggered_tags format: free text, and after a trigger, the tag with its schema.
    A legacy tag of the wrong shape is refused naming the field."""
    import json

    from aiollm.sampling_params import StructuredOutputsParams

    import xgrammar as xgr

    from aiollm.engine.grammar_check import compilable
    from aiollm.sampling_params import GrammarSpec

    for tag in (LEGACY_TAG, json.dumps(LEGACY_TAG)):
        sp = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True,
                            structured_outputs=StructuredOutputsParams(structural_tag=tag))
        out, = llm.generate("Weather in Paris?", sp, False)
        assert len(out.outputs[0].token_ids) == 8, out  # free text until a trigger
    # the grammar compiled is the one xgrammar's legacy call builds (vLLM's)
    item, = LEGACY_TAG["structures"]
    legacy = xgr.StructuralTag.from_legacy_structural_tag(
        [xgr.StructuralTagItem(begin=item["begin"], schema=json.dumps(item["schema"]),
                               end=item["end"])], LEGACY_TAG["triggers"])
    ours = compilable(GrammarSpec("structural_tag", json.dumps(LEGACY_TAG), "g"))
    assert xgr.StructuralTag.from_json(ours) == legacy
    for bad, why in (({**LEGACY_TAG, "triggers": "<weather="}, "triggers"),
                     ({**LEGACY_TAG, "structures": [{"begin": "<w", "end": "</w>"}]},
                      "schema"),
                     ({**LEGACY_TAG, "structures": [{"begin": 1, "end": "</w>",
                                                     "schema": {}}]}, "begin")):
        sp = SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(
            structural_tag=bad))
        with pytest.raises(InvalidRequest, match=why) as e:
            llm.generate("Hi", sp, False)
        assert e.value.param == "structured_outputs.structural_tag", e.value
