"""A long prompt prefilled one chunk per step, beside the running streams (a mixin of Scheduler).

Admission prefills a request's whole prompt on both workers, and every running stream waits for it.
With `prefill_chunk_tokens` = C, a prompt longer than 2C is staged first: each step prefills the next
C tokens of it on both workers (two chunks when the step's admission prefill carried the first and no
row was running before: `_stage_again`) under a stand-in row of its own id, whose full blocks prefix
caching registers. The stand-in rides (TargetWorker.ride, DraftWorker.ride): each worker packs its chunk into
its next forward, the step's verify or decode on the target, the next proposal on the draft, so the
chunk costs no pass over the weights of its own. The next stand-in starts from those blocks, and the
request itself, admitted once at most C tokens are left, finds them all: running streams wait for
one chunk per step, never for a whole prompt. Why this shape (see the README): the stand-in is an
ordinary request to the workers, so preemption, recovery and prefix caching need nothing new.
It relies on prefix caching (without it each stand-in recomputes from the start: correct, slower).
One request is staged at a time; meanwhile admission takes the queue in order up to the next long one.
"""

from __future__ import annotations

import dataclasses

from minedraft.spec.request import Request
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.workers import NewRequest

STAND_IN_PARAMS = SamplingParams(temperature=0.0, max_tokens=1)  # its one sampled token is thrown away


@dataclasses.dataclass
class _Staging:
    request: Request
    prompt: list[int]  # what admission will prefill: the prompt (and, resumed, its committed tokens)
    done: int = 0  # leading prompt tokens the stand-in row holds
    row_id: str | None = None  # the stand-in holding them on both workers


class StagedPrefill:
    prefill_chunk_tokens: int = 0
    _staging: _Staging | None = None

    def is_staged(self, request_id: str) -> bool:
        return self._staging is not None and self._staging.request.request_id == request_id

    def _stage(self, touched) -> None:
        """One chunk of the staged prompt (starting to stage the queue's head if it is long)."""
        chunk = self.prefill_chunk_tokens
        st = self._staging
        if st is not None and self.draft is not None:  # the last chunk, if no proposal carried it
            self.draft.settle_riders()
        if st is not None and st.request.finished:  # aborted while staged
            self._end_staging(requeue=False)
            touched[st.request.request_id] = st.request
            return
        if st is None:
            st = self._start_staging(chunk)
            if st is None:
                return
        if len(st.prompt) - st.done <= chunk:  # the rest is one chunk: admission prefills it, this step
            self._end_staging()  # (not a stand-in chunk and then the rest: that would be two in one step)
            return
        n = min(self._chunk_end(st.done, chunk), len(st.prompt) - 1)
        stand_in = NewRequest(f"{st.request.request_id}#prefill-{n}", st.prompt[:n], STAND_IN_PARAMS, seed=0)
        try:
            admitted = self._add_stand_in(stand_in)
        except Exception:
            self._end_staging(staged=False)  # a worker failed: the request waits at the front, to start over
            raise
        if not admitted:  # no room for it: the request is admitted whole, as without staging
            self._end_staging()
            return
        self._release_stand_in(st)
        st.row_id, st.done = stand_in.request_id, n

    def _stage_again(self, touched, rows_before: int) -> None:
        """Admission's prefill carried this step's chunk (a worker's `add` packs its riders in), so the
        step's own forward would carry none: it takes the next chunk. Issue 21's case: the first step's
        decode of the seven short prompts just admitted went alone (113 ms of a 0.6B target) and the
        long prompt's admission came a step later. Only when every row of the step was admitted in it
        (rows_before: the rows running before admission): a row running before would wait for two
        chunks' passes in one step."""
        st = self._staging
        if (not rows_before and self.running and st is not None and st.row_id is not None
                and not self.target.riding):
            self._stage(touched)

    def _chunk_end(self, done: int, chunk: int) -> int:
        """Where the next stand-in ends: at a block boundary where it can, so that the next one finds every
        token of it cached (a partial last block is computed again, and would make its rider longer than
        the room measured for it)."""
        end = done + self._chunk_room(chunk)
        aligned = end - end % self.target.block_size
        return aligned if aligned > done else end

    def _chunk_room(self, chunk: int) -> int:
        """The chunk, cut to what the target's forward pass has left beside this step's own rows: a
        rider that spills over the pass budget (--max-num-batched-tokens) makes a pass of its own for a
        few tokens, and a pass streams every weight (a 0.6B target on a CPU: ~130 ms for 7 tokens). The
        rows bring one token each (a decode, or psd's merged step) or k + 1 (a verify: the psd proposal in
        hand; sd at the k its controller prefers, decided after this: an exploration step may spill). Not
        cut below a quarter of the chunk, where progress would crawl: that spill is one pass in four chunks."""
        budget = self.target.max_num_batched_tokens
        if not budget or not self.running:
            return chunk
        row_tokens = len(self.running)
        if self.mode == "sd":
            row_tokens *= self.controller.likely_k() + 1
        elif self.mode == "psd" and self.proposal is not None:
            row_tokens = max(row_tokens, len(self.proposal.request_ids) * (self.proposal.k + 1))
        room = budget - row_tokens % budget  # what the rows' last pass leaves
        return min(chunk, room) if room >= chunk // 4 else chunk

    def must_stage(self, req: Request) -> bool:
        """Whether req is long enough to be staged before admission (and was not yet)."""
        chunk = self.prefill_chunk_tokens
        return (bool(chunk) and not req.finished and not getattr(req, "staged", False)
                and len(req.prompt_ids) + len(req.output_ids) > 2 * chunk)

    def _start_staging(self, chunk: int) -> _Staging | None:
        """Take the first long request of the queue (admission stops at a long one meanwhile)."""
        if not chunk or len(self.running) >= self.max_num_seqs:
            return None
        head = next((r for r in self.waiting if self.must_stage(r)), None)
        if head is None:
            return None
        self.waiting.remove(head)
        self._staging = _Staging(head, head.worker_request().prompt_ids)
        return self._staging

    def _add_stand_in(self, stand_in: NewRequest) -> bool:
        """Offer the stand-in to both workers as a rider: admitted and its blocks reserved now, prefilled by
        each worker's next forward (the target's verify or decode of this step, the draft's next proposal:
        one pass over the weights for both); True when both took it."""
        on_target = self.target.ride([stand_in]) == 1
        on_draft = (self.draft.ride([stand_in]) == 1) if self.speculating and on_target else on_target
        if on_target and not on_draft:
            self.target.release([stand_in.request_id])
        return on_target and on_draft

    def _release_stand_in(self, st: _Staging) -> None:
        """Its blocks stay cached (the LRU) for the next stand-in or the request itself."""
        if st.row_id is not None:
            self.target.release_later([st.row_id])
            if self.speculating:
                self.draft.release_later([st.row_id])
            st.row_id = None

    def _end_staging(self, requeue: bool = True, staged: bool = True) -> None:
        st, self._staging = self._staging, None
        self._release_stand_in(st)
        if requeue:  # admitted now, at the front of the queue (and not staged again)
            st.request.staged = staged
            self.waiting.appendleft(st.request)

    def _unstage(self) -> None:
        """A worker failed or restarted: the staged request waits at the front again, to start over."""
        if self._staging is not None:
            self._end_staging(staged=False)
