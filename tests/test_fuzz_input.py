"""Random and extreme values in every field of every public message, over gRPC and HTTP: each gets a
clean error naming a field, or a correct answer; the service keeps serving throughout."""

import json
import math
import random
import urllib.error
import urllib.request

import grpc
import pytest
from test_recovery import Stack

from minedraft.rpc.grpc_common import check_health, insecure_channel
from minedraft.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from cluster import free_port

FLOATS = [0.0, -0.0, 1.0, 0.5, -1.0, 1e-40, 1e-6, 2.0, 1e30, 3.4e38, math.inf, -math.inf, math.nan]
INT32 = [0, 1, -1, 2, 7, 64, 4096, 2**31 - 1, -(2**31)]
UINT64 = [0, 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1]  # seed: uint64 on the wire, as HTTP accepts
TEXTS = ["", "def f(x):", "\x00", "é" * 50, "🦀" * 10, "x" * 20000, "\ud7ff", " "]
# Statuses a bad request may get; INTERNAL / UNKNOWN would mean it reached code that did not expect it.
CLEAN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    http_port = free_port()
    s = Stack(tmp_path_factory.mktemp("fuzz"), gateway_flags=["--http-port", str(http_port)])
    s.http = f"http://127.0.0.1:{http_port}"
    yield s
    s.stop()


def random_grpc_request(rng: random.Random) -> gateway_pb2.GenerateRequest:
    params = common_pb2.SamplingParams(
        temperature=rng.choice(FLOATS), top_p=rng.choice(FLOATS), top_k=rng.choice(INT32),
        max_tokens=rng.choice([1, 2, 3, 0, -5, 2**31 - 1]), ignore_eos=rng.random() < 0.5,
        stop_token_ids=[rng.choice(INT32) for _ in range(rng.randrange(3))])
    if rng.random() < 0.5:
        params.seed = rng.choice(UINT64)
    req = gateway_pb2.GenerateRequest(params=params, request_id=rng.choice(["", "a", "x" * 300, "é\x00"]))
    if rng.random() < 0.5:
        req.prompt = rng.choice(TEXTS)
    else:
        req.prompt_ids.extend(rng.choice(INT32) for _ in range(rng.choice([0, 1, 3, 600])))
    return req


def test_grpc_fields_fuzzed(stack):
    rng = random.Random(7)
    outcomes = {}
    with insecure_channel(stack.addr["gateway"]) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for _ in range(120):
            req = random_grpc_request(rng)
            try:
                chunks = list(stub.Generate(req, timeout=60))
                assert chunks[-1].finished and chunks[-1].finish_reason in ("stop", "length")
                outcome = "answered"
            except grpc.RpcError as exc:
                assert exc.code() in CLEAN, (req, exc.code(), exc.details())
                assert ":" in exc.details(), exc.details()  # "field: what is wrong"
                outcome = exc.code().name
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        for call in (lambda: stub.Abort(gateway_pb2.AbortRequest(request_id="\x00" * 1000), timeout=10),
                     lambda: stub.GetStats(gateway_pb2.StatsRequest(), timeout=10),
                     lambda: stub.GetModelInfo(gateway_pb2.ModelInfoRequest(), timeout=10)):
            call()
        for mode, k in (("warp", 4), ("sd", 99), ("psd", -3), ("", 17)):
            with pytest.raises(grpc.RpcError) as bad:
                stub.Configure(gateway_pb2.ConfigureRequest(mode=mode, num_speculative_tokens=k), timeout=10)
            assert bad.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
    print(f"gRPC fuzz: {outcomes}")
    assert outcomes.get("answered", 0) > 0 and outcomes.get("INVALID_ARGUMENT", 0) > 0
    assert check_health(stack.addr["gateway"], timeout=2.0)


def random_json_value(rng: random.Random):
    return rng.choice([None, True, -1, 0, 1, 2**40, -(2**70), 1e308, "", "x", "9", [], [1, -2], {"a": 1},
                       rng.choice(FLOATS[:10]), "🦀" * 5])


def test_http_fields_fuzzed(stack):
    rng = random.Random(11)
    fields = ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "n",
              "logprobs", "stream_options", "user", "messages"]
    with urllib.request.urlopen(stack.http + "/v1/models", timeout=10) as resp:
        model = json.loads(resp.read())["data"][0]["id"]
    statuses = {}
    for i in range(120):
        path = "/v1/chat/completions" if i % 2 else "/v1/completions"
        body = {"model": model, "prompt": "def f(x):", "max_tokens": 2} if path == "/v1/completions" else \
            {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for name in rng.sample(fields, rng.choice([0, 1, 1, 2, 3])):
            body[name] = random_json_value(rng)
        raw = json.dumps(body).encode() if rng.random() > 0.05 else b"{not json"
        req = urllib.request.Request(stack.http + path, data=raw, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode()
        assert status in (200, 400, 404, 422, 429), (body, status, text)
        if status != 200:
            error = json.loads(text)["error"]  # OpenAI's error shape
            assert error["message"]
        statuses[status] = statuses.get(status, 0) + 1
    print(f"HTTP fuzz: {statuses}")
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0
    with urllib.request.urlopen(stack.http + "/health", timeout=10) as resp:
        assert resp.status == 200
