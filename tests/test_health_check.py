"""`minedraft health` (the containers' health check) is light: no torch, no model code, and it tells
SERVING from NOT_SERVING and from nothing listening."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# Run `minedraft health` in a fresh interpreter and report its exit code and what it imported.
PROBE = """
import json, sys
from minedraft.cli import main
rc = main(["health", sys.argv[1], "--timeout", "2"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "numpy")
               or m in ("minedraft.rpc.channels", "minedraft.runner.model", "minedraft.rpc.grpc_common",
                        "minedraft.engine"))
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


@pytest.fixture()
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def probe(address: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, address], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    return dict(json.loads(lines[-1]), said=lines[0])


def test_health_reports_serving_without_heavy_imports(health_server):
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = probe(address)
    assert result["rc"] == 0
    assert result["heavy"] == [], f"`minedraft health` imported {result['heavy']}"


def test_health_fails_when_not_serving_or_down(health_server):
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = probe(address)
    assert result["rc"] == 1 and result["said"] == "NOT_SERVING"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    result = probe(closed)  # nothing listens: told apart from NOT_SERVING
    assert result["rc"] == 2 and result["said"].startswith("unreachable") and closed in result["said"]
