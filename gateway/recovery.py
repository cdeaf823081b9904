"""Bringing the gateway back after the target fails or restarts, without losing a request.

A failed target call (the process died, was restarted, hangs past its deadline) ends the step with
an exception. The engine loop then calls `recover` (on its own thread, so no step runs meanwhile):
- NOT_SERVING, and new requests are refused with UNAVAILABLE while it lasts;
- reconnect to the target (short gRPC reconnect backoff, our own bounded retry);
- same process (it only stalled): give back what the running requests hold; a new process (its
  instance id changed): nothing to give back, its cache is empty;
- every draft node gets a fresh token channel that the new target opens (DraftPool.rebind);
- every running request goes back to the queue and is re-prefilled from its prompt and the tokens
  already committed (Scheduler.requeue_all_for_resume): the streams continue, and the output is
  exactly what an uninterrupted run gives (greedy, and seeded sampled rows, which draw each position
  with that position's noise: spec/coupled_sampling.py).
If the target is not back within --recovery-timeout-s, the engine loop ends the requests with
UNAVAILABLE and the reason; the worker watcher keeps probing and recovers when it answers again.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

log = logging.getLogger("minedraft.gateway")


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


class TargetRecovery:
    def __init__(self, workers, ready, target_address: str, timeout_s: float, stop: threading.Event):
        """workers: the gateway's Workers (its target and draft pool are rebound in place); ready: the
        gateway's Readiness (NOT_SERVING while the target is away)."""
        self.workers, self.ready, self.target_address = workers, ready, target_address
        self.timeout_s, self.stop = timeout_s, stop

    def mark_unreachable(self) -> None:
        if self.ready.is_set():
            log.warning("gateway: target %s unreachable: NOT_SERVING until it is back", self.target_address)
        self.ready.set(False)

    def recover(self, scheduler, exc: BaseException) -> bool:
        """On the engine loop's thread. True: every running request is queued again for resumption."""
        self.ready.set(False)
        log.warning("gateway: target call failed (%s); reconnecting for up to %.0f s", describe(exc),
                    self.timeout_s)
        deadline = time.monotonic() + self.timeout_s
        delay = 0.2
        while not self.stop.is_set():
            try:
                self._reconnect(scheduler)
                self.ready.set(True)
                return True
            except (grpc.RpcError, ValueError) as err:
                if time.monotonic() + delay > deadline:
                    log.error("gateway: target not back within %.0f s (%s)", self.timeout_s, describe(err))
                    return False
                self.stop.wait(delay)
                delay = min(delay * 2, 2.0)
        return False

    def isolate(self, scheduler, fault) -> bool:
        """A RequestFault (gateway/engine_loop.py): fail its requests alone, give back what every
        other one holds, and queue those again to resume on the same workers (the step that raised
        may have left them mid-way). Fresh token channels, as after a reconnect. False: a worker
        failed meanwhile (the caller recovers)."""
        log.warning("gateway: request(s) %s failed alone: %s", ",".join(fault.request_ids), fault)
        w = self.workers
        held = scheduler.fail_alone(fault)
        try:
            if held:
                w.target.release(held)
            if w.draft is not None:
                w.draft.rebind(w.target, w.target_info)
        except grpc.RpcError as err:
            log.warning("gateway: a worker failed while isolating the fault (%s)", describe(err))
            return False
        return True

    def recover_if_needed(self, scheduler) -> bool:
        """From the watcher (through the engine loop): recover when the target answers again after
        being unreachable, or answers with a new instance id (it restarted while idle)."""
        w = self.workers
        try:
            info = w.target.info(timeout=2.0)
        except grpc.RpcError:
            self.mark_unreachable()
            return False
        if self.ready.is_set() and info.instance_id == w.target_info.instance_id:
            return True
        return self.recover(scheduler, RuntimeError("target restarted" if self.ready.is_set() else "target is back"))

    def _reconnect(self, scheduler) -> None:
        w = self.workers
        info = w.target.info(timeout=2.0)
        restarted = info.instance_id != w.target_info.instance_id
        running = list(scheduler.running)
        if not restarted and running:
            w.target.release(running)  # the same process kept their blocks; they are re-added below
        w.target_info = info
        w.target.adopt(info)
        if w.draft is not None:
            w.draft.rebind(w.target, info)
        n = scheduler.requeue_all_for_resume()
        log.info("gateway: target %s (%s); %d running request(s) resume from their committed tokens; "
                 "%d draft node(s) live", self.target_address,
                 "restarted" if restarted else "reconnected", n, len(w.draft.live) if w.draft is not None else 0)
