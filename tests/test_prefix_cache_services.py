"""Prefix caching over the real services: the tokens streamed through the gateway (caching on, the
default) equal an in-process run with caching off, in ar/sd/psd, greedy and seeded; both workers
report their hits in Info; and a target killed and restarted mid-stream (its cache gone) resumes
every stream identically and caches again."""

import signal
import threading
import time

import grpc
import pytest
from test_recovery import K, Stack

from minedraft import Engine, SamplingParams
from minedraft.client import MineDraftClient
from minedraft.v1 import worker_pb2, worker_pb2_grpc

SYSTEM = [1] + [(13 * j) % 400 + 7 for j in range(70)]
PROMPTS = [SYSTEM + [(5 * i + 3 * j) % 90 + 11 for j in range(3 + i % 4)] for i in range(6)]
GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, seed=11, max_tokens=24, ignore_eos=True)


def expected(mode: str, params: SamplingParams, prompts=PROMPTS) -> list[list[int]]:
    engine = Engine(mode=mode, num_speculative_tokens=K, enable_prefix_caching=False)
    return [r.token_ids for r in engine.generate(prompts, params)]


def info(address: str, role: str) -> worker_pb2.WorkerInfo:
    stub = worker_pb2_grpc.TargetWorkerStub if role == "target" else worker_pb2_grpc.DraftWorkerStub
    with grpc.insecure_channel(address) as ch:
        return stub(ch).Info(worker_pb2.InfoRequest(), timeout=5)


def stream_all(address: str, params: SamplingParams, prompts=PROMPTS, started: threading.Event | None = None):
    tokens, errors = [[] for _ in prompts], [None] * len(prompts)
    kwargs = dict(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                  seed=params.seed, ignore_eos=True)

    def one(i):
        try:
            with MineDraftClient(address) as client:
                for chunk in client.generate(prompts[i], timeout=180, **kwargs):
                    tokens[i].extend(chunk.token_ids)
        except grpc.RpcError as exc:
            errors[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(prompts))]
    for t in threads:
        t.start()
    return tokens, errors, threads


def join(threads, timeout=240):
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a stream hangs"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("prefix_stack"))
    yield s
    s.stop()


@pytest.mark.parametrize("mode", ["ar", "sd", "psd"])
def test_streams_equal_in_process_without_caching(stack, mode):
    gateway = stack.addr["gateway"]
    with MineDraftClient(gateway) as client:
        client.configure(mode=mode)
        # a first turn caches the system prompt's blocks
        client.generate_ids(PROMPTS[0], max_tokens=2, ignore_eos=True)
    before = {role: info(stack.addr[role], role) for role in ("target", "draft")}
    for params in (GREEDY, SEEDED):
        tokens, errors, threads = stream_all(gateway, params)
        join(threads)
        assert errors == [None] * len(PROMPTS)
        assert tokens == expected(mode, params)
    after = {role: info(stack.addr[role], role) for role in ("target", "draft")}
    roles = ("target", "draft") if mode != "ar" else ("target",)
    for role in roles:
        hits = after[role].prefix_cache_hits - before[role].prefix_cache_hits
        queries = after[role].prefix_cache_queries - before[role].prefix_cache_queries
        assert hits >= 64 * len(PROMPTS) * 2 and queries > hits  # the system prompt's 4 blocks, every request
    assert after["target"].num_free_kv_blocks == after["target"].num_kv_blocks  # nothing leaked
    with MineDraftClient(gateway) as client:  # GetStats: per worker, as the workers count them
        per_worker = client.stats().prefix_cache
    assert per_worker["target"].prefix_cache_hits >= after["target"].prefix_cache_hits
    assert per_worker[f"draft {stack.addr['draft']}"].prefix_cache_queries >= after["draft"].prefix_cache_queries


def test_target_restart_mid_stream_resumes_identically_and_caches_again(tmp_path):
    stack = Stack(tmp_path)
    try:
        params = SamplingParams(max_tokens=120, ignore_eos=True)
        want = expected("psd", params)
        gateway = stack.addr["gateway"]
        with MineDraftClient(gateway) as client:
            client.generate_ids(PROMPTS[0], max_tokens=2, ignore_eos=True)
        tokens, errors, threads = stream_all(gateway, params)
        deadline = time.monotonic() + 60
        while min(len(t) for t in tokens) < 8:
            assert time.monotonic() < deadline, "streams did not start"
            time.sleep(0.01)
        assert info(stack.addr["target"], "target").prefix_cache_hits > 0
        stack.signal("target", signal.SIGKILL)
        time.sleep(0.5)
        stack.start("target")
        join(threads)
        assert errors == [None] * len(PROMPTS)
        assert tokens == want
        fresh = info(stack.addr["target"], "target")  # the new instance re-prefilled the resumed requests
        assert fresh.prefix_cache_queries > 0
        with MineDraftClient(gateway) as client:
            client.generate_ids(PROMPTS[1], max_tokens=4, ignore_eos=True)
        assert info(stack.addr["target"], "target").prefix_cache_hits - fresh.prefix_cache_hits >= 64
    finally:
        stack.stop()


def test_long_prompt_staged_over_the_services_gives_the_same_tokens(tmp_path):
    """--prefill-chunk-tokens 64 on the gateway: a 300-token prompt arriving beside running streams is
    prefilled in stand-in chunks on both workers; every stream's tokens are whole-prompt admission's."""
    stack = Stack(tmp_path, gateway_flags=("--prefill-chunk-tokens", "64"))
    try:
        long_prompt = [1] + [(7 * j) % 300 + 5 for j in range(300)]
        prompts = PROMPTS[:4] + [long_prompt]
        engine = Engine(mode="psd", num_speculative_tokens=K, enable_prefix_caching=False, prefill_chunk_tokens=0)
        want = [r.token_ids for r in engine.generate(prompts, GREEDY)]
        tokens, errors, threads = stream_all(stack.addr["gateway"], GREEDY, prompts)
        join(threads)
        assert errors == [None] * len(prompts)
        assert tokens == want
        target = info(stack.addr["target"], "target")
        assert target.prefix_cache_hits >= 256 and target.num_free_kv_blocks == target.num_kv_blocks
        # the draft's stand-ins rode on its proposals (or were settled): the request found their blocks
        draft = info(stack.addr["draft"], "draft")
        assert draft.prefix_cache_hits >= 256 and draft.num_free_kv_blocks == draft.num_kv_blocks
    finally:
        stack.stop()


@pytest.mark.parametrize("victim", ["target", "draft"])
def test_a_worker_killed_while_a_long_prompt_is_staged_loses_nothing(tmp_path, victim):
    """Stand-ins ride on both workers' forwards (their blocks reserved, their chunks not yet computed)
    when one worker is killed and started again: every stream, the staged one included, still gets
    whole-prompt admission's tokens, and nothing stays held on either worker."""
    stack = Stack(tmp_path, gateway_flags=("--prefill-chunk-tokens", "32"))
    try:
        long_prompt = [1] + [(7 * j) % 300 + 5 for j in range(440)]
        prompts = PROMPTS[:4] + [long_prompt]
        params = SamplingParams(max_tokens=48, ignore_eos=True)
        engine = Engine(mode="psd", num_speculative_tokens=K, enable_prefix_caching=False, prefill_chunk_tokens=0)
        want = [r.token_ids for r in engine.generate(prompts, params)]
        tokens, errors, threads = stream_all(stack.addr["gateway"], params, prompts[:4])
        deadline = time.monotonic() + 60
        while min(len(t) for t in tokens) < 4:
            assert time.monotonic() < deadline, "streams did not start"
            time.sleep(0.01)
        long_tokens, long_errors, long_threads = stream_all(stack.addr["gateway"], params, prompts[4:])
        # the first stand-in row appears on the target: the long prompt is being staged
        while info(stack.addr["target"], "target").num_active < len(prompts):
            assert time.monotonic() < deadline, "the long prompt was never staged"
        stack.signal(victim, signal.SIGKILL)
        time.sleep(0.5)
        stack.start(victim)
        join(threads + long_threads)
        assert errors + long_errors == [None] * len(prompts)
        assert tokens + long_tokens == want
        stack.wait_healthy(victim)  # a draft may come back after the streams ended (they went on target-only)
        for role in ("target", "draft"):
            worker = info(stack.addr[role], role)
            assert worker.num_active == 0 and worker.num_free_kv_blocks == worker.num_kv_blocks, role
    finally:
        stack.stop()
