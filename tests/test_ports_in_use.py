"""Every service refuses a port in use, naming it, also one held by a grpc server that set SO_REUSEPORT
(grpc's Python default, which would let two listeners split the connections); `minedraft up` refuses at
once when any of its ports is taken."""

import subprocess
import sys
import time
from concurrent import futures

import grpc
import pytest

from cluster import free_port


@pytest.fixture()
def held_port():
    """A port held by a grpc server with grpc's default options (SO_REUSEPORT on)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


@pytest.mark.parametrize("service", ["gateway", "target_service", "draft_service"])
def test_service_refuses_a_port_in_use(held_port, service):
    extra = ["--http-port", "0"] if service == "gateway" else ["--threads", "1"]
    out = subprocess.run([sys.executable, "-m", service, "--port", str(held_port), *extra],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert f"cannot listen on 127.0.0.1:{held_port}" in out.stderr and "in use" in out.stderr, out.stderr[-2000:]


def test_gateway_http_port_in_use_is_named(held_port):
    out = subprocess.run([sys.executable, "-m", "gateway", "--port", str(free_port()), "--http-port",
                          str(held_port)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and f"127.0.0.1:{held_port}" in out.stderr, out.stderr[-2000:]


def test_up_refuses_ports_in_use_at_once(held_port):
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "minedraft", "up", "--port", str(free_port()),
                          "--target-port", str(held_port), "--draft-port", str(free_port()), "--http-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"port in use: 127.0.0.1:{held_port}" in out.stderr, out.stderr
    assert "healthy" not in out.stdout and time.monotonic() - t0 < 20  # before starting anything
