"""What the draft is given before each proposal, and what a proposal records (a mixin of Scheduler).

The scheduler's Request is the one record of committed tokens; the draft learns them as updates riding
on its next proposal (`draft_known` marks how far it has them), and a request admitted while
target-only joins the draft, prefilled from its prompt and committed tokens, just before its first
proposal.
"""

from __future__ import annotations

import time
from concurrent.futures import Future

from minedraft.spec.metrics import StepRecord
from minedraft.spec.workers import NoRoom, Proposal


class DraftFeeding:
    def _join_draft(self, ids: list[str]) -> None:
        """Requests admitted while target-only join the draft before their first proposal: prefilled
        from their prompt and committed tokens, as a resumed request is (NoRoom: a preemption follows)."""
        missing = [rid for rid in ids if not self.running[rid].in_draft]
        if not missing:
            return
        n = self.draft.add([self.running[rid].worker_request(resume=True) for rid in missing])
        for rid in missing[:n]:
            req = self.running[rid]
            req.in_draft, req.draft_known = True, len(req.output_ids)
        if n < len(missing):
            raise NoRoom(message=f"no room: the draft could not take {len(missing) - n} request(s)")

    def _take_updates(self, ids: list[str]) -> dict[str, list[int]]:
        """The committed tokens each request's draft has not been given yet. From now on it has them:
        the draft absorbs them even when it answers NoRoom. Requests it does not hold join it first."""
        self._join_draft(ids)
        updates = {}
        for rid in ids:
            req = self.running[rid]
            updates[rid] = req.output_ids[req.draft_known:]
            req.draft_known = len(req.output_ids)
        return updates

    def _timed_propose(self, ids: list[str], record: StepRecord, k: int) -> Proposal:
        updates = self._take_updates(ids)
        t0 = time.perf_counter()
        proposal = self.draft.propose(ids, k, updates)
        record.draft_call_s = time.perf_counter() - t0
        return self._record_proposal(proposal, record)

    def _start_propose(self, ids: list[str], k: int):
        try:
            updates = self._take_updates(ids)
            return self.draft.start_propose(ids, k, updates, self._pool)
        except Exception as exc:  # noqa: BLE001 - raised by .result() in _collect, as from the call itself
            failed = Future()
            failed.set_exception(exc)
            return failed

    def _record_proposal(self, proposal: Proposal, record: StepRecord) -> Proposal:
        self.dry.observe(proposal.request_ids, proposal.lengths)
        record.draft_s = proposal.compute_s
        record.draft_service_s = proposal.service_s or proposal.compute_s
        record.channel_bytes = proposal.channel_bytes
        return proposal
