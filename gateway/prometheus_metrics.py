"""The gateway's Prometheus metrics (vLLM's names under the prefix `minedraft:`).

The engine loop calls on_step() after every step (under its step lock) and on_emit() for every
request that got tokens or finished. Counters are cumulative for the process's life, whatever
GetStats(reset) or a mode switch do to the scheduler's own counters: on_step() adds only what
changed since it last looked. Gauges are read when Prometheus scrapes, not on every step."""

from __future__ import annotations

import threading
import time

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

prometheus_client.disable_created_metrics()  # no *_created series: they double the payload for nothing

P = "minedraft:"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0, 20.0, 40.0, 80.0)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                2.5)
# Parts of a step (`part` label), as minedraft.spec.metrics.sum_steps splits it and GetStats reports it.
STEP_PARTS = ("draft_compute", "verify_compute", "control_plane", "draft_idle", "target_idle", "wall")
K_BUCKETS = tuple(float(k) for k in range(17))  # one bucket per k (MAX_SPECULATIVE_TOKENS = 16)
KV_POLL_S = 2.0  # the target's Info is asked at most this often, and only when someone scrapes


def step_parts(s) -> dict[str, float]:
    """One StepRecord split into parts; the same arithmetic as minedraft.spec.metrics.sum_steps."""
    return {
        "draft_compute": s.draft_s,
        "verify_compute": s.verify_s,
        "control_plane": max(0.0, s.draft_call_s - s.draft_s) + max(0.0, s.verify_call_s - s.verify_s),
        "draft_idle": max(0.0, s.wall_s - s.draft_call_s),
        "target_idle": max(0.0, s.wall_s - s.verify_call_s),
        "wall": s.wall_s,
    }


class GatewayMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.num_drafts = Counter(P + "spec_decode_num_drafts", "Verifications of a draft (one per request "
                                  "per speculative step)", registry=r)
        self.num_draft_tokens = Counter(P + "spec_decode_num_draft_tokens", "Draft tokens proposed", registry=r)
        self.num_accepted = Counter(P + "spec_decode_num_accepted_tokens", "Draft tokens accepted", registry=r)
        self.accepted_per_pos = Counter(P + "spec_decode_num_accepted_tokens_per_pos",
                                        "Drafts whose token at this position was accepted", ["position"], registry=r)
        # The same three by draft method (model, ngram, suffix): in a mixed pool, what each kind drafted
        self.method_counters = [Counter(P + "spec_decode_method_" + name, doc + ", by draft method", ["method"],
                                        registry=r) for name, doc in (
            ("num_drafts", "Verifications of a draft"), ("num_draft_tokens", "Draft tokens proposed"),
            ("num_accepted_tokens", "Draft tokens accepted"))]
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter(P + "generation_tokens", "Tokens generated", registry=r)
        self.request_success = Counter(P + "request_success", "Requests finished, by reason", ["finished_reason"],
                                       registry=r)
        self.running = Gauge(P + "num_requests_running", "Requests being decoded", registry=r)
        self.waiting = Gauge(P + "num_requests_waiting", "Requests queued for admission", registry=r)
        self.kv_usage = Gauge(P + "kv_cache_usage_perc", "Target KV-cache usage, 0..1 (as vLLM)", registry=r)
        self.draft_nodes = Gauge(P + "draft_nodes_live", "Draft nodes in the pool", registry=r)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Arrival to first token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.itl = Histogram(P + "inter_token_latency_seconds", "Time between tokens (an emission of n tokens "
                             "after t seconds counts as n gaps of t/n)", buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "Arrival to finish", buckets=LATENCY_BUCKETS,
                             registry=r)
        self.step = Histogram(P + "step_seconds", "Scheduler step time split into parts (sum by part: the "
                              "GetStats breakdown)", ["part", "mode"], buckets=STEP_BUCKETS, registry=r)
        self.spec_k = Histogram(P + "spec_decode_k", "Draft tokens per step as the schedule chose them (k = auto; "
                                "0: the batch decoded target-only), by mode", ["mode"], buckets=K_BUCKETS, registry=r)
        self._seen_metrics = None  # the scheduler's SpecDecodeMetrics object last looked at ...
        self._seen = (0, 0, 0, [], 0)  # ... and its counters then: drafts, draft tokens, accepted, per pos, steps
        self._seen_by_method: dict[str, list[int]] = {}
        self._step_children: dict[str, dict] = {}
        self._k_children: dict[str, object] = {}
        self._last_emit: dict[str, float] = {}  # request id -> time of its previous tokens (ITL)
        self._kv_lock = threading.Lock()
        self._kv_polled = 0.0

    # -- wiring -------------------------------------------------------------------------------------
    def bind(self, scheduler, target, draft_pool) -> None:
        """Gauges read live state at scrape time (len() of a dict/deque is atomic in CPython)."""
        self.running.set_function(lambda: len(scheduler.running))
        self.waiting.set_function(lambda: len(scheduler.waiting))
        self.draft_nodes.set_function(lambda: len(draft_pool.live) if draft_pool is not None else 0)
        self._target = target
        self.kv_usage.set_function(self._kv_usage)

    def _kv_usage(self) -> float:
        with self._kv_lock:
            if time.monotonic() - self._kv_polled >= KV_POLL_S:
                self._kv_polled = time.monotonic()
                try:
                    self._kv_value = float(self._target.info(timeout=1.0).kv_cache_usage)
                except Exception:  # noqa: BLE001 - a scrape must not fail because the target is away
                    pass
            return getattr(self, "_kv_value", 0.0)

    # -- called by the engine loop ------------------------------------------------------------------
    def on_step(self, m) -> None:
        if m is not self._seen_metrics:  # reset or reconfigured: a fresh object that started at zero
            self._seen_metrics, self._seen = m, (0, 0, 0, [0] * len(m.spec_decode_num_accepted_tokens_per_pos), 0)
            self._seen_by_method = {}
        for method, counts in m.by_method.items():
            seen = self._seen_by_method.setdefault(method, [0, 0, 0])
            for counter, i in zip(self.method_counters, range(3)):
                if counts[i] != seen[i]:
                    counter.labels(method=method).inc(counts[i] - seen[i])
                    seen[i] = counts[i]
        drafts, draft_tokens, accepted, per_pos, nsteps = self._seen
        self.num_drafts.inc(m.spec_decode_num_drafts - drafts)
        self.num_draft_tokens.inc(m.spec_decode_num_draft_tokens - draft_tokens)
        self.num_accepted.inc(m.spec_decode_num_accepted_tokens - accepted)
        for pos, n in enumerate(m.spec_decode_num_accepted_tokens_per_pos):
            before = per_pos[pos] if pos < len(per_pos) else 0
            if n != before:
                self.accepted_per_pos.labels(position=str(pos)).inc(n - before)
        new = m.total_steps - nsteps
        for record in (m.steps[len(m.steps) - min(new, len(m.steps)):] if new > 0 else ()):
            children = self._step_children.get(record.mode)
            if children is None:  # labels() costs a lock and a dict lookup: once per mode, not per step
                children = self._step_children[record.mode] = {
                    part: self.step.labels(part=part, mode=record.mode) for part in STEP_PARTS}
            for part, seconds in step_parts(record).items():
                children[part].observe(seconds)
            if record.k is not None:
                child = self._k_children.get(record.mode)
                if child is None:
                    child = self._k_children[record.mode] = self.spec_k.labels(mode=record.mode)
                child.observe(record.k)
        self._seen = (m.spec_decode_num_drafts, m.spec_decode_num_draft_tokens, m.spec_decode_num_accepted_tokens,
                      list(m.spec_decode_num_accepted_tokens_per_pos), m.total_steps)

    def on_emit(self, req, num_new: int, error: bool = False) -> None:
        now = time.perf_counter()
        rid = req.request_id
        if num_new:
            self.generation_tokens.inc(num_new)
            previous = self._last_emit.get(rid)
            if previous is None:  # first tokens: the prompt was prefilled
                self.prompt_tokens.inc(len(req.prompt_ids))
                self.ttft.observe((req.first_token_s or now) - req.arrival_s)
                num_gaps, gap = num_new - 1, 0.0  # tokens that came with the first one waited no longer
            else:
                num_gaps, gap = num_new, (now - previous) / num_new
            for _ in range(num_gaps):
                self.itl.observe(gap)
            self._last_emit[rid] = now
        if req.finished or error:
            self._last_emit.pop(rid, None)
            self.request_success.labels(finished_reason=req.finish_reason or "error").inc()
            self.e2e.observe((req.finish_s or now) - req.arrival_s)

    def exposition(self) -> tuple[bytes, str]:
        return prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST
