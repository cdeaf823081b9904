"""A batch whose rows a model-free node never drafts costs (almost) no Propose call, and drafting
resumes once the request's text starts repeating (minedraft/spec/dry_rows.py), over real processes:
target_service, a `draft_service --method ngram` node with Prometheus metrics, a gateway. The node
matches 8-grams only, so that the random pair's greedy text leaves some requests without a single
match (checked against a brute-force search over the reference output) and others that match late."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from test_mixed_pool import proposes

from minedraft.client import MineDraftClient
from minedraft.drafting.ngram import ngram_propose
from minedraft.launcher import LocalCluster
from minedraft.runner.hf_adapter import greedy_generate

from cluster import free_port

N = 8  # the node's only n-gram length
MAX_TOKENS = 64


def candidate(i: int) -> list[int]:
    return [1] + [(7 * i + 13 * j) % 97 + 3 for j in range(12)]


def matches(prompt: list[int], output: list[int]) -> list[int]:
    """The steps (output positions) at which an N-gram proposer has a draft, by brute force."""
    full = prompt + output
    return [i - len(prompt) for i in range(len(prompt), len(full))
            if ngram_propose(np.array(full[:i], dtype=np.int64), 3, N, N)]


@pytest.fixture(scope="module")
def system(llama_pair, tmp_path_factory):
    target, _, ref = llama_pair
    py = [sys.executable, "-m"]
    p = {n: free_port() for n in ("target", "ngram", "ngram_metrics", "gateway")}
    cluster = LocalCluster({
        "target": py + ["target_service", "--model", target, "--port", str(p["target"]), "--threads", "1"],
        "ngram": py + ["draft_service", "--method", "ngram", "--ngram-min", str(N), "--ngram-max", str(N),
                       "--port", str(p["ngram"]), "--threads", "1", "--metrics-port", str(p["ngram_metrics"])],
        "gateway": py + ["gateway", "--target", f"127.0.0.1:{p['target']}", "--port", str(p["gateway"]),
                         "--draft", f"127.0.0.1:{p['ngram']}", "-k", "3"],
    }, log_dir=str(tmp_path_factory.mktemp("dry_logs")))
    cluster.start()
    try:
        cluster.wait_healthy({n: f"127.0.0.1:{p[n]}" for n in ("target", "ngram", "gateway")}, timeout=120,
                             progress=lambda m: None)
    except Exception:
        cluster.stop()
        raise
    cluster.ports = p
    outputs = {i: greedy_generate(ref, candidate(i), MAX_TOKENS) for i in range(30)}
    hits = {i: matches(candidate(i), out) for i, out in outputs.items()}
    cluster.expected = outputs
    cluster.dry = [i for i in outputs if not hits[i]]
    cluster.late = [i for i in outputs if len(hits[i]) >= 15 and hits[i][0] >= 30]
    assert len(cluster.dry) >= 2 and len(cluster.late) >= 2, hits
    yield cluster
    cluster.stop()


def run(system, mode: str, which: list[int]):
    address = f"127.0.0.1:{system.ports['gateway']}"
    with MineDraftClient(address) as client:
        client.configure(mode=mode)
        client.stats(reset=True)
    before = proposes(system.ports["ngram_metrics"])
    results = {}

    def one(i):
        with MineDraftClient(address) as client:
            results[i] = [t for c in client.generate(candidate(i), max_tokens=MAX_TOKENS, ignore_eos=True)
                          for t in c.token_ids]

    threads = [threading.Thread(target=one, args=(i,)) for i in which]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    with MineDraftClient(address) as client:
        stats = client.stats()
    assert results == {i: system.expected[i] for i in which}  # lossless, skipped proposals or not
    return proposes(system.ports["ngram_metrics"]) - before, stats


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_rows_that_never_match_cost_almost_no_propose_call(system, mode):
    calls, stats = run(system, mode, system.dry[:2])
    assert stats.spec_decode_num_draft_tokens == 0
    # 64 tokens decoded a token a step: a call every step was 64 calls per batch (psd: two batches of
    # one); now tries at doubling intervals, 1, 2, 4, 8, 16, 32 steps apart, restarted when a request joins
    assert calls <= 16 * (2 if mode == "psd" else 1), calls


def test_drafting_resumes_when_the_text_starts_repeating(system):
    calls, stats = run(system, "sd", system.late[:2])
    assert stats.spec_decode_num_accepted_tokens >= 10  # the copies were found and accepted
    assert calls > 10
