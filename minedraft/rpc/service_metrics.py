"""Prometheus `/metrics` of a draft or target service, on its own `--metrics-port` (0: off).

One hook, called before the servicer is registered: it wraps the servicer's step RPCs to time them
(the replies already say how much of that was compute) and reads KV usage from the servicer's own
Info when Prometheus scrapes. Nothing runs per step beyond a few counter updates."""

from __future__ import annotations

import functools
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("minedraft")

P = "minedraft:"
TIMED_RPCS = ("Add", "Propose", "Verify", "Decode", "Release")
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ServiceMetrics:
    def __init__(self, servicer):
        self.servicer = servicer
        self.registry = r = CollectorRegistry()
        labels = ["role", "rpc"]
        self.rpc_seconds = Histogram(P + "worker_rpc_seconds", "Wall time inside the RPC handler", labels,
                                     buckets=RPC_BUCKETS, registry=r)
        self.compute = Counter(P + "worker_compute_seconds", "Model compute time the handler reported", labels,
                               registry=r)
        self.channel = Counter(P + "worker_channel_seconds", "Handler time outside compute: token channel "
                               "read/write and bookkeeping", labels, registry=r)
        self.errors = Counter(P + "worker_rpc_errors", "RPCs that ended with an error status", labels, registry=r)
        for name, field, doc in (("kv_cache_usage_perc", "kv_cache_usage", "KV-cache usage, 0..1"),
                                 ("num_kv_blocks", "num_kv_blocks", "KV blocks in all"),
                                 ("num_free_kv_blocks", "num_free_kv_blocks", "KV blocks not held by a request"),
                                 ("worker_num_active", "num_active", "Requests holding cache rows"),
                                 ("prefix_cache_queries", "prefix_cache_queries", "Prompt tokens looked up in the "
                                  "prefix cache since start"),
                                 ("prefix_cache_hits", "prefix_cache_hits", "Of those, tokens found cached")):
            Gauge(P + name, doc, registry=r).set_function(functools.partial(self._info_field, field))

    def _info_field(self, field: str) -> float:
        from minedraft.v1 import worker_pb2

        return float(getattr(self.servicer.Info(worker_pb2.InfoRequest(), None), field))

    def wrap(self, name: str):
        handler = getattr(self.servicer, name)
        role = self.servicer.role

        @functools.wraps(handler)
        def timed(request, context):
            t0 = time.perf_counter()
            try:
                reply = handler(request, context)
            except BaseException:  # context.abort raises: count it, let gRPC answer
                self.errors.labels(role, name).inc()
                raise
            wall = time.perf_counter() - t0
            self.rpc_seconds.labels(role, name).observe(wall)
            compute = getattr(reply, "compute_s", None)
            if compute is not None:
                inside = getattr(reply, "service_s", 0.0) or wall  # Verify/Propose report their own
                self.compute.labels(role, name).inc(compute)
                self.channel.labels(role, name).inc(max(0.0, inside - compute))
            return reply

        setattr(self.servicer, name, timed)


def start_service_metrics(servicer, args) -> ServiceMetrics | None:
    """The hook: call before registering `servicer` with the gRPC server."""
    port = getattr(args, "metrics_port", 0)
    if not port:
        return None
    metrics = ServiceMetrics(servicer)
    for name in TIMED_RPCS:
        if hasattr(servicer, name):
            metrics.wrap(name)
    try:
        start_http_server(port, addr=args.bind, registry=metrics.registry)  # a daemon thread
    except OSError as exc:
        raise SystemExit(f"{servicer.role}: cannot serve /metrics on {args.bind}:{port}: {exc}") from None
    log.info("%s: Prometheus /metrics on http://%s:%d/metrics", servicer.role, args.bind, port)
    return metrics
