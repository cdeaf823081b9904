"""ChannelKeeper (minedraft/rpc/channel_keeper.py) against a real worker process (a model-free draft node,
no model to load): a worker channel's calls reuse one grpc polling thread, where a bare channel starts a
thread for every call (the negative control); the held call does not hold the worker's SIGTERM drain
(a bare held Watch holds it for the whole grace: measured 20.4 s at --drain-s 20); and a restarted
worker is held again by itself."""

from __future__ import annotations

import signal
import sys
import threading
import time

from minedraft.rpc.grpc_common import insecure_channel
from minedraft.rpc.remote_workers import RemoteDraftWorker
from minedraft.v1 import worker_pb2, worker_pb2_grpc

from cluster import free_port, start_healthy, wait_until

DRAIN_S = 20


def node(port: int, tmp_path):
    cmd = [sys.executable, "-m", "draft_service", "--method", "ngram", "--port", str(port), "--drain-s", str(DRAIN_S)]
    return start_healthy({"draft": cmd}, {"draft": f"127.0.0.1:{port}"}, str(tmp_path))


def polling_threads_seen(stub, calls: int = 8) -> set[str]:
    """grpc's channel-spin threads alive while each of `calls` sequential calls is in flight (grpc starts
    them wrapped in its `_run_with_context(...)._run`: threading names them "Thread-N (_run)", N unique)."""
    names = set()
    for _ in range(calls):
        pending = stub.Info.future(worker_pb2.InfoRequest(), timeout=10)
        names |= {t.name for t in threading.enumerate() if t.name.endswith("(_run)")}
        pending.result()
        time.sleep(0.05)  # a bare channel's thread exits once no call is in flight
    return names


def test_sequential_calls_reuse_one_polling_thread(tmp_path):
    port = free_port()
    cluster = node(port, tmp_path)
    worker = RemoteDraftWorker(f"127.0.0.1:{port}")
    bare = insecure_channel(f"127.0.0.1:{port}")
    try:
        assert wait_until(lambda: worker.keeper.serving, 10)
        assert len(polling_threads_seen(worker.stub)) == 1
        assert len(polling_threads_seen(worker_pb2_grpc.DraftWorkerStub(bare))) >= 4  # one per call
    finally:
        bare.close()
        worker.close()
        cluster.stop()


def test_the_kept_call_neither_holds_the_drain_nor_loses_a_restarted_worker(tmp_path):
    port = free_port()
    cluster = node(port, tmp_path)
    worker = RemoteDraftWorker(f"127.0.0.1:{port}")
    try:
        assert wait_until(lambda: worker.keeper.serving, 10)
        proc = cluster.procs["draft"]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DRAIN_S + 10)
        assert time.monotonic() - t0 < DRAIN_S / 2
        assert not worker.keeper.serving
        cluster = node(port, tmp_path)  # the worker is back on its address
        assert wait_until(lambda: worker.keeper.serving, 15)
        assert worker.info().max_k >= 0
        assert len(polling_threads_seen(worker.stub, calls=4)) == 1
    finally:
        worker.close()
        cluster.stop()
    assert not worker.keeper._thread.is_alive()  # close() ends it
