"""End to end through real processes: gateway + draft service + target service over gRPC."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from minedraft.client import MineDraftClient
from minedraft.runner.hf_adapter import greedy_generate
from minedraft.v1 import worker_pb2, worker_pb2_grpc

from cluster import run_concurrently, start_cluster

MAX_TOKENS = 20


def prompts():
    return [[1] + [(5 * i + 11 * j) % 97 + 3 for j in range(2 + 2 * i)] for i in range(8)]


@pytest.fixture(scope="module")
def expected(llama_pair):
    return [greedy_generate(llama_pair[2], p, MAX_TOKENS) for p in prompts()]


@pytest.fixture(scope="module", params=["shm", "inline"])
def cluster(request, llama_pair, tmp_path_factory):
    target, draft, _ = llama_pair
    c = start_cluster(target, draft, transport=request.param, log_dir=str(tmp_path_factory.mktemp("logs")))
    c.transport = request.param
    yield c
    c.stop()


def worker_info(address: str, role: str) -> worker_pb2.WorkerInfo:
    stub_cls = worker_pb2_grpc.TargetWorkerStub if role == "target" else worker_pb2_grpc.DraftWorkerStub
    with grpc.insecure_channel(address) as ch:
        return stub_cls(ch).Info(worker_pb2.InfoRequest(), timeout=5)


@pytest.mark.parametrize("mode", ["psd", "sd"])
def test_concurrent_streams_equal_target_only_greedy(cluster, expected, mode):
    address = cluster.addresses["gateway"]
    with MineDraftClient(address) as client:
        info = client.configure(mode=mode)
        assert info.mode == mode and info.transport == cluster.transport
        client.stats(reset=True)
    results = run_concurrently(address, prompts(), max_tokens=MAX_TOKENS, ignore_eos=True)
    for (ids, last), exp in zip(results, expected):
        assert ids == exp
        assert last.finished and last.finish_reason == "length" and last.num_generated_tokens == MAX_TOKENS
    with MineDraftClient(address) as client:
        stats = client.stats()
    assert stats.mode == mode
    assert 0 < stats.spec_decode_num_accepted_tokens < stats.spec_decode_num_draft_tokens
    assert stats.steps.num_steps > 0 and stats.steps.control_plane_s > 0


def test_cancelled_stream_frees_rows_on_both_services(cluster, expected):
    address = cluster.addresses["gateway"]
    with MineDraftClient(address) as client:
        client.configure(mode="psd")
    survivor = {}

    def other():
        with MineDraftClient(address) as c:
            survivor["out"] = c.generate_ids(prompts()[0], max_tokens=MAX_TOKENS, ignore_eos=True)

    t = threading.Thread(target=other)
    t.start()
    with MineDraftClient(address) as client:
        stream = client.generate(prompts()[3], max_tokens=10_000, ignore_eos=True)
        next(stream)
        next(stream)
        stream.cancel()  # the client walks away mid-stream
    t.join(timeout=60)
    assert survivor["out"][0] == expected[0]  # the others go on, unchanged
    deadline = time.time() + 20
    while time.time() < deadline:
        active = (worker_info(cluster.addresses["target"], "target").num_active,
                  worker_info(cluster.addresses["draft"], "draft").num_active)
        if active == (0, 0):
            break
        time.sleep(0.2)
    assert active == (0, 0)


def test_invalid_request_fields_name_the_field(cluster):
    with MineDraftClient(cluster.addresses["gateway"]) as client:
        for request, field in [
            (dict(prompt=[1, 2, 500]), "prompt"),
            (dict(prompt=[]), "prompt"),
            (dict(prompt=[1, 2], top_k=-3), "top_k"),
            (dict(prompt=[1, 2], temperature=-1.0), "temperature"),
        ]:
            prompt = request.pop("prompt")
            call = client.stub.Generate(_raw_request(prompt, **request))
            with pytest.raises(grpc.RpcError) as err:
                list(call)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in err.value.details()


def _raw_request(prompt, **params):
    from minedraft.v1 import common_pb2, gateway_pb2

    return gateway_pb2.GenerateRequest(prompt_ids=prompt, params=common_pb2.SamplingParams(max_tokens=4, **params))


def test_sampled_requests_run_and_are_reproducible(cluster):
    with MineDraftClient(cluster.addresses["gateway"]) as client:
        client.configure(mode="psd")
        a = client.generate_ids([1, 4, 9], max_tokens=12, temperature=0.9, seed=7, ignore_eos=True)[0]
        b = client.generate_ids([1, 4, 9], max_tokens=12, temperature=0.9, seed=7, ignore_eos=True)[0]
    assert a == b and len(a) == 12


def test_async_client_streams_the_same_tokens(cluster, expected):
    import asyncio

    from minedraft.client import AsyncMineDraftClient

    async def run():
        client = AsyncMineDraftClient(cluster.addresses["gateway"])
        ids = []
        async for chunk in client.generate(prompts()[2], max_tokens=MAX_TOKENS, ignore_eos=True):
            ids.extend(chunk.token_ids)
        await client.close()
        return ids

    assert asyncio.run(run()) == expected[2]
