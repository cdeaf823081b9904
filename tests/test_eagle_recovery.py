"""A target killed and restarted mid-stream with an EAGLE node attached (real processes): the gateway
re-prefills every running request on the new target, which exports the features of all their
committed positions again; and an EAGLE node killed mid-stream, whose requests move to the other
node with their features. The streams continue with exactly target-only greedy output, and no head
ever drafted from a missing feature."""

import re
import signal
import sys
import time

import grpc
import pytest
from test_recovery import PROMPTS, Stack, Streams

from minedraft import Engine, SamplingParams
from minedraft.client import MineDraftClient
from minedraft.launcher import LocalCluster
from minedraft.v1 import worker_pb2, worker_pb2_grpc

from cluster import free_port

GREEDY = SamplingParams(max_tokens=48, ignore_eos=True)


@pytest.fixture(scope="module")
def expected():
    with Engine(mode="ar", max_num_seqs=8) as engine:
        return [r.token_ids for r in engine.generate(PROMPTS, GREEDY)]


def test_target_restart_with_an_eagle_node_resends_features(tmp_path, expected):
    stack = Stack(tmp_path, draft_flags=("--method", "eagle"), gateway_flags=("--transport", "shm"))
    try:
        streams = Streams(stack.addr["gateway"], GREEDY)
        streams.wait_some_tokens()
        stack.signal("target", signal.SIGKILL)
        time.sleep(0.5)
        stack.start("target")
        streams.join()
        assert streams.errors == [None] * len(PROMPTS)
        assert streams.tokens == expected
        assert re.search(r"target \S+ \(restarted\); [1-9]\d* running request\(s\) resume", stack.log("gateway"))
        # both target processes exported features to the node, over shm
        assert len(re.findall(r"feature channel .* uses transport shm", stack.log("target"))) == 2
        with grpc.insecure_channel(stack.addr["draft"]) as ch:
            info = worker_pb2_grpc.DraftWorkerStub(ch).Info(worker_pb2.InfoRequest(), timeout=5)
        assert info.method == "eagle" and info.missing_features == 0
    finally:
        stack.stop()


def test_eagle_node_killed_mid_stream_the_other_gets_all_features(tmp_path, expected):
    """Two EAGLE nodes; one SIGKILLed mid-stream: its requests move to the survivor, which gets the
    features of their whole committed context (the target forwards it again), so it never drafts from
    a missing feature; output unchanged."""
    py = [sys.executable, "-m"]
    ports = {name: free_port() for name in ("target", "eagle1", "eagle2", "gateway")}
    addr = {name: f"127.0.0.1:{p}" for name, p in ports.items()}
    commands = {"target": py + ["target_service", "--port", str(ports["target"]), "--threads", "1"],
                "gateway": py + ["gateway", "--target", addr["target"], "--draft", f"{addr['eagle1']},{addr['eagle2']}",
                                 "--port", str(ports["gateway"]), "--http-port", "0", "-k", "3",
                                 "--draft-refresh-s", "0.5"]}
    for node in ("eagle1", "eagle2"):
        commands[node] = py + ["draft_service", "--method", "eagle", "--port", str(ports[node]), "--threads", "1"]
    cluster = LocalCluster(commands, log_dir=str(tmp_path))
    cluster.start()
    try:
        cluster.wait_healthy(addr, timeout=120, progress=lambda m: None)
        streams = Streams(addr["gateway"], GREEDY)
        streams.wait_some_tokens()
        cluster.procs["eagle1"].kill()
        streams.join()
        assert streams.errors == [None] * len(PROMPTS)
        assert streams.tokens == expected
        with MineDraftClient(addr["gateway"]) as client:
            assert len(client.model_info().draft_endpoints) == 1
            assert client.stats().spec_decode_num_accepted_tokens > 0
        with grpc.insecure_channel(addr["eagle2"]) as ch:
            info = worker_pb2_grpc.DraftWorkerStub(ch).Info(worker_pb2.InfoRequest(), timeout=5)
        assert info.missing_features == 0
    finally:
        cluster.stop()
