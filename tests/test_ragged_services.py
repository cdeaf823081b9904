"""Ragged per-row lengths through real services: the draft's confidences come back in ProposeReply
(merged in batch order over two draft nodes by the gateway's pool), the lengths travel in
VerifyRequest, the drafts through the token channel; greedy output equals target-only decoding."""

from __future__ import annotations

import sys

import grpc
import pytest
from ragged import MAX_TOKENS, factory_prompts, ragged_generate

from gateway.draft_pool import DraftPool
from minedraft.launcher import LocalCluster
from minedraft.rpc.remote_workers import RemoteDraftWorker, RemoteTargetWorker
from minedraft.runner.hf_adapter import greedy_generate
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.workers import NewRequest

from cluster import free_port


@pytest.fixture(scope="module")
def services(llama_pair, tmp_path_factory):
    target, draft, ref = llama_pair
    ports = {name: free_port() for name in ("target", "d1", "d2")}
    serve = [sys.executable, "-m"]
    cluster = LocalCluster({
        "target": serve + ["target_service", "--model", target, "--port", str(ports["target"]), "--threads", "1"],
        **{d: serve + ["draft_service", "--model", draft, "--port", str(ports[d]), "--threads", "1"]
           for d in ("d1", "d2")},
    }, log_dir=str(tmp_path_factory.mktemp("ragged_logs")))
    cluster.start()
    try:
        cluster.addresses = {n: f"127.0.0.1:{p}" for n, p in ports.items()}
        cluster.wait_healthy(cluster.addresses, timeout=120, progress=lambda m: None)
        cluster.expected = [greedy_generate(ref, p, MAX_TOKENS) for p in factory_prompts()]
        yield cluster
    finally:
        cluster.stop()


def connect(services, transport: str, nodes=("d1",)):
    """A target client and a draft (one node directly, or a pool of nodes) sharing a token channel."""
    target = RemoteTargetWorker(services.addresses["target"])
    info = target.info()
    if len(nodes) == 1:
        draft = RemoteDraftWorker(services.addresses[nodes[0]])
        target.open_channel(draft.channel_id, draft.handshake(info, transport).spec)
        return target, draft
    pool = DraftPool([services.addresses[n] for n in nodes], target, info, transport)
    pool.refresh()
    assert len(pool.live) == len(nodes)
    return target, pool


@pytest.mark.parametrize("transport", ["shm", "inline"])
def test_ragged_lengths_over_grpc_equal_target_only(services, transport):
    target, draft = connect(services, transport)
    try:
        assert ragged_generate(target, draft, factory_prompts()) == services.expected
    finally:
        target.close()
        draft.close()


def test_pool_merges_confidences_in_batch_order(services):
    target, pool = connect(services, "auto", nodes=("d1", "d2"))
    try:
        assert ragged_generate(target, pool, factory_prompts(), seed=3) == services.expected
    finally:
        pool.close()
        target.close()


def test_bad_lengths_name_the_field(services):
    target, draft = connect(services, "auto")
    params = SamplingParams(temperature=0.0)
    reqs = [NewRequest(f"bad{i}", [1, 7 + i, 9], params, seed=i) for i in range(2)]
    try:
        first = target.add(reqs)
        draft.add(reqs)
        proposal = draft.propose([r.request_id for r in reqs], 3, {r.request_id: [t] for r, t in zip(reqs, first)})
        assert proposal.confidence.shape == proposal.top_prob.shape == (2, 3)
        for lengths in ([1], [0, 4]):
            proposal.lengths = lengths
            with pytest.raises(grpc.RpcError) as err:
                target.verify(proposal)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lengths" in err.value.details()
        proposal.lengths = [0, 2]
        verdict = target.verify(proposal)
        assert verdict.num_accepted[0] == 0 and verdict.num_accepted[1] <= 2
    finally:
        target.release([r.request_id for r in reqs])
        draft.release([r.request_id for r in reqs])
        target.close()
        draft.close()
