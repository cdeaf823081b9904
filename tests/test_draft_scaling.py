"""Independent draft nodes: two replicas behind one gateway; losing drafts never loses requests
(SIGKILL one, then both: output unchanged, target-only meanwhile); a restarted node resumes speculation."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from minedraft.client import MineDraftClient
from minedraft.launcher import LocalCluster
from minedraft.runner.hf_adapter import greedy_generate

from cluster import free_port

MAX_TOKENS = 48


def prompts():
    return [[1] + [(3 * i + 7 * j) % 97 + 3 for j in range(3 + i)] for i in range(6)]


def draft_command(model, port):
    return [sys.executable, "-m", "draft_service", "--model", model, "--port", str(port), "--threads", "1"]


@pytest.fixture(scope="module")
def system(llama_pair, tmp_path_factory):
    target, draft, ref = llama_pair
    logs = str(tmp_path_factory.mktemp("scaling_logs"))
    p = {name: free_port() for name in ("target", "d1", "d2", "gateway")}
    cluster = LocalCluster({
        "target": [sys.executable, "-m", "target_service", "--model", target, "--port", str(p["target"]),
                   "--threads", "1"],
        "d1": draft_command(draft, p["d1"]),
        "d2": draft_command(draft, p["d2"]),
        "gateway": [sys.executable, "-m", "gateway", "--target", f"127.0.0.1:{p['target']}",
                    # d1 listed twice under two names: one process must count as one node
                    "--draft", f"127.0.0.1:{p['d1']},127.0.0.1:{p['d2']},localhost:{p['d1']}",
                    "--port", str(p["gateway"]),
                    "--draft-refresh-s", "0.5", "-k", "3"],
    }, log_dir=logs)
    cluster.start()
    cluster.wait_healthy({n: f"127.0.0.1:{port}" for n, port in p.items()}, timeout=120, progress=lambda m: None)
    cluster.ports, cluster.draft, cluster.logs = p, draft, logs
    cluster.expected = [greedy_generate(ref, q, MAX_TOKENS) for q in prompts()]
    yield cluster
    cluster.stop()


def generate_all(address, on_first_chunk=None):
    results = [None] * len(prompts())
    first = threading.Event()

    def one(i):
        ids = []
        with MineDraftClient(address) as client:
            for chunk in client.generate(prompts()[i], max_tokens=MAX_TOKENS, ignore_eos=True):
                ids.extend(chunk.token_ids)
                if len(ids) > 5:
                    first.set()
        results[i] = ids

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts()))]
    for t in threads:
        t.start()
    if on_first_chunk is not None:
        first.wait(timeout=60)
        on_first_chunk()
    for t in threads:
        t.join(timeout=180)
    return results


def live_drafts(address) -> int:
    with MineDraftClient(address) as client:
        return len(client.model_info().draft_endpoints)


def stats(address, reset=False):
    with MineDraftClient(address) as client:
        return client.stats(reset=reset)


def test_losing_and_regaining_draft_nodes(system):
    gw = f"127.0.0.1:{system.ports['gateway']}"
    assert live_drafts(gw) == 2
    stats(gw, reset=True)
    assert generate_all(gw) == system.expected  # two replicas: same greedy output as target-only
    assert stats(gw).spec_decode_num_drafts > 0

    # SIGKILL one replica mid-run: every request finishes, output identical
    assert generate_all(gw, on_first_chunk=system.procs["d1"].kill) == system.expected
    assert live_drafts(gw) == 1

    # kill the last one: requests still finish, target-only (no drafts counted)
    system.procs["d2"].kill()
    stats(gw, reset=True)
    assert generate_all(gw) == system.expected
    assert live_drafts(gw) == 0
    assert stats(gw).spec_decode_num_drafts == 0

    # a node comes back on its old address: speculation resumes
    revived = LocalCluster({"d1": draft_command(system.draft, system.ports["d1"])}, log_dir=system.logs)
    revived.start()
    try:
        deadline = time.time() + 60
        while live_drafts(gw) < 1 and time.time() < deadline:
            time.sleep(0.5)
        assert live_drafts(gw) == 1
        stats(gw, reset=True)
        assert generate_all(gw) == system.expected
        after = stats(gw)
        assert after.spec_decode_num_drafts > 0 and after.spec_decode_num_accepted_tokens > 0
    finally:
        revived.stop()


def test_endpoints_resolve_once_per_address():
    from gateway.draft_membership import resolve_endpoints

    assert resolve_endpoints(["localhost:50053", "127.0.0.1:7", "127.0.0.1:7", "no-such-host.invalid:1"]) == [
        "127.0.0.1:50053", "127.0.0.1:7"]  # names pinned to their addresses
