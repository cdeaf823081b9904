"""The scheduler, simulated: what a round of SD or PSD should cost, step by step on a cost curve.

:func:`minedraft.spec.theory.predict` assumes full, balanced batches for ever. A real round also has
a tail: it lasts until its slowest request is done (acceptance varies), and PSD's last steps run one
batch alone, without overlap. And a forward's cost is neither constant nor proportional in the batch
size (:class:`~minedraft.spec.theory.CostModel`). :func:`simulate` runs the scheduler's own policy
(minedraft/spec/scheduler.py) step by step on that cost curve, with i.i.d. acceptance;
:func:`simulate_tokens_per_step` is the Monte-Carlo check of the closed form's ``E``.

Pure Python (no torch); the bench sets its prediction beside the measurement.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from minedraft.spec.theory import CostModel, _check_alpha_k, _rate

__all__ = ["Simulation", "simulate", "simulate_tokens_per_step"]


def _draw_gain(alpha: float, k: int, draw) -> int:
    accepted = 0
    while accepted < k and draw() < alpha:
        accepted += 1
    return accepted + 1


def simulate_tokens_per_step(
    alpha: float, k: int, steps: int, rng: random.Random | int | None = None
) -> float:
    """Monte-Carlo mean of tokens per verification under the i.i.d. acceptance model.

    Each step walks the ``k`` draft positions, accepting each with prob. ``alpha`` until the first
    rejection, then adds the one bonus/correction token. ``rng`` is anything with ``.random()``
    returning floats in [0, 1) (``random.Random``, ``numpy.random.Generator``), a seed, or None.
    """
    _check_alpha_k(alpha, k)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    if rng is None or isinstance(rng, int):
        rng = random.Random(rng)
    draw = rng.random
    k = int(k)
    total = 0
    for _ in range(steps):
        total += _draw_gain(alpha, k, draw)
    return total / steps


@dataclass(frozen=True)
class Simulation:
    """Means over trials of one simulated round (all requests queued at time 0)."""

    mode: str
    num_requests: int
    max_running: int
    makespan_s: float
    latency_mean_s: float  # from submission to the last token, queueing included
    steps: float  # decode steps in the round
    throughput_tok_s: float  # generated tokens / makespan


def _simulate_once(mode: str, num_requests: int, max_running: int, max_tokens: int, k: int, alpha: float,
                   cost: CostModel, draw) -> tuple[float, list[float], int]:
    """One round of the scheduler's policy: admission up to max_running (the first token comes from
    prefill, which stalls both workers: cost.prefill), SD steps, or PSD's two batches: verify one while drafting
    the other, new requests join the batch about to be drafted, a lone batch is split, a lone request
    runs as SD, and a batch with nothing left to overlap with is verified (or drafted) alone."""
    left = [max_tokens] * num_requests
    finish = [0.0] * num_requests
    queue = list(range(num_requests - 1, -1, -1))
    batches: list[list[int]] = [[], []]
    proposed = None
    now, steps = 0.0, 0

    def admit():
        nonlocal now
        running = len(batches[0]) + len(batches[1])
        admitted = []
        while queue and running + len(admitted) < max_running:
            admitted.append(queue.pop())
        if admitted:
            now += cost.prefill(len(admitted))
        for r in admitted:
            left[r] -= 1  # prefill's token
            if left[r] <= 0:
                finish[r] = now
                continue
            if mode == "sd":
                batches[0].append(r)
            elif proposed is None:
                min(batches, key=len).append(r)
            else:  # the batch about to be drafted
                batches[1 - proposed].append(r)

    def verify(b):
        for r in batches[b]:
            left[r] -= _draw_gain(alpha, k, draw)
            if left[r] <= 0:
                finish[r] = now
        batches[b] = [r for r in batches[b] if left[r] > 0]

    while queue or batches[0] or batches[1]:
        admit()
        steps += 1
        if mode == "sd":
            now += k * cost.draft(len(batches[0])) + cost.verify(len(batches[0])) + cost.overhead
            verify(0)
            continue
        to_draft = [i for i in (0, 1) if i != proposed and batches[i]]
        if proposed is not None and to_draft:
            d = to_draft[0]
            now += max(cost.verify(len(batches[proposed])), k * cost.draft(len(batches[d]))) + cost.overhead
            verify(proposed)
            proposed = d
        elif proposed is not None:
            now += cost.verify(len(batches[proposed])) + cost.overhead
            verify(proposed)
            proposed = None
        elif to_draft:
            if len(to_draft) == 1:
                only = batches[to_draft[0]]
                if len(only) == 1:
                    now += k * cost.draft(1) + cost.verify(1) + cost.overhead
                    verify(to_draft[0])
                    continue
                batches = [only[:len(only) // 2], only[len(only) // 2:]]
                to_draft = [0, 1]
            d = max(to_draft, key=lambda i: len(batches[i]))
            now += k * cost.draft(len(batches[d])) + cost.overhead  # pipeline fill: nothing to verify yet
            steps -= 1  # not a verification step (the bench counts steps that verified)
            proposed = d
    return now, finish, steps


def simulate(mode: str, num_requests: int, max_running: int, max_tokens: int, k: int, alpha: float,
             cost: CostModel, trials: int = 200, seed: int = 0) -> Simulation:
    """Simulate ``trials`` rounds of ``num_requests`` requests, all queued at time 0, of ``max_tokens``
    tokens each, with at most ``max_running`` running at once (SD: one batch; PSD: two batches that
    share it), acceptance i.i.d. with ``alpha``; step costs from ``cost``. Deterministic for a seed."""
    if mode not in ("sd", "psd"):
        raise ValueError(f"mode must be 'sd' or 'psd', got {mode!r}")
    _check_alpha_k(alpha, k)
    for name, value in (("num_requests", num_requests), ("max_running", max_running), ("max_tokens", max_tokens),
                        ("trials", trials)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    draw = random.Random(seed).random
    makespan = latency = steps = 0.0
    for _ in range(trials):
        t, finish, n = _simulate_once(mode, num_requests, max_running, max_tokens, int(k), alpha, cost, draw)
        makespan += t
        latency += sum(finish) / num_requests
        steps += n
    makespan, latency, steps = makespan / trials, latency / trials, steps / trials
    return Simulation(mode, num_requests, max_running, makespan, latency, steps,
                      _rate(num_requests * max_tokens, makespan))
