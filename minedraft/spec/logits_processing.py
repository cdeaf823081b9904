"""Logits -> probabilities under each row's temperature / top-k / top-p, applied identically to the
target's p and the draft's q (exactness needs both to be the same transformation)."""

from __future__ import annotations

import torch

from minedraft.runner.transfer import host_tensor
from minedraft.spec.sampling import SamplingParams


def probs_from_logits(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """logits [B, ..., V] -> probs [B, ..., V] (fp32). Greedy rows get a one-hot on the argmax."""
    if all(p.greedy for p in params):  # the common case on the hot path: skip softmax and filters
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits.float()
    b, v = logits.shape[0], logits.shape[-1]
    view = (b,) + (1,) * (logits.dim() - 1)
    device = logits.device
    greedy = host_tensor([p.greedy for p in params], torch.bool, device).view(view)
    temp = host_tensor([p.temperature if not p.greedy else 1.0 for p in params], torch.float32, device).view(view)
    logits = logits / temp
    top_k = [p.top_k for p in params]
    top_p = [p.top_p for p in params]
    if any(0 < k < v for k in top_k) or any(p < 1.0 for p in top_p):
        logits = _filter_top_k_top_p(logits, top_k, top_p, view)
    probs = torch.softmax(logits, dim=-1)
    if any(p.greedy for p in params):  # decided on the host: greedy.any() would sync the device
        one_hot = torch.zeros_like(probs).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        probs = torch.where(greedy, one_hot, probs)
    return probs


def _filter_top_k_top_p(logits, top_k, top_p, view):
    v = logits.shape[-1]
    device = logits.device
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(v, device=device)
    k = host_tensor([kk if 0 < kk < v else v for kk in top_k], torch.long, device).view(view)
    remove = ranks >= k  # beyond the top-k
    sorted_probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    p = host_tensor(top_p, sorted_probs.dtype, device).view(view)
    remove = remove | (mass_before >= p)  # keep the smallest prefix whose mass reaches top_p
    remove[..., 0] = False
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(probs: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> list[int]:
    """One token per row from probs [B, V] as host ints (one read-back for the batch)."""
    return sample_tensor(probs, params, generators).tolist()


def sample_tensor(probs: torch.Tensor, params: list[SamplingParams],
                  generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row [B] (long, on probs' device, nothing read back): argmax for greedy rows,
    else one draw from the row's own generator, so a row's draw never depends on its batch."""
    out = probs.argmax(-1)
    for row, (p, g) in enumerate(zip(params, generators)):
        if not p.greedy:
            out[row:row + 1] = draw(probs[row], g)
    return out


def draw(weights: torch.Tensor, generator: torch.Generator, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One index [1] in proportion to weights [V] (>= 0, not all 0): torch.multinomial(weights, 1)'s
    own algorithm, argmax(w / Exp(1) noise), with the same draws from the same generator, but without
    its input checks, which read two values back to the host (a sync per call on a GPU).
    noise: that Exp(1) noise [V], drawn already (spec/coupled_sampling.py); None: from the generator."""
    if noise is None:
        noise = torch.empty_like(weights).exponential_(1, generator=generator)
    return (weights / noise).argmax(-1, keepdim=True)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def step_seed(seed: int, stream: int, position: int) -> int:
    """A seed for one step of one request: a function of (request seed, which stream, how many
    tokens are committed), mixed by splitmix64, so that a row's draws never depend on its batch.
    A request with a seed of its own seeds each position this way (spec/coupled_sampling.py), which
    makes its output target-only decoding's whatever k, preemption or restart."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + position * 0x94D049BB133111EB) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 1  # torch seeds are < 2**63
