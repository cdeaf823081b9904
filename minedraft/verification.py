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

from minedraft.sampling import SamplingParams


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
    keeps their full target mass, so verification stays exact."""
    k = draft_tokens.shape[1]
    if draft_probs is not None and draft_probs.shape[-1] < target_probs.shape[-1]:
        draft_probs = torch.nn.functional.pad(draft_probs, (0, target_probs.shape[-1] - draft_probs.shape[-1]))
    draft_tokens = draft_tokens.to(target_probs.device)
    verdicts = []
    greedy_rows = [i for i, p in enumerate(params) if p.greedy]
    if greedy_rows:
        argmax = target_probs[greedy_rows].argmax(-1).tolist()  # [G, k+1]
        drafts = draft_tokens[greedy_rows].tolist()
    greedy_out = {}
    for j, row in enumerate(greedy_rows):
        n = 0
        while n < k and drafts[j][n] == argmax[j][n]:
            n += 1
        greedy_out[row] = RowVerdict(drafts[j][:n] + [argmax[j][n]], n)
    sampled = 0
    for row, p in enumerate(params):
        if p.greedy:
            verdicts.append(greedy_out[row])
        else:
            q = None if draft_probs is None else draft_probs[sampled].to(target_probs.device)
            sampled += 1
            verdicts.append(_verify_sampled_row(target_probs[row], draft_tokens[row], q, generators[row]))
    return verdicts


def _verify_sampled_row(p: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor | None,
                        generator: torch.Generator) -> RowVerdict:
    k = drafts.shape[0]
    tokens = drafts.tolist()
    # One uniform per position, drawn up front so that a request consumes its random stream the
    # same way whatever the outcome: its result never depends on the rest of the batch.
    u = torch.rand(k, generator=generator, device=p.device)
    idx = torch.arange(k, device=p.device)
    p_x = p[idx, drafts]
    q_x = torch.ones_like(p_x) if q is None else q[idx, drafts]
    accept = (u * q_x < p_x).tolist()  # u < p/q without dividing by a zero q
    for i in range(k):
        if not accept[i]:
            if q is None:
                residual = p[i].clone()
                residual[tokens[i]] = 0.0
            else:
                residual = (p[i] - q[i]).clamp_min(0.0)
            if float(residual.sum()) <= 0.0:  # only reachable through fp rounding: fall back to p
                residual = p[i]
            new = int(torch.multinomial(residual, 1, generator=generator))
            return RowVerdict(tokens[:i] + [new], i)
    bonus = int(torch.multinomial(p[k], 1, generator=generator))
    return RowVerdict(tokens + [bonus], k)
