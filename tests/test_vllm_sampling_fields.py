"""vLLM's SamplingParams fields and methods, and output fields, that vLLM code uses and
aiollm took under other names or not at all (structured_outputs, guided_decoding,
spaces_between_special_tokens, clone(), RequestOutput.metrics...), or took with odd
values; through LLM, on a tiny random Llama with the default model's tokenizer and chat
template."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aiollm import LLM, SamplingParams
from aiollm.errors import InvalidRequest
from aiollm.sampling_params import (Constraint, GrammarSpec, GuidedDecodingParams,
                                    StructuredOutputsParams)

ASK = "Is Paris in France? Answer:"


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """An LLM of conftest.sharp_tiny_llama (two layers, hidden 64) with the default model's
    tokenizer: what these tests check (a field taken, special tokens forced by a logit bias,
    output objects' members, errors naming a field) holds for any model's outputs, and the
    default model's 30 layers cost ~0.1 s of a 2-core CPU a token. The grammars of
    test_structured_outputs_constrain_the_output allow no output past 13 characters (its
    JSON is compact: grammar_build.py leaves no whitespace free), so any model's answer
    ends within its 20 tokens."""
    from conftest import sharp_tiny_llama

    from aiollm.model import default_model_path

    path = sharp_tiny_llama(tmp_path_factory.mktemp("tiny"), hidden_size=64,
                            intermediate_size=128, num_hidden_layers=2,
                            max_position_embeddings=1024)
    with LLM(path, tokenizer=default_model_path(), kv_tokens=1024) as llm:
        yield llm


def test_structured_outputs_constrain_the_output(llm):
    """vLLM's SamplingParams(structured_outputs=StructuredOutputsParams(choice=[...])) was
    a TypeError (unexpected keyword): aiollm took a grammar only as
    constraint=Constraint(GrammarSpec(...)). Each kind of vLLM's object (and the dict the
    HTTP API takes, and guided_decoding=GuidedDecodingParams, vLLM's former name) is the
    constraint of that kind."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}},
              "required": ["ok"], "additionalProperties": False}
    cases = [
        (StructuredOutputsParams(choice=["yes", "no"]), lambda t: t in ("yes", "no")),
        (StructuredOutputsParams(regex="[0-9]{3}"), lambda t: len(t) == 3 and t.isdigit()),
        (StructuredOutputsParams(json=schema), lambda t: isinstance(json.loads(t)["ok"], bool)),
        (StructuredOutputsParams(json=json.dumps(schema)),
         lambda t: isinstance(json.loads(t)["ok"], bool)),
        (StructuredOutputsParams(grammar='root ::= "maybe"'), lambda t: t == "maybe"),
        ({"choice": ["oui", "non"]}, lambda t: t in ("oui", "non")),
    ]
    params = [SamplingParams(max_tokens=20, temperature=1.0, seed=0, structured_outputs=so)
              for so, _ in cases]
    params.append(SamplingParams(max_tokens=20, temperature=0,
                                 guided_decoding=GuidedDecodingParams(choice=["A", "B"])))
    checks = [ok for _, ok in cases] + [lambda t: t in ("A", "B")]
    outs = llm.generate([ASK] * len(params), params, False)
    for out, ok in zip(outs, checks):
        assert out.finish_reason == "stop" and ok(out.text), out.text
    assert params[0].constraint.grammar == GrammarSpec(
        "choice", '["yes", "no"]', "structured_outputs.choice")
    assert params[0].structured_outputs is None  # moved into the constraint, as logit_bias


@pytest.mark.parametrize("make, param", [
    (lambda: StructuredOutputsParams(), "structured_outputs"),
    (lambda: StructuredOutputsParams(regex="a", choice=["a"]), "structured_outputs"),
    (lambda: SamplingParams(structured_outputs=StructuredOutputsParams(choice=[])),
     "structured_outputs.choice"),
    (lambda: SamplingParams(structured_outputs=StructuredOutputsParams(regex=3)),
     "structured_outputs.regex"),
    (lambda: SamplingParams(structured_outputs={"jsn": {}}), "structured_outputs.jsn"),
    # json_object False asks for no grammar: vLLM's SamplingParams refuses it (it was no
    # constraint here)
    (lambda: SamplingParams(structured_outputs=StructuredOutputsParams(json_object=False)),
     "structured_outputs.json_object"),
    (lambda: SamplingParams(guided_decoding=StructuredOutputsParams(json_object=False)),
     "guided_decoding.json_object"),
    (lambda: SamplingParams(structured_outputs="[0-9]"), "structured_outputs"),
    (lambda: SamplingParams(structured_outputs=StructuredOutputsParams(regex="a"),
                            guided_decoding=StructuredOutputsParams(regex="b")),
     "guided_decoding"),
    (lambda: SamplingParams(structured_outputs=StructuredOutputsParams(regex="a"),
                            constraint=Constraint(GrammarSpec("regex", "b"))),
     "structured_outputs"),
])
def test_bad_structured_outputs_name_the_field(make, param):
    """Each refusal is an InvalidRequest naming the field at fault, at construction."""
    with pytest.raises(InvalidRequest) as e:
        make()
    assert e.value.param == param


def test_spaces_between_special_tokens_is_taken(llm):
    """vLLM's SamplingParams(spaces_between_special_tokens=False), which lm-eval-harness's
    vLLM model passes on every request, was a TypeError (unexpected keyword). The tokenizers
    aiollm decodes with (transformers 5's) have no such spacing rule: either value gives
    the same text, special tokens kept and joined as the tokenizer joins them."""
    texts = []
    for spaces in (True, False):
        out, = llm.generate("<|im_start|>user\nHi<|im_end|>\n", SamplingParams(
            max_tokens=6, temperature=0, ignore_eos=True, skip_special_tokens=False,
            logit_bias={1: 100.0, 2: 100.0}, spaces_between_special_tokens=spaces), False)
        texts.append(out.text)
    assert set(out.token_ids) <= {1, 2}  # <|im_start|>, <|im_end|>: special tokens only
    assert texts[0] == texts[1] == "".join(llm.get_tokenizer().convert_ids_to_tokens(
        out.token_ids))
    with pytest.raises(InvalidRequest) as e:
        SamplingParams(spaces_between_special_tokens="no")
    assert e.value.param == "spaces_between_special_tokens"


def test_clone_is_a_deep_copy():
    """vLLM's SamplingParams.clone() (code that varies one request's params from a shared
    one: p = base.clone(); p.seed = i) was an AttributeError. The copy shares no list."""
    base = SamplingParams(stop=["a"], stop_token_ids=[3], bad_words=["x"], seed=1,
                          structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
    copy = base.clone()
    assert copy == base and copy is not base
    copy.stop.append("b")
    copy.seed = 2
    assert (base.stop, base.seed) == (["a"], 1)
    assert copy.constraint.grammar == base.constraint.grammar


def test_from_optional_takes_none_for_the_default():
    """vLLM's SamplingParams.from_optional (code building params from a request whose
    fields may be None) was an AttributeError. None for n, temperature, top_p and the
    penalties is the field's default; logit_bias's keys are token ids as JSON gives them
    ("7") and its biases are clipped to [-100, 100], as vLLM's; a key that is no id is
    named."""
    unset = dict.fromkeys(("n", "temperature", "top_p", "presence_penalty",
                           "frequency_penalty", "repetition_penalty"))
    p = SamplingParams.from_optional(**unset, max_tokens=5, seed=None,
                                     logit_bias={"7": 150, 3: -0.5})
    assert p == SamplingParams(max_tokens=5, logit_bias={7: 100.0, 3: -0.5})
    given = SamplingParams.from_optional(n=2, temperature=0.5, top_p=0.9, max_tokens=None)
    assert (given.n, given.temperature, given.top_p, given.max_tokens) == (2, 0.5, 0.9, None)
    with pytest.raises(InvalidRequest, match="'x'") as e:
        SamplingParams.from_optional(logit_bias={"x": 1.0})
    assert e.value.param == "logit_bias"
    with pytest.raises(InvalidRequest) as e:  # a value given is checked as always
        SamplingParams.from_optional(temperature=-1)
    assert e.value.param == "temperature"


def test_outputs_answer_vllms_other_fields(llm):
    """vLLM code reading out.metrics (None from vLLM's LLM, which logs no stats by
    default), out.lora_request or completion.finished() got an AttributeError."""
    out, = llm.generate("Hi", SamplingParams(max_tokens=2, n=2), False)
    assert out.metrics is None and out.lora_request is None
    assert [c.finished() for c in out.outputs] == [True, True]
    assert [c.lora_request for c in out.outputs] == [None, None]


@pytest.mark.parametrize("field, value", [
    ("best_of", True), ("best_of", 1 + 0j), ("best_of", np.array([1, 2])),
    ("logits_processors", np.array([1, 2])), ("logits_processors", 0),
    ("logits_processors", {}),
])
def test_odd_values_of_vllms_fields_are_refused_by_name(field, value):
    """best_of True or 1+0j passed as n (they equal 1), a numpy array raised numpy's
    "truth value of an array is ambiguous", and logits_processors 0 or {} passed as none:
    each is an InvalidRequest naming the field."""
    with pytest.raises(InvalidRequest) as e:
        SamplingParams(**{field: value})
    assert e.value.param == field


def test_generate_and_chat_take_vllms_lora_request_none(llm):
    """lm-eval-harness's vLLM model calls generate(..., lora_request=self.lora_request),
    None unless an adapter is asked for: a TypeError (unexpected keyword). None is taken
    (no adapter), by chat() too; an adapter is refused naming lora_request."""
    sp = SamplingParams(max_tokens=2, temperature=0)
    out, = llm.generate([{"prompt_token_ids": [1, 2, 3]}], sampling_params=sp,
                        use_tqdm=False, lora_request=None)
    assert out.token_ids == llm.generate([[1, 2, 3]], sp, False)[0].token_ids
    assert llm.chat([{"role": "user", "content": "Hi"}], sp, use_tqdm=False,
                    lora_request=None)[0].token_ids
    for call in (lambda: llm.generate("Hi", sp, False, lora_request=object()),
                 lambda: llm.chat([{"role": "user", "content": "Hi"}], sp, False,
                                  lora_request=object())):
        with pytest.raises(InvalidRequest) as e:
            call()
        assert e.value.param == "lora_request"


def test_a_bad_field_of_one_prompts_params_names_its_place(llm):
    """With one SamplingParams per prompt (vLLM's list), a field checked against the model
    (a stop token id past the vocabulary, a regex that does not compile) was named without
    saying which params held it (stop_token_ids), where the fields SamplingParams checks
    alone were params[1].field. Shared params keep the field's own name."""
    ok = SamplingParams(max_tokens=1)
    for bad, param in ((SamplingParams(stop_token_ids=[10**6]), "params[1].stop_token_ids"),
                       (SamplingParams(structured_outputs={"regex": "("}),
                        "params[1].structured_outputs.regex")):
        with pytest.raises(InvalidRequest) as e:
            llm.generate(["a", "b"], [ok, bad], False)
        assert e.value.param == param and str(e.value).startswith("params[1]: ")
        with pytest.raises(InvalidRequest) as e:
            llm.generate(["a", "b"], bad, False)
        assert e.value.param == param.removeprefix("params[1].")


@pytest.mark.parametrize("value", [{}, {"disable_any_whitespace": True}, {"jsn": {}},
                                   {"regex": "a", "choice": ["a"]}])
def test_guided_decoding_errors_speak_of_guided_decoding(value):
    """An error of guided_decoding (vLLM's former name) is told in that name throughout: its
    message said "or leave structured_outputs out", a field the caller never sent."""
    with pytest.raises(InvalidRequest) as e:
        SamplingParams(guided_decoding=value)
    assert e.value.param.startswith("guided_decoding")
    assert "structured_outputs" not in str(e.value), str(e.value)


@pytest.mark.parametrize("name", ["structured_outputs", "guided_decoding"])
def test_a_whitespace_pattern_is_refused_offline_as_over_http(name):
    """whitespace_pattern (vLLM's outlines and guidance backends' regex for the whitespace
    between JSON's tokens) was taken and ignored by SamplingParams, where HTTP refused
    guided_whitespace_pattern: xgrammar takes no such pattern, so the output never followed
    it. Refused on every path, naming the field; disable_any_whitespace (no free whitespace,
    which the output has) and a pattern of None are taken."""
    schema = {"type": "object"}
    for value in (StructuredOutputsParams(json=schema, whitespace_pattern=r"[ ]?"),
                  {"json": schema, "whitespace_pattern": ""}):
        with pytest.raises(InvalidRequest, match="xgrammar") as e:
            SamplingParams(**{name: value})
        assert e.value.param == f"{name}.whitespace_pattern"
        # the whitespace the output has, as the README says ('{"a": 1, "b": 2}'); the
        # message said "compact (no whitespace between its tokens)"
        assert "one space after ':' and ','" in str(e.value), str(e.value)
        assert (name == "structured_outputs") == ("structured_outputs" in str(e.value))
    p = SamplingParams(**{name: StructuredOutputsParams(json=schema, whitespace_pattern=None,
                                                        disable_any_whitespace=True)})
    assert p.constraint.grammar.kind == "json_schema"
