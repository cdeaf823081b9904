"""`minedraft health`: ask a service's grpc.health.v1 whether it is SERVING.

Light on purpose: container health checks run this every few seconds, so it imports only grpc and
the health stubs (no torch, no model code, no token channels); it takes well under a second."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check_health(address: str, timeout: float = 2.0, service: str = "") -> bool:
    """True when the service at ``address`` answers SERVING within ``timeout`` seconds."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
