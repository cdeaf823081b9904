"""Model-free drafting in process (Engine(draft_method=...)): greedy output equals target-only in ar,
sd and psd, at a fixed k and with auto; rows get their own lengths (0 included) and verify no more."""

import pytest

from minedraft import Engine, SamplingParams
from minedraft.runner.hf_adapter import greedy_generate

MAX_TOKENS = 24


def prompts():
    return [[1] + [(7 * i + 3 * j) % 97 + 3 for j in range(2 + 3 * i)] for i in range(6)]


@pytest.fixture(scope="module")
def expected(llama_pair):
    return [greedy_generate(llama_pair[2], p, MAX_TOKENS) for p in prompts()]


@pytest.mark.parametrize("method", ["ngram", "suffix"])
@pytest.mark.parametrize("mode,k", [("ar", 3), ("sd", 3), ("psd", 3), ("psd", "auto")])
def test_greedy_equals_target_only(llama_pair, expected, method, mode, k):
    target, _, _ = llama_pair
    engine = Engine(target, draft_method=method, mode=mode, num_speculative_tokens=k, max_num_seqs=4)
    assert engine.draft_runner is None  # nothing loaded for the draft
    results = engine.generate(prompts(), SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True))
    assert [r.token_ids for r in results] == expected
    m = engine.metrics
    if mode == "ar":
        assert m.spec_decode_num_draft_tokens == 0
    elif k != "auto":  # the tiny target loops, so copies pay: some drafts accepted, some rejected
        # (auto may find that k = 0 pays best here, which is its call)
        assert 0 < m.spec_decode_num_accepted_tokens < m.spec_decode_num_draft_tokens
        assert sum(r.num_drafted for r in results) == m.spec_decode_num_draft_tokens
        assert m.by_method == {method: [m.spec_decode_num_drafts, m.spec_decode_num_draft_tokens,
                                        m.spec_decode_num_accepted_tokens]}


def test_rows_verify_only_what_the_proposer_drafted(llama_pair):
    """A prompt with nothing to copy from drafts 0 tokens; the others their own lengths."""
    target, _, _ = llama_pair
    engine = Engine(target, draft_method="ngram", mode="sd", num_speculative_tokens=4, max_num_seqs=4)
    seen = []
    worker = engine.scheduler.draft
    propose = worker.propose

    def spy(ids, k, updates):
        proposal = propose(ids, k, updates)
        seen.append(list(proposal.lengths))
        return proposal

    worker.propose = spy
    engine.generate([[1, 2, 3, 4], [5, 6, 5, 6, 5]], SamplingParams(max_tokens=12, ignore_eos=True))
    flat = [n for lengths in seen for n in lengths]
    assert 0 in flat and max(flat) <= 4
    assert engine.metrics.spec_decode_num_draft_tokens == sum(flat)


def test_bad_draft_method_names_the_field():
    with pytest.raises(ValueError, match="draft_method"):
        Engine(draft_method="eagle2")


def test_draft_method_through_the_config_tree():
    """`up --draft-method` reaches the draft's `--method`; bad values name their field."""
    from minedraft import config as C
    from minedraft.config.flags import from_flat, service_parser
    from minedraft.launcher import service_commands

    draft_cmd = service_commands(C.UpConfig(draft_method="suffix"))["draft"]
    assert draft_cmd[draft_cmd.index("--method") + 1] == "suffix"
    assert "--method" not in service_commands(C.UpConfig())["draft"]  # model: the default, left out
    ns = service_parser("draft").parse_args(["--method", "ngram", "--ngram-min", "3", "--ngram-max", "4",
                                             "--suffix-cache-mib", "8"])
    d = from_flat(C.DraftConfig, vars(ns)).drafting
    assert (d.method, d.ngram_min, d.ngram_max, d.suffix_cache_mib) == ("ngram", 3, 4, 8.0)
    for kwargs, field in ((dict(method="eagle9"), "method"), (dict(ngram_min=4, ngram_max=2), "ngram_max"),
                          (dict(suffix_min_token_prob=2.0), "suffix_min_token_prob"),
                          (dict(suffix_cache_mib=0), "suffix_cache_mib")):
        with pytest.raises(ValueError, match=f"^{field}:"):
            C.DraftOptions(**kwargs)
    with pytest.raises(ValueError, match="^draft_method:"):
        C.UpConfig(draft_method="x")
