"""Per-request sampling parameters and their validation (no torch here: the client uses it too)."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class SamplingParams:
    """How one request is decoded. temperature == 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k
    max_tokens: int = 64
    seed: int | None = None
    stop_token_ids: tuple = ()
    ignore_eos: bool = False

    def __post_init__(self):
        try:
            self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"stop_token_ids: must be a list of token ids, got {self.stop_token_ids!r}") from None
        self.validate()

    def validate(self) -> None:
        if not _is_int(self.max_tokens) or not 1 <= self.max_tokens <= INT32_MAX:
            raise ValueError(f"max_tokens: must be an integer in [1, {INT32_MAX}], got {self.max_tokens!r}")
        if not _is_number(self.temperature) or not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature: must be a finite number in [0, {MAX_TEMPERATURE:g}], "
                             f"got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or not 0 <= self.top_k <= INT32_MAX:
            raise ValueError(f"top_k: must be an integer in [0, {INT32_MAX}], got {self.top_k!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 1 << 64):
            raise ValueError(f"seed: must be an integer in [0, 2**64) or None, got {self.seed!r}")
        if any(not 0 <= t <= INT32_MAX for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids: must be token ids >= 0, got {list(self.stop_token_ids)!r}")

    @property
    def greedy(self) -> bool:
        # As vLLM: a temperature this small is greedy (dividing logits by it would overflow).
        return self.temperature < GREEDY_BELOW


INT32_MAX = 2**31 - 1
MAX_TEMPERATURE = 1e4
GREEDY_BELOW = 1e-5


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
