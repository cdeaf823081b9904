"""The gateway's engine loop: one thread owns the scheduler and runs its steps; gRPC handler threads
talk to it only through a command queue (new requests through their own queue, `arrivals`), and it
answers through one event queue per request."""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading

from gateway.recovery import describe
from minedraft.spec.metrics import SpecDecodeMetrics
from minedraft.spec.request import Request
from minedraft.spec.scheduler import Scheduler
from minedraft.spec.workers import RequestFault

log = logging.getLogger("minedraft.gateway")


@dataclasses.dataclass
class Event:
    new_tokens: list[int]
    finished: bool
    finish_reason: str | None
    num_generated: int
    num_drafted: int
    num_accepted: int
    error: str | None = None
    fault: bool = False  # the request's own fault (INVALID_ARGUMENT / 400), not a worker's (UNAVAILABLE / 503)


class QueueFull(Exception):
    """Admission limit reached: gRPC answers RESOURCE_EXHAUSTED, HTTP 429."""


class EngineLoop:
    # A step that keeps failing right after recoveries (a request no worker can run) fails everything
    # rather than loop forever.
    MAX_RECOVERIES_WITHOUT_PROGRESS = 3

    def __init__(self, scheduler: Scheduler, max_waiting: int | None = None, observer=None, recover=None,
                 isolate=None):
        self.scheduler = scheduler
        self.max_waiting = max_waiting  # None: unbounded
        # recover(scheduler, exc) -> bool, on this thread after a failed step: True when the running
        # requests were queued again for resumption on reconnected workers (gateway/recovery.py).
        self.recover = recover
        # isolate(scheduler, fault) -> bool, on this thread after a step raised RequestFault: those
        # requests fail alone and the others resume (gateway/recovery.py); False: a worker failed.
        self.isolate = isolate
        self._recoveries = 0
        self.observer = observer  # on_step(metrics) under the step lock, on_emit(req, n_new, error)
        self.commands: queue.Queue = queue.Queue()
        # New requests, apart from the commands: a step takes them just before its admission (mid-step,
        # where an abort or a call must not run), and the loop before anything else in the queue.
        self.arrivals: collections.deque[Request] = collections.deque()
        self.streams: dict[str, queue.Queue] = {}
        self.ids_lock = threading.Lock()
        self.step_lock = threading.Lock()  # held while stepping; stats readers take it too
        self._stop = threading.Event()
        scheduler.on_tokens = self._emit_all  # tokens final before a step's dispatch go out at once
        scheduler.before_admission = self._take_arrivals
        self.thread = threading.Thread(target=self._run, name="minedraft-engine-loop", daemon=True)
        self.thread.start()

    # -- called from gRPC handler threads ---------------------------------------------------------
    def submit(self, request: Request, events=None):
        """Queue a request; its Events go to `events` (anything with .put(), called on the loop
        thread; a queue.Queue when None) and the same object is returned."""
        events = queue.Queue() if events is None else events
        with self.ids_lock:
            if request.request_id in self.streams:
                raise ValueError(f"request_id: {request.request_id!r} is already running")
            limit = None if self.max_waiting is None else self.scheduler.max_num_seqs + self.max_waiting
            if limit is not None and len(self.streams) >= limit:
                raise QueueFull(f"queue full: {len(self.streams)} requests in flight (limit {limit}: "
                                f"{self.scheduler.max_num_seqs} running + {self.max_waiting} waiting); retry later")
            self.streams[request.request_id] = events
        self.arrivals.append(request)
        self.commands.put(("wake",))  # an idle loop waits on the commands
        return events

    def abort(self, request_id: str) -> bool:
        with self.ids_lock:
            found = request_id in self.streams
        if found:
            self.commands.put(("abort", request_id))
        return found

    def call(self, fn):
        """Run fn(scheduler) on the loop thread between steps and return its result."""
        reply: queue.Queue = queue.Queue()
        self.commands.put(("call", fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    def stats(self, reset: bool) -> SpecDecodeMetrics:
        with self.step_lock:
            metrics = self.scheduler.metrics
            if reset:
                self.scheduler.metrics = self.scheduler.new_metrics()
            return metrics

    def stop(self) -> None:
        self._stop.set()
        self.commands.put(("noop",))
        self.thread.join(timeout=5)

    # -- the loop thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain(block=not self.scheduler.has_unfinished())
            if not self.scheduler.has_unfinished():
                continue
            try:
                with self.step_lock:
                    touched = self.scheduler.step()
                    if self.observer is not None:  # under the lock: GetStats(reset) cannot slip in between
                        self.observer.on_step(self.scheduler.metrics)
            except RequestFault as fault:  # one request's data, not a worker: fail it alone
                if self.isolate is not None and self.isolate(self.scheduler, fault):
                    continue
                self._after_failure(fault)
                continue
            except Exception as exc:  # noqa: BLE001 - a worker failed: resume what is in flight, or fail it
                self._after_failure(exc)
                continue
            if any(r.output_ids for r in touched):
                self._recoveries = 0
            for req in touched:
                self._emit(req)

    def _after_failure(self, exc: Exception) -> None:
        """A worker failed (or isolating a fault failed): resume what is in flight, or fail it."""
        if (self.recover is not None and self._recoveries < self.MAX_RECOVERIES_WITHOUT_PROGRESS
                and self.recover(self.scheduler, exc)):
            self._recoveries += 1
        else:
            self._fail_all(exc)

    def _drain(self, block: bool) -> None:
        try:
            cmd = self.commands.get(timeout=0.5) if block else self.commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._execute(cmd)
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return

    def _take_arrivals(self) -> None:
        """Hand the scheduler the requests submitted so far. In the loop, before any command: a command
        queued after a request's submit (its abort, say) then finds it in the scheduler. Within a step,
        just before admission: a request that came while the step waited for its collect is admitted now;
        picked up by the loop instead, it waited for the next step's collect too (over the services, up to
        a whole step of TTFT, which is most of it with a cached prompt)."""
        while self.arrivals:
            self.scheduler.add(self.arrivals.popleft())

    def _execute(self, cmd) -> None:
        self._take_arrivals()
        if cmd[0] == "abort":
            self.scheduler.abort(cmd[1])
        elif cmd[0] == "fail":
            self._recoveries = 0
            self._fail_all(RuntimeError(cmd[1]))
            cmd[2].set()
        elif cmd[0] == "call":
            try:
                cmd[2].put((True, cmd[1](self.scheduler)))
            except Exception as exc:  # noqa: BLE001 - handed back to the caller
                cmd[2].put((False, exc))

    def _emit_all(self, requests: list[Request]) -> None:
        for req in requests:
            self._emit(req)

    def _emit(self, req: Request) -> None:
        new = req.take_new_tokens()
        if not (new or req.finished):  # nothing since the last emit (e.g. sent before the dispatch)
            return
        with self.ids_lock:
            events = self.streams.pop(req.request_id, None) if req.finished else self.streams.get(req.request_id)
        # A finished request stays touched until its rows are released (a step or two): it is
        # reported, and counted, once, when its stream closes.
        if events is None:
            return
        if self.observer is not None:
            self.observer.on_emit(req, len(new))
        error = req.error if req.finish_reason == "error" else None
        events.put(Event(new, req.finished, req.finish_reason, len(req.output_ids), req.num_drafted,
                         req.num_accepted, error=error, fault=req.fault))

    def fail_all_now(self, reason: str, timeout: float = 2.0) -> None:
        """End every request in flight with an error (shutdown); waits up to `timeout` for the loop."""
        done = threading.Event()
        self.commands.put(("fail", reason, done))
        done.wait(timeout)

    def _fail_all(self, exc: Exception) -> None:
        log.error("failing %d request(s): %s", len(self.streams), describe(exc))
        failed = self.scheduler.reset_after_failure()
        for req in failed:
            with self.ids_lock:
                events = self.streams.pop(req.request_id, None)
            if events is None:  # reported already (see _emit)
                continue
            if self.observer is not None:
                self.observer.on_emit(req, 0, error=True)
            events.put(Event([], True, "error", len(req.output_ids), req.num_drafted, req.num_accepted,
                             error=describe(exc)))
