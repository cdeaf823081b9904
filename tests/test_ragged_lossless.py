"""Greedy speculation at ragged per-row lengths equals target-only greedy decoding token for token,
and the draft reports the confidences the length rule ranks by. In-process workers, driven by a
small loop that sets `proposal.lengths` from select_lengths with a random budget every step."""

from __future__ import annotations

import pytest
import torch
from ragged import GREEDY, MAX_TOKENS, K, factory_prompts, ragged_generate

from minedraft import assets
from minedraft.runner.hf_adapter import greedy_generate, load_tokenizer, reference_model
from minedraft.runner.model_runner import ModelRunner
from minedraft.spec.local_workers import LocalDraftWorker, LocalTargetWorker
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.workers import NewRequest


def workers(target_path: str, draft_path: str, **draft_kw):
    target = LocalTargetWorker(ModelRunner(target_path, max_num_seqs=8))
    draft = LocalDraftWorker(ModelRunner(draft_path, max_num_seqs=8), **draft_kw)
    return target, draft


def bundled_prompts(n: int = 6) -> list[list[int]]:
    tok = load_tokenizer(assets.default_target_path())
    return [tok(p).input_ids[:40] for p in assets.load_heldout_prompts(n)]


@pytest.fixture(scope="module")
def qwen_pair(tmp_path_factory):
    from model_factory import save_pair

    return save_pair(tmp_path_factory.mktemp("qwen_pair"), "qwen2", noise=0.03)


@pytest.mark.parametrize("pair", ["bundled", "qwen2_random"])
def test_ragged_greedy_equals_target_only(pair, qwen_pair):
    if pair == "bundled":
        target_path, draft_path = assets.default_target_path(), assets.default_draft_path()
        ref, prompts = reference_model(target_path).eval(), bundled_prompts()
    else:
        target_path, draft_path, ref = qwen_pair
        prompts = factory_prompts()
    expected = [greedy_generate(ref, p, MAX_TOKENS) for p in prompts]
    for seed in (0, 1):
        assert ragged_generate(*workers(target_path, draft_path), prompts, seed=seed) == expected
    # one-hot drafts rank by the draft model's own belief as well
    assert ragged_generate(*workers(target_path, draft_path, full_q=False), prompts, seed=2) == expected


def test_draft_reports_confidence_and_top_prob(qwen_pair):
    """Sampled rows: q(x) and max q of the very q sent; greedy rows: confidence == top_prob, the
    softmax of the draft's logits at its argmax."""
    target_path, draft_path, _ = qwen_pair
    _, draft = workers(target_path, draft_path)
    params = [SamplingParams(temperature=0.8 if i % 2 else 0.0, top_k=20) for i in range(4)]
    reqs = [NewRequest(f"r{i}", [1, 5 + i, 9, 14], p, seed=i) for i, p in enumerate(params)]
    draft.add(reqs)
    proposal = draft.propose([r.request_id for r in reqs], 3, {})
    conf, top = proposal.confidence, proposal.top_prob
    assert conf.shape == top.shape == (4, 3) and conf.dtype == top.dtype == torch.float32
    assert conf.device.type == "cpu" and bool((conf > 0).all()) and bool((conf <= top + 1e-6).all())
    q = proposal.probs  # [2, 3, V]: the sampled rows 1 and 3
    sampled_tokens = proposal.tokens[[1, 3]]
    assert torch.allclose(conf[[1, 3]], q.gather(2, sampled_tokens[..., None])[..., 0])
    assert torch.allclose(top[[1, 3]], q.max(-1).values)
    assert torch.equal(conf[[0, 2]], top[[0, 2]]) and bool((top[[0, 2]] < 1).all())


def test_uniform_lengths_take_the_tensor_path_and_match_none(qwen_pair, monkeypatch):
    """All rows at one length L, or nearly even lengths: one [B, max L + 1] forward; uneven ones:
    ragged rows. At L = k the verdicts equal lengths=None; lengths bound what is accepted."""
    target_path, draft_path, _ = qwen_pair
    shapes = []
    original = ModelRunner.forward

    def spy(self, seqs, tokens, all_positions=False):
        if all_positions:
            shapes.append(tuple(tokens.shape) if torch.is_tensor(tokens) else [len(t) for t in tokens])
        return original(self, seqs, tokens, all_positions)

    monkeypatch.setattr(ModelRunner, "forward", spy)
    prompts = factory_prompts()[:3]
    verdicts = {}
    cases = (None, [K] * 3, [2] * 3, [0, K, 1], [K, K - 1, K])
    for lengths in cases:
        target, draft = workers(target_path, draft_path)
        reqs = [NewRequest(f"r{i}", p, GREEDY, seed=i) for i, p in enumerate(prompts)]
        first = target.add(reqs)
        draft.add(reqs)
        proposal = draft.propose([r.request_id for r in reqs], K, {r.request_id: [t] for r, t in zip(reqs, first)})
        proposal.lengths = lengths
        verdicts[str(lengths)] = target.verify(proposal).tokens
    assert shapes == [(3, K + 1), (3, K + 1), (3, 3), [1, K + 1, 2], (3, K + 1)]
    assert verdicts[str(None)] == verdicts[str([K] * 3)]
    for lengths in cases[1:]:
        assert all(len(t) - 1 <= n for t, n in zip(verdicts[str(lengths)], lengths))
