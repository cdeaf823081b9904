"""Start-up faults: unreachable workers, a handshake that cannot agree; and the proto code is fresh."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest

from minedraft.launcher import LocalCluster
from minedraft.rpc.grpc_common import check_health
from minedraft.v1 import worker_pb2, worker_pb2_grpc

from cluster import free_port


def test_gateway_without_workers_stays_up_not_serving_and_retries(tmp_path):
    port, dead = free_port(), free_port()
    cluster = LocalCluster({"gateway": [sys.executable, "-m", "gateway", "--port", str(port),
                                        "--target", f"127.0.0.1:{dead}", "--draft", f"127.0.0.1:{dead}"]},
                           log_dir=str(tmp_path))
    cluster.start()
    log_file = tmp_path / "gateway.log"
    try:
        deadline = time.time() + 60  # the gateway needs a moment to import torch
        while time.time() < deadline and log_file.read_text().count("workers not ready") < 2:
            time.sleep(0.5)
        assert cluster.first_exited() is None  # no crash loop
        from minedraft.client import MineDraftClient

        with MineDraftClient(f"127.0.0.1:{port}") as client:
            with pytest.raises(grpc.RpcError) as err:
                list(client.generate([1, 2, 3], max_tokens=2))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not check_health(f"127.0.0.1:{port}")
    finally:
        cluster.stop()
    log = log_file.read_text()
    retries = [line for line in log.splitlines() if "workers not ready" in line]
    assert 2 <= len(retries) <= 8  # one line per attempt, with backoff
    assert "retrying in" in retries[0]


def test_handshake_that_cannot_agree_names_both_sides(llama_pair, tmp_path):
    port = free_port()
    cluster = LocalCluster({"draft": [sys.executable, "-m", "draft_service", "--model", llama_pair[1],
                                      "--port", str(port)]}, log_dir=str(tmp_path))
    cluster.start()
    try:
        cluster.wait_healthy({"draft": f"127.0.0.1:{port}"}, timeout=60, progress=lambda m: None)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = worker_pb2_grpc.DraftWorkerStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Handshake(worker_pb2.HandshakeRequest(reader_transports=["shm", "inline"],
                                                           reader_hostname="elsewhere",
                                                           forced_transport="cuda_ipc", channel_id="x"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "shm" in err.value.details() and "inline" in err.value.details()
            reply = stub.Handshake(worker_pb2.HandshakeRequest(reader_transports=["shm", "inline"],
                                                               reader_hostname="elsewhere", channel_id="x"))
            assert reply.transport == "inline"  # different host: falls back to inline
    finally:
        cluster.stop()


def test_generated_proto_code_is_fresh(tmp_path):
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, str(root / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True)
    for fresh in sorted((tmp_path / "minedraft" / "v1").iterdir()):
        committed = root / "minedraft" / "v1" / fresh.name
        assert committed.exists(), f"{fresh.name} missing: run python scripts/gen_proto.py"
        assert _strip_versions(committed.read_text()) == _strip_versions(fresh.read_text()), (
            f"minedraft/v1/{fresh.name} is stale: run python scripts/gen_proto.py")


def _strip_versions(text: str) -> str:
    # The tool versions written into the code differ between machines; the contract does not.
    skip = ("# Protobuf Python Version", "GRPC_GENERATED_VERSION", "    6,", "    7,", "    5,")
    return "\n".join(line for line in text.splitlines() if not line.startswith(skip)
                     and not line.strip().startswith(("_runtime_version.Domain", "'',")))
