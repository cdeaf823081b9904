"""Many open gRPC streams on the asyncio gateway: past --max-num-seqs + --max-waiting they are refused
with RESOURCE_EXHAUSTED at once, the others complete with the target-only tokens, none hangs, and
grpc.health Check and GetModelInfo answer quickly throughout (the synchronous server wedged at 256).
2,000 by default (the issue's figure; grpc's own pending-call limit once cancelled ~10% of them);
MINEDRAFT_MANY_STREAMS sets another count."""

import asyncio
import os
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_recovery import Stack

from minedraft import Engine, SamplingParams
from minedraft.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

N_STREAMS = int(os.environ.get("MINEDRAFT_MANY_STREAMS", "2000"))
MAX_NUM_SEQS, MAX_WAITING, N_TOKENS = 16, 400, 8  # 416 open at once: past the old 256 threads
PROMPTS = [[1 + i, 40 + 3 * i, 7, 99 + i] for i in range(8)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("many"), gateway_flags=["--max-num-seqs", str(MAX_NUM_SEQS),
                                                              "--max-waiting", str(MAX_WAITING)])
    yield s
    s.stop()


def _p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _run(address: str):
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(8, N_STREAMS // 50))]
    outcomes, probes, done = [], {"health": [], "model_info": []}, asyncio.Event()

    async def stream(i):
        stub = gateway_pb2_grpc.GatewayStub(channels[i % len(channels)])
        req = gateway_pb2.GenerateRequest(prompt_ids=PROMPTS[i % len(PROMPTS)], params=common_pb2.SamplingParams(
            max_tokens=N_TOKENS, ignore_eos=True))
        tokens = []
        try:
            async for chunk in stub.Generate(req, timeout=300):
                tokens.extend(chunk.token_ids)
            outcomes.append(("completed", i, tokens))
        except grpc.aio.AioRpcError as exc:
            outcomes.append(("refused" if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else exc.code().name,
                             i, exc.details()))

    async def probe():
        async with grpc.aio.insecure_channel(address) as ch:
            health, gw = health_pb2_grpc.HealthStub(ch), gateway_pb2_grpc.GatewayStub(ch)
            while not done.is_set():
                t0 = time.perf_counter()
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                probes["health"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await gw.GetModelInfo(gateway_pb2.ModelInfoRequest(), timeout=5)
                probes["model_info"].append(time.perf_counter() - t0)
                await asyncio.sleep(0.02)

    prober = asyncio.ensure_future(probe())
    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(stream(i) for i in range(N_STREAMS))), timeout=600)
    wall = time.perf_counter() - t0
    done.set()
    await prober
    for ch in channels:
        await ch.close()
    return outcomes, probes, wall


def test_many_streams_health_answers_and_admission_refuses_at_once(stack):
    engine = Engine(mode="ar")
    expected = [r.token_ids for r in engine.generate(PROMPTS, SamplingParams(max_tokens=N_TOKENS, ignore_eos=True))]
    outcomes, probes, wall = asyncio.run(_run(stack.addr["gateway"]))
    kinds = {}
    for kind, *_ in outcomes:
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"{N_STREAMS} streams in {wall:.1f} s: {kinds}; health p50 {_p(probes['health'], 0.5) * 1e3:.1f} ms "
          f"p99 {_p(probes['health'], 0.99) * 1e3:.1f} ms max {max(probes['health']) * 1e3:.1f} ms "
          f"({len(probes['health'])} checks); GetModelInfo p99 {_p(probes['model_info'], 0.99) * 1e3:.1f} ms")
    assert set(kinds) <= {"completed", "refused"}, [o for o in outcomes if o[0] not in ("completed", "refused")][:3]
    assert len(outcomes) == N_STREAMS
    assert kinds.get("completed", 0) >= MAX_NUM_SEQS + MAX_WAITING  # the queue was full at first, then drained
    assert kinds.get("refused", 0) > 0  # refused at once past the queue (a thread-per-stream server queued them)
    for kind, i, tokens in outcomes:
        if kind == "completed":
            assert tokens == expected[i % len(PROMPTS)], i
    assert _p(probes["health"], 0.99) < 0.5 and _p(probes["model_info"], 0.99) < 0.5  # < 0.1 s on a quiet box
    assert max(probes["health"]) < 2.0  # the synchronous server's took 4.3 s here
