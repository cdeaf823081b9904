"""What the three services share on the control plane: server set-up (health, reflection, message
limits), proto <-> Python conversions, and error mapping."""

from __future__ import annotations

import json
import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from minedraft.rpc.channels import BlockRef, ChannelSpec
from minedraft.rpc.health import check_health  # noqa: F401  (re-exported; light, see health.py)
from minedraft.spec.sampling import SamplingParams
from minedraft.v1 import common_pb2, worker_pb2

MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # inline proposals carry [B, k, V] distributions
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

log = logging.getLogger("minedraft")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


PENDING_CALLS = 16384


def server_options(max_receive_bytes: int | None = None) -> list:
    """grpc's Python server sets SO_REUSEPORT by default: a second service on the same port would
    bind too and take half the connections. Off, so that a port in use fails start-up."""
    options = dict(GRPC_OPTIONS)
    options["grpc.so_reuseport"] = 0
    # grpc-core cancels (CANCELLED, no status of ours) incoming calls past 1,000 that the application has
    # not picked up yet: a burst of 2,000 streams lost ~10% that way (scripts/grpc_burst_refusal.py).
    # Admission is bounded by our own queue (--max-num-seqs + --max-waiting, RESOURCE_EXHAUSTED past it),
    # so grpc's limit only has to stop a flood no queue could take.
    options["grpc.server.max_pending_requests"] = PENDING_CALLS
    options["grpc.server.max_pending_requests_hard_limit"] = 4 * PENDING_CALLS
    if max_receive_bytes is not None:
        options["grpc.max_receive_message_length"] = max_receive_bytes
    return list(options.items())


def make_server(max_workers: int = 16) -> grpc.Server:
    """A worker service's server (the gateway's is grpc.aio: gateway/server.py)."""
    return grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=server_options())


def port_in_use(address: str) -> bool:
    """Whether something listens on host:port (bound as the services bind: SO_REUSEADDR, no REUSEPORT)."""
    import socket

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return True
    return False


def listen(server, address: str, what: str, credentials=None) -> int:
    """Bind the server's port; a port in use (or any bind failure) ends start-up naming it."""
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError:  # newer grpc raises where older ones return 0
        port = 0
    if port == 0:
        raise SystemExit(port_taken(what, address))
    return port


def port_taken(what: str, address: str) -> str:
    return f"{what}: cannot listen on {address}: the port is in use (or the address is not this host's)"


def add_health_and_reflection(server: grpc.Server, service_full_names: list[str]) -> health.HealthServicer:
    """grpc.health.v1 (NOT_SERVING until the caller says otherwise) and server reflection."""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *service_full_names]:
        servicer.set(name, NOT_SERVING)
    names = [*service_full_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return servicer


def set_serving(servicer: health.HealthServicer, service_full_names: list[str], serving: bool) -> None:
    for name in ["", *service_full_names]:
        servicer.set(name, SERVING if serving else NOT_SERVING)


# A restarted worker must be found again within a second or two, not after gRPC's default reconnect
# backoff (up to two minutes).
CLIENT_OPTIONS = GRPC_OPTIONS + [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def insecure_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CLIENT_OPTIONS)


def exit_after(seconds: float, what: str) -> None:
    """Shutdown's hard bound: whatever still runs (a long forward pass, a stuck thread) after
    `seconds`, the process exits."""
    import os

    def bail():
        log.warning("%s: still running %.0f s after the shutdown began; exiting now", what, seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, bail)
    timer.daemon = True
    timer.start()


# -- conversions ------------------------------------------------------------------------------------
def params_to_proto(p: SamplingParams) -> common_pb2.SamplingParams:
    msg = common_pb2.SamplingParams(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k,
                                    max_tokens=p.max_tokens, stop_token_ids=list(p.stop_token_ids),
                                    ignore_eos=p.ignore_eos)
    if p.seed is not None:
        msg.seed = p.seed
    return msg


def params_from_proto(msg: common_pb2.SamplingParams) -> SamplingParams:
    """Unset fields take the defaults (proto3 sends 0); raises ValueError naming a bad field."""
    return SamplingParams(
        temperature=msg.temperature,
        top_p=msg.top_p if msg.top_p != 0 else 1.0,
        top_k=msg.top_k,
        max_tokens=msg.max_tokens if msg.max_tokens != 0 else 64,
        seed=msg.seed if msg.HasField("seed") else None,
        stop_token_ids=tuple(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
    )


def ref_to_proto(ref: BlockRef) -> worker_pb2.BlockRef:
    return worker_pb2.BlockRef(**ref.to_dict())


def ref_from_proto(msg: worker_pb2.BlockRef) -> BlockRef:
    return BlockRef(**{f.name: getattr(msg, f.name) for f in worker_pb2.BlockRef.DESCRIPTOR.fields})


def spec_to_proto(spec: ChannelSpec) -> worker_pb2.ChannelSpec:
    return worker_pb2.ChannelSpec(**spec.to_dict())


def spec_from_proto(msg: worker_pb2.ChannelSpec) -> ChannelSpec:
    return ChannelSpec.from_dict({f.name: getattr(msg, f.name) for f in worker_pb2.ChannelSpec.DESCRIPTOR.fields})


# Trailing metadata of a RequestFault: the ids as a JSON list (binary metadata: ids are any strings).
FAULT_METADATA = "minedraft-request-ids-bin"


def request_fault(exc: grpc.RpcError):
    """The RequestFault a worker sent (INVALID_ARGUMENT naming its requests), or None: any other
    status is the worker's own failure."""
    from minedraft.spec.workers import RequestFault

    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    for key, value in exc.trailing_metadata() or ():
        if key == FAULT_METADATA and value:
            return RequestFault(json.loads(value), exc.details() or "refused by the worker")
    return None


def abort_with(context: grpc.ServicerContext, exc: Exception):
    """Map our exceptions to gRPC status codes (ValueError -> INVALID_ARGUMENT, ...)."""
    from minedraft.rpc.channels import ChannelError
    from minedraft.runner.block_manager import NoRoom
    from minedraft.spec.workers import RequestFault

    if isinstance(exc, RequestFault):  # one request's data: the caller fails it alone
        context.set_trailing_metadata(((FAULT_METADATA, json.dumps(exc.request_ids).encode()),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, NoRoom):  # the caller preempts and retries: not a failure of the service
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, ValueError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, KeyError):
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0] if exc.args else exc))
    if isinstance(exc, ChannelError):
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{type(exc).__name__}: {exc}")
    log.exception("internal error")
    context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def feature_block_to_proto(channel: str, ref: BlockRef, spans) -> worker_pb2.FeatureBlock:
    return worker_pb2.FeatureBlock(channel=channel, block=ref_to_proto(ref), spans=[
        worker_pb2.FeatureSpan(request_id=s.request_id, start=s.start, row=s.row, rows=s.rows) for s in spans])


def feature_block_from_proto(msg: worker_pb2.FeatureBlock):
    """(channel, BlockRef, [Span])."""
    from minedraft.rpc.channels.features import Span

    return msg.channel, ref_from_proto(msg.block), [Span(s.request_id, s.start, s.row, s.rows) for s in msg.spans]
