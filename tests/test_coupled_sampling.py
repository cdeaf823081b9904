"""Seeded sampled requests are drawn by the coupling of spec/coupled_sampling.py: their output equals
target-only decoding's with the same seed, token for token, whatever the draft proposes, k, the
per-row lengths, the mode, or a draft that drafts nothing (model-free); the emitted tokens follow p;
and the draft's noise really is the target's (a draft equal to the target has every token accepted)."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from minedraft import Engine, SamplingParams
from minedraft.spec.coupled_sampling import (
    coupled_draw,
    is_coupled,
    reads_q,
    redraw_coupled,
    verify_on_device,
    verify_until_mismatch,
)
from minedraft.spec.logits_processing import make_generator, sample_tensor, step_seed
from minedraft.spec.row_book import TARGET_STREAM
from minedraft.spec.verification import verify_batch

V = 16
SEEDED = SamplingParams(temperature=1.0, seed=7)


def dists(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, V, generator=g) * 2, -1)


def target_only(p, seed, start):
    """What target-only decoding draws at positions start.. : its generator seeded per committed
    length on the target's stream, one draw each (local_workers.LocalTargetWorker.decode)."""
    gen = make_generator(0, "cpu")
    out = []
    for i in range(p.shape[0]):
        gen.manual_seed(step_seed(SEEDED.seed if seed is None else seed, TARGET_STREAM, start + i))
        out.append(sample_tensor(p[i:i + 1], [SEEDED], [gen]).item())
    return out


def test_which_rows_are_coupled_and_which_read_q():
    assert is_coupled(SEEDED) and not reads_q(SEEDED)
    assert reads_q(SamplingParams(temperature=1.0)) and not is_coupled(SamplingParams(temperature=1.0))
    greedy = SamplingParams(temperature=0.0, seed=7)
    assert not is_coupled(greedy) and not reads_q(greedy)


@pytest.mark.parametrize("drafts_from", ["target", "random", "half"])
def test_verify_emits_exactly_the_target_only_draws(drafts_from):
    """Whatever was drafted, a seeded row's emitted tokens are target-only decoding's at those positions."""
    k, start = 5, 40
    p = dists(k + 1)
    truth = target_only(p, None, start)
    g = torch.Generator().manual_seed(3)
    drafts = {"target": truth[:k], "random": torch.randint(0, V, (k,), generator=g).tolist(),
              "half": truth[:2] + [(truth[2] + 1) % V] + truth[3:k]}[drafts_from]
    verdict = verify_batch(p[None], torch.tensor([drafts]), None, [SEEDED], [make_generator(0, "cpu")],
                           positions=[start])[0]
    n = verdict.num_accepted
    assert verdict.tokens == truth[:n + 1]
    assert n == _matches(drafts, truth) == {"target": k, "half": 2}.get(drafts_from, n)


def _matches(drafts, truth):
    n = 0
    while n < len(drafts) and drafts[n] == truth[n]:
        n += 1
    return n


def test_ragged_lengths_keep_the_target_only_draws():
    k, start = 4, 9
    p = dists(k + 1, seed=1)
    truth = target_only(p, None, start)
    rows = 3
    verdicts = verify_batch(p[None].expand(rows, -1, -1), torch.tensor([truth[:k]] * rows), None, [SEEDED] * rows,
                            [make_generator(0, "cpu") for _ in range(rows)], lengths=[0, 2, 4],
                            positions=[start] * rows)
    assert [v.tokens for v in verdicts] == [truth[:1], truth[:3], truth[:5]]


def test_a_seeded_row_needs_its_position():
    with pytest.raises(ValueError, match="positions"):
        verify_batch(dists(2)[None], torch.tensor([[0]]), None, [SEEDED], [make_generator(0, "cpu")])


def test_emitted_tokens_follow_p():
    """The coupled draw at a position, over many seeds, follows p (chi-square)."""
    p = dists(1, seed=5)[0]
    gen = make_generator(0, "cpu")
    draws = np.array([coupled_draw(p, gen, seed, 11).item() for seed in range(20_000)])
    counts = np.bincount(draws, minlength=V)
    expected = p.double().numpy()
    assert chisquare(counts, expected / expected.sum() * len(draws)).pvalue > 1e-3


def test_the_draft_draws_with_the_targets_noise():
    """A draft whose q equals p drafts exactly the target's tokens (shared noise); with an unrelated
    noise the two would agree only about sum(p^2) of the time."""
    k, start, seed = 6, 100, 123
    p = dists(k + 1, seed=2)
    chosen = torch.zeros(1, dtype=torch.long)
    drafted = []
    for step in range(k):
        redraw_coupled(chosen, p[step:step + 1], [(0, make_generator(0, "cpu"), seed, start)], step)
        drafted.append(chosen.item())
    assert drafted == target_only(p, seed, start)[:k]


def test_a_reduced_draft_vocabulary_draws_the_full_vocabularys_token():
    """EAGLE-3's reduced vocabulary: the draw over the draft ids uses the target vocabulary's noise at
    those ids, so it picks what the same q spread over the full vocabulary picks."""
    ids = torch.tensor([1, 4, 5, 9, 12])
    q = dists(1, seed=4)[0][: len(ids)]
    full = torch.zeros(V).index_copy_(0, ids, q)
    for position in range(50):
        small = coupled_draw(q, make_generator(0, "cpu"), 8, position, ids=ids, vocab=V).item()
        assert ids[small].item() == coupled_draw(full, make_generator(0, "cpu"), 8, position).item()


@pytest.fixture(scope="module")
def target_only_outputs():
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=21, max_tokens=48, ignore_eos=True)
    prompts = [[1, 5, 9, 13], [1, 7, 7, 8, 2], [1, 30, 31]]
    return prompts, params, [r.token_ids for r in Engine(mode="ar").generate(prompts, params)]


@pytest.mark.parametrize("mode,k", [("sd", 2), ("sd", 5), ("psd", 3), ("psd", "auto"), ("sd", "auto")])
def test_seeded_output_equals_target_only_in_every_mode(target_only_outputs, mode, k):
    prompts, params, expected = target_only_outputs
    engine = Engine(mode=mode, num_speculative_tokens=k)
    assert [r.token_ids for r in engine.generate(prompts, params)] == expected
    assert engine.metrics.acceptance_rate > 0.3  # the draft's noise is the target's: it matches often


def test_seeded_output_equals_target_only_with_a_model_free_draft(target_only_outputs):
    prompts, params, expected = target_only_outputs
    engine = Engine(mode="sd", num_speculative_tokens=3, draft_method="ngram")
    assert [r.token_ids for r in engine.generate(prompts, params)] == expected


def test_seeded_output_equals_target_only_with_a_one_hot_draft(target_only_outputs):
    """full_q=False: rows without a seed draft greedily (one-hot q); seeded rows still draft with the
    coupling's noise, since their verification reads no q."""
    prompts, params, expected = target_only_outputs
    engine = Engine(mode="psd", num_speculative_tokens=3, full_q=False)
    assert [r.token_ids for r in engine.generate(prompts, params)] == expected
    assert engine.metrics.acceptance_rate > 0.3


def test_the_host_and_device_forms_of_the_verify_agree():
    """verify_until_mismatch (CPU: stops drawing at the first mismatch) and verify_on_device (GPU:
    every draw, no host sync) give the same verdict; both run here on the CPU."""
    k, start = 4, 17
    p = dists(k + 1, seed=9)
    truth = target_only(p, None, start)
    g = torch.Generator().manual_seed(1)
    for drafts in ([*truth[:k]], truth[:1] + [(truth[1] + 3) % V] * (k - 1),
                   torch.randint(0, V, (k,), generator=g).tolist()):
        d = torch.tensor(drafts)
        lazy = verify_until_mismatch(p, d, make_generator(0, "cpu"), SEEDED.seed, start)
        eager = verify_on_device(p, d, make_generator(0, "cpu"), SEEDED.seed, start)
        assert [int(x) for x in lazy] == [int(x) for x in eager]


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_seeded_output_equals_target_only_with_an_eagle_head(target_only_outputs, mode):
    """The bundled EAGLE head drafts seeded rows with the target's noise too (its own code path)."""
    prompts, params, expected = target_only_outputs
    engine = Engine(mode=mode, num_speculative_tokens=3, draft_method="eagle")
    assert [r.token_ids for r in engine.generate(prompts, params)] == expected
    assert engine.metrics.acceptance_rate > 0.3
