"""Seeded sampled requests: drafter-invariant speculative sampling (a Gumbel-max coupling).

A request with a seed draws the token at position n (n tokens before it: prompt and output) as

    y_n = argmax_v p_n(v) / E_n(v),   E_n ~ Exp(1)^V from a generator seeded with (seed, n),

the exponential race, which is torch.multinomial's own algorithm (logits_processing.draw), so
y_n ~ p_n. Target-only decoding draws exactly this: its generator is seeded per committed length on
the same stream (row_book.TARGET_STREAM == COUPLED_STREAM) before its one draw.

The draft drafts x_n = argmax_v q_n(v) / E_n(v) with the same noise (same seed, same position), and
verification accepts x_n iff x_n == y_n; at the first mismatch it emits y_n, after L matches the
bonus y_{n+L}. Every emitted token is y_n whatever was drafted: whatever k, per-row length, batch,
mode, preemption or worker restart, a seeded request's output equals target-only decoding's with
that seed, token for token (tests/test_coupled_sampling.py). With rejection sampling (verification.py)
the draws a step makes depend on k, so the output did not.

Shared noise makes x_n == y_n likely when q is close to p: P >= (1 - TV) / (1 + TV) (Daliri et al.
2024, "Coupling without communication and drafter-invariant speculative decoding"), a little below
rejection sampling's 1 - TV. On the bundled pair at temperature 0.9 / top-p 0.95, per drafted token:
0.81 vs 0.85 (README, Python API). No q crosses the token channel for these rows: the
test reads only the drafted token. A draft whose noise differs (another kind of device, a smaller
vocabulary) stays exact; it only matches less often.

Requests without a seed keep rejection sampling, for its higher acceptance.
"""

from __future__ import annotations

import torch

from minedraft.spec.logits_processing import draw, step_seed
from minedraft.spec.sampling import SamplingParams

COUPLED_STREAM = 0  # the target's own stream: its target-only draws are the coupled ones
_ARGMAX = SamplingParams(temperature=0.0)


def is_coupled(params: SamplingParams) -> bool:
    """Whether a request is drawn by the coupling (sampled, with a seed of its own)."""
    return not params.greedy and params.seed is not None


def reads_q(params: SamplingParams) -> bool:
    """Whether verifying this request reads the draft's q: rejection-sampled rows only. A proposal's
    probs hold the q of these rows, in batch order."""
    return not params.greedy and params.seed is None


def position_noise(generator: torch.Generator, seed: int, position: int, vocab: int,
                   device: torch.device | str) -> torch.Tensor:
    """E_n [vocab] fp32: the noise of one position, as logits_processing.draw makes it for fp32 weights."""
    generator.manual_seed(step_seed(seed, COUPLED_STREAM, position))
    return torch.empty(vocab, dtype=torch.float32, device=device).exponential_(1, generator=generator)


def coupled_draw(weights: torch.Tensor, generator: torch.Generator, seed: int, position: int,
                 ids: torch.Tensor | None = None, vocab: int | None = None) -> torch.Tensor:
    """[1]: the index into weights [V] drawn at `position` with that position's noise. ids: the target
    token id of each entry (a draft's reduced vocabulary; None: 0..V-1); vocab: the target's
    vocabulary size, so that the noise is the target's (None: V)."""
    noise = position_noise(generator, seed, position, vocab or weights.shape[-1], weights.device)
    return draw(weights.float(), generator, noise[ids] if ids is not None else noise[:weights.shape[-1]])


def drawn_elsewhere(params: list[SamplingParams]) -> list[SamplingParams]:
    """A draft step's params for sample_tensor: seeded rows as greedy (a cheap argmax), since
    redraw_coupled draws them; their own draw there would be thrown away."""
    return [_ARGMAX if is_coupled(p) else p for p in params]


def redraw_coupled(chosen: torch.Tensor, q: torch.Tensor, rows, offset: int,
                   ids: torch.Tensor | None = None, vocab: int | None = None) -> None:
    """Draft side, one drafting step: chosen[i] of each seeded row, rows = [(i, generator, seed,
    committed length)], becomes its draw from q[i] at position committed + offset."""
    for i, generator, seed, committed in rows:
        chosen[i:i + 1] = coupled_draw(q[i], generator, seed, committed + offset, ids, vocab)


def verify_coupled_row(p: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator, seed: int,
                       position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted count [1], emitted token [1]) of one seeded row. p [t+1, V] scores the row's first t
    drafts (drafts [k], k >= t), the first at `position`."""
    if p.device.type == "cpu":
        return verify_until_mismatch(p, drafts, generator, seed, position)
    return verify_on_device(p, drafts, generator, seed, position)


def verify_until_mismatch(p, drafts, generator, seed, position):
    """On the host nothing is in flight to keep: draw up to the first mismatch only (a draw is V
    exponentials, 1-3 ms at Qwen's 151,936 on this CPU)."""
    t = p.shape[0] - 1
    for i in range(t):
        y = coupled_draw(p[i], generator, seed, position + i)
        if y.item() != int(drafts[i]):
            return torch.tensor([i]), y
    return torch.tensor([t]), coupled_draw(p[t], generator, seed, position + t)


def verify_on_device(p, drafts, generator, seed, position):
    """All t + 1 draws and no host sync: which one is emitted is chosen on the device."""
    t = p.shape[0] - 1
    y = torch.cat([coupled_draw(p[i], generator, seed, position + i) for i in range(t + 1)])  # [t+1]
    n = (drafts[:t].to(y.device) == y[:t]).long().cumprod(0).sum().view(1)
    return n, y.index_select(0, n)
