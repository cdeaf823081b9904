"""Rows whose draft keeps finding nothing stop costing a draft call.

A model-free node (ngram, suffix) answers 0 tokens for a row when nothing matches, and it can only
find that out in its Propose call: the match depends on the tokens committed since. So the schedule
learns it from the answers: a row that got 0 tokens `MISSES` proposals in a row waits out 1 of its
batch's proposal decisions, then 2, 4, ... up to MAX_WAIT (each retry that finds nothing again
doubles the wait); any token proposed for it makes it an ordinary row again. A batch whose rows are
all waiting is not sent to the draft: it decodes target-only that step. Lossless either way: a row
not drafted is verified with no draft tokens. A draft model's rows (lengths None, always k) never wait.
"""

from __future__ import annotations

MISSES = 2  # a single empty answer is common mid-copy (a rejected token breaks the match for a step)
MAX_WAIT = 32  # a dry batch then costs one call per 32 of its steps; a copy that starts is found by then


class DryRows:
    def __init__(self, misses: int = MISSES, max_wait: int = MAX_WAIT):
        self.misses, self.max_wait = misses, max_wait
        self.rows: dict[str, list[int]] = {}  # request -> [empty answers in a row, decisions to wait, next wait]

    def skip(self, ids: list[str]) -> bool:
        """One proposal decision for the batch `ids`: True when every row is waiting (send no call)."""
        states = [self.rows.get(rid) for rid in ids]
        skip = bool(states) and all(s is not None and s[1] > 0 for s in states)
        for s in states:
            if s is not None and s[1] > 0:
                s[1] -= 1
        return skip

    def observe(self, request_ids: list[str], lengths: list[int] | None) -> None:
        """The proposer's own lengths (before the controller's cut) of a proposal that was sent."""
        if lengths is None:
            return
        for rid, n in zip(request_ids, lengths):
            if n:
                self.rows.pop(rid, None)
                continue
            s = self.rows.setdefault(rid, [0, 0, 1])
            if s[1] > 0:  # drafted for the other rows while this one waits: its schedule stands
                continue
            s[0] += 1
            if s[0] >= self.misses:
                s[1], s[2] = s[2], min(2 * s[2], self.max_wait)

    def forget(self, request_ids) -> None:
        for rid in request_ids:
            self.rows.pop(rid, None)

    def waiting(self) -> int:
        return sum(1 for s in self.rows.values() if s[1] > 0)
