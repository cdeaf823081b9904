"""What a draft step hands back besides its tokens: the q the target verifies against, and the
draft's confidence in each drafted token (spec/draft_lengths.py ranks positions by them), brought to
the host with the tokens in one copy. Shared by the model draft (local_workers.py) and the EAGLE head
(drafting/eagle_worker.py)."""

from __future__ import annotations

import torch


def normalised_q(q: torch.Tensor | None) -> torch.Tensor | None:
    """q exactly as the draft sampled from it: multinomial draws proportionally to the values it was
    given, which for a bfloat16 q are rounded and do not sum to 1."""
    if q is None:
        return None
    q = q.float()
    return q / q.sum(-1, keepdim=True).clamp_min(1e-30)


def draft_confidence(logits: torch.Tensor, q: torch.Tensor, chosen: torch.Tensor,
                with_q: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] q(chosen), [B] max q) of one draft step, on the device (see spec/draft_lengths.py).
    Rows that sample from a full q read that very q. The others (greedy rows, one-hot drafts) drew
    the argmax, a function of the history, so their one-hot q ranks nothing: they read the
    model's own belief, the softmax of the logits at temperature 1, whose max is at the token."""
    logits = logits.float()
    top = torch.exp(logits.max(-1).values - torch.logsumexp(logits, -1))
    if with_q is None:
        return top, top
    qf = normalised_q(q)
    return (torch.where(with_q, qf.gather(1, chosen[:, None])[:, 0], top),
            torch.where(with_q, qf.max(-1).values, top))


def proposal_to_host(tokens: list[torch.Tensor], beliefs: list[tuple[torch.Tensor, torch.Tensor]]):
    """tokens [B, k] int64 and confidence, top_prob [B, k] float32 on the host, in one copy (the
    proposal's one host sync): the floats ride as int32 bit patterns beside the tokens."""
    k = len(tokens)
    conf = torch.stack([c for c, _ in beliefs], 1).float()
    top = torch.stack([t for _, t in beliefs], 1).float()
    packed = torch.cat([torch.stack(tokens, 1).int(), conf.view(torch.int32), top.view(torch.int32)], 1)
    host = packed.to("cpu")
    return (host[:, :k].long(), host[:, k:2 * k].contiguous().view(torch.float32),
            host[:, 2 * k:].contiguous().view(torch.float32))
