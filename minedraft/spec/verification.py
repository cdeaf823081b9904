"""Verification of a whole batch of draft tokens: exact speculative sampling.

Greedy rows: accept while the draft token equals the target's argmax, then emit the target's token.
Sampled rows (Leviathan et al. 2023; Chen et al. 2023): accept draft token x with probability
min(1, p(x)/q(x)); at the first rejection emit a sample of norm(max(0, p - q)); after k accepts emit
a bonus token from p. With q one-hot (a deterministic draft) the same rule reads: accept x with
probability p(x), else sample from p with x removed. Either way the output follows p exactly.
Sampled rows with a seed of their own: the coupling of spec/coupled_sampling.py (accept while the
draft token equals the target's own seeded draw), whose output is target-only decoding's.
"""

from __future__ import annotations

import dataclasses

import torch

from minedraft.runner.transfer import host_tensor
from minedraft.spec.coupled_sampling import is_coupled, verify_coupled_row
from minedraft.spec.logits_processing import draw
from minedraft.spec.sampling import SamplingParams


@dataclasses.dataclass
class RowVerdict:
    tokens: list[int]  # the accepted draft tokens followed by one token of the target
    num_accepted: int  # how many draft tokens were accepted (len(tokens) - 1)


def check_lengths(lengths: list[int] | None, num_rows: int, k: int) -> list[int] | None:
    """Per-row verify lengths as ints, each in 0..k and one per row (None: every row verifies k)."""
    if lengths is None:
        return None
    lengths = [int(n) for n in lengths]
    if len(lengths) != num_rows:
        raise ValueError(f"lengths: {len(lengths)} given for {num_rows} rows")
    if any(not 0 <= n <= k for n in lengths):
        raise ValueError(f"lengths: each must be in [0, {k}], got {lengths}")
    return lengths


def verify_batch(target_probs: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None,
                 params: list[SamplingParams], generators: list[torch.Generator],
                 lengths: list[int] | None = None, positions: list[int] | None = None) -> list[RowVerdict]:
    """target_probs [B, T, V] (already temperature/top-k/top-p processed; one-hot for greedy rows),
    draft_tokens [B, k], draft_probs [S, k, V'] for the S rows that read q (coupled_sampling.reads_q:
    sampled without a seed) in batch order, or None (one-hot draft). A draft vocabulary V' smaller
    than the target's V (a prefix of it) is padded with q = 0: the ids the draft lacks are never
    proposed, and the residual max(0, p - q) keeps their full target mass, so verification stays exact.

    lengths: row r verifies only its first L_r drafts (None: all k): at most L_r are accepted, and
    after L_r accepts the bonus comes from p at position L_r (L_r = 0: one token from p at position
    0, a target-only step). target_probs needs T >= max(L) + 1 positions; a row's positions past L_r
    are never read. Why a length chosen this way stays exact: spec/draft_lengths.py.

    positions: per row, how many tokens precede its first draft (its committed length): a seeded
    sampled row draws each position's token with that position's noise (needed when there is one).

    Everything stays on the device until the end: one read-back of [B, T+1] (accepted count, then
    the T candidate tokens) for the whole batch."""
    b, k = draft_tokens.shape
    t = target_probs.shape[1] - 1  # drafts the target scored: k, or the longest length
    if lengths is None and t != k:
        raise ValueError(f"target_probs: {t + 1} positions for {k} drafts")
    lengths = check_lengths(lengths, b, t)
    if draft_probs is not None and draft_probs.shape[-1] < target_probs.shape[-1]:
        draft_probs = torch.nn.functional.pad(draft_probs, (0, target_probs.shape[-1] - draft_probs.shape[-1]))
    drafts = draft_tokens.to(target_probs.device, torch.long)
    scored = drafts[:, :t]
    # Row tokens: the drafts, then the target's token at the first rejection (or the bonus at L).
    padded = torch.nn.functional.pad(scored, (0, 1))  # [B, t+1]
    argmax = target_probs.argmax(-1)  # [B, t+1]: the greedy rows' verdict
    match = scored == argmax[:, :t]
    limit = None
    if lengths is not None:
        limit = host_tensor(lengths, torch.long, drafts.device)  # [B]
        match &= torch.arange(t, device=drafts.device)[None, :] < limit[:, None]
    n = match.long().cumprod(-1).sum(-1)  # [B]: accepted while matching
    emitted = argmax.gather(1, n[:, None])  # [B, 1]
    sampled = 0
    for row, p in enumerate(params):
        if is_coupled(p):
            if positions is None:
                raise ValueError("positions: needed to verify a seeded sampled row")
            length = t if lengths is None else lengths[row]  # its positions past that are never drawn
            n[row:row + 1], emitted[row] = verify_coupled_row(target_probs[row, :length + 1], drafts[row],
                                                              generators[row], p.seed, positions[row])
        elif not p.greedy:
            q = None if draft_probs is None else draft_probs[sampled].to(target_probs.device)
            sampled += 1
            row_limit = None if limit is None else limit[row:row + 1]
            n[row:row + 1], emitted[row] = _verify_sampled_row(target_probs[row], drafts[row], q, generators[row],
                                                              row_limit)
    pos = torch.arange(t + 1, device=drafts.device)
    tokens = torch.where(pos[None, :] < n[:, None], padded, emitted)  # [B, t+1]; past n+1: unused
    host = torch.cat([n[:, None], tokens], 1).tolist()  # the one host sync of a verification
    return [RowVerdict(row[1:row[0] + 2], row[0]) for row in host]


def _verify_sampled_row(p: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor | None,
                        generator: torch.Generator, limit: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted count [1], emitted token [1]) of one sampled row, on the device. p [t+1, V] scores
    the first t <= k drafts; limit [1]: the row's own length (None: t)."""
    k, t = drafts.shape[0], p.shape[0] - 1
    # One uniform per drafted position, drawn up front so that a request consumes its random stream
    # the same way whatever the outcome and whatever its length: its result never depends on the
    # rest of the batch.
    u = torch.rand(k, generator=generator, device=p.device)[:t]
    drafts = drafts[:t]
    idx = torch.arange(t, device=p.device)
    p_x = p[idx, drafts]
    q_x = torch.ones_like(p_x) if q is None else q[idx, drafts]
    accept = u * q_x < p_x  # u < p/q without dividing by a zero q
    if limit is not None:
        accept &= idx < limit
    n = accept.long().cumprod(0).sum().view(1)
    # The distribution of the emitted token for each possible n: the residual at a rejection, p at
    # the row's length (a bonus after all its drafts were accepted).
    if q is None:
        residual = p[:t].scatter(1, drafts[:, None], 0.0)
    else:
        residual = (p[:t] - q[:t]).clamp_min(0.0)
    empty = residual.sum(-1, keepdim=True) <= 0.0  # only reachable through fp rounding: fall back to p
    dists = torch.cat([torch.where(empty, p[:t], residual), p[t:]])  # [t+1, V]
    dist = dists.index_select(0, n)[0]
    if limit is not None:  # n == limit: every verified draft accepted, the bonus comes from p
        dist = torch.where(n == limit, p.index_select(0, n)[0], dist)
    return n, draw(dist, generator)
