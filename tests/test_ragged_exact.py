"""Verification at ragged per-row lengths stays exact when the lengths come from spec/draft_lengths.py,
and a chi-square test catches the naive rule (keep a position by its drawn token's own probability).

Each trial is a group of rows drafted from fixed, context-independent distributions q (one per row
and position) against a fixed target p per position; a random budget per group (independent of the
drafts) makes select_lengths keep different prefixes in different rows. Every row's first emitted
token must follow p[0] and, where the row emitted two (its first draft was accepted), the second
p[1]. The real verify_batch runs once per rule over all trials as one batch.
"""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from minedraft.spec.draft_lengths import select_lengths
from minedraft.spec.logits_processing import make_generator
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.verification import verify_batch

GROUPS = 5_000  # trials; each has len(q) rows that share one budget
EXACT, NAIVE = 1e-3, 1e-6  # the exact rule passes above EXACT; the naive one fails below NAIVE


def _dirichlet(seed: int, shape: tuple, v: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.distributions.Dirichlet(torch.full((v,), 0.8)).sample(shape)


def _worked_example():
    """The issue's example, p[0] = (0.5, 0.3, 0.2) and q = (0.2, 0.5, 0.3), beside rows whose q
    are more and less peaked, so that the budget makes the lengths ragged (k = 2)."""
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3]])
    rows = [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.34, 0.33, 0.33], [0.2, 0.5, 0.3]]
    return p, torch.tensor(rows)[:, None, :].repeat(1, 2, 1)


def _random_case():
    """V = 5, k = 3: fixed random p per position and a different random q per row and position."""
    return _dirichlet(3, (4,), 5), _dirichlet(4, (5, 3), 5)


CASES = {"worked_example": _worked_example, "v5_k3": _random_case}


def naive_lengths(confidence: torch.Tensor, budget: int) -> list[int]:
    """TETRIS's rule on sampled rows: rank (row, position) by prod_{j<=i} q_j(x_j), the drawn tokens'
    own probabilities, position i's included. Same ties and budget as select_lengths."""
    b, k = confidence.shape
    scores = torch.cumprod(confidence, 1).tolist()
    ranked = sorted((-scores[r][i], i, r) for r in range(b) for i in range(k))
    lengths = [0] * b
    for _, i, r in ranked[:budget]:  # scores fall along a row: the kept set is prefix-closed
        lengths[r] = max(lengths[r], i + 1)
    return lengths


def emitted(p: torch.Tensor, q: torch.Tensor, rule: str, seed: int):
    """(first tokens, second tokens, lengths) of every row of every trial under `rule`."""
    r, k, v = q.shape
    gen = make_generator(seed, "cpu")
    rows_q = q.repeat(GROUPS, 1, 1)  # [G*R, k, V]: row g*R + j is row j of trial g
    drafts = torch.multinomial(rows_q.reshape(-1, v), 1, generator=gen).view(-1, k)
    confidence = rows_q.gather(2, drafts[..., None])[..., 0]
    top_prob = rows_q.max(-1).values
    budgets = torch.randint(1, r * k, (GROUPS,), generator=gen).tolist()  # drawn apart from the drafts
    lengths = []
    for g, budget in enumerate(budgets):
        part = slice(g * r, (g + 1) * r)
        if rule == "exact":
            lengths += select_lengths(confidence[part], top_prob[part], budget)
        else:
            lengths += naive_lengths(confidence[part], budget)
    n = GROUPS * r
    params = [SamplingParams(temperature=1.0)] * n
    verdicts = verify_batch(p[None].expand(n, -1, -1), drafts, rows_q, params, [gen] * n, lengths)
    firsts = np.array([vd.tokens[0] for vd in verdicts])
    seconds = np.array([vd.tokens[1] for vd in verdicts if len(vd.tokens) > 1])
    return firsts, seconds, lengths


def chi_square_p(samples: np.ndarray, probs: torch.Tensor) -> float:
    counts = np.bincount(samples, minlength=len(probs))
    expected = probs.double().numpy()
    return chisquare(counts, expected / expected.sum() * len(samples)).pvalue


@pytest.mark.parametrize("case", list(CASES))
def test_exact_rule_follows_p_and_naive_rule_does_not(case):
    p, q = CASES[case]()
    results = {}
    for rule in ("exact", "naive"):
        firsts, seconds, lengths = emitted(p, q, rule, seed=17)
        results[rule] = (chi_square_p(firsts, p[0]), chi_square_p(seconds, p[1]))
        assert len(set(lengths)) == q.shape[1] + 1, "every length 0..k should occur"
        assert min(len(seconds), len(firsts) - len(seconds)) > 1000
    print(f"{case}: chi-square p-values (first, second token): " + ", ".join(
        f"{rule} {a:.3g}, {b:.3g}" for rule, (a, b) in results.items()))
    assert min(results["exact"]) > EXACT
    # The naive rule biases every kept position; the first token, which every row emits, shows it
    # clearest (the second token's bias is diluted by the rows that stop at one).
    assert results["naive"][0] < NAIVE


def test_lengths_bound_what_is_accepted_and_zero_decodes_from_p():
    """Greedy and sampled rows never accept past their length; at length L the bonus is from p[L]."""
    v, k = 6, 3
    drafts = torch.tensor([[1, 2, 3]] * 4)
    p = torch.zeros(4, k + 1, v)
    p[:, torch.arange(k), drafts[0]] = 1.0  # the target agrees with every draft
    p[:, k, 5] = 1.0
    p[3, 1] = 0.0
    p[3, 1, 4] = 1.0  # row 3: its bonus at position 1 is token 4
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)] * 2
    q = torch.nn.functional.one_hot(drafts[:2], v).float()
    gens = [make_generator(i, "cpu") for i in range(4)]
    verdicts = verify_batch(p, drafts, q, params, gens, [0, 2, 3, 1])
    assert [vd.tokens for vd in verdicts] == [[1], [1, 2, 3], [1, 2, 3, 5], [1, 4]]
    with pytest.raises(ValueError, match="lengths"):
        verify_batch(p, drafts, q, params, gens, [0, 1])
    with pytest.raises(ValueError, match="lengths"):
        verify_batch(p, drafts, q, params, gens, [0, 1, 4, 1])
