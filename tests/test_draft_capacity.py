"""A worker's capacity travels in WorkerInfo, and a gateway k above a draft's --max-k is a clear error:
the node is refused at start-up (and the gateway says why it has no draft), Configure answers
FAILED_PRECONDITION; not every Propose failing and the pool dropping the node."""

from __future__ import annotations

import sys
import time

import grpc
import pytest

from minedraft.client import MineDraftClient
from minedraft.config import MAX_SPECULATIVE_TOKENS
from minedraft.launcher import LocalCluster
from minedraft.rpc.grpc_common import check_health
from minedraft.runner.hf_adapter import greedy_generate
from minedraft.v1 import worker_pb2, worker_pb2_grpc

from cluster import free_port


def info(address: str, stub_cls) -> worker_pb2.WorkerInfo:
    with grpc.insecure_channel(address) as ch:
        return stub_cls(ch).Info(worker_pb2.InfoRequest(), timeout=5)


def gateway(ports: dict, port: int, k) -> list[str]:
    return [sys.executable, "-m", "gateway", "--target", f"127.0.0.1:{ports['target']}", "--draft",
            f"127.0.0.1:{ports['draft']}", "--port", str(port), "--mode", "sd", "-k", str(k)]


@pytest.fixture(scope="module")
def workers(llama_pair, tmp_path_factory):
    target, draft, _ = llama_pair
    ports = {"target": free_port(), "draft": free_port()}
    py = [sys.executable, "-m"]
    cluster = LocalCluster({
        "target": py + ["target_service", "--model", target, "--port", str(ports["target"]), "--threads", "1"],
        "draft": py + ["draft_service", "--model", draft, "--port", str(ports["draft"]), "--threads", "1",
                       "--max-k", "2", "--max-num-seqs", "8"]}, log_dir=str(tmp_path_factory.mktemp("workers")))
    cluster.start()
    try:
        cluster.wait_healthy({r: f"127.0.0.1:{p}" for r, p in ports.items()}, timeout=120, progress=lambda m: None)
        yield ports
    finally:
        cluster.stop()


def test_workers_report_their_capacity(workers):
    d = info(f"127.0.0.1:{workers['draft']}", worker_pb2_grpc.DraftWorkerStub)
    assert (d.max_k, d.max_num_seqs, d.method) == (2, 8, "model") and d.vocab_size > 0
    t = info(f"127.0.0.1:{workers['target']}", worker_pb2_grpc.TargetWorkerStub)
    assert (t.max_k, t.max_num_seqs, t.method) == (MAX_SPECULATIVE_TOKENS, 64, "")


def test_k_above_the_drafts_max_k_is_refused_at_start_up(workers, tmp_path):
    port = free_port()
    cluster = LocalCluster({"gateway": gateway(workers, port, k=4)}, log_dir=str(tmp_path))
    cluster.start()
    try:
        deadline, log = time.monotonic() + 60, ""
        while "no draft node can serve" not in log and time.monotonic() < deadline:
            time.sleep(0.3)
            log = (tmp_path / "gateway.log").read_text()
        assert "no draft node can serve" in log, log
        assert "--max-k 2 is below the gateway's -k 4" in log and "--max-k 4 or more" in log
        assert not check_health(f"127.0.0.1:{port}", timeout=2.0)  # no draft it can use: not serving
        assert "Propose" not in log and "dropped" not in log
    finally:
        cluster.stop()


def test_configure_above_max_k_fails_with_failed_precondition(workers, llama_pair, tmp_path):
    port = free_port()
    cluster = LocalCluster({"gateway": gateway(workers, port, k=2)}, log_dir=str(tmp_path))
    cluster.start()
    try:
        cluster.wait_healthy({"gateway": f"127.0.0.1:{port}"}, timeout=60, progress=lambda m: None)
        prompt = [1, 5, 9, 13, 17]
        with MineDraftClient(f"127.0.0.1:{port}") as client:
            with pytest.raises(grpc.RpcError) as err:
                client.configure(num_speculative_tokens=4)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "num_speculative_tokens" in err.value.details() and "max_k 2" in err.value.details()
            assert client.model_info().num_speculative_tokens == 2  # unchanged
            ids, last = client.generate_ids(prompt, max_tokens=12)
            assert ids == greedy_generate(llama_pair[2], prompt, 12)
            assert last.num_drafted > 0  # the node stayed in the pool and drafted
        assert "dropped" not in (tmp_path / "gateway.log").read_text()
    finally:
        cluster.stop()


def test_auto_k_stays_within_the_drafts_max_k(workers, llama_pair, tmp_path):
    """-k auto (with --max-k 8) against a node with --max-k 2: the node joins and auto's range is 0..2."""
    port = free_port()
    cluster = LocalCluster({"gateway": gateway(workers, port, k="auto")}, log_dir=str(tmp_path))
    cluster.start()
    try:
        cluster.wait_healthy({"gateway": f"127.0.0.1:{port}"}, timeout=60, progress=lambda m: None)
        prompt = [1, 5, 9, 13, 17]
        with MineDraftClient(f"127.0.0.1:{port}") as client:
            info = client.model_info()
            assert info.auto_k and info.max_k == 2
            ids, _ = client.generate_ids(prompt, max_tokens=24)
            assert ids == greedy_generate(llama_pair[2], prompt, 24)
            assert len(client.stats().k_steps["sd"].steps_at_k) <= 3  # never above k = 2
        assert "dropped" not in (tmp_path / "gateway.log").read_text()
    finally:
        cluster.stop()
