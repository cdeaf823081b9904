"""Speculative sampling is exact: emitted tokens follow the target distribution p, for a draft that
sends its full q and for a deterministic (one-hot q) draft; and seeded requests are reproducible."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from minedraft import Engine, SamplingParams
from minedraft.spec.logits_processing import make_generator, probs_from_logits
from minedraft.spec.verification import verify_batch

V, K, N = 12, 2, 20_000
SIGNIFICANCE = 1e-3


def random_dists(g, n):
    """n Dirichlet(0.7) distributions drawn from g (Dirichlet.sample takes no generator: it draws under
    a global seed taken from g, and the global state is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        return torch.distributions.Dirichlet(torch.full((V,), 0.7)).sample((n,))


def test_random_dists_follow_their_generator():
    def draw(seed):
        return random_dists(torch.Generator().manual_seed(seed), 3)

    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))


def emitted_first_two(p, q, one_hot_q, seed):
    """Run verification N times. Position-independent targets: p[i] is the target's distribution
    for the i-th emitted token whatever came before, so the 2nd token is either the 2nd of the
    first verification or, after an early rejection, the 1st of a follow-up verification."""
    gen = make_generator(seed, "cpu")
    params = [SamplingParams(temperature=1.0)]
    firsts, seconds = [], []

    def one_verify(p_rows, q_rows):
        if one_hot_q:  # a deterministic draft: its argmax, sent without q
            drafts = q_rows.argmax(-1)
            probs = None
        else:
            drafts = torch.multinomial(q_rows, 1, generator=gen)[:, 0]
            probs = q_rows[None]
        return verify_batch(p_rows[None], drafts[None], probs, params, [gen])[0].tokens

    for _ in range(N):
        out = one_verify(p[:K + 1], q[:K])
        firsts.append(out[0])
        if len(out) < 2:
            out = out + one_verify(p[1:K + 2], q[1:K + 1])
        seconds.append(out[1])
    return np.array(firsts), np.array(seconds)


def chi_square_p(samples, probs):
    counts = np.bincount(samples, minlength=V)
    expected = probs.numpy().astype(np.float64) * len(samples)
    keep = expected > 0
    assert counts[~keep].sum() == 0, "emitted a token the target gives probability 0"
    return chisquare(counts[keep], expected[keep] * counts[keep].sum() / expected[keep].sum()).pvalue


@pytest.mark.parametrize("one_hot_q", [False, True], ids=["full_q", "one_hot_q"])
def test_emitted_tokens_follow_target(one_hot_q):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(11)
    p = random_dists(g, K + 2)
    q = random_dists(g, K + 2)
    p[0, 3] = 0.0  # a token the target never emits but the draft may propose
    p[0] /= p[0].sum()
    firsts, seconds = emitted_first_two(p, q, one_hot_q, seed=7)
    p1, p2 = chi_square_p(firsts, p[0]), chi_square_p(seconds, p[1])
    print(f"one_hot_q={one_hot_q}: chi-square p-values first={p1:.3f} second={p2:.3f}")
    assert p1 > SIGNIFICANCE and p2 > SIGNIFICANCE


def test_verification_detects_a_wrong_rule():
    """The chi-square test has power: the draft's own distribution q is rejected as a match for p."""
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(12)
    p, q = random_dists(g, 1)[0], random_dists(g, 1)[0]
    samples = torch.multinomial(q, N, replacement=True).numpy()
    assert chi_square_p(samples, p) < SIGNIFICANCE


def test_processing_is_identical_for_p_and_q():
    logits = torch.randn(2, 3, 50)
    params = [SamplingParams(temperature=0.7, top_k=10, top_p=0.8), SamplingParams(temperature=0.0)]
    probs = probs_from_logits(logits, params)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 3))
    assert ((probs[0] > 0).sum(-1) <= 10).all()
    assert torch.equal(probs[1].argmax(-1), logits[1].argmax(-1)) and ((probs[1] > 0).sum(-1) == 1).all()
    again = probs_from_logits(logits[[1, 0]], params[::-1])  # batch order does not matter
    assert torch.equal(again[1], probs[0])


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_seeded_request_is_reproducible_whatever_the_batch(llama_pair, mode):
    target, draft, _ = llama_pair
    engine = Engine(target, draft, mode=mode, num_speculative_tokens=3)
    seeded = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=20, seed=1234, ignore_eos=True)
    alone = engine.generate([[1, 5, 9, 13]], seeded)[0].token_ids
    others = SamplingParams(temperature=0.8, max_tokens=12, ignore_eos=True)
    rids = [engine.add_request([1, 7, 7, 8 + i], others) for i in range(4)]
    rid = engine.add_request([1, 5, 9, 13], seeded)
    done = {}
    while engine.has_unfinished():
        for req in engine.step():
            done[req.request_id] = req
    assert done[rid].output_ids == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=20, seed=99, ignore_eos=True)
    assert engine.generate([[1, 5, 9, 13]], other_seed)[0].token_ids != alone
    # the others really shared its batches: each ran to its length while the seeded one ran
    assert all(len(done[r].output_ids) == 12 and done[r].first_token_s < done[rid].finish_s
               and done[rid].first_token_s < done[r].finish_s for r in rids)
