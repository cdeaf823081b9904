"""TLS on the gateway's public port (gRPC and HTTP), and operator calls (Configure, GetStats with
reset) refused on a gateway that is reachable from outside without an API key."""

import shutil
import ssl
import subprocess
import time
import urllib.request

import grpc
import pytest
from test_recovery import Stack

from minedraft.client import MineDraftClient

from cluster import free_port

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def wait_for(fn, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_tls_gateway_and_operator_calls(tmp_path):
    cert, key = self_signed(tmp_path)
    # 0.0.0.0 and no API key: anyone who reaches the port may generate, but not reconfigure.
    http_port = free_port()
    s = Stack(tmp_path, gateway_flags=["--tls-cert", cert, "--tls-key", key, "--bind", "0.0.0.0",
                                       "--http-port", str(http_port)], wait=("target", "draft"))
    try:
        address = f"localhost:{s.ports['gateway']}"
        with MineDraftClient(address, tls_ca=cert) as client:
            wait_for(client.model_info)
            ids, last = client.generate_ids("def f(x):", max_tokens=8, ignore_eos=True)
            assert len(ids) == 8 and last.finish_reason == "length"
            client.stats()  # reading counters is fine
            for call in (lambda: client.configure(mode="sd"), lambda: client.stats(reset=True)):
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "operator call" in refused.value.details()
        https = ssl.create_default_context(cafile=cert)  # the HTTP API is on TLS too
        with urllib.request.urlopen(f"https://localhost:{http_port}/health", context=https, timeout=10) as r:
            assert r.status == 200
        with MineDraftClient(address) as plain:  # plaintext against the TLS port fails, it does not hang
            with pytest.raises(grpc.RpcError):
                plain.generate_ids("def f(x):", max_tokens=2, timeout=5)
    finally:
        s.stop()
