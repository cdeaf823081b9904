"""Model-free draft nodes through real processes: `draft_service --method ngram|suffix` (no model
loaded) behind a gateway, two nodes of a kind per gateway. Greedy output equals target-only in ar,
sd and psd; a node of each kind SIGKILLed mid-stream: its requests move to the other node, output
unchanged."""

from __future__ import annotations

import sys
import threading

import grpc
import pytest

from minedraft.client import MineDraftClient
from minedraft.runner.hf_adapter import greedy_generate
from minedraft.v1 import worker_pb2, worker_pb2_grpc

from cluster import free_port, start_healthy

MAX_TOKENS = 32
METHODS = ("ngram", "suffix")


def prompts():
    return [[1] + [(5 * i + 11 * j) % 97 + 3 for j in range(2 + 2 * i)] for i in range(6)]


@pytest.fixture(scope="module")
def system(llama_pair, tmp_path_factory):
    target, _, ref = llama_pair
    py = [sys.executable, "-m"]
    ports = {name: free_port() for name in ("target", "ngram1", "ngram2", "suffix1", "suffix2", "gw_ngram",
                                            "gw_suffix")}
    commands = {"target": py + ["target_service", "--model", target, "--port", str(ports["target"]),
                                "--threads", "1"]}
    for method in METHODS:
        for i in (1, 2):
            commands[f"{method}{i}"] = py + ["draft_service", "--method", method, "--port",
                                             str(ports[f"{method}{i}"]), "--threads", "1"]
        commands[f"gw_{method}"] = py + [
            "gateway", "--target", f"127.0.0.1:{ports['target']}", "--port", str(ports[f"gw_{method}"]),
            "--draft", f"127.0.0.1:{ports[method + '1']},127.0.0.1:{ports[method + '2']}", "-k", "3",
            "--draft-refresh-s", "0.5"]
    cluster = start_healthy(commands, {n: f"127.0.0.1:{p}" for n, p in ports.items()},
                            str(tmp_path_factory.mktemp("model_free_logs")))
    cluster.ports = ports
    cluster.expected = [greedy_generate(ref, p, MAX_TOKENS) for p in prompts()]
    yield cluster
    cluster.stop()


def gateway(system, method) -> str:
    return f"127.0.0.1:{system.ports['gw_' + method]}"


def generate_all(address, on_first_chunk=None):
    results = [None] * len(prompts())
    first = threading.Event()

    def one(i):
        ids = []
        with MineDraftClient(address) as client:
            for chunk in client.generate(prompts()[i], max_tokens=MAX_TOKENS, ignore_eos=True):
                ids.extend(chunk.token_ids)
                if len(ids) > 4:
                    first.set()
        results[i] = ids

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts()))]
    for t in threads:
        t.start()
    if on_first_chunk is not None:
        first.wait(timeout=60)
        on_first_chunk()
    for t in threads:
        t.join(timeout=120)
    return results


@pytest.mark.parametrize("method", METHODS)
def test_node_reports_its_method_and_no_model(system, method):
    with grpc.insecure_channel(f"127.0.0.1:{system.ports[method + '1']}") as ch:
        info = worker_pb2_grpc.DraftWorkerStub(ch).Info(worker_pb2.InfoRequest(), timeout=5)
    assert (info.role, info.method, info.model, info.vocab_size) == ("draft", method, method, 0)
    assert info.max_k >= 3


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["ar", "sd", "psd"])
def test_greedy_equals_target_only(system, method, mode):
    address = gateway(system, method)
    with MineDraftClient(address) as client:
        assert client.configure(mode=mode).mode == mode
        client.stats(reset=True)
    assert generate_all(address) == system.expected
    with MineDraftClient(address) as client:
        stats = client.stats()
    if mode == "ar":
        assert stats.spec_decode_num_draft_tokens == 0
    else:  # the tiny target loops: copies get accepted, and some rejected
        assert 0 < stats.spec_decode_num_accepted_tokens < stats.spec_decode_num_draft_tokens


@pytest.mark.parametrize("method", METHODS)
def test_node_killed_mid_stream_fails_over(system, method):
    address = gateway(system, method)
    with MineDraftClient(address) as client:
        client.configure(mode="psd")
        assert len(client.model_info().draft_endpoints) == 2
        client.stats(reset=True)
    assert generate_all(address, on_first_chunk=system.procs[method + "1"].kill) == system.expected
    with MineDraftClient(address) as client:
        assert len(client.model_info().draft_endpoints) == 1
        client.stats(reset=True)
    assert generate_all(address) == system.expected  # the survivor drafts every request now
    with MineDraftClient(address) as client:
        assert client.stats().spec_decode_num_accepted_tokens > 0
