"""The two interfaces the scheduler talks to. In-process implementations live in
`local_workers.py`; gRPC client implementations (for the services) in `minedraft/rpc/remote_workers.py`.

Protocol per request: `add` once (prefill; admits what fits), then, for speculation, `propose` -> `verify` repeatedly;
the tokens the target committed reach the draft with its next `propose` (`updates`), which saves a
round trip per step. `release` when the request is done or aborted; `release_later` when that can
wait for the worker's next call (a request that finished while a step's calls are in flight: a gRPC
worker sends the ids with its next Add/Propose/Verify/Decode, which applies them first, rather than
a Release that would wait for the call in flight; `flush_releases` sends what is still held).
A step that needs KV blocks the worker does not have raises `NoRoom` and changes nothing; the
scheduler then preempts a request. A request the worker cannot take (a bad value, a row that raised)
raises `RequestFault` naming it: that request fails alone.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from concurrent.futures import Future
from typing import Any, Callable

from minedraft.runner.block_manager import NoRoom  # noqa: F401 - part of the worker contract
from minedraft.spec.sampling import SamplingParams


@dataclasses.dataclass
class NewRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    seed: int  # resolved by the scheduler, so draft and target agree on it
    # True: prompt_ids holds the prompt plus every token generated so far (a preempted or re-added
    # request); the last one is already committed, so nothing is sampled at admission.
    resume: bool = False


@dataclasses.dataclass
class Proposal:
    """Up to k draft tokens for each request of a batch.

    tokens: [B, k] int64; probs: [S, k, V] float32, the draft's distributions q of the S requests
    whose verification reads q (coupled_sampling.reads_q: sampled without a seed) in batch order
    (None: one-hot q). Seeded sampled requests need none (spec/coupled_sampling.py).
    confidence: [B, k] float32 on the host, the draft's probability of each token it drafted;
    top_prob: [B, k] float32, the largest probability of each position's distribution, known before
    its token was drawn (spec/draft_lengths.py ranks positions by them; None: no ranking possible).
    lengths: per row, how many of its k tokens the target verifies (0..k; 0: the row decodes
    target-only in this verify). None: every row verifies all k. The scheduler sets it between the
    proposal and its verify, from draft-side information only, which keeps verification exact.
    parts: when the proposal travelled through token channels (remote workers), where it lies:
    [(channel_id, block_ref, num_requests)] covering request_ids in order; the target reads them.
    methods: per row, how its tokens were drafted (model, ngram, suffix; None: all by a draft model),
    for the metrics by method."""

    request_ids: list[str]
    k: int
    tokens: Any = None
    probs: Any = None
    confidence: Any = None
    top_prob: Any = None
    lengths: list[int] | None = None
    parts: list = dataclasses.field(default_factory=list)
    methods: list[str] | None = None
    compute_s: float = 0.0  # time the draft spent in forward passes and sampling
    service_s: float = 0.0  # remote: time inside the draft service's handler (compute + channel)
    channel_bytes: int = 0  # bytes of tokens and q this proposal puts through the token channel
    done_at: float = 0.0  # perf_counter() when the reply was in (start_propose): the call's true end

    def verify_lengths(self) -> list[int]:
        """How many draft tokens each row verifies."""
        return list(self.lengths) if self.lengths is not None else [self.k] * len(self.request_ids)


@dataclasses.dataclass
class Verdict:
    request_ids: list[str]
    tokens: list[list[int]]  # per request: accepted draft tokens + one target token
    num_accepted: list[int]
    compute_s: float = 0.0
    service_s: float = 0.0  # remote: time inside the target service's handler (channel + compute)
    # Only with an EAGLE draft attached: per request, the target's features [1 + num_accepted, hidden]
    # of the positions it committed in this verify (its pending token's and the accepted drafts').
    features: list | None = None
    feature_bytes: int = 0  # remote: bytes of those features the target wrote into feature channels
    done_at: float = 0.0  # perf_counter() when the reply was in (start_verify): the call's true end


def completed(fn, *args) -> Future:
    """fn(*args) run now, as a finished Future (its exception kept for .result())."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:  # noqa: BLE001 - raised by .result(), where the caller expects it
        future.set_exception(exc)
    return future


class RequestFault(ValueError):
    """A failure that belongs to some requests, not to the worker (a value it refuses, a row that
    raised): the gateway fails those requests alone and the others go on. Over gRPC it travels as
    INVALID_ARGUMENT with the ids in the `minedraft-request-ids` trailing metadata."""

    def __init__(self, request_ids, message: str):
        super().__init__(message)
        self.request_ids = list(request_ids)


class NoDraftAvailable(RuntimeError):
    """No draft node can propose right now: the scheduler decodes target-only until one is back."""


class DraftWorker(abc.ABC):
    @abc.abstractmethod
    def add(self, requests: list[NewRequest]) -> int:
        """Prefill the longest prefix of requests that fits the KV cache; return its length."""

    @abc.abstractmethod
    def propose(self, request_ids: list[str], k: int, updates: dict[str, list[int]]) -> Proposal:
        """First append `updates` (tokens committed since this request's last proposal), then
        draft k tokens for every request."""

    def start_propose(self, request_ids: list[str], k: int, updates: dict[str, list[int]], pool):
        """Begin `propose` and return a future of its Proposal, so that the caller can verify the other
        batch meanwhile (PSD). Here: on a thread of `pool`; gRPC workers override it with the call
        itself in flight, which saves the thread hand-offs on the step's critical path."""
        def run():
            proposal = self.propose(request_ids, k, updates)
            proposal.done_at = time.perf_counter()
            return proposal

        return pool.submit(run)

    def ride(self, requests: list[NewRequest]) -> int:
        """As TargetWorker.ride: prefill-only rows a worker that can carries in its next forward (a
        proposal's, or a prefill's); here a plain `add`."""
        return self.add(requests)

    @property
    def riding(self) -> bool:
        """Whether a rider waits for this worker's next forward."""
        return False

    def settle_riders(self) -> None:
        """Prefill now the riders no forward carried (the scheduler calls it before it stages the next
        chunk, when no call of this worker is in flight)."""

    @abc.abstractmethod
    def release(self, request_ids: list[str]) -> None:
        """Forget the requests and free their cache rows (unknown ids are ignored)."""

    def release_later(self, request_ids: list[str]) -> None:
        """`release`, which may be deferred to this worker's next call, but no later: a worker that
        defers applies the ids before that call's own work (an `add` too, so the blocks are free and
        an id used again is released before it is added). Here, in process: at once."""
        self.release(request_ids)

    def flush_releases(self) -> None:
        """Release now what `release_later` still holds (the scheduler calls it when it goes idle)."""

    def require_k(self, k: int) -> None:
        """Raise ValueError (naming num_speculative_tokens) when this draft cannot propose k tokens.
        In process: any k the schedule accepts; the gateway's pool checks its nodes' --max-k."""

    def capacity_k(self) -> int | None:
        """The largest k this draft can propose now (None: no limit below the schedule's); auto's k
        stays within it."""
        return None

    def attach(self, committed: Callable[[str], NewRequest]) -> None:
        """The scheduler owns the committed tokens: `committed(request_id)` is a running request's resume
        NewRequest. A draft that moves requests between nodes prefills them from it rather than keep
        a copy; one row per request needs nothing beyond `updates`."""

    def set_mode(self, mode: str) -> None:
        """The scheduler's mode, at start and at each reconfigure (ar: no request goes through the
        draft; the gateway's pool then has the target export no EAGLE features)."""

    def close(self) -> None:
        pass


class TargetWorker(abc.ABC):
    context_len: int
    vocab_size: int
    last_decode_compute_s: float = 0.0  # compute time of the latest decode() (for the step breakdown)
    last_decode_feature_bytes: int = 0  # feature-channel bytes of the latest decode() (remote, EAGLE only)
    max_num_batched_tokens: int | None = None  # the most tokens one forward pass takes (None: unknown)
    block_size: int = 16  # tokens per KV block (prefix caching shares whole blocks)
    verifies_on_caller = True  # start_verify runs the verify on the calling thread (gRPC workers: False)

    @abc.abstractmethod
    def add(self, requests: list[NewRequest]) -> list[int | None]:
        """Prefill the longest prefix of requests that fits the KV cache; return the first generated
        token of each admitted one (None for resumed requests)."""

    @abc.abstractmethod
    def verify(self, proposal: Proposal) -> Verdict:
        """Score the k+1 positions, accept/reject, roll the KV cache back to what was accepted."""

    def start_verify(self, proposal: Proposal):
        """Begin `verify` and return a future of its Verdict, so that the scheduler can hand the
        previous step's tokens to its clients while the target works. Here: verify now, on the
        calling thread (in-process, the draft overlaps it on the scheduler's pool); gRPC workers
        override it with the call itself in flight."""
        def run():
            verdict = self.verify(proposal)
            verdict.done_at = time.perf_counter()
            return verdict

        return completed(run)

    @abc.abstractmethod
    def decode(self, request_ids: list[str]) -> list[int]:
        """One ordinary (target-only) decoding step."""

    def ride(self, requests: list[NewRequest]) -> int:
        """Prefill-only rows (a staged prompt's chunks: nobody decodes them, their blocks are cached for
        the request): admit the longest prefix of requests that fits, return its length. A worker
        that can carries their prefill in its next forward, a verify's or a decode's (one pass over
        the weights for both; `riding` is then true until it ran); here a plain `add`."""
        return len(self.add(requests))

    @property
    def riding(self) -> bool:
        """Whether a rider waits for this worker's next forward."""
        return False

    def settle_riders(self) -> None:
        """Prefill now the riders no forward carried (the scheduler calls it at the end of a step)."""

    @abc.abstractmethod
    def release(self, request_ids: list[str]) -> None:
        """Forget the requests and free their cache rows (unknown ids are ignored)."""

    def release_later(self, request_ids: list[str]) -> None:
        """As DraftWorker.release_later."""
        self.release(request_ids)

    def flush_releases(self) -> None:
        """As DraftWorker.flush_releases."""

    def close(self) -> None:
        pass
