"""Speculative-decoding counters (named as vLLM names them) and a per-step time breakdown."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class StepRecord:
    mode: str
    wall_s: float
    draft_s: float = 0.0  # draft compute, as reported by the draft worker
    verify_s: float = 0.0  # target compute (verify or decode)
    draft_call_s: float = 0.0  # wall time of the draft call as seen by the scheduler
    verify_call_s: float = 0.0
    draft_service_s: float = 0.0  # remote workers: time inside the services' handlers
    verify_service_s: float = 0.0
    num_verified: int = 0  # requests verified (or decoded) this step
    num_tokens: int = 0  # tokens committed this step


@dataclasses.dataclass
class SpecDecodeMetrics:
    k: int
    spec_decode_num_drafts: int = 0
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0
    spec_decode_num_accepted_tokens_per_pos: list = None
    steps: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.spec_decode_num_accepted_tokens_per_pos is None:
            self.spec_decode_num_accepted_tokens_per_pos = [0] * self.k

    def observe(self, num_accepted: list[int], k: int) -> None:
        for n in num_accepted:
            self.spec_decode_num_drafts += 1
            self.spec_decode_num_draft_tokens += k
            self.spec_decode_num_accepted_tokens += n
            for pos in range(min(n, len(self.spec_decode_num_accepted_tokens_per_pos))):
                self.spec_decode_num_accepted_tokens_per_pos[pos] += 1

    @property
    def acceptance_rate(self) -> float:
        return self.spec_decode_num_accepted_tokens / max(1, self.spec_decode_num_draft_tokens)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens committed per verification: accepted drafts plus the target's own token."""
        return 1.0 + self.spec_decode_num_accepted_tokens / max(1, self.spec_decode_num_drafts)

    @property
    def acceptance_per_pos(self) -> list[float]:
        return [a / max(1, self.spec_decode_num_drafts) for a in self.spec_decode_num_accepted_tokens_per_pos]
