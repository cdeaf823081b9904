"""The lifetime of the target's feature blocks on their way to an EAGLE node (real target and EAGLE
node processes; the gateway's own DraftPool and scheduler driven in this process where a test needs
a schedule that no flag gives): a request decoding target-only for longer than the shm ring has
slots is drafted afterwards from true features (the ring reuses a slot only once its rows are read;
a full ring spills inline), so no feature is missing and greedy output equals target-only."""

from __future__ import annotations

import pathlib
import sys
import threading
import time

import grpc
import pytest

from gateway.connection import Workers
from minedraft import Engine, SamplingParams
from minedraft.assets import load_heldout_prompts
from minedraft.client import MineDraftClient
from minedraft.config import TimeoutConfig
from minedraft.rpc.channels.features import NUM_SLOTS
from minedraft.spec.controller import FixedK
from minedraft.spec.request import build_request
from minedraft.spec.scheduler import Scheduler
from minedraft.v1 import gateway_pb2, worker_pb2, worker_pb2_grpc

from cluster import free_port, start_healthy

PROMPTS = load_heldout_prompts(3)
MAX_TOKENS = 40
STRETCH = NUM_SLOTS + 8  # target-only decisions before the first proposal: more calls than ring slots


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    py = [sys.executable, "-m"]
    ports = {name: free_port() for name in ("target", "eagle")}
    commands = {"target": py + ["target_service", "--port", str(ports["target"]), "--threads", "1"],
                "eagle": py + ["draft_service", "--method", "eagle", "--port", str(ports["eagle"]), "--threads", "1"]}
    addresses = {n: f"127.0.0.1:{p}" for n, p in ports.items()}
    cluster = start_healthy(commands, addresses, str(tmp_path_factory.mktemp("lifetime_logs")))
    cluster.addresses = addresses
    with Engine(mode="ar", max_num_seqs=8) as engine:
        cluster.prompt_ids = [engine.encode(p) for p in PROMPTS]
        cluster.expected = [r.token_ids for r in engine.generate(
            cluster.prompt_ids, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))]
    yield cluster
    cluster.stop()


def node_info(address) -> worker_pb2.WorkerInfo:
    with grpc.insecure_channel(address) as ch:
        return worker_pb2_grpc.DraftWorkerStub(ch).Info(worker_pb2.InfoRequest(), timeout=5)


class TargetOnlyFirst(FixedK):
    """k = 0 (a target-only decode of the batch) for the first `stretch` decisions, then k."""

    def __init__(self, k: int, stretch: int):
        super().__init__(k)
        self.left = stretch

    def k_for(self, ids, requests) -> int:
        if self.left:
            self.left -= 1
            return 0
        return self.k


def run_schedule(addresses, prompt_ids, controller, transport="shm"):
    workers = Workers(addresses["target"], [addresses["eagle"]], transport, 3, TimeoutConfig())
    scheduler = Scheduler(workers.target, workers.draft, "sd", 3, max_num_seqs=8)
    scheduler.controller = controller
    params = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
    requests = [build_request(f"r{i}", ids, params, workers.target_info.vocab_size, workers.target_info.context_len,
                              ()) for i, ids in enumerate(prompt_ids)]
    for r in requests:
        scheduler.add(r)
    try:
        while scheduler.has_unfinished():
            scheduler.step()
        return [r.output_ids for r in requests], scheduler, workers
    finally:
        scheduler.close()


def test_a_target_only_stretch_longer_than_the_ring_loses_no_feature(nodes):
    before = node_info(nodes.addresses["eagle"]).missing_features
    outputs, scheduler, workers = run_schedule(nodes.addresses, nodes.prompt_ids, TargetOnlyFirst(3, STRETCH))
    assert outputs == nodes.expected
    metrics = scheduler.metrics
    # it drafted after the stretch
    assert metrics.spec_decode_num_draft_tokens > 0 and metrics.spec_decode_num_accepted_tokens > 0
    assert list(workers.draft.features.channels.values()) == ["shm"]
    assert node_info(nodes.addresses["eagle"]).missing_features == before  # every feature arrived


def test_an_eagle_node_that_leaves_and_joins_again_mid_stream_gets_every_feature(nodes):
    """The EAGLE node killed mid-stream: the target stops exporting (its log says so); started again
    while the requests still run, it joins, the target exports again, and the node gets its requests'
    whole context (take-over): no feature missing, output equal to target-only."""
    long = 120
    with Engine(mode="ar", max_num_seqs=8) as engine:
        expected = [r.token_ids for r in engine.generate(nodes.prompt_ids, SamplingParams(max_tokens=long,
                                                                                          ignore_eos=True))]
    workers = Workers(nodes.addresses["target"], [nodes.addresses["eagle"]], "shm", 3, TimeoutConfig())
    scheduler = Scheduler(workers.target, workers.draft, "psd", 3, max_num_seqs=8)
    params = SamplingParams(max_tokens=long, ignore_eos=True)
    requests = [build_request(f"j{i}", ids, params, workers.target_info.vocab_size, workers.target_info.context_len,
                              ()) for i, ids in enumerate(nodes.prompt_ids)]
    for r in requests:
        scheduler.add(r)
    target_log = pathlib.Path(nodes.log_dir) / "target.log"
    try:
        steps = 0
        while scheduler.has_unfinished():
            scheduler.step()
            steps += 1
            if steps == 10:  # drafting with features: the node goes away
                nodes.procs["eagle"].kill()
                nodes.procs["eagle"].wait(timeout=30)
            if steps == 20:  # decoding without a node since: a new node process, joined by the next proposal
                assert not workers.draft.live
                assert "no EAGLE node drafts: features no longer exported" in target_log.read_text()
                nodes.start_one("eagle")
                nodes.wait_healthy({"eagle": nodes.addresses["eagle"]}, timeout=120, progress=lambda m: None)
                time.sleep(1.1)  # the pool looks for nodes again at most once a second
        assert workers.draft.live
        metrics = scheduler.metrics
    finally:
        scheduler.close()
    assert [r.output_ids for r in requests] == expected
    log = target_log.read_text()
    assert log.rindex("an EAGLE node drafts: exporting features") > log.rindex("features no longer exported")
    info = node_info(nodes.addresses["eagle"])
    assert info.missing_features == 0
    assert metrics.spec_decode_num_accepted_tokens > 0


@pytest.fixture(scope="module")
def served(nodes, tmp_path_factory):
    """A gateway (psd, k 3, shm) in front of the module's target and EAGLE node."""
    port = free_port()
    command = [sys.executable, "-m", "gateway", "--target", nodes.addresses["target"], "--draft",
               nodes.addresses["eagle"], "--port", str(port), "--http-port", "0", "--transport", "shm", "-k", "3",
               "--mode", "psd", "--draft-refresh-s", "0.5"]
    address = f"127.0.0.1:{port}"
    cluster = start_healthy({"gateway": command}, {"gateway": address}, str(tmp_path_factory.mktemp("gw_logs")))
    cluster.address = address
    yield cluster
    cluster.stop()


def wait_idle(address, timeout=30.0) -> gateway_pb2.Stats:
    """GetStats once the gateway runs nothing (the aborted requests' rows released)."""
    deadline = time.monotonic() + timeout
    with MineDraftClient(address) as client:
        while True:
            stats = client.stats()
            if stats.feature_requests_held == 0 or time.monotonic() > deadline:
                return stats
            time.sleep(0.2)


def test_aborted_streams_leave_no_feature_block_in_the_gateway(nodes, served):
    """Many streams aborted mid-flight, verifies in flight included: the relay holds nothing after."""
    n = 12
    running = [threading.Event() for _ in range(n)]
    errors = []

    def one(i):
        with MineDraftClient(served.address) as client:
            try:
                for _chunk in client.generate(nodes.prompt_ids[i % len(PROMPTS)], request_id=f"abort-{i}",
                                              max_tokens=400, ignore_eos=True):
                    running[i].set()
            except grpc.RpcError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for event in running:  # every stream has tokens: all are running, verifies in flight
        assert event.wait(timeout=120)
    with MineDraftClient(served.address) as client:
        for i in range(n):
            assert client.abort(f"abort-{i}")
    for t in threads:
        t.join(timeout=60)
    assert not errors
    stats = wait_idle(served.address)
    assert stats.feature_requests_held == 0


def generate_all(address, prompts, max_tokens) -> list[list[int]]:
    results = [None] * len(prompts)

    def one(i):
        with MineDraftClient(address) as client:
            results[i] = [t for c in client.generate(prompts[i], max_tokens=max_tokens, ignore_eos=True)
                          for t in c.token_ids]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    return threads, results


def target_prefix_hits(address) -> int:
    with grpc.insecure_channel(address) as ch:
        return worker_pb2_grpc.TargetWorkerStub(ch).Info(worker_pb2.InfoRequest(), timeout=5).prefix_cache_hits


def test_ar_mode_exports_no_feature_and_prefix_caching_is_on_again(nodes, served):
    """In ar mode (an EAGLE node attached all the same) no feature crosses, and the target's prefix
    cache serves repeated prompts again (the target logs the change)."""
    gw = served.address
    with MineDraftClient(gw) as client:
        client.configure(mode="ar")
        client.stats(reset=True)
    hits = target_prefix_hits(nodes.addresses["target"])
    for _ in range(2):  # the second round finds the first one's prompt blocks cached
        threads, results = generate_all(gw, nodes.prompt_ids, MAX_TOKENS)
        for t in threads:
            t.join(timeout=120)
        assert results == nodes.expected
    with MineDraftClient(gw) as client:
        assert client.stats().steps.feature_bytes == 0
        client.configure(mode="psd")
    assert target_prefix_hits(nodes.addresses["target"]) > hits
    target_log = (pathlib.Path(nodes.log_dir) / "target.log").read_text()
    assert "features no longer exported, prefix caching on again" in target_log


