"""The gateway service: its flags and main(). The parts: gateway/connection.py (workers, readiness,
engine loop, the Frontend), aio_host.py (the event loop both APIs run on, health), grpc_api.py (the
gRPC API), http_api.py (the HTTP API), recovery.py."""

from __future__ import annotations

import argparse
import signal
import threading
import time

import grpc

from gateway.aio_host import AioHost, add_health_and_reflection
from gateway.connection import Connection, Readiness
from gateway.grpc_api import SERVICE, GatewayServicer
from gateway.prometheus_metrics import GatewayMetrics
from minedraft.config import GatewayConfig
from minedraft.config.flags import parse, service_parser
from minedraft.rpc.auth import ApiKeyInterceptor, load_keys
from minedraft.rpc.grpc_common import exit_after, listen, log, server_options, setup_logging
from minedraft.v1 import gateway_pb2_grpc


def build_parser() -> argparse.ArgumentParser:
    return service_parser("gateway")


def main(argv=None) -> int:
    config, args = parse(build_parser(), GatewayConfig, argv)
    args.config = config  # the validated tree beside its flat view
    setup_logging(args.log_level)
    if args.transport == "auto":
        args.transport = None
    keys = load_keys(args.api_key)
    metrics = GatewayMetrics()
    conn = Connection(args, Readiness(), metrics)
    operator_allowed = bool(keys) or args.bind in ("127.0.0.1", "localhost", "::1")
    address = f"{args.bind}:{args.port}"
    host = AioHost()  # the public gRPC server and the HTTP app share its event loop
    host.start()
    server = host.run(start_grpc(conn, args, keys, operator_allowed, address))
    if isinstance(server, SystemExit):  # the port is taken: said on the way out
        raise server
    http = None
    if args.http_port:
        from gateway.http_api import HttpFrontend, HttpServer

        http = HttpServer(HttpFrontend(conn, metrics, keys, args.served_model_name, args.max_request_bytes).app(),
                          args.bind, args.http_port, tls_cert=args.tls_cert, tls_key=args.tls_key)
    log.info("gateway listening on %s (NOT_SERVING until the workers answer)", address)
    if http is not None:
        http.start(host)
        log.info("gateway: OpenAI-compatible HTTP API on http://%s (/v1/completions, /v1/chat/completions, "
                 "/v1/models, /health, /metrics)", http.address)
    log.info("gateway: %s", f"API key required on gRPC and HTTP ({len(keys)} key(s))" if keys else "no API key set")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=conn.connect_forever, args=(stop,), daemon=True).start()
    while not stop.is_set():
        time.sleep(0.2)
    drain(conn, http, server, host, args.drain_s)
    return 0


async def start_grpc(conn, args, keys, operator_allowed: bool, address: str):
    """The public gRPC server on the running loop (grpc.aio: an open stream costs no thread), or the
    SystemExit that a port in use gives (raised by the caller, not inside the loop)."""
    server = grpc.aio.server(options=server_options(args.max_request_bytes),
                             interceptors=[ApiKeyInterceptor(keys)] if keys else [])
    add_health_and_reflection(server, conn.ready, [SERVICE])
    gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(conn, operator_allowed), server)
    try:
        listen(server, address, "gateway", server_credentials(args.tls_cert, args.tls_key))
    except SystemExit as exc:
        return exc
    await server.start()
    return server


def server_credentials(tls_cert: str | None, tls_key: str | None):
    """TLS when --tls-cert/--tls-key are given, else None: plaintext (loopback by default)."""
    if bool(tls_cert) != bool(tls_key):
        raise SystemExit("gateway: --tls-cert and --tls-key go together")
    if not tls_cert:
        return None
    with open(tls_key, "rb") as k, open(tls_cert, "rb") as c:
        return grpc.ssl_server_credentials([(k.read(), c.read())])


def drain(conn: Connection, http, server, host: AioHost, drain_s: float) -> None:
    """SIGTERM: refuse new requests (NOT_SERVING, UNAVAILABLE), let those in flight finish for
    drain_s, end the rest with UNAVAILABLE, exit; within drain + 5 s whatever happens."""
    exit_after(drain_s + 4.0, "gateway")
    conn.ready.set(False)
    loop = conn.loop
    in_flight = len(loop.streams) if loop is not None else 0
    log.info("gateway: stopping; %d request(s) in flight get up to %.0f s to finish", in_flight, drain_s)
    deadline = time.monotonic() + drain_s
    while loop is not None and loop.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    if loop is not None and loop.streams:
        loop.fail_all_now("gateway shutting down (drain time over)")
        time.sleep(0.2)  # let the handlers send their status
    if http is not None:
        http.stop()
    try:
        host.run(server.stop(grace=1.0), timeout=3.0)
    except Exception:  # noqa: BLE001 - the exit timer bounds the rest
        pass
    host.stop()
    if loop is not None:
        loop.stop()
        loop.scheduler.close()  # its worker threads and the draft pool's node connections
    log.info("gateway stopped")
