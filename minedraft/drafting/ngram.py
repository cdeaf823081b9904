"""N-gram prompt lookup (vLLM's `ngram` method, `vllm/v1/spec_decode/ngram_proposer.py`): find the
longest suffix of the request's tokens (prompt + output), n in [min_n, max_n], that occurred earlier
in those tokens, and propose the tokens that followed that earlier occurrence.

Among equally long matches the most recent one wins: nearby text is the likelier source of a copy
(a function being rewritten, the paragraph being repeated). The draft is a function of the committed
tokens only, so its q is one-hot and verification stays exact.

Defaults, and why:
- min_n = 2: a single shared token (a space, "the", a bracket) matches almost everywhere and predicts
  little; two tokens already pin a copy down in the copy-heavy text this method is for.
- max_n = 5: a longer match rarely changes which occurrence wins once five tokens agree, and each
  extra n is one more comparison per step; vLLM's examples use 4-5 as well.
Cost: one vectorised comparison over the history (numpy) plus at most max_n filters on the matches.
"""

from __future__ import annotations

import numpy as np

DEFAULT_MIN_N = 2
DEFAULT_MAX_N = 5


def check_ngram_range(min_n: int, max_n: int) -> None:
    for name, value in (("ngram_min", min_n), ("ngram_max", max_n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    if min_n > max_n:
        raise ValueError(f"ngram_min: {min_n} is above ngram_max {max_n}")


class TokenHistory:
    """A request's tokens in a growing int64 buffer (amortised O(1) appends, numpy views for lookups)."""

    __slots__ = ("buf", "n")

    def __init__(self, tokens: list[int]):
        self.buf = np.empty(max(64, 2 * len(tokens)), dtype=np.int64)
        self.buf[:len(tokens)] = tokens
        self.n = len(tokens)

    def extend(self, tokens: list[int]) -> None:
        need = self.n + len(tokens)
        if need > len(self.buf):
            grown = np.empty(max(need, 2 * len(self.buf)), dtype=np.int64)
            grown[:self.n] = self.buf[:self.n]
            self.buf = grown
        self.buf[self.n:need] = tokens
        self.n = need

    def view(self) -> np.ndarray:
        return self.buf[:self.n]

    def __len__(self) -> int:
        return self.n


def ngram_propose(tokens: np.ndarray, k: int, min_n: int = DEFAULT_MIN_N, max_n: int = DEFAULT_MAX_N) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the longest matching suffix
    (n in [min_n, max_n]); [] when no suffix of length min_n occurred before."""
    total = len(tokens)
    if k <= 0 or total < min_n + 1:
        return []
    # ends: positions e < total - 1 where tokens[e - j] == tokens[total - 1 - j] for j < n
    ends = np.flatnonzero(tokens[:-1] == tokens[-1])
    best = None
    for j in range(1, max_n + 1):
        if j >= min_n and ends.size:
            best = ends  # a match of length j
        if j == max_n or not ends.size or j >= total - 1:
            break
        ends = ends[ends >= j]
        ends = ends[tokens[ends - j] == tokens[total - 1 - j]]
    if best is None or not best.size:
        return []
    start = int(best[-1]) + 1  # the most recent occurrence
    return tokens[start:start + k].tolist()


class NgramProposer:
    """The per-request state is the token history alone; nothing is learnt across requests."""

    method = "ngram"

    def __init__(self, min_n: int = DEFAULT_MIN_N, max_n: int = DEFAULT_MAX_N):
        check_ngram_range(min_n, max_n)
        self.min_n, self.max_n = min_n, max_n
        self.histories: dict[str, TokenHistory] = {}

    def add(self, request_id: str, tokens: list[int]) -> None:
        self.histories[request_id] = TokenHistory(tokens)

    def extend(self, request_id: str, tokens: list[int]) -> None:
        if tokens:
            self.histories[request_id].extend(tokens)

    def propose(self, request_id: str, k: int) -> tuple[list[int], list[float]]:
        """(tokens, confidence of each): a copy carries no probability of its own, so 1.0."""
        draft = ngram_propose(self.histories[request_id].view(), k, self.min_n, self.max_n)
        return draft, [1.0] * len(draft)

    def release(self, request_id: str) -> None:
        self.histories.pop(request_id, None)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.histories

    def __len__(self) -> int:
        return len(self.histories)

    def memory_bytes(self) -> int:
        return sum(h.buf.nbytes for h in self.histories.values())
