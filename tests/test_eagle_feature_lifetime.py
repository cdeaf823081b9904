"""The lifetime of the target's feature blocks on their way to an EAGLE node (real target and EAGLE
node processes; the gateway's own DraftPool and scheduler driven in this process where a test needs
a schedule that no flag gives): a request decoding target-only for longer than the shm ring has
slots is drafted afterwards from true features (the ring reuses a slot only once its rows are read;
a full ring spills inline), so no feature is missing and greedy output equals target-only."""

from __future__ import annotations

import sys

import grpc
import pytest

from gateway.connection import Workers
from minedraft import Engine, SamplingParams
from minedraft.assets import load_heldout_prompts
from minedraft.config import TimeoutConfig
from minedraft.rpc.channels.features import NUM_SLOTS
from minedraft.spec.controller import FixedK
from minedraft.spec.request import build_request
from minedraft.spec.scheduler import Scheduler
from minedraft.v1 import worker_pb2, worker_pb2_grpc

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
