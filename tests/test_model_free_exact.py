"""Verification stays exact with a model-free (one-hot) proposer at its own ragged lengths: for
sampled rows, the first emitted token follows the target's p[0] and, after an accepted draft, the
second follows p[1], whatever the proposer drafted and however long (0..k). The drafts and lengths
come from the real proposers over random histories; the real verify_batch runs once over all rows."""

import random

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from minedraft.config import DraftOptions
from minedraft.drafting.worker import ModelFreeDraftWorker, make_proposer
from minedraft.spec.logits_processing import make_generator
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.verification import verify_batch
from minedraft.spec.workers import NewRequest

ROWS, V, K = 20_000, 5, 3
EXACT = 1e-3


def chi_square_p(samples: np.ndarray, probs: torch.Tensor) -> float:
    counts = np.bincount(samples, minlength=len(probs))
    expected = probs.double().numpy()
    return chisquare(counts, expected / expected.sum() * len(samples)).pvalue


@pytest.mark.parametrize("method", ["ngram", "suffix"])
def test_one_hot_drafts_at_ragged_lengths_emit_p(method):
    rng = random.Random(5)
    # depth 6 is plenty for histories this short (and keeps 20,000 tries cheap)
    worker = ModelFreeDraftWorker(make_proposer(DraftOptions(method=method, suffix_depth=6)))
    params = SamplingParams(temperature=1.0)
    reqs = [NewRequest(f"r{i}", [rng.randrange(V) for _ in range(rng.randrange(2, 30))], params, i)
            for i in range(ROWS)]
    worker.add(reqs)
    proposal = worker.propose([r.request_id for r in reqs], K, {})
    lengths = proposal.lengths
    assert set(lengths) == set(range(K + 1)), "every length 0..k should occur"
    assert proposal.probs is None  # one-hot q
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        p = torch.distributions.Dirichlet(torch.full((V,), 0.8)).sample((K + 1,))  # [K+1, V]
    gen = make_generator(11, "cpu")
    verdicts = verify_batch(p[None].expand(ROWS, -1, -1), proposal.tokens, None, [params] * ROWS, [gen] * ROWS,
                            lengths)
    for vd, n, row in zip(verdicts, lengths, proposal.tokens.tolist()):
        assert vd.num_accepted <= n and vd.tokens[:vd.num_accepted] == row[:vd.num_accepted]
    firsts = np.array([vd.tokens[0] for vd in verdicts])
    seconds = np.array([vd.tokens[1] for vd in verdicts if len(vd.tokens) > 1])
    assert len(seconds) > 1000
    pvalues = chi_square_p(firsts, p[0]), chi_square_p(seconds, p[1])
    print(f"{method}: chi-square p-values (first, second token): {pvalues[0]:.3g}, {pvalues[1]:.3g}")
    assert min(pvalues) > EXACT
    # the drafts were not the target's choice: a proposer that copies gets some rejected, some accepted
    accepted = sum(vd.num_accepted for vd in verdicts)
    assert 0 < accepted < sum(lengths)
