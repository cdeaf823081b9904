"""The front door with real clients against one `minedraft up` on loopback (bundled pair, API key set):
the openai SDK (completions and chat, plain and streamed, equal to target-only greedy), raw HTTP for
errors and disconnects, the gRPC API with and without the key, /metrics parsed with prometheus_client's
parser and checked against GetStats, the services' own /metrics, and SIGTERM with a stream open."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from minedraft import assets
from minedraft.client import MineDraftClient
from minedraft.rpc.grpc_common import check_health
from minedraft.runner import hf_adapter

from cluster import free_port, wait_until

openai = pytest.importorskip("openai")

KEYS = ("key-one", "key-two")
MODEL = "tiny-target"  # default served name: the target folder's name
PROMPTS = ["def fibonacci(n):", "import os\n\n\ndef main():", "class Stack:\n    def __init__(self):"]
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    ports = {n: free_port() for n in ("grpc", "http", "target", "draft", "target_metrics", "draft_metrics")}
    logs = tmp_path_factory.mktemp("http_logs")
    proc = subprocess.Popen(
        [sys.executable, "-m", "minedraft", "up", "--port", str(ports["grpc"]), "--http-port", str(ports["http"]),
         "--target-port", str(ports["target"]), "--draft-port", str(ports["draft"]), "-k", "3",
         "--api-key", KEYS[0], "--api-key", KEYS[1], "--max-waiting", "0",
         "--target-metrics-port", str(ports["target_metrics"]), "--draft-metrics-port", str(ports["draft_metrics"]),
         "--log-dir", str(logs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "MineDraft is up" in line:
            break
    if not any("MineDraft is up" in line for line in lines):
        proc.kill()
        pytest.fail("minedraft up did not start:\n" + "".join(lines) + (logs / "gateway.log").read_text())
    ports["proc"], ports["logs"] = proc, logs
    ports["base"] = f"http://127.0.0.1:{ports['http']}"
    yield ports
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def oai(up):
    client = openai.OpenAI(base_url=up["base"] + "/v1", api_key=KEYS[1], max_retries=0, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def tokenizer():
    return hf_adapter.load_tokenizer(assets.default_target_path())


@pytest.fixture(scope="module")
def reference(tokenizer):
    """Target-only greedy decoding by transformers, cut after the first EOS as the server stops there."""
    model = hf_adapter.reference_model(assets.default_target_path())
    eos = set(hf_adapter.load_model_config(assets.default_target_path()).eos_token_ids)

    def run(prompt_ids: list[int], max_tokens: int = MAX_TOKENS) -> tuple[str, str, int]:
        ids = hf_adapter.greedy_generate(model, prompt_ids, max_tokens)
        for i, t in enumerate(ids):
            if t in eos:
                return tokenizer.decode(ids[:i + 1], skip_special_tokens=True), "stop", i + 1
        return tokenizer.decode(ids, skip_special_tokens=True), "length", len(ids)

    return run


def post(up, path: str, body, key: str | None = KEYS[0], timeout: float = 60) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(up["base"] + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def send_request(up, body: dict, timeout: float = 60) -> http.client.HTTPConnection:
    """A raw HTTP/1.1 request whose connection the test closes when it wants (a client hanging up)."""
    conn = http.client.HTTPConnection("127.0.0.1", up["http"], timeout=timeout)
    conn.request("POST", "/v1/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEYS[0]}"})
    return conn


def open_request(up, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = send_request(up, body)
    return conn, conn.getresponse()


def scrape(url: str) -> dict:
    """{(sample name, frozenset(labels)): value} from prometheus_client's own text parser."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# -- openai SDK ---------------------------------------------------------------------------------------
def test_completions_equal_target_only_greedy(oai, tokenizer, reference):
    for prompt in PROMPTS:
        text, reason, n = reference(tokenizer.encode(prompt))
        out = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        assert out.choices[0].text == text
        assert out.choices[0].finish_reason == reason
        assert out.usage.prompt_tokens == len(tokenizer.encode(prompt))
        assert out.usage.completion_tokens == n
        assert out.usage.total_tokens == out.usage.prompt_tokens + n
        assert out.model == MODEL and out.object == "text_completion"


def test_streamed_completion_equals_plain(oai, tokenizer, reference):
    prompt = PROMPTS[0]
    text, reason, n = reference(tokenizer.encode(prompt))
    chunks = list(oai.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                         stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1, "streamed in several pieces"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n


def test_prompt_as_token_ids(oai, tokenizer, reference):
    ids = tokenizer.encode(PROMPTS[1])
    out = oai.completions.create(model=MODEL, prompt=ids, max_tokens=MAX_TOKENS, temperature=0)
    assert out.choices[0].text == reference(ids)[0]


def test_chat_uses_the_template_and_is_lossless(oai, tokenizer, reference):
    from gateway.chat_template import render_chat

    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "A stack class"}]
    ids = render_chat(tokenizer, messages)
    assert tokenizer.decode(ids).startswith("<|bos|># system: You write Python.")
    text, reason, n = reference(ids)
    out = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == text
    assert out.choices[0].finish_reason == reason
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == n
    stream = list(oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                              stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == text
    assert stream[-1].choices[0].finish_reason == reason


def test_stop_strings_cut_the_text(oai, tokenizer, reference):
    prompt = PROMPTS[0]
    full = reference(tokenizer.encode(prompt))[0]
    stop = full[len(full) // 2:len(full) // 2 + 3]
    expected = full[:full.find(stop)]
    for stream in (False, True):
        out = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stop=[stop],
                                     stream=stream)
        chunks = list(out) if stream else [out]
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(oai):
    args = dict(model=MODEL, prompt=PROMPTS[2], max_tokens=24, temperature=0.9, top_p=0.95, seed=1234)
    first = oai.completions.create(**args).choices[0].text
    assert oai.completions.create(**args).choices[0].text == first
    assert oai.completions.create(**args, extra_body={"top_k": 20}).choices[0].finish_reason in ("stop", "length")


def test_models_lists_the_served_name(oai):
    models = oai.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_wrong_or_missing_key_is_refused(up):
    bad = openai.OpenAI(base_url=up["base"] + "/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=MODEL, prompt="x", max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    status, body = post(up, "/v1/completions", {"model": MODEL, "prompt": "x"}, key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_health_and_metrics_are_open(up):
    with urllib.request.urlopen(up["base"] + "/health", timeout=10) as resp:
        assert resp.status == 200
    assert "minedraft:num_requests_running" in urllib.request.urlopen(up["base"] + "/metrics").read().decode()


@pytest.mark.parametrize("body, param, words", [
    ({"prompt": "x", "n": 2}, "n", "not supported"),
    ({"prompt": "x", "logprobs": 2}, "logprobs", "not supported"),
    ({"prompt": "x", "temperature": 3}, "temperature", "[0.0, 2.0]"),
    ({"prompt": "x", "top_p": 0}, "top_p", "(0.0, 1.0]"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", ">= 1"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens", "integer"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "stream is true"),
    ({"prompt": "x", "stop": [""]}, "stop", "non-empty"),
    ({"prompt": ["a", "b"]}, "prompt", "several prompts"),
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": [999999]}, "prompt", "outside the vocabulary"),
    ({"prompt": "x", "frobnicate": 1}, "frobnicate", "unrecognized"),
    ({}, "prompt", "required"),
])
def test_bad_completion_input_names_the_field(up, body, param, words):
    status, reply = post(up, "/v1/completions", {"model": MODEL, **body})
    assert status == 400, reply
    assert reply["error"]["param"] == param and words in reply["error"]["message"], reply
    assert reply["error"]["type"] == "invalid_request_error"


def test_bad_chat_input_and_unknown_model(up):
    status, reply = post(up, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]})
    assert status == 400 and reply["error"]["param"] == "messages[0].role"
    status, reply = post(up, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                      "tools": [{"type": "function"}]})
    assert status == 400 and reply["error"]["param"] == "tools"
    status, reply = post(up, "/v1/completions", {"model": "gpt-4", "prompt": "x"})
    assert status == 404 and reply["error"]["code"] == "model_not_found"
    status, reply = post(up, "/v1/completions", b"{not json")
    assert status == 400 and "JSON" in reply["error"]["message"]
    status, reply = post(up, "/v1/embeddings", {"model": MODEL, "input": "x"})
    assert status == 404 and "/v1/embeddings" in reply["error"]["message"]


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_frees_its_rows(up, stream):
    metrics = up["base"] + "/metrics"
    aborted = value(scrape(metrics), "minedraft:request_success_total", finished_reason="abort")
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 400, "ignore_eos": True, "temperature": 0,
            "stream": stream}
    if stream:
        conn, resp = open_request(up, body)
        assert resp.status == 200
        assert resp.readline().startswith(b"data: ")  # one event, then hang up
    else:
        conn = send_request(up, body, timeout=0.5)
        with pytest.raises(socket.timeout):  # gives up waiting for the whole answer
            conn.getresponse()
    conn.close()
    assert wait_until(lambda: value(scrape(metrics), "minedraft:request_success_total", finished_reason="abort")
                      == aborted + 1)
    assert value(scrape(metrics), "minedraft:num_requests_running") == 0


def test_queue_full_gets_429_and_resource_exhausted(up):
    """--max-waiting 0: past the gateway's 64 running requests, HTTP answers 429, gRPC RESOURCE_EXHAUSTED."""
    body = {"model": MODEL, "prompt": "def f(x):", "max_tokens": 480, "ignore_eos": True, "temperature": 0,
            "stream": True}
    statuses, lock, release = [], threading.Lock(), threading.Event()

    def hold():
        conn, resp = open_request(up, body)
        with lock:
            statuses.append(resp.status)
        if resp.status == 200:
            release.wait(60)
        conn.close()

    threads = [threading.Thread(target=hold) for _ in range(70)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: len(statuses) == 70, 60), statuses
        assert statuses.count(429) >= 6 and statuses.count(200) <= 64
        # 64 requests hold KV blocks: the gauge (polled from the target's Info) shows it
        assert wait_until(lambda: value(scrape(up["base"] + "/metrics"), "minedraft:kv_cache_usage_perc") > 0, 10)
        status, reply = post(up, "/v1/completions", {**body, "stream": False})
        assert status == 429 and reply["error"]["code"] == "queue_full"
        with MineDraftClient(f"127.0.0.1:{up['grpc']}", api_key=KEYS[0]) as client:
            with pytest.raises(grpc.RpcError) as exc:
                client.generate_text("def f(x):", max_tokens=4)
            assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        release.set()
        for t in threads:
            t.join(60)
    assert wait_until(lambda: value(scrape(up["base"] + "/metrics"), "minedraft:num_requests_running") == 0)


# -- gRPC -----------------------------------------------------------------------------------------------
def test_grpc_requires_the_key(up, monkeypatch):
    monkeypatch.delenv("MINEDRAFT_API_KEY", raising=False)
    address = f"127.0.0.1:{up['grpc']}"
    for key in (None, "wrong"):
        with MineDraftClient(address, api_key=key) as client:
            for call in (lambda: client.generate_text("def f(x):", max_tokens=4), client.model_info,
                         client.stats):
                with pytest.raises(grpc.RpcError) as exc:
                    call()
                assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert check_health(address)  # health stays open
    for key in KEYS:
        with MineDraftClient(address, api_key=key) as client:
            assert client.generate_text("def f(x):", max_tokens=4)
    monkeypatch.setenv("MINEDRAFT_API_KEY", KEYS[1])  # the client's default
    with MineDraftClient(address) as client:
        assert client.model_info().num_speculative_tokens == 3
    cli = subprocess.run([sys.executable, "-m", "minedraft", "generate", "def f(x):", "--address", address,
                          "--max-tokens", "4", "--api-key", KEYS[0]], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr


# -- metrics ------------------------------------------------------------------------------------------
def test_metrics_agree_with_get_stats(up, oai):
    url = up["base"] + "/metrics"
    with MineDraftClient(f"127.0.0.1:{up['grpc']}", api_key=KEYS[0]) as client:
        client.stats(reset=True)
        before = scrape(url)
        results = [None] * 4

        def one(i):
            results[i] = oai.completions.create(model=MODEL, prompt=PROMPTS[i % 3], max_tokens=32 + 4 * i,
                                                temperature=0, extra_body={"ignore_eos": True})

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stats = client.stats()
    after = scrape(url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert stats.spec_decode_num_drafts > 0
    assert delta("minedraft:spec_decode_num_drafts_total") == stats.spec_decode_num_drafts
    assert delta("minedraft:spec_decode_num_draft_tokens_total") == stats.spec_decode_num_draft_tokens
    assert delta("minedraft:spec_decode_num_accepted_tokens_total") == stats.spec_decode_num_accepted_tokens
    for pos, n in enumerate(stats.spec_decode_num_accepted_tokens_per_pos):
        assert delta("minedraft:spec_decode_num_accepted_tokens_per_pos_total", position=str(pos)) == n
    mode = stats.mode
    parts = {"draft_compute": "draft_compute_s", "verify_compute": "verify_compute_s",
             "control_plane": "control_plane_s", "draft_idle": "draft_idle_s", "target_idle": "target_idle_s",
             "wall": "wall_s"}
    for part, field in parts.items():
        assert delta("minedraft:step_seconds_count", part=part, mode=mode) == stats.steps.num_steps
        assert delta("minedraft:step_seconds_sum", part=part, mode=mode) == pytest.approx(
            getattr(stats.steps, field), rel=1e-6, abs=1e-9)
    generated = sum(r.usage.completion_tokens for r in results)
    assert delta("minedraft:generation_tokens_total") == generated == sum(32 + 4 * i for i in range(4))
    assert delta("minedraft:prompt_tokens_total") == sum(r.usage.prompt_tokens for r in results)
    assert delta("minedraft:request_success_total", finished_reason="length") == 4
    assert delta("minedraft:e2e_request_latency_seconds_count") == 4
    assert delta("minedraft:time_to_first_token_seconds_count") == 4
    assert delta("minedraft:inter_token_latency_seconds_count") == generated - 4
    assert value(after, "minedraft:draft_nodes_live") == 1
    assert 0.0 <= value(after, "minedraft:kv_cache_usage_perc") <= 1.0


def test_service_metrics_ports(up):
    target = scrape(f"http://127.0.0.1:{up['target_metrics']}/metrics")
    draft = scrape(f"http://127.0.0.1:{up['draft_metrics']}/metrics")
    assert value(target, "minedraft:worker_compute_seconds_total", role="target", rpc="Verify") > 0
    assert value(target, "minedraft:worker_rpc_seconds_count", role="target", rpc="Add") > 0
    assert value(draft, "minedraft:worker_compute_seconds_total", role="draft", rpc="Propose") > 0
    assert ("minedraft:worker_channel_seconds_total", frozenset({("role", "draft"), ("rpc", "Propose")})) in draft
    assert ("minedraft:kv_cache_usage_perc", frozenset()) in target


# -- a gateway on its own ------------------------------------------------------------------------------
def gateway_without_workers(http_port: int) -> subprocess.Popen:
    dead = free_port()
    return subprocess.Popen([sys.executable, "-m", "gateway", "--target", f"127.0.0.1:{dead}", "--draft",
                             f"127.0.0.1:{dead}", "--port", str(free_port()), "--http-port", str(http_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_not_ready_is_503_and_sigterm_exits():
    port = free_port()
    proc = gateway_without_workers(port)
    try:
        base = f"http://127.0.0.1:{port}"

        def answers():
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return None
            return 200

        assert wait_until(lambda: answers() is not None, 60)
        assert answers() == 503
        status, reply = post({"base": base}, "/v1/completions", {"model": MODEL, "prompt": "x"}, key=None)
        assert status == 503 and reply["error"]["type"] == "service_unavailable"
        assert urllib.request.urlopen(base + "/metrics", timeout=5).status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out


def test_http_port_in_use_fails_start_up_clearly():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = gateway_without_workers(busy.getsockname()[1])
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "cannot listen for HTTP" in out


# -- last: it stops the cluster -------------------------------------------------------------------------
def test_sigterm_with_a_stream_open_stops_everything_promptly(up):
    proc = up["proc"]
    body = {"model": MODEL, "prompt": "def f(x):", "max_tokens": 480, "ignore_eos": True, "stream": True}
    conn, resp = open_request(up, body)
    assert resp.readline().startswith(b"data: ")
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    elapsed = time.monotonic() - start
    rest = resp.read()  # the stream ends (with an error event or [DONE]) instead of hanging
    conn.close()
    assert proc.returncode == 0 and "all three stopped" in out
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert rest.endswith(b"data: [DONE]\n\n")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(up["base"] + "/health", timeout=2)
