"""Speculative decoding at ragged per-row lengths, driven step by step over any DraftWorker and
TargetWorker (in process or gRPC clients): the lengths come from select_lengths under a random
budget, as the scheduler's controller would set them."""

from __future__ import annotations

import random

from minedraft.spec.draft_lengths import select_lengths
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.workers import NewRequest

MAX_TOKENS, K = 20, 4
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


def ragged_generate(target, draft, prompts, seed: int = 0, k: int = K, params=GREEDY):
    """Speculate for all prompts at once, each verify at lengths chosen under a random budget
    (0 included: some steps decode target-only); rows finish at different steps."""
    rng = random.Random(seed)
    reqs = [NewRequest(f"r{i}", list(p), params, seed=i) for i, p in enumerate(prompts)]
    first = target.add(reqs)
    assert draft.add(reqs) == len(reqs)
    out = {r.request_id: [t] for r, t in zip(reqs, first)}
    updates = {rid: list(t) for rid, t in out.items()}
    ids, seen = list(out), set()
    while ids:
        proposal = draft.propose(ids, k, {rid: updates[rid] for rid in ids})
        budget = rng.randint(0, len(ids) * k)
        proposal.lengths = select_lengths(proposal.confidence, proposal.top_prob, budget)
        seen.update(proposal.lengths)
        verdict = target.verify(proposal)
        for rid, tokens, n, length in zip(verdict.request_ids, verdict.tokens, verdict.num_accepted,
                                          proposal.lengths):
            assert n <= length and len(tokens) == n + 1
            out[rid] += tokens
            updates[rid] = tokens
        done = [rid for rid in ids if len(out[rid]) >= MAX_TOKENS]
        target.release(done)
        draft.release(done)
        ids = [rid for rid in ids if rid not in done]
    assert 0 in seen and k in seen and len(seen) > 2, f"lengths were not ragged: {sorted(seen)}"
    return [out[r.request_id][:MAX_TOKENS] for r in reqs]


def factory_prompts() -> list[list[int]]:
    return [[1] + [(13 * i + 5 * j) % 97 + 3 for j in range(3 + 4 * i)] for i in range(6)]
