"""Releases ride on the next call (issue 24, item 4): a request that finishes while a step's Verify and
Propose are in flight is not released with a Release RPC (it would wait for the service's lock, held
by the call in flight) but with the worker's next Add/Propose/Verify/Decode. Over real services:
no blocking RPC while a step is in flight, output unchanged, and nothing leaks (every KV block free,
no active request) -- also under a KV budget that forces preemption, and with a request id used again."""

from __future__ import annotations

import collections
import sys
import time

import grpc
import pytest

from gateway.draft_pool import DraftPool
from minedraft.launcher import LocalCluster
from minedraft.rpc.remote_workers import RemoteTargetWorker
from minedraft.runner.hf_adapter import greedy_generate
from minedraft.spec.request import Request
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.scheduler import Scheduler
from minedraft.v1 import worker_pb2, worker_pb2_grpc

from cluster import free_port

BLOCKING = ("Info", "Add", "Decode", "Release", "Handshake", "OpenChannel")


def prompts():
    return [[1] + [(5 * i + 11 * j) % 97 + 3 for j in range(2 + 2 * i)] for i in range(10)]


def lengths():  # different lengths: requests finish at different steps
    return [6 + 4 * i for i in range(10)]


def start_workers(target: str, draft: str, extra=()):
    ports = {"target": free_port(), "draft": free_port()}
    py = [sys.executable, "-m"]
    cluster = LocalCluster({
        "target": py + ["target_service", "--model", target, "--port", str(ports["target"]), "--threads", "1", *extra],
        "draft": py + ["draft_service", "--model", draft, "--port", str(ports["draft"]), "--threads", "1", *extra]})
    cluster.start()
    cluster.addresses = {n: f"127.0.0.1:{p}" for n, p in ports.items()}
    try:
        cluster.wait_healthy(cluster.addresses, timeout=120, progress=lambda m: None)
    except Exception:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def roomy(llama_pair):
    c = start_workers(llama_pair[0], llama_pair[1])
    yield c
    c.stop()


@pytest.fixture(scope="module")
def tight(llama_pair):  # block size 4, 40 blocks: the ten requests cannot all run at once
    c = start_workers(llama_pair[0], llama_pair[1], ["--block-size", "4", "--num-kv-blocks", "40"])
    yield c
    c.stop()


@pytest.fixture(scope="module")
def expected(llama_pair):
    return [greedy_generate(llama_pair[2], p, n) for p, n in zip(prompts(), lengths())]


def info(address: str, role: str) -> worker_pb2.WorkerInfo:
    stub_cls = worker_pb2_grpc.TargetWorkerStub if role == "target" else worker_pb2_grpc.DraftWorkerStub
    with grpc.insecure_channel(address) as ch:
        return stub_cls(ch).Info(worker_pb2.InfoRequest(), timeout=5)


def watch_blocking_calls(worker, calls: collections.Counter, scheduler_ref: list) -> None:
    """Count the worker's blocking RPCs made while a step's calls are in flight."""
    for name in BLOCKING:
        method = getattr(worker.stub, name, None)
        if method is None:
            continue

        def watched(*args, _m=method, _n=f"{worker.address} {name}", **kwargs):
            if scheduler_ref and scheduler_ref[0].in_flight is not None:
                calls[_n] += 1
            return _m(*args, **kwargs)
        setattr(worker.stub, name, watched)


def build(cluster, mode: str):
    target = RemoteTargetWorker(cluster.addresses["target"])
    pool = DraftPool([cluster.addresses["draft"]], target, target.info(), None)
    pool.refresh()
    assert pool.live
    calls, ref = collections.Counter(), []
    watch_blocking_calls(target, calls, ref)
    for node in pool.nodes.values():
        watch_blocking_calls(node, calls, ref)
    sched = Scheduler(target, pool, mode, 3, max_num_seqs=16)
    ref.append(sched)
    return sched, calls


def request(rid: str, prompt: list[int], n: int) -> Request:
    return Request(rid, list(prompt), SamplingParams(max_tokens=n, ignore_eos=True), seed=0, max_new_tokens=n,
                   stop_ids=frozenset())


def run(sched, reqs):
    for r in reqs:
        sched.add(r)
    while sched.has_unfinished():
        sched.step()


def assert_all_free(cluster):
    for role in ("target", "draft"):
        deadline = time.time() + 5  # nothing is asynchronous here: it must hold at once, or soon
        while True:
            i = info(cluster.addresses[role], role)
            if (i.num_active, i.num_free_kv_blocks) == (0, i.num_kv_blocks) or time.time() > deadline:
                break
            time.sleep(0.1)
        assert (role, i.num_active, i.num_free_kv_blocks) == (role, 0, i.num_kv_blocks)


@pytest.mark.parametrize("mode", ["psd", "sd", "ar"])
def test_no_blocking_call_while_a_step_is_in_flight_and_nothing_leaks(roomy, expected, mode):
    sched, calls = build(roomy, mode)
    reqs = [request(f"r{i}", p, n) for i, (p, n) in enumerate(zip(prompts(), lengths()))]
    run(sched, reqs)
    assert [r.output_ids for r in reqs] == expected
    assert not calls, f"blocking calls while a step was in flight: {dict(calls)}"
    assert_all_free(roomy)
    sched.close()


@pytest.mark.parametrize("mode", ["psd", "sd"])
def test_tight_budget_admission_and_preemption_free_everything(tight, expected, mode):
    sched, calls = build(tight, mode)
    reqs = [request(f"t{i}", p, n) for i, (p, n) in enumerate(zip(prompts(), lengths()))]
    run(sched, reqs)
    assert [r.output_ids for r in reqs] == expected
    assert all(r.finish_reason == "length" for r in reqs)
    assert not calls, f"blocking calls while a step was in flight: {dict(calls)}"
    assert_all_free(tight)
    sched.close()


def test_an_id_used_again_is_released_before_it_is_added(roomy, expected):
    """"dup" finishes while r9 runs: its release is held; a new "dup" is added. The held release goes
    with that Add, before the admission: the new request keeps its rows."""
    sched, _ = build(roomy, "psd")
    long = request("r9", prompts()[9], lengths()[9])
    first = request("dup", prompts()[0], lengths()[0])
    for r in (long, first):
        sched.add(r)
    while not first.finished or "dup" in sched.running:
        sched.step()
    assert not long.finished
    assert "dup" in sched.target.held  # retired while r9's calls were in flight: the next call carries it
    second = request("dup", prompts()[3], lengths()[3])
    sched.add(second)
    while sched.has_unfinished():
        sched.step()
    assert first.output_ids == expected[0] and second.output_ids == expected[3] and long.output_ids == expected[9]
    assert_all_free(roomy)
    sched.close()


def test_a_failed_call_holds_its_releases_again(roomy):
    """A call that carried releases and failed keeps them for the next call (releasing twice is harmless)."""
    target = RemoteTargetWorker(roomy.addresses["target"])
    target.release_later(["gone-1", "gone-2"])
    with pytest.raises(grpc.RpcError):  # an unknown request: the service fails the call
        target.decode(["nobody"])
    assert target.held == ["gone-1", "gone-2"]
    target.flush_releases()
    assert target.held == []
    target.close()
