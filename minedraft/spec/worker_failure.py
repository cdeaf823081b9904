"""What the scheduler does when a worker fails or restarts: every request ends with an error, or goes
back to the queue to be re-prefilled from its committed tokens (a mixin of Scheduler: the gateway's
engine loop and recovery call these; the schedule's state lives in Scheduler)."""

from __future__ import annotations


class WorkerFailureHandling:
    def reset_after_failure(self) -> list:
        """A worker call failed mid-step: finish every request with reason "error" and start clean.
        Releasing rows is best effort (the failed worker may be gone)."""
        self._unstage()
        failed = list(self.waiting) + list(self.running.values())
        for req in failed:
            req.finish("error")
        ids = list(self.running)
        for worker in (self.target, self.draft if self.speculating else None):
            if worker is not None:
                try:
                    if ids:
                        worker.release(ids)
                    worker.flush_releases()
                except Exception:  # noqa: BLE001 - the worker may be the one that failed
                    pass
        self.waiting.clear()
        self._clear_schedule()
        return failed

    def fail_alone(self, fault) -> list[str]:
        """A RequestFault: its requests finish with that error (flagged `fault`: they, not a worker,
        were at fault) and every other running request goes back to the queue to resume from its
        committed tokens, since the step that raised left the workers mid-way. Returns the ids the
        workers may hold, for the caller to release."""
        culprits = set(fault.request_ids)
        for req in list(self.waiting) + list(self.running.values()):
            if req.request_id in culprits and not req.finished:
                req.finish("error", str(fault))
                req.fault = True
        held = list(self.running) + [r.request_id for r in self.waiting]
        self.requeue_all_for_resume()
        return held

    def requeue_all_for_resume(self) -> int:
        """A worker restarted (its KV cache is gone): every running request goes back to the front of
        the queue, to be re-prefilled from its prompt and committed tokens on the new worker. The
        output stays exactly what an uninterrupted run gives (see _preempt_one). Returns how many."""
        self._unstage()
        live = [r for r in self.running.values() if not r.finished]
        done = [r for r in self.running.values() if r.finished]
        self.waiting.extendleft(reversed(live))
        self.waiting.extend(done)  # finished ones leave through the waiting queue's abort path
        self._clear_schedule()
        return len(live)

    def _clear_schedule(self) -> None:
        """Nothing runs, nothing is in flight: the batches and the pipeline start empty."""
        self.running.clear()
        self.batches = [[], []]
        self.proposal, self.proposed_batch = None, None
        self.in_flight, self._collected = None, None
