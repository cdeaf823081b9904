"""`minedraft health`: ask a service's grpc.health.v1 whether it is SERVING.

Light on purpose: container health checks run this every few seconds, so it imports only grpc and
the health stubs (no torch, no model code, no token channels); it takes well under a second."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def health_status(address: str, timeout: float = 2.0, service: str = "") -> str:
    """SERVING, NOT_SERVING (or another status name the service reports), "unreachable" when nothing
    answers at ``address`` within ``timeout`` seconds, or the gRPC code's name (UNIMPLEMENTED: no
    health service there)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return UNREACHABLE
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


UNREACHABLE = "unreachable"


def check_health(address: str, timeout: float = 2.0, service: str = "") -> bool:
    """True when the service at ``address`` answers SERVING within ``timeout`` seconds."""
    return health_status(address, timeout, service) == "SERVING"
