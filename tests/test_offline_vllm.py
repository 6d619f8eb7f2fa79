"""LLM (offline) code written for vLLM runs as it is: RequestOutput.outputs and its
CompletionOutputs, SamplingParams.n (and best_of refused), vLLM's keyword names
(sampling_params, use_tqdm) and get_tokenizer(), on a tiny random Llama with the default
model's tokenizer and chat template (the default model where its words are checked)."""

from __future__ import annotations

import pytest

from chat_templates import ALTERNATING

from aiollm import LLM, SamplingParams
from aiollm.sampling_params import MAX_N_SEQUENCES, Constraint
from aiollm.errors import InvalidRequest

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """An LLM of conftest.sharp_tiny_llama (two layers, hidden 64) with the default model's
    tokenizer: what these tests check of vLLM's API holds for any model's outputs, and the
    default model's 30 layers cost ~0.1 s of a 2-core CPU a token (the file took 35 s)."""
    from conftest import sharp_tiny_llama

    from aiollm.model import default_model_path

    path = sharp_tiny_llama(tmp_path_factory.mktemp("tiny"), hidden_size=64,
                            intermediate_size=128, num_hidden_layers=2,
                            max_position_embeddings=2048)
    with LLM(path, tokenizer=default_model_path(), kv_tokens=2048) as llm:
        yield llm


@pytest.fixture(scope="module")
def default_llm():
    """An LLM of the default model, for test_bad_words_are_never_generated, whose words are
    the ones its greedy answer writes."""
    with LLM(None, kv_tokens=2048) as llm:
        yield llm


def test_outputs_are_vllms_view_of_the_completion(llm):
    """vLLM code reads out.outputs[0].text, .token_ids, .finish_reason, .cumulative_logprob
    and .logprobs (per token {id: Logprob}), and out.prompt: aiollm's RequestOutput had
    only its own flat fields (AttributeError: outputs, prompt)."""
    tok = llm.get_tokenizer()
    ids = tok.encode("Bonjour")
    sp = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=2)
    text_out, ids_out = llm.generate(["Hello", {"prompt_token_ids": ids}], sp, False)
    assert (text_out.prompt, ids_out.prompt) == ("Hello", None)
    assert ids_out.prompt_token_ids == ids
    for out in (text_out, ids_out):
        one, = out.outputs
        assert one.index == 0
        assert (one.text, one.token_ids, one.finish_reason) == (
            out.text, out.token_ids, out.finish_reason)
        assert one.token_ids is out.token_ids  # a view: nothing copied
        assert one.cumulative_logprob == pytest.approx(sum(lp.logprob for lp in out.logprobs))
        assert len(one.logprobs) == len(out.token_ids) == 4
        for step, chosen, lp, text in zip(one.logprobs, out.token_ids, out.logprobs,
                                          out.token_texts):
            first = next(iter(step))
            assert first == chosen  # the chosen token first, as vLLM lists it
            assert step[chosen].logprob == lp.logprob
            assert step[chosen].decoded_token == text
            assert step[chosen].rank == 1  # greedy: the most likely
            assert [step[t].rank for t, _ in lp.top] == [1, 2]
            assert {t: step[t].logprob for t, _ in lp.top} == dict(lp.top)
    plain, = llm.generate("Hello", SamplingParams(max_tokens=2), False)
    assert plain.outputs[0].logprobs is None  # none asked: None, as vLLM
    assert plain.outputs[0].cumulative_logprob is None


def test_n_completions_per_prompt_seeded_as_the_http_api_seeds_them(llm):
    """SamplingParams had no n: vLLM's LLM.generate returns one RequestOutput per prompt
    with n completions in .outputs. Choice i of a seeded request samples with seed + i (the
    HTTP API's rule, and vLLM's): the choices differ, and each is the completion a request
    of seed + i alone gives."""
    sp = SamplingParams(n=3, seed=7, max_tokens=4, temperature=1.0, ignore_eos=True)
    outs = llm.generate(["Once upon a time", "Bonjour"], sp, False)
    assert len(outs) == 2
    for out in outs:
        assert [c.index for c in out.outputs] == [0, 1, 2]
        assert len({tuple(c.token_ids) for c in out.outputs}) == 3
        assert out.text == out.outputs[0].text  # the flat fields: choice 0's
        assert out.other_choices[1].prompt == out.prompt
    # the other choices reuse the prompt's KV that the first computes (the prefix cache)
    n_prompt = len(outs[0].prompt_token_ids)
    assert [c.cached_tokens for c in outs[0].other_choices] == [n_prompt - 1] * 2
    again, = llm.generate("Once upon a time", sp, False)
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in outs[0].outputs]
    alone, = llm.generate("Once upon a time", SamplingParams(
        seed=9, max_tokens=4, temperature=1.0, ignore_eos=True), False)
    assert alone.token_ids == outs[0].outputs[2].token_ids
    chat, = llm.chat(HI, SamplingParams(n=2, max_tokens=1), False)
    assert len(chat.outputs) == 2


def test_n_and_best_of_are_checked(llm):
    """best_of (vLLM's: keep the n most likely of best_of) is refused by name unless it is
    n, as the HTTP API refuses it; n < 1 is refused, and n > 1 in a stream (one
    completion)."""
    for kwargs, param in (({"n": 0}, "n"), ({"n": 1.5}, "n"), ({"n": 2, "best_of": 4},
                                                                "best_of")):
        with pytest.raises(InvalidRequest, match=f"^{param} ") as e:
            SamplingParams(**kwargs)
        assert e.value.param == param
    sp = SamplingParams(n=2, best_of=2, max_tokens=1)
    assert len(llm.generate("Hi", sp, False)[0].outputs) == 2
    sp.n = 0  # set after it was checked: checked again at the call
    with pytest.raises(InvalidRequest) as e:
        llm.generate(["Hi", "Yo"], sp, False)
    assert e.value.param == "n"
    with pytest.raises(InvalidRequest, match="^n must be 1 in a stream") as e:
        llm.engine.stream("Hi", SamplingParams(n=2))
    assert e.value.param == "n"


def test_n_is_bounded_by_name(llm):
    """n had no upper bound outside the HTTP API: SamplingParams(n=10**6) was taken, and
    generate() built a million choices' params and tasks on the event loop (seconds per
    hundred thousand, every other request stalled) before the first ran. n is bounded at
    MAX_N_SEQUENCES, vLLM's (VLLM_MAX_N_SEQUENCES' default): InvalidRequest (a ValueError)
    naming n and the limit, at construction and at the call for an n set since
    (test_engine.py: Engine.generate's)."""
    limit = MAX_N_SEQUENCES
    with pytest.raises(ValueError, match=f"^n must be an integer in \\[1, {limit}\\]") as e:
        SamplingParams(n=limit + 1)
    assert e.value.param == "n"
    assert SamplingParams(n=limit).n == limit  # the limit itself is taken
    sp = SamplingParams(max_tokens=1)
    sp.n = 10**6  # set after it was checked: refused before any choice is made
    with pytest.raises(InvalidRequest, match=str(limit)) as e:
        llm.generate("Hi", sp, False)
    assert e.value.param == "n"


def test_vllms_keyword_names(llm, capsys):
    """LLM.generate(prompts, sampling_params=..., use_tqdm=...) is how vLLM code calls it:
    TypeError (unexpected keyword). Both names of one value given is a TypeError naming
    both."""
    sp = SamplingParams(max_tokens=1, temperature=0)
    out, = llm.generate("Hi", sampling_params=SamplingParams(max_tokens=3, temperature=0,
                                                             ignore_eos=True), use_tqdm=False)
    assert out.completion_tokens == 3
    assert "generate" not in capsys.readouterr().err  # no bar
    llm.chat(HI, sampling_params=sp, use_tqdm=True)
    assert "generate" in capsys.readouterr().err
    for call in (llm.generate, llm.chat):
        prompt = HI if call is llm.chat else "Hi"
        with pytest.raises(TypeError, match="both params and sampling_params"):
            call(prompt, sp, sampling_params=sp)
        with pytest.raises(TypeError, match="both progress and use_tqdm"):
            call(prompt, sp, False, use_tqdm=False)


def test_get_tokenizer_is_the_engines(llm):
    """vLLM's llm.get_tokenizer(): the tokenizer prompts are encoded with (it was missing).
    A chat output's prompt is its rendered conversation, as vLLM's."""
    tok = llm.get_tokenizer()
    assert tok is llm.engine.tokenizer
    out, = llm.generate("The capital of France is", SamplingParams(max_tokens=1), False)
    assert tok.encode("The capital of France is") == out.prompt_token_ids
    chat, = llm.chat(HI, SamplingParams(max_tokens=1), False)
    assert chat.prompt == tok.decode(chat.prompt_token_ids)
    assert chat.prompt.rstrip().endswith("assistant") and "Hi" in chat.prompt


def test_chat_takes_vllms_template_keywords_and_tools(llm):
    """vLLM code calls llm.chat(messages=..., add_generation_prompt=...,
    continue_final_message=..., chat_template_kwargs=..., tools=...): TypeError (unexpected
    keyword). Each renders as aiollm's template=TemplateOptions(...) does; an option given
    both ways is a TypeError naming both."""
    from aiollm.engine.chat_tools import template_messages
    from aiollm.engine.chat_template import TemplateOptions

    tok = llm.get_tokenizer()
    sp = SamplingParams(max_tokens=1, temperature=0)
    convo = [*HI, {"role": "assistant", "content": "Hello th"}]
    for vllm, ours in (
            ({"add_generation_prompt": False}, TemplateOptions(add_generation_prompt=False)),
            ({"add_generation_prompt": False, "continue_final_message": True},
             TemplateOptions(add_generation_prompt=False, continue_final_message=True)),
            ({"chat_template_kwargs": {"enable_thinking": False}},
             TemplateOptions(kwargs={"enable_thinking": False}))):
        a, = llm.chat(messages=convo, sampling_params=sp, use_tqdm=False, **vllm)
        b, = llm.chat(convo, sp, False, ours)
        assert a.prompt_token_ids == b.prompt_token_ids
    cont, = llm.chat(convo, sp, False, add_generation_prompt=False,
                     continue_final_message=True)
    assert cont.prompt.endswith("Hello th")  # the final message left open
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    # the default model's template knows no tools: they reach it as the HTTP API gives
    # them (a system message), so the prompt is the server's for the same request
    with_tools, = llm.chat(HI, sp, False, tools=tools)
    assert with_tools.prompt_token_ids == llm.engine.chat_prompt(
        template_messages(HI, tools, tok.chat_template), tools)
    assert '"name": "get_weather"' in with_tools.prompt
    with pytest.raises(InvalidRequest) as e:
        llm.chat(HI, sp, False, tools={"name": "get_weather"})
    assert e.value.param == "tools"
    with pytest.raises(InvalidRequest) as e:  # aiollm's check, under vLLM's name
        llm.chat(HI, sp, False, continue_final_message=True)
    assert e.value.param == "continue_final_message"
    for name, value in (("add_generation_prompt", False), ("continue_final_message", False),
                        ("chat_template_kwargs", {})):
        with pytest.raises(TypeError, match=f"both template and {name}"):
            llm.chat(HI, sp, False, TemplateOptions(), **{name: value})
    with pytest.raises(TypeError, match="both conversations and messages"):
        llm.chat(HI, sp, messages=HI)
    with pytest.raises(TypeError, match="conversations"):
        llm.chat(sampling_params=sp)
    batch = llm.chat([HI, convo], sp, False, add_generation_prompt=False)  # a batch
    assert [o.prompt_token_ids for o in batch] == [
        llm.engine.chat_prompt(c, None, TemplateOptions(add_generation_prompt=False))
        for c in (HI, convo)]


def test_finished_cached_tokens_and_stop_reason(llm):
    """vLLM's RequestOutput.finished and .num_cached_tokens, and CompletionOutput.stop_reason
    (the stop string or stop token id that ended it; None for eos and length) were missing
    (AttributeError). The outputs pickle (vLLM code sends them between processes)."""
    import pickle

    sp = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    base, = llm.generate("The capital of France is", sp, False)
    assert base.finished and base.outputs[0].stop_reason is None  # length
    again, = llm.generate("The capital of France is", sp, False)
    assert again.num_cached_tokens == again.cached_tokens > 0
    stop_id = base.token_ids[3]
    by_id, = llm.generate("The capital of France is", SamplingParams(
        max_tokens=8, temperature=0, ignore_eos=True, stop_token_ids=[stop_id]), False)
    assert (by_id.finish_reason, by_id.outputs[0].stop_reason) == ("stop", stop_id)
    word = base.token_texts[2].strip() or base.token_texts[1].strip()
    by_text, = llm.generate("The capital of France is", SamplingParams(
        max_tokens=8, temperature=0, ignore_eos=True, stop=["zzzq", word]), False)
    assert (by_text.finish_reason, by_text.outputs[0].stop_reason) == ("stop", word)
    eos = int(llm.engine.eos_token_id)
    only_eos = Constraint(allowed_token_ids=[eos])
    ended, = llm.generate("The capital of France is", SamplingParams(
        max_tokens=8, stop_token_ids=[eos], constraint=only_eos), False)
    assert ended.token_ids == [eos]  # eos and a stop id: the eos, as vLLM says
    assert (ended.finish_reason, ended.outputs[0].stop_reason) == ("stop", None)
    ended, = llm.generate("The capital of France is", SamplingParams(
        max_tokens=8, ignore_eos=True, stop_token_ids=[eos], constraint=only_eos), False)
    assert (ended.token_ids, ended.outputs[0].stop_reason) == ([eos], eos)  # the stop id
    back = pickle.loads(pickle.dumps(by_text))
    assert back.outputs[0].stop_reason == word and back.text == by_text.text


def test_many_stop_strings_and_stop_token_ids(llm):
    """SamplingParams refused more than 16 stop strings and 8 stop token ids, which vLLM
    takes (lm-eval's `until` lists, a generation config's end ids merged with a client's).
    Any number is taken and the one that matches ends the output, also when it is a stop id
    past the 8 the request table holds (checked on the host) or a batch mixes such requests
    with the model's eos."""
    sp = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    base, = llm.generate("The capital of France is", sp, False)
    stop_id = base.token_ids[3]
    first = base.token_ids.index(stop_id)
    others = [t for t in range(2000, 2100) if t not in base.token_ids][:30]
    word = base.token_texts[2].strip() or base.token_texts[1].strip()
    by_id, by_text, eos_ended = llm.generate(
        ["The capital of France is"] * 3,
        [SamplingParams(max_tokens=8, temperature=0, ignore_eos=True,
                        stop_token_ids=others + [stop_id]),
         SamplingParams(max_tokens=8, temperature=0, ignore_eos=True,
                        stop=[f"zzq{i}" for i in range(40)] + [word]),
         SamplingParams(max_tokens=8, temperature=0, stop_token_ids=others,
                        logit_bias={int(llm.engine.eos_token_id): 100})], False)
    assert by_id.token_ids == base.token_ids[: first + 1]
    assert (by_id.finish_reason, by_id.outputs[0].stop_reason) == ("stop", stop_id)
    assert (by_text.finish_reason, by_text.outputs[0].stop_reason) == ("stop", word)
    assert eos_ended.token_ids == [int(llm.engine.eos_token_id)]
    assert (eos_ended.finish_reason, eos_ended.outputs[0].stop_reason) == ("stop", None)


def test_alternative_tokens_have_their_text(llm):
    """Logprob.decoded_token of an alternative (not chosen) token was None: vLLM gives each
    token's text (its id decoded alone). The outputs stay picklable (no tokenizer on them)."""
    import pickle

    tok = llm.get_tokenizer()
    out, = llm.generate("The capital of France is", SamplingParams(
        max_tokens=3, temperature=0, logprobs=3), False)
    for step in pickle.loads(pickle.dumps(out)).outputs[0].logprobs:
        assert len(step) == 3
        for token_id, lp in list(step.items())[1:]:  # the alternatives
            assert lp.decoded_token == tok.decode([token_id])


def test_chat_tools_reach_a_template_that_takes_no_system_turn(tmp_path):
    """LLM.chat(tools=...) on a model whose template refuses a system turn (Mistral's v0.1)
    was an InvalidRequest blaming conversations[0] ('Conversation roles must alternate'),
    which held no system turn: the tools go at the head of the first user message, as the
    HTTP API renders the same chat (Engine.render_chat)."""
    import json

    from aiollm.model import load_tokenizer

    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512}))
    tok = load_tokenizer(None)
    tok.chat_template = ALTERNATING
    tok.save_pretrained(str(tmp_path))
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object"}}}]
    with LLM(str(tmp_path), load_format="dummy", max_model_len=512, kv_tokens=1024) as llm:
        out, = llm.chat([{"role": "user", "content": "Weather in Paris?"}],
                        SamplingParams(max_tokens=1), False, tools=tools)
    assert out.prompt.startswith("<|im_start|>[INST] You may call functions")  # bos: SmolLM2's
    assert '"name": "get_weather"' in out.prompt and out.prompt.endswith(
        "Weather in Paris? [/INST]")


def test_sampling_params_take_vllms_logit_bias_and_allowed_token_ids(llm):
    """vLLM's SamplingParams(allowed_token_ids=..., logit_bias=...) was a TypeError
    (unexpected keyword): aiollm took them only inside constraint=Constraint(...). They
    are folded into the constraint; given both ways, an InvalidRequest names the field."""
    tok = llm.get_tokenizer()
    allowed = tok.encode(" yes") + tok.encode(" no")
    out, = llm.generate("Is Paris in France?", SamplingParams(
        max_tokens=3, temperature=1.0, seed=0, allowed_token_ids=allowed), False)
    assert out.token_ids and set(out.token_ids) <= set(allowed)
    favoured = tok.encode(" banana")[0]
    out, = llm.generate("Is Paris in France?", SamplingParams(
        max_tokens=2, temperature=0, logit_bias={favoured: 100.0}), False)
    assert out.token_ids == [favoured] * 2
    sp = SamplingParams(logit_bias={favoured: 1.0},
                        constraint=Constraint(allowed_token_ids=allowed))
    assert sp.constraint == Constraint(allowed_token_ids=allowed,
                                       logit_bias={favoured: 1.0})
    with pytest.raises(InvalidRequest) as e:
        SamplingParams(allowed_token_ids=allowed, constraint=Constraint(allowed_token_ids=[1]))
    assert e.value.param == "allowed_token_ids"


def test_chosen_tokens_rank_is_its_place_in_the_vocabulary(llm):
    """The chosen token's Logprob.rank was None unless it was among the top `logprobs`
    alternatives (always with logprobs=0); vLLM gives its rank in the whole vocabulary:
    1 for a greedy pick, its place in the top list when it is there, past it when not."""
    greedy, = llm.generate("The capital of France is", SamplingParams(
        max_tokens=3, temperature=0, logprobs=0), False)
    assert [step[t].rank for step, t in zip(greedy.outputs[0].logprobs, greedy.token_ids)
            ] == [1, 1, 1]
    hot, = llm.generate("The capital of France is", SamplingParams(
        max_tokens=8, temperature=3.0, seed=1, ignore_eos=True, logprobs=3), False)
    ranks = []
    for step, t in zip(hot.outputs[0].logprobs, hot.token_ids):
        rank = step[t].rank
        ranks.append(rank)
        by_likelihood = sorted(step, key=lambda a: -step[a].logprob)
        if rank <= 3:  # among the top list, at its own place there
            assert len(step) == 3 and by_likelihood.index(t) + 1 == rank
        else:  # past it: each alternative is more likely
            assert len(step) == 4 and by_likelihood[-1] == t
    assert max(ranks) > 3, ranks


def test_prompt_logprobs_are_vllms_dicts(llm):
    """out.prompt_logprobs held aiollm's TokenLogprob per prompt token: vLLM code reads
    None for the first token, then {token id: Logprob(logprob, rank, decoded_token)} of
    the prompt token (its rank in the vocabulary) and its top-k alternatives (ranks 1..k).
    aiollm's fields (.token_id, .logprob, .rank, .top) still read, and the output pickles."""
    import pickle

    tok = llm.get_tokenizer()
    out, = llm.generate("The capital of France is Paris", SamplingParams(
        max_tokens=1, temperature=0, prompt_logprobs=2), False)
    plp = pickle.loads(pickle.dumps(out)).prompt_logprobs
    ids = out.prompt_token_ids
    assert len(plp) == len(ids) and plp[0] is None
    for entry, t in zip(plp[1:], ids[1:]):
        assert isinstance(entry, dict) and next(iter(entry)) == t  # the prompt token first
        assert entry[t].logprob == entry.logprob and entry[t].rank == entry.rank >= 1
        assert entry.token_id == t
        assert all(lp.decoded_token == tok.decode([i]) for i, lp in entry.items())
        assert [entry[i].rank for i, _ in entry.top] == [1, 2]
        assert {i: entry[i].logprob for i, _ in entry.top} == dict(entry.top)
        assert len(entry) == (2 if entry[t].rank <= 2 else 3)
    assert max(entry.rank for entry in plp[1:]) > 2  # some prompt token outside the top 2


PARIS = "The capital of France is"


def test_bad_words_are_never_generated(default_llm):
    """vLLM's SamplingParams(bad_words=[...]) was a TypeError (unexpected keyword). A word of
    one token is banned at every step; of several, its last token is banned where the
    output ends with the others: greedy "Paris" and then "capital of" give way to other
    words, and a bad word the output never reaches leaves it as it was."""
    llm = default_llm
    tok = llm.get_tokenizer()
    plain, = llm.generate(PARIS, SamplingParams(max_tokens=6, temperature=0), False)
    assert plain.text.startswith(" Paris")
    unreached, = llm.generate(PARIS, SamplingParams(max_tokens=6, temperature=0,
                                                    bad_words=["zebra"]), False)
    assert unreached.token_ids == plain.token_ids
    words = ["Paris", "capital of"]
    out, = llm.generate(PARIS, SamplingParams(max_tokens=6, temperature=0,
                                              bad_words=words), False)
    assert "Paris" not in out.text and "capital of" not in out.text, out.text
    ids = out.token_ids
    for word in words:
        for form in (word, " " + word):
            seq = tok.encode(form, add_special_tokens=False)
            assert all(ids[i : i + len(seq)] != seq for i in range(len(ids))), (form, ids)
    with pytest.raises(InvalidRequest) as e:
        SamplingParams(bad_words=["ok", ""])
    assert e.value.param == "bad_words"


def test_detokenize_false_gives_token_ids_only(llm):
    """vLLM's SamplingParams(detokenize=False) was a TypeError: the output is its token ids
    (the same as with text), its text "" and no token's text (decoded_token None); stop
    strings, which need the text, are refused naming detokenize."""
    plain, = llm.generate(PARIS, SamplingParams(max_tokens=4, temperature=0), False)
    out, = llm.generate(PARIS, SamplingParams(max_tokens=4, temperature=0, logprobs=1,
                                              detokenize=False), False)
    assert out.token_ids == plain.token_ids and out.text == "" and out.outputs[0].text == ""
    assert all(lp.decoded_token is None for step in out.outputs[0].logprobs
               for lp in step.values())
    with pytest.raises(InvalidRequest) as e:
        SamplingParams(detokenize=False, stop=["."])
    assert e.value.param == "detokenize"


def test_truncate_prompt_tokens_keeps_the_prompts_last_tokens(llm):
    """vLLM's SamplingParams(truncate_prompt_tokens=k) was a TypeError: only the prompt's
    last k tokens are generated from (text or ids; ids longer than the context too); -1
    keeps the context's length; 0, -2 and more than the context are refused naming it."""
    ids = llm.get_tokenizer().encode(PARIS)
    out, = llm.generate(PARIS, SamplingParams(max_tokens=2, temperature=0,
                                              truncate_prompt_tokens=2), False)
    alone, = llm.generate({"prompt_token_ids": ids[-2:]}, SamplingParams(
        max_tokens=2, temperature=0), False)
    assert out.prompt_token_ids == ids[-2:] and out.token_ids == alone.token_ids
    context = llm.engine.max_model_len
    long_ids = ids * (context // len(ids) + 1)
    out, = llm.generate({"prompt_token_ids": long_ids}, SamplingParams(
        max_tokens=1, truncate_prompt_tokens=8), False)
    assert out.prompt_token_ids == long_ids[-8:]
    out, = llm.generate(PARIS, SamplingParams(max_tokens=1, truncate_prompt_tokens=-1), False)
    assert out.prompt_token_ids == ids
    for bad in (0, -2, 1.5):
        with pytest.raises(InvalidRequest) as e:
            SamplingParams(truncate_prompt_tokens=bad)
        assert e.value.param == "truncate_prompt_tokens"
    with pytest.raises(InvalidRequest) as e:
        llm.generate(PARIS, SamplingParams(truncate_prompt_tokens=context + 1), False)
    assert e.value.param.endswith("truncate_prompt_tokens")


def test_per_request_logits_processors_are_refused_by_name():
    """vLLM's SamplingParams(logits_processors=[...]) was a TypeError (unexpected keyword);
    vLLM's V1 engine refuses per-request processors, and so does aiollm, naming the field
    (None or an empty list is taken, as there)."""
    with pytest.raises(InvalidRequest) as e:
        SamplingParams(logits_processors=[lambda ids, logits: logits])
    assert e.value.param == "logits_processors"
    assert SamplingParams(logits_processors=[]).logits_processors == []
