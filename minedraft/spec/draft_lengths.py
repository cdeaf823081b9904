"""Per-row draft lengths under a verification budget (TETRIS-style), chosen so that verification
stays exact.

The draft proposes up to k tokens per row. The target may verify only C of the B x k (row,
position) drafts (the budget the controller picks); which ones? TETRIS (Wu et al., ACL 2025) keeps
the globally top-C prefixes by the cumulative draft probability of the drawn tokens. For a sampled
row that rule changes the proposal: whether position i is kept then depends on q_i(x_i), so given
that it was kept, x_i follows q_i restricted to the kept tokens and renormalised, not q_i, and the
test min(1, p/q) with residual max(0, p - q) is biased (p = (0.5, 0.3, 0.2), q = (0.2, 0.5, 0.3),
keep x_1 only when q(x_1) > 0.25: the emitted token follows (0.40, 0.36, 0.24), not p).

The rule here decides position i from what was known BEFORE x_i was drawn. Its score is

    s_i = confidence_1 * ... * confidence_{i-1} * top_prob_i

where confidence_j is the draft's probability of its token at j (known: x_j came earlier) and
top_prob_i the largest probability of q_i (the shape of q_i, not its draw). Why it is exact:
- s is non-increasing along a row (confidence_j <= top_prob_j <= 1; floating-point products are
  monotone too), and ties go to the earlier position, so the top-C set is prefix-closed: a row keeps
  positions 1..L_r.
- Whether position i of row r ranks in the top C depends on how many entries outrank it. Entries of
  the same row after i never do (they score no more and lose ties); earlier entries of the row and
  other rows' entries do not depend on x_i. So the event "position i is kept" is a function of
  information available before x_i was drawn, and given it, x_i ~ q_i still.
- Verification is then the standard sequential test with a stopping time: at each kept position
  accept x_i with min(1, p_i(x_i)/q_i(x_i)), at the first rejection emit from norm(max(0, p_i - q_i)),
  after L_r accepts emit the bonus from p_{L_r+1}. Each emitted token follows p given the past.
Greedy rows draft x_i = argmax q_i, so confidence_i == top_prob_i and the score is TETRIS's own
cumulative probability: for them nothing changes. tests/test_draft_lengths.py checks the sampled
case with a chi-square test at ragged lengths, beside the naive rule failing the same test.
"""

from __future__ import annotations

import torch


def position_scores(confidence: torch.Tensor, top_prob: torch.Tensor) -> torch.Tensor:
    """[B, k] scores s_i = prod_{j<i} confidence_j * top_prob_i (see the module docstring)."""
    conf = confidence.float().clamp(0.0, 1.0)
    top = torch.maximum(top_prob.float().clamp(0.0, 1.0), conf)  # confidence <= top_prob by definition
    before = torch.cumprod(torch.cat([torch.ones_like(conf[:, :1]), conf[:, :-1]], 1), 1)
    return before * top


def select_lengths(confidence: torch.Tensor, top_prob: torch.Tensor, budget: int,
                   caps: list[int] | None = None) -> list[int]:
    """Per-row lengths: the `budget` highest-scoring (row, position) drafts, prefix-closed per row.

    caps: per-row upper bounds (e.g. tokens the request may still generate, or a proposer's own
    length); they depend on draft-side information only. Ties: the earlier position, then the
    lower row (both independent of the drafted tokens)."""
    b, k = confidence.shape
    if caps is None:
        caps = [k] * b
    scores = position_scores(confidence, top_prob).tolist()
    candidates = [(-scores[r][i], i, r) for r in range(b) for i in range(min(k, max(0, caps[r])))]
    candidates.sort()
    kept = [set() for _ in range(b)]
    for _, i, r in candidates[:max(0, budget)]:
        kept[r].add(i)
    lengths = []
    for r in range(b):
        n = 0
        while n in kept[r]:  # prefix-closed by construction; counted from the front to be sure
            n += 1
        lengths.append(n)
    return lengths
