"""A pool that mixes a draft-model node and a model-free (ngram) node behind one gateway: greedy
output equals target-only in sd and psd, both kinds draft (gateway/draft_policy.py places requests
on both), and losing the model node moves its requests to the ngram node."""

from __future__ import annotations

import re
import sys
import urllib.request

import pytest
from test_model_free_services import MAX_TOKENS, generate_all, prompts

from minedraft.client import MineDraftClient
from minedraft.launcher import LocalCluster
from minedraft.runner.hf_adapter import greedy_generate

from cluster import free_port


@pytest.fixture(scope="module")
def system(llama_pair, tmp_path_factory):
    target, draft, ref = llama_pair
    py = [sys.executable, "-m"]
    p = {n: free_port() for n in ("target", "model", "ngram", "gateway", "model_metrics", "ngram_metrics", "http")}
    cluster = LocalCluster({
        "target": py + ["target_service", "--model", target, "--port", str(p["target"]), "--threads", "1"],
        "model": py + ["draft_service", "--model", draft, "--port", str(p["model"]), "--threads", "1",
                       "--metrics-port", str(p["model_metrics"])],
        "ngram": py + ["draft_service", "--method", "ngram", "--port", str(p["ngram"]), "--threads", "1",
                       "--metrics-port", str(p["ngram_metrics"])],
        "gateway": py + ["gateway", "--target", f"127.0.0.1:{p['target']}", "--port", str(p["gateway"]),
                         "--draft", f"127.0.0.1:{p['model']},127.0.0.1:{p['ngram']}", "-k", "3",
                         "--draft-refresh-s", "0.5", "--http-port", str(p["http"])],
    }, log_dir=str(tmp_path_factory.mktemp("mixed_logs")))
    cluster.start()
    try:
        cluster.wait_healthy({n: f"127.0.0.1:{p[n]}" for n in ("target", "model", "ngram", "gateway")},
                             timeout=120, progress=lambda m: None)
    except Exception:
        cluster.stop()
        raise
    cluster.ports = p
    cluster.expected = [greedy_generate(ref, q, MAX_TOKENS) for q in prompts()]
    yield cluster
    cluster.stop()


def scrape(port: int, pattern: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(pattern + r" ([0-9.e+]+)", text)
    return float(m.group(1)) if m else 0.0


def proposes(port: int) -> float:
    """Propose calls a node has answered (its worker_rpc_seconds histogram's count)."""
    return scrape(port, r'minedraft:worker_rpc_seconds_count\{[^}]*rpc="Propose"[^}]*\}')


def method_drafts(system, method: str) -> float:
    """The gateway's drafts by method (minedraft:spec_decode_method_num_drafts{method})."""
    return scrape(system.ports["http"], r'minedraft:spec_decode_method_num_drafts_total\{method="%s"\}' % method)


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_mixed_pool_is_lossless_and_both_kinds_draft(system, mode):
    """Fresh priors spread the first requests over both kinds; later ones go where drafts paid."""
    gw = f"127.0.0.1:{system.ports['gateway']}"
    with MineDraftClient(gw) as client:
        client.configure(mode=mode)
        assert len(client.model_info().draft_endpoints) == 2
    before = proposes(system.ports["model_metrics"]), proposes(system.ports["ngram_metrics"])
    assert generate_all(gw) == system.expected
    after = proposes(system.ports["model_metrics"]), proposes(system.ports["ngram_metrics"])
    if mode == "sd":  # the first run: both kinds had their chance, and the gateway's metrics say so
        assert after[0] > before[0] and after[1] > before[1], (before, after)
        # The gateway labels drafts by method. Only rows that drafted count: the ngram node's first
        # request may find no match in its first verifies and move to the model node (the policy).
        assert method_drafts(system, "model") > 0
        assert method_drafts(system, "ngram") > 0 or after[1] - before[1] <= 8
    else:
        assert sum(after) > sum(before)


def test_losing_the_model_node_moves_its_requests_to_the_ngram_node(system):
    gw = f"127.0.0.1:{system.ports['gateway']}"
    assert generate_all(gw, on_first_chunk=system.procs["model"].kill) == system.expected
    with MineDraftClient(gw) as client:
        assert len(client.model_info().draft_endpoints) == 1
        client.stats(reset=True)
    assert generate_all(gw) == system.expected
    with MineDraftClient(gw) as client:
        assert client.stats().spec_decode_num_accepted_tokens > 0
