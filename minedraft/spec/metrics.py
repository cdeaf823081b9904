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
    channel_bytes: int = 0  # what the draft wrote into the token channel (tokens + q of sampled rows)
    feature_bytes: int = 0  # what the target wrote into feature channels (an EAGLE node attached)
    k: int | None = None  # sd/psd: the k this step drafted (0: a target-only step); None: no choice (ar)
    draft_rows: int = 0  # rows drafted this step
    verify_tokens: int = 0  # tokens the verify scored: per row its verified drafts + 1 (a decode: 1)
    ride: bool = False  # a staged prompt's chunk rode on this step's forwards (its times are mostly the chunk's)
    catch_up: bool = False  # the draft caught up on target-only steps first (no steady-state cost)


BREAKDOWN_FIELDS = ("num_steps", "wall_s", "draft_compute_s", "verify_compute_s", "draft_call_s", "verify_call_s",
                    "draft_idle_s", "target_idle_s", "control_plane_s", "draft_service_s", "verify_service_s",
                    "channel_bytes", "feature_bytes")


def sum_steps(steps: list[StepRecord]) -> dict:
    """Step-time breakdown summed over steps (the fields of the StepBreakdown proto): compute and
    call times of each side, idle = wall - call, control plane = call - compute on both sides."""
    b = dict.fromkeys(BREAKDOWN_FIELDS, 0.0)
    b["num_steps"] = len(steps)
    for s in steps:
        b["wall_s"] += s.wall_s
        b["draft_compute_s"] += s.draft_s
        b["verify_compute_s"] += s.verify_s
        b["draft_call_s"] += s.draft_call_s
        b["verify_call_s"] += s.verify_call_s
        b["draft_idle_s"] += max(0.0, s.wall_s - s.draft_call_s)
        b["target_idle_s"] += max(0.0, s.wall_s - s.verify_call_s)
        b["control_plane_s"] += max(0.0, s.draft_call_s - s.draft_s) + max(0.0, s.verify_call_s - s.verify_s)
        b["draft_service_s"] += s.draft_service_s
        b["verify_service_s"] += s.verify_service_s
        b["channel_bytes"] += s.channel_bytes
        b["feature_bytes"] += s.feature_bytes
    return b


@dataclasses.dataclass
class SpecDecodeMetrics:
    k: int
    spec_decode_num_drafts: int = 0
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0
    spec_decode_num_accepted_tokens_per_pos: list = None
    num_preemptions: int = 0  # requests that left the KV cache to make room (vLLM: num_preemptions)
    steps: list = dataclasses.field(default_factory=list)  # the most recent StepRecords (see add_step)
    folded: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(BREAKDOWN_FIELDS, 0.0))
    num_folded: int = 0  # older steps, kept only as sums in `folded`
    k_steps: dict = dataclasses.field(default_factory=dict)  # mode -> steps at k = 0, 1, ... (never folded)
    # draft method (Proposal.methods: model, ngram, suffix, eagle) -> [drafts, draft tokens, accepted tokens]
    by_method: dict = dataclasses.field(default_factory=dict)

    MAX_KEPT_STEPS = 20_000  # a long-running gateway must not keep every step it ever ran

    def add_step(self, record: StepRecord) -> None:
        self.steps.append(record)
        if record.k is not None:
            counts = self.k_steps.setdefault(record.mode, [])
            counts.extend([0] * (record.k + 1 - len(counts)))
            counts[record.k] += 1
        if len(self.steps) > self.MAX_KEPT_STEPS:
            old, self.steps = self.steps[:len(self.steps) // 2], self.steps[len(self.steps) // 2:]
            for name, value in sum_steps(old).items():
                self.folded[name] += value
            self.num_folded += len(old)

    @property
    def total_steps(self) -> int:
        return self.num_folded + len(self.steps)

    def breakdown(self) -> dict:
        """sum_steps over every step since the metrics were made, folded ones included."""
        recent = sum_steps(self.steps)
        total = {name: recent[name] + self.folded[name] for name in BREAKDOWN_FIELDS}
        total["num_steps"] = int(total["num_steps"])
        return total

    def __post_init__(self):
        if self.spec_decode_num_accepted_tokens_per_pos is None:
            self.spec_decode_num_accepted_tokens_per_pos = [0] * self.k

    def k_share(self, mode: str, k: int = 0) -> float:
        """The share of this mode's steps that drafted k tokens (k = 0: target-only steps)."""
        counts = self.k_steps.get(mode, [])
        return (counts[k] if k < len(counts) else 0) / max(1, sum(counts))

    def observe(self, num_accepted: list[int], k: int, lengths: list[int] | None = None,
                methods: list[str] | None = None) -> None:
        """One verification; lengths: the drafts each row verified (None: k each; a row that
        verified none decoded target-only and is no draft); methods: each row's draft method
        (None: "model")."""
        for i, n in enumerate(num_accepted):
            if lengths is not None and lengths[i] == 0:
                continue
            drafted = k if lengths is None else lengths[i]
            self.spec_decode_num_drafts += 1
            self.spec_decode_num_draft_tokens += drafted
            self.spec_decode_num_accepted_tokens += n
            per = self.by_method.setdefault(methods[i] if methods else "model", [0, 0, 0])
            per[0] += 1
            per[1] += drafted
            per[2] += n
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
