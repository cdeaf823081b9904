"""One scheduler for the three modes, written against DraftWorker / TargetWorker.

ar : target only, one token per step.
sd : one batch; draft k tokens, then the target verifies k+1 positions.
psd: two batches A and B. While the target verifies A (whose tokens were drafted last step), the
     draft proposes for B; then they swap. New requests join the batch about to be drafted. When
     only one batch has requests it is split in two; a single request runs as plain SD.

In sd and psd a step ends by sending its calls (`_InFlight`) and the next step begins by collecting
them: the caller hands the committed tokens to its clients while the workers compute, so that work
stays off the path from one worker call to the next.

k = "auto": spec/controller.py picks k per step and batch (0: that batch decodes target-only) and
the per-row lengths; the scheduler asks it (`k_for`, `psd_k_for`, `merge`, `budget_for`) and feeds it
each step's record and verdict. A fixed k runs every row at that k, with no controller.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from minedraft.config import AUTO_K, DEFAULT_MAX_K, MAX_SPECULATIVE_TOKENS, MODES, check_mode_and_k  # noqa: F401
from minedraft.spec.controller import decode_verdict, make_controller
from minedraft.spec.draft_feeding import DraftFeeding
from minedraft.spec.dry_rows import DryRows
from minedraft.spec.metrics import SpecDecodeMetrics, StepRecord
from minedraft.spec.placement import DraftShare
from minedraft.spec.request import Request
from minedraft.spec.staged_prefill import StagedPrefill
from minedraft.spec.worker_failure import WorkerFailureHandling
from minedraft.spec.workers import DraftWorker, NewRequest, NoDraftAvailable, NoRoom, Proposal, TargetWorker, completed


@dataclasses.dataclass
class _InFlight:
    """The worker calls one step sent and the next step collects."""
    record: StepRecord
    t0: float = 0.0  # when the step began sending its calls
    proposal: Proposal | None = None  # what `verify` checks
    verify: Any = None  # future of its Verdict
    verify_t0: float = 0.0
    propose: Any = None  # future of the next Proposal
    propose_t0: float = 0.0
    drafted_ids: list = dataclasses.field(default_factory=list)
    drafted_batch: int | None = None  # psd: the batch `propose` drafts

    @property
    def request_ids(self) -> set[str]:
        return set(self.proposal.request_ids if self.proposal is not None else ()) | set(self.drafted_ids)


class Scheduler(WorkerFailureHandling, StagedPrefill, DraftFeeding):
    def __init__(self, target: TargetWorker, draft: DraftWorker | None, mode: str = "psd", k: int | str = 4,
                 max_num_seqs: int = 64, max_k: int | None = None, prefill_chunk_tokens: int = 0):
        check_mode_and_k(mode, k, draft is not None)
        # > 0: a prompt longer than twice this is prefilled a chunk per step first (staged_prefill.py)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        # on_tokens(requests): a streaming front end's hook (the gateway's EngineLoop) for tokens that are
        # final before the step blocks on a worker (see _emit_early); step() still returns every touched request
        self.on_tokens = None
        # before_admission(): a front end's hook that adds the requests which arrived while the step
        # waited for its collect, so this step's admission takes them, not the next step's (a step later)
        self.before_admission = None
        self.target, self.draft, self.mode, self.k = target, draft, mode, k
        self.auto_max_k = max_k or DEFAULT_MAX_K  # auto: k in 0..this (and the draft's capacity)
        self.controller = make_controller(k, self.auto_max_k, mode, draft)
        self.max_num_seqs = max_num_seqs
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: dict[str, Request] = {}
        self.batches: list[list[str]] = [[], []]  # sd and ar use batches[0] only
        self.proposal: Proposal | None = None  # psd: drafted last step, verified this step
        self.proposed_batch: int | None = None
        self.in_flight: _InFlight | None = None  # sent by the previous step, collected by the next
        self._collected: _InFlight | None = None  # collected; its record closes when the next calls go out
        self._no_draft = False  # psd: the last proposal found no draft node
        self.dry = DryRows()  # rows a model-free draft keeps finding nothing for: no call for them
        self._period: tuple | None = None  # the last step's (start, record, arm): its goodput, next step
        self._arm: tuple | None = None  # what the step being dispatched runs: (record, family, rows, k)
        self._sd_k: int | None = None  # sd: the k of the last step (0: target-only; see _dispatch_sd)
        self._psd_skipped = [False, False]  # psd: whether each batch's draft skipped merged steps since it drafted
        self.metrics = self.new_metrics()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="minedraft-worker")
        self.threads = None  # in process: the caller thread's intra-op threads per kind of step (placement.py)
        self.draft_share = DraftShare()  # in process, psd: whether to draft before the verify (placement.py)
        if draft is not None:  # the requests' committed tokens are kept here, once
            draft.attach(self.committed)
            draft.set_mode(mode)

    # -- requests ---------------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def abort(self, request_id: str) -> None:
        """Finish a request now; its cache rows are released at the end of the current step."""
        for req in self.waiting:
            if req.request_id == request_id:
                req.finish("abort")
        if request_id in self.running:
            self.running[request_id].finish("abort")
        if self.is_staged(request_id):
            self._staging.request.finish("abort")  # its stand-in goes at the next step

    def committed(self, request_id: str) -> NewRequest:
        """A running request as a resume NewRequest: its prompt and every committed token."""
        return self.running[request_id].worker_request(resume=True)

    @property
    def speculating(self) -> bool:
        """Whether requests go through the draft (false in ar mode, even with a draft attached)."""
        return self.mode != "ar" and self.draft is not None

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self._staging)

    def new_metrics(self) -> SpecDecodeMetrics:
        return SpecDecodeMetrics(self.k if self.k != AUTO_K else self.auto_max_k)

    def _set_lengths(self, proposal: Proposal) -> Proposal:
        """The controller's per-row lengths, within the proposer's own (a model-free draft proposes
        0..k per row). Both depend on draft-side information only, and so does their minimum."""
        chosen = self.controller.budget_for(proposal, self.running)
        if chosen is not None and proposal.lengths is not None:
            chosen = [min(a, b) for a, b in zip(chosen, proposal.lengths)]
        proposal.lengths = chosen or proposal.lengths
        return proposal

    # -- one step -----------------------------------------------------------------------------------
    def step(self) -> list[Request]:
        """Run one step; return the requests that got new tokens or finished in it."""
        touched: dict[str, Request] = {}
        self._drop_aborted_waiting(touched)
        self._collect(touched)
        if self.before_admission is not None:
            self.before_admission()
        admit_start = time.perf_counter()
        rows_before = len(self.running)
        self._stage(touched)
        self._admit(touched)
        self._stage_again(touched, rows_before)
        admit_s = time.perf_counter() - admit_start
        self._close_collected_record(admit_s)
        self._close_period(admit_s)
        dispatch_t0, self._arm = time.perf_counter(), None
        if self.mode == "ar":
            self._step_ar(touched)
        elif self.mode == "sd":
            self._dispatch_sd(self.batches[0], touched)
        else:
            self._dispatch_psd(touched)
        if self.target.riding:  # a staged chunk no forward carried this step: prefilled now, waited for
            self._emit_early(touched)
        self.target.settle_riders()
        if self._arm is not None and not self._arm[0].ride:  # a chunk's step measures the chunk, not its k
            self._period = (dispatch_t0, *self._arm)
        for req in list(self.running.values()):
            if req.finished:
                touched[req.request_id] = req
        self._retire()
        if not self.has_unfinished():
            self._close_before_idle()
        return list(touched.values())

    def _close_before_idle(self) -> None:
        """Nothing is left to run: the next step waits for new work (a client's next request, the next
        arrival), which is no cost of the k the last steps ran. Their periods and records end now.
        Closed at the next dispatch, a one-row server's last step of each request took the idle gap
        into its arm (clipped at 3x the arm's mean), and the regime that ran when requests ended looked
        the dearer one: auto flipped between k = 0 and speculating at one row."""
        self._close_collected_record(0.0)
        self._close_period(0.0)
        self.controller.on_idle()

    def _close_collected_record(self, admit_s: float) -> None:
        """A step's wall time runs from its calls going out to the next step's (prefill excluded)."""
        job, self._collected = self._collected, None
        self.controller.on_step_start(admit_s)
        if job is None:
            return
        job.record.wall_s = time.perf_counter() - job.t0 - admit_s
        self.controller.on_record(job.record)
        if job.record.num_verified:
            self.metrics.add_step(job.record)

    def _close_period(self, admit_s: float) -> None:
        """The last step's period ends as this one dispatches: from dispatch to dispatch, admission
        excluded, everything else in (the calls, the channel, handing tokens to clients). Its tokens
        are known now (this step collected them): the measured goodput of the k it ran."""
        period, self._period = self._period, None
        if period is not None:
            t0, record, family, rows, k = period
            self.controller.on_period(family, rows, k, record.num_tokens, time.perf_counter() - t0 - admit_s)

    def _drop_aborted_waiting(self, touched):
        for req in [r for r in self.waiting if r.finished]:
            self.waiting.remove(req)
            touched[req.request_id] = req

    def _emit_early(self, touched) -> None:
        """Hand on_tokens what is final already, the verify collected at the step's start and admission's
        first tokens, before the step blocks: an sd step (and psd's single batch) waits for a whole
        proposal, an ar step for its decode, so a stream otherwise got its tokens a draft phase late, and a
        new request its first token after a proposal it takes no part in (over the services, psd on the
        bundled pair: 31 ms to first token with a cached prompt, against 21 ms in ar). A step that only
        sends its calls (psd's pipeline) hands them over after sending: the front end's work on them then
        runs while the workers compute, not between one step's results and the next step's calls."""
        if self.on_tokens is not None and touched:
            self.on_tokens(list(touched.values()))

    def _admit(self, touched) -> None:
        new = []
        while (self.waiting and len(self.running) + len(new) < self.max_num_seqs
               and not self.must_stage(self.waiting[0])):  # a long prompt waits to be staged
            new.append(self.waiting.popleft())
        if not new:
            return
        reqs = [r.worker_request() for r in new]
        # prefilled on the draft now, or else just before its first proposal (DraftFeeding._join_draft)
        to_draft = self.speculating and self.controller.drafts_soon(len(self.running) + len(new))
        self._threads(shared=to_draft)
        draft_job = self._pool.submit(self.draft.add, reqs) if to_draft else None
        try:
            try:
                first_tokens = self.target.add(reqs)  # the prefix that fits the target's KV cache
            finally:
                num_draft = draft_job.result() if draft_job is not None else None
        except Exception:
            # A worker failed: the requests wait again (at the front, in order), so that whoever
            # handles the failure (reset_after_failure, or a recovery that resumes) finds them.
            self.waiting.extendleft(reversed(new))
            raise
        n = len(first_tokens) if num_draft is None else min(len(first_tokens), num_draft)
        self._undo_partial_admission(reqs, n, len(first_tokens), num_draft)
        self.waiting.extendleft(reversed(new[n:]))  # back to the front, in order
        if n == 0 and not self.running:  # alone and still no room: it can never run
            req = self.waiting.popleft()
            req.finish("error", "the KV cache cannot hold this request even alone; raise --kv-cache-memory")
            touched[req.request_id] = req
        for req, token in zip(new[:n], first_tokens[:n]):
            self.running[req.request_id] = req
            req.draft_known = len(req.output_ids)  # what its prefill held
            req.in_draft = to_draft
            if token is not None:  # None: a resumed request, its tokens are already committed
                req.append([token])
            touched[req.request_id] = req
            self._place(req.request_id)

    def _undo_partial_admission(self, reqs, n: int, num_target: int, num_draft: int | None) -> None:
        """Each worker admitted a prefix; keep the shorter one and give back the rest."""
        if num_target > n:
            self.target.release([r.request_id for r in reqs[n:num_target]])
        if num_draft is not None and num_draft > n:
            self.draft.release([r.request_id for r in reqs[n:num_draft]])

    # -- KV room ------------------------------------------------------------------------------------------
    def _preempt_one(self, exc: NoRoom, touched) -> None:
        """A worker has no KV block for this step: the most recently admitted request leaves (its
        blocks freed on both workers) and waits at the front of the queue, to be re-prefilled
        from its prompt and committed tokens. Greedy and seeded sampled output stays exactly what
        it would have been (seeded rows draw per position: spec/coupled_sampling.py)."""
        candidates = [r for r in reversed(self.running.values()) if not r.finished]
        if len(candidates) <= 1:  # nobody else to make room: the one request cannot grow
            for req in candidates:
                req.finish("error", f"KV cache too small for this request ({exc}); raise --kv-cache-memory")
                touched[req.request_id] = req
            self.proposal, self.proposed_batch = None, None
            return
        victim = candidates[0]
        rid = victim.request_id
        self._forget([rid])
        if self.proposal is not None and rid in self.proposal.request_ids:
            self.proposal, self.proposed_batch = None, None  # re-drafted next step, identically
        self.metrics.num_preemptions += 1
        self.waiting.appendleft(victim)

    def _place(self, request_id: str) -> None:
        if self.mode != "psd":
            self.batches[0].append(request_id)
        elif self.proposed_batch is not None:
            self.batches[1 - self.proposed_batch].append(request_id)
        else:
            min(self.batches, key=len).append(request_id)

    def _rebalance(self) -> bool:
        """psd with nothing drafted in flight (the pipeline starts, or merged steps run): even out the two
        batches' running rows, so that the pipeline starts with halves that overlap. A pipeline's cycle is
        max(draft B, verify A) + max(draft A, verify B): with rows finishing and arriving (Poisson traffic)
        the batches drifted to 1 and 7 rows, a cycle of two lopsided steps, and auto judged the pipeline by
        it. Returns whether both batches have rows now."""
        if self._move_rows(0) or self._move_rows(1):
            self._psd_skipped = [any(self._psd_skipped)] * 2  # a moved row's draft may have skipped steps
        return all(self._live(b) for b in self.batches)

    def _move_rows(self, src: int) -> bool:
        """While batch src has more than one running row more than the other, its latest admitted row moves
        there. Returns whether any moved."""
        live, other = self._live(self.batches[src]), self._live(self.batches[1 - src])
        moved = False
        while len(live) - len(other) > 1:
            rid = live.pop()
            other.append(rid)
            self.batches[src].remove(rid)
            self.batches[1 - src].append(rid)
            moved = True
        return moved

    def _threads(self, shared: bool) -> None:
        """Before a step's model work: whether a draft may run beside the target now."""
        if self.threads is not None:
            self.threads.shared() if shared else self.threads.solo()

    def _live(self, batch: list[str]) -> list[str]:
        return [r for r in batch if not self.running[r].finished]

    def _new_record(self, mode: str, **fields) -> StepRecord:
        """A step's record, marked when a staged chunk rides on its forward (its times are the chunk's)."""
        return StepRecord(mode, 0.0, ride=self.target.riding, **fields)

    def _step_ar(self, touched, ids: list[str] | None = None, mode: str = "ar") -> None:
        """A target-only step, synchronous (nothing to overlap with); its record is complete here."""
        ids = self._live(self.batches[0]) if ids is None else ids
        if not ids:
            return
        record = self._new_record(mode, k=0 if mode in ("sd", "psd") else None, verify_tokens=len(ids))
        self._threads(shared=False)
        self._emit_early(touched)
        t0 = time.perf_counter()
        try:
            tokens = self.target.decode(ids)
        except NoRoom as exc:
            self._preempt_one(exc, touched)
            return
        record.verify_call_s = record.wall_s = time.perf_counter() - t0
        record.verify_s = record.verify_service_s = self.target.last_decode_compute_s or record.verify_call_s
        record.feature_bytes = self.target.last_decode_feature_bytes
        record.num_verified, record.num_tokens = len(ids), len(ids)
        self.metrics.add_step(record)
        self.controller.on_record(record, synchronous=True)
        self._arm = (record, "decode", len(ids), 0)
        for rid, tok in zip(ids, tokens):
            self.running[rid].append([tok])
            touched[rid] = self.running[rid]

    def _step_without_draft(self, touched) -> None:
        """Every draft node is gone: decode target-only (lossless all the same) until one is back."""
        self.proposal, self.proposed_batch = None, None
        self._step_ar(touched, [r for b in self.batches for r in self._live(b)], mode="ar-fallback")

    # -- sd and psd: send a step's calls, collect them in the next step ------------------------------
    def _dispatch_sd(self, batch, touched) -> None:
        """Draft the batch (waiting for it: verification needs the tokens), then send its verify."""
        ids = self._live(batch)
        if not ids:
            return
        k = self.controller.k_for(ids, self.running)
        if k and self.dry.skip(ids):
            k = 0
        # The first speculative step after target-only ones is no measure of what its k costs: the draft
        # first catches up on every token it skipped (and, in process, the threads switch back).
        catch_up, self._sd_k = k > 0 and self._sd_k == 0, k
        if k == 0:
            self._step_ar(touched, ids, mode=self.mode)
            return
        record = self._new_record(self.mode, k=k, draft_rows=len(ids), catch_up=catch_up)
        self._threads(shared=True)
        self._emit_early(touched)
        t0 = time.perf_counter()
        try:
            proposal = self._set_lengths(self._timed_propose(ids, record, k))
            if self.draft_share.small:  # a cheap draft step: the verify gets every thread (placement.py)
                self._threads(shared=False)
        except NoDraftAvailable:
            self._step_without_draft(touched)
            return
        except NoRoom as exc:  # nothing was committed; the draft rolls back at its next proposal
            self._preempt_one(exc, touched)
            return
        verify_t0 = time.perf_counter()
        self.in_flight = _InFlight(record, t0=t0, proposal=proposal, verify=self.target.start_verify(proposal),
                                   verify_t0=verify_t0)
        if not catch_up:
            self._arm = (record, "sd", len(ids), k)

    def _dispatch_psd(self, touched) -> None:
        """Send the verify of the batch drafted last step and the proposal for the other batch."""
        pb = self.proposed_batch
        to_draft = [i for i in (0, 1) if i != pb and self._live(self.batches[i])]
        if pb is None and not to_draft:
            return
        if self._no_draft:  # the last proposal found no draft node: make progress without one
            self._no_draft = False
            self._step_without_draft(touched)
            return
        if pb is None:
            only = self._live(self.batches[to_draft[0]]) if len(to_draft) == 1 else []
            if len(only) == 1:  # a single request: PSD is SD
                self._dispatch_sd(only, touched)
                return
            if self._rebalance():
                to_draft = [0, 1]
        elif to_draft:
            # The pipeline runs: rows move from the batch about to be drafted to the one in flight; a moved row
            # sits this draft out and is drafted with its new batch next step (one step later, once). Arrivals
            # join the batch about to be drafted (their first draft goes out at once) and rows finish unevenly,
            # and _rebalance only runs with nothing in flight: 16 requests sent at once reached the scheduler
            # over two steps, and the whole round ran as halves of 4 and 12 rows, fixed k too.
            self._move_rows(to_draft[0])
        if self.controller.merge(self.batches, self.running, riding=self.target.riding):
            if pb is None:  # no k pays for the pipeline: one target-only step of every row
                self._step_ar(touched, [r for b in self.batches for r in self._live(b)], mode=self.mode)
                self._psd_skipped = [True, True]
                return
            to_draft = []  # verify what was drafted; the pipeline drains
        job = _InFlight(self._new_record(self.mode), t0=time.perf_counter())
        k = 0
        if to_draft:  # first, so that an in-process draft overlaps an in-process verify
            d = to_draft[0] if pb is not None else max(to_draft, key=lambda i: len(self.batches[i]))
            ids = self._live(self.batches[d])
            job.drafted_ids, job.drafted_batch = ids, d
            k = self.controller.psd_k_for(ids, self.proposal.request_ids if pb is not None else [],
                                          self.proposal.k if pb is not None else 0, self.running)
            if k and self.dry.skip(ids):
                k = 0
            job.record.k, job.record.draft_rows = k, len(ids) if k else 0
            if k:
                job.record.catch_up, self._psd_skipped[d] = self._psd_skipped[d], False
        # In process on a CPU, the draft step goes first and the verify gets every thread after it when the
        # verify carries a prefill chunk or the draft step is cheap beside it (placement.py).
        serial = self.threads is not None and (self.target.riding or self.draft_share.small)
        # No draft call this step (k = 0): the target runs alone, at the threads an ar step gets.
        self._threads(shared=bool(k) and not serial)
        if to_draft:
            job.propose_t0 = time.perf_counter()
            # k = 0: not drafted; its verify slot decodes it target-only (its updates wait for a proposal)
            job.propose = self._start_propose(ids, k) if k else completed(
                lambda: Proposal(ids, 0, done_at=time.perf_counter()))
            if serial:
                self._emit_early(touched)
                wait([job.propose])
        if pb is not None and to_draft and job.record.k and self.proposal.k == job.record.k and not job.record.catch_up:
            # the pipeline in steady state: both batches at one k. Not a catch-up (as in sd): its draft first
            # feeds every token its batch skipped while merged (a prose prompt's ~400 on a join), and one such
            # step, taken as the arm's period, made every k look twice as dear and kept auto merged for a round
            rows = sum(len(self._live(b)) for b in self.batches)
            self._arm = (job.record, "psd", rows, job.record.k)
        if pb is not None:
            if self.target.verifies_on_caller or not self.proposal.k:  # a k = 0 slot decodes, synchronously
                self._emit_early(touched)
            job.proposal, job.verify_t0 = self.proposal, time.perf_counter()
            job.verify = (self.target.start_verify(self.proposal) if self.proposal.k else
                          completed(decode_verdict, self.target, self.proposal))
            self.proposal, self.proposed_batch = None, None
        self.in_flight = job

    def _collect(self, touched) -> None:
        """Wait for the calls the previous step sent: commit the verdict, keep the proposal. A NoRoom
        from either call changes nothing there; a request is preempted and its batch drafted again."""
        job, self.in_flight = self.in_flight, None
        if job is None:
            return
        record, no_room = job.record, None
        self._collected = job
        if job.verify is not None:
            try:
                verdict = job.verify.result()
                record.verify_call_s = (verdict.done_at or time.perf_counter()) - job.verify_t0
                self._commit(job.proposal, verdict, touched, record)
            except NoRoom as exc:
                no_room = exc
        if job.propose is not None:
            try:
                proposal = job.propose.result()
                record.draft_call_s = (proposal.done_at or time.perf_counter()) - job.propose_t0
                self.proposal = self._set_lengths(self._record_proposal(proposal, record))
                self.proposed_batch = job.drafted_batch
            except NoDraftAvailable:  # the batch is drafted again once a draft node is back
                self._no_draft = True
            except NoRoom as exc:
                no_room = exc
        if no_room is not None:
            self._preempt_one(no_room, touched)
        elif record.k:
            self.draft_share.observe(record.draft_s, record.verify_s)

    def _commit(self, proposal: Proposal, verdict, touched, record) -> None:
        record.verify_s = verdict.compute_s
        record.verify_service_s = verdict.service_s or verdict.compute_s
        record.feature_bytes = verdict.feature_bytes
        record.num_verified = len(verdict.request_ids)
        lengths = proposal.verify_lengths()
        record.verify_tokens = sum(lengths) + len(lengths)
        if proposal.k:
            self.metrics.observe(verdict.num_accepted, proposal.k, lengths, proposal.methods)
        self.controller.on_verdict(proposal, verdict)
        for rid, tokens, n, length in zip(verdict.request_ids, verdict.tokens, verdict.num_accepted, lengths):
            req = self.running[rid]
            before = len(req.output_ids)
            req.num_drafted += length
            req.num_accepted += n
            req.append(tokens)
            record.num_tokens += len(req.output_ids) - before
            touched[rid] = req

    def _retire(self) -> None:
        """Release finished requests, except those inside a proposal still to be verified. This
        step's calls are in flight: a gRPC worker's Release would wait for them, so the release rides
        on each worker's next call (release_later; its next Add too, so admission finds the blocks
        free). With nothing left running no call follows: flush what the workers hold."""
        in_flight = set(self.proposal.request_ids) if self.proposal is not None else set()
        if self.in_flight is not None:
            in_flight |= self.in_flight.request_ids
        done = [rid for rid, r in self.running.items() if r.finished and rid not in in_flight]
        if done:
            self._forget(done, later=True)
        if not self.running:
            self._flush_releases()

    def _flush_releases(self) -> None:
        self.target.flush_releases()
        if self.speculating:
            self.draft.flush_releases()

    def _forget(self, request_ids: list[str], later: bool = False) -> None:
        """Free the requests' rows on both workers (now, or with each worker's next call when `later`)
        and drop them from the schedule. Preemption frees now: the step it retries needs the blocks."""
        release = "release_later" if later else "release"
        getattr(self.target, release)(request_ids)
        if self.speculating:
            getattr(self.draft, release)(request_ids)
        for rid in request_ids:
            del self.running[rid]
        self.dry.forget(request_ids)
        gone = set(request_ids)
        self.batches = [[r for r in b if r not in gone] for b in self.batches]

    def set_worker_thread_setup(self, setup) -> None:
        """Run setup() on each worker thread as it starts (the in-process draft runs there: the
        Engine's CPU thread placement, minedraft/spec/placement.py). Call it between requests."""
        self._pool.shutdown(wait=True)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="minedraft-worker", initializer=setup)

    def close(self) -> None:
        """Stop the worker threads and close the draft (the gateway's pool: its node connections)."""
        self._pool.shutdown(wait=False)
        if self.draft is not None:
            self.draft.close()

    def reconfigure(self, mode: str | None, k: int | str | None, max_num_seqs: int | None = None) -> None:
        """Switch mode, k ("auto" or a number) or the running-request limit between requests (the bench
        does so between rounds). Auto starts a fresh controller."""
        if self.has_unfinished():
            raise ValueError("mode: cannot change while requests are running")
        mode, k = mode or self.mode, k or self.k
        check_mode_and_k(mode, k, self.draft is not None)
        max_num_seqs = max_num_seqs or self.max_num_seqs
        if not isinstance(max_num_seqs, int) or max_num_seqs < 1:
            raise ValueError(f"max_num_seqs: must be an integer >= 1, got {max_num_seqs!r}")
        if self.draft is not None and k != AUTO_K:
            self.draft.require_k(k)  # a draft node's --max-k may be below it (auto: it bounds k instead)
        self.mode, self.k, self.max_num_seqs = mode, k, max_num_seqs
        if self.draft is not None:
            self.draft.set_mode(mode)
        self.controller = make_controller(k, self.auto_max_k, mode, self.draft, previous=self.controller)
        self.metrics = self.new_metrics()
