"""Verification of a whole batch of draft tokens: exact speculative sampling.

Greedy rows: accept while the draft token equals the target's argmax, then emit the target's token.
Sampled rows (Leviathan et al. 2023; Chen et al. 2023): accept draft token x with probability
min(1, p(x)/q(x)); at the first rejection emit a sample of norm(max(0, p - q)); after k accepts emit
a bonus token from p. With q one-hot (a deterministic draft) the same rule reads: accept x with
probability p(x), else sample from p with x removed. Either way the output follows p exactly.
"""

from __future__ import annotations

import dataclasses

import torch

from minedraft.spec.logits_processing import draw
from minedraft.spec.sampling import SamplingParams


@dataclasses.dataclass
class RowVerdict:
    tokens: list[int]  # the accepted draft tokens followed by one token of the target
    num_accepted: int  # how many draft tokens were accepted (len(tokens) - 1)


def verify_batch(target_probs: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None,
                 params: list[SamplingParams], generators: list[torch.Generator]) -> list[RowVerdict]:
    """target_probs [B, k+1, V] (already temperature/top-k/top-p processed; one-hot for greedy rows),
    draft_tokens [B, k], draft_probs [S, k, V'] for the S sampled (non-greedy) rows in batch order,
    or None (one-hot draft). A draft vocabulary V' smaller than the target's V (a prefix of it) is
    padded with q = 0: the ids the draft lacks are never proposed, and the residual max(0, p - q)
    keeps their full target mass, so verification stays exact.

    Everything stays on the device until the end: one read-back of [B, k+2] (accepted count, then
    the k+1 candidate tokens) for the whole batch."""
    b, k = draft_tokens.shape
    if draft_probs is not None and draft_probs.shape[-1] < target_probs.shape[-1]:
        draft_probs = torch.nn.functional.pad(draft_probs, (0, target_probs.shape[-1] - draft_probs.shape[-1]))
    drafts = draft_tokens.to(target_probs.device, torch.long)
    # Row tokens: the drafts, then the target's token at the first rejection (or the bonus at k).
    padded = torch.nn.functional.pad(drafts, (0, 1))  # [B, k+1]
    argmax = target_probs.argmax(-1)  # [B, k+1]: the greedy rows' verdict
    n = (drafts == argmax[:, :k]).long().cumprod(-1).sum(-1)  # [B]: accepted while matching
    emitted = argmax.gather(1, n[:, None])  # [B, 1]
    sampled = 0
    for row, p in enumerate(params):
        if not p.greedy:
            q = None if draft_probs is None else draft_probs[sampled].to(target_probs.device)
            sampled += 1
            n[row:row + 1], emitted[row] = _verify_sampled_row(target_probs[row], drafts[row], q, generators[row])
    pos = torch.arange(k + 1, device=drafts.device)
    tokens = torch.where(pos[None, :] < n[:, None], padded, emitted)  # [B, k+1]; past n+1: unused
    host = torch.cat([n[:, None], tokens], 1).tolist()  # the one host sync of a verification
    return [RowVerdict(row[1:row[0] + 2], row[0]) for row in host]


def _verify_sampled_row(p: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor | None,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted count [1], emitted token [1]) of one sampled row, on the device."""
    k = drafts.shape[0]
    # One uniform per position, drawn up front so that a request consumes its random stream the
    # same way whatever the outcome: its result never depends on the rest of the batch.
    u = torch.rand(k, generator=generator, device=p.device)
    idx = torch.arange(k, device=p.device)
    p_x = p[idx, drafts]
    q_x = torch.ones_like(p_x) if q is None else q[idx, drafts]
    n = (u * q_x < p_x).long().cumprod(0).sum().view(1)  # u < p/q without dividing by a zero q
    # The distribution of the emitted token for each possible n: the residual at a rejection, p at k.
    if q is None:
        residual = p[:k].scatter(1, drafts[:, None], 0.0)
    else:
        residual = (p[:k] - q).clamp_min(0.0)
    empty = residual.sum(-1, keepdim=True) <= 0.0  # only reachable through fp rounding: fall back to p
    dists = torch.cat([torch.where(empty, p[:k], residual), p[k:]])  # [k+1, V]
    new = draw(dists.index_select(0, n)[0], generator)
    return n, new
