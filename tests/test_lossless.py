"""Greedy AR, SD and PSD give exactly the target's transformers greedy output, with requests
arriving at different steps (continuous batching) and for several k."""

import pytest

from minedraft import Engine, SamplingParams
from minedraft.runner.hf_adapter import greedy_generate

MAX_TOKENS = 24


def prompts():
    return [[1] + [(7 * i + 3 * j) % 97 + 3 for j in range(2 + 3 * i)] for i in range(9)]


@pytest.fixture(scope="module")
def expected(llama_pair):
    _, _, ref = llama_pair
    return [greedy_generate(ref, p, MAX_TOKENS) for p in prompts()]


def run_with_staggered_arrivals(engine, params):
    """Three prompts now, then two more after every step: they join batches mid-flight."""
    pending = list(enumerate(prompts()))
    ids = {}
    finished = {}
    for idx, p in pending[:3]:
        ids[engine.add_request(p, params)] = idx
    pending = pending[3:]
    while engine.has_unfinished() or pending:
        for req in engine.step():
            if req.finished:
                finished[ids[req.request_id]] = req
        for idx, p in pending[:2]:
            ids[engine.add_request(p, params)] = idx
        pending = pending[2:]
    return [finished[i] for i in range(len(prompts()))]


@pytest.mark.parametrize("mode", ["ar", "sd", "psd"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_equals_target_only(llama_pair, expected, mode, k):
    target, draft, _ = llama_pair
    engine = Engine(target, draft, mode=mode, num_speculative_tokens=k, max_num_seqs=6)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    results = run_with_staggered_arrivals(engine, params)
    for req, exp in zip(results, expected):
        assert req.output_ids == exp
        assert req.finish_reason == "length"
    if mode != "ar":
        m = engine.metrics
        # the draft is a noisy copy of the target: both acceptance and rejection must have happened
        assert 0 < m.spec_decode_num_accepted_tokens < m.spec_decode_num_draft_tokens
        assert sum(r.num_drafted for r in results) == m.spec_decode_num_draft_tokens


def test_generate_batch_api_and_counts(llama_pair, expected):
    target, draft, _ = llama_pair
    engine = Engine(target, draft, mode="psd", num_speculative_tokens=4)
    results = engine.generate(prompts(), SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    assert [r.token_ids for r in results] == expected
    for r in results:
        assert r.num_drafted > 0 and 0 <= r.num_accepted <= r.num_drafted
        assert r.text == ""  # the random checkpoints ship no tokenizer


def test_context_limit_finishes_with_length(llama_pair):
    target, draft, ref = llama_pair
    engine = Engine(target, draft, mode="psd", num_speculative_tokens=5)
    prompt = list(range(3, 3 + engine.context_len - 4))
    [result] = engine.generate([prompt], SamplingParams(max_tokens=50, ignore_eos=True))
    assert result.finish_reason == "length"
    assert len(result.token_ids) == 4  # never past the context
    assert result.token_ids == greedy_generate(ref, prompt, 4)


def test_stop_token_ends_request(llama_pair, expected):
    target, draft, _ = llama_pair
    engine = Engine(target, draft, mode="sd", num_speculative_tokens=3)
    stop = expected[0][5]
    [result] = engine.generate([prompts()[0]], SamplingParams(max_tokens=MAX_TOKENS, stop_token_ids=(stop,)))
    cut = expected[0].index(stop)
    assert result.token_ids == expected[0][: cut + 1]
    assert result.finish_reason == "stop"
