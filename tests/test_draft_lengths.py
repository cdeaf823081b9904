"""The per-row length rule: budget, prefix closure, and independence of each position's own token."""

import torch

from minedraft.spec.draft_lengths import position_scores, select_lengths


def test_budget_is_spent_on_the_likeliest_prefixes():
    conf = torch.tensor([[0.9, 0.9, 0.9], [0.2, 0.9, 0.9]])
    top = torch.tensor([[0.95, 0.95, 0.95], [0.3, 0.95, 0.95]])
    assert select_lengths(conf, top, 3) == [3, 0]
    assert select_lengths(conf, top, 4) == [3, 1]
    assert select_lengths(conf, top, 0) == [0, 0]
    assert select_lengths(conf, top, 100) == [3, 3]
    assert select_lengths(conf, top, 100, caps=[1, 2]) == [1, 2]


def test_scores_never_rise_along_a_row():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(64, 8, generator=g)
    top = conf + (1 - conf) * torch.rand(64, 8, generator=g)
    s = position_scores(conf, top)
    assert bool((s[:, 1:] <= s[:, :-1]).all())


def test_a_position_is_kept_whatever_its_own_token_was():
    """Changing the confidence of position i (its drawn token) never changes whether i is kept."""
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        b, k = 4, 5
        top = 0.3 + 0.7 * torch.rand(b, k, generator=g)
        conf = top * torch.rand(b, k, generator=g)
        budget = int(torch.randint(0, b * k + 1, (1,), generator=g))
        r, i = int(torch.randint(0, b, (1,), generator=g)), int(torch.randint(0, k, (1,), generator=g))
        before = select_lengths(conf, top, budget)[r] > i
        other = conf.clone()
        other[r, i] = top[r, i] * float(torch.rand(1, generator=g))
        assert (select_lengths(other, top, budget)[r] > i) == before
