"""Draft nodes on other hosts, for real: the gateway and the target in one network namespace, two draft nodes
in two others, each linked to the first by its own veth pair (nothing is linked to the machine's own
network). Each side has its own MINEDRAFT_HOST_ID, so the token channel negotiates `inline` (the draft
tokens ride inside the gRPC messages, over the veth links). Greedy output must equal target-only decoding.
The same prompts then run with a draft node beside the target (same host id: `shm`), and the test prints
bytes per step and step time of both, side by side, for greedy rows and seeded sampled rows (tokens only:
seeded rows are verified by the coupling, which reads no q), whose tokens must also be the same on both
transports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minedraft.launcher import LocalCluster
from minedraft.runner.hf_adapter import greedy_generate

from cluster import free_port

CLIENT = str(Path(__file__).with_name("netns_client.py"))
TAG = f"md{os.getpid() % 100000}"  # namespaces of this run only (other runs may be making theirs)
GW, D1, D2 = f"{TAG}-gw", f"{TAG}-d1", f"{TAG}-d2"
# Addresses live only on the veth links between these namespaces, never on the machine's network.
LINKS = {D1: ("10.231.1.1", "10.231.1.2"), D2: ("10.231.2.1", "10.231.2.2")}
MAX_TOKENS = 24
K = 3  # fixed: both transports then run the very same steps


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def make_namespaces() -> str | None:
    """Create GW, D1, D2 and the two veth links; None when done, else why it cannot be done here."""
    if sys.platform != "linux" or not shutil.which("ip"):
        return "needs Linux and iproute2's ip"
    remove_namespaces()  # left by a run of this pid that was killed
    try:
        for ns in (GW, D1, D2):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for i, (ns, (gw_addr, draft_addr)) in enumerate(LINKS.items(), start=1):
            ip("-n", GW, "link", "add", f"to-d{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", GW, "addr", "add", f"{gw_addr}/30", "dev", f"to-d{i}")
            ip("-n", ns, "addr", "add", f"{draft_addr}/30", "dev", "eth0")
            ip("-n", GW, "link", "set", f"to-d{i}", "up")
            ip("-n", ns, "link", "set", "eth0", "up")
    except subprocess.CalledProcessError as exc:
        remove_namespaces()
        return f"cannot make network namespaces (root needed): {' '.join(exc.cmd)}: {exc.stderr.strip()}"
    return None


def remove_namespaces():
    for ns in (GW, D1, D2):  # deleting a namespace deletes its veth ends too
        ip("netns", "del", ns, check=False)


def in_ns(ns: str, host_id: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, "env", f"MINEDRAFT_HOST_ID={host_id}", *argv]


def prompts():
    return [[1] + [(7 * i + 2 * j) % 89 + 5 for j in range(3 + i)] for i in range(4)]


def run_client(wait: list[str], gateway_port: int | None = None) -> dict:
    """In GW: wait until every address in wait is SERVING, then (given a gateway) send the prompts."""
    spec = {"gateway": f"127.0.0.1:{gateway_port}", "wait": wait, "prompts": prompts() if gateway_port else [],
            "max_tokens": MAX_TOKENS}
    proc = subprocess.run(in_ns(GW, "host-a", [sys.executable, CLIENT, json.dumps(spec)]), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def namespaces():
    reason = make_namespaces()
    if reason:
        pytest.skip(f"NETWORK NAMESPACE TEST SKIPPED: {reason}")
    yield
    remove_namespaces()


def test_drafts_in_other_namespaces_serve_psd_inline(namespaces, llama_pair, tmp_path):
    target, draft, ref = llama_pair
    expected = [greedy_generate(ref, q, MAX_TOKENS) for q in prompts()]
    py = [sys.executable, "-m"]
    p = {name: free_port() for name in ("target", "draft", "local_draft", "gw_inline", "gw_shm")}
    draft_cmd = py + ["draft_service", "--model", draft, "--bind", "0.0.0.0", "--port", str(p["draft"]),
                      "--threads", "1"]
    workers = LocalCluster({
        "target": in_ns(GW, "host-a", py + ["target_service", "--model", target, "--port", str(p["target"]),
                                            "--threads", "1"]),
        "d1": in_ns(D1, "host-b", draft_cmd),
        "d2": in_ns(D2, "host-c", draft_cmd),
        # beside the target (same namespace, same host id): the shm transport, for the comparison
        "local": in_ns(GW, "host-a", py + ["draft_service", "--model", draft, "--port", str(p["local_draft"]),
                                           "--threads", "1"]),
    }, log_dir=str(tmp_path))
    gateway = py + ["gateway", "--target", f"127.0.0.1:{p['target']}", "--mode", "psd", "-k", str(K)]
    remote = [f"{draft_addr}:{p['draft']}" for _, draft_addr in LINKS.values()]
    workers.start()
    results = {}
    try:
        run_client([f"127.0.0.1:{p['target']}", f"127.0.0.1:{p['local_draft']}", *remote])  # reached over veth
        for name, drafts in (("inline", remote), ("shm", [f"127.0.0.1:{p['local_draft']}"])):
            gw = LocalCluster({f"gateway_{name}": in_ns(GW, "host-a", gateway + [
                "--draft", ",".join(drafts), "--port", str(p[f"gw_{name}"])])}, log_dir=str(tmp_path))
            gw.start()
            try:
                results[name] = run_client([f"127.0.0.1:{p[f'gw_{name}']}"], p[f"gw_{name}"])
            finally:
                gw.stop()
    finally:
        workers.stop()

    inline, shm = results["inline"], results["shm"]
    assert inline["transport"] == "inline" and inline["drafts"] == sorted(remote)
    assert shm["transport"] == "shm"
    for r in (inline, shm):
        assert r["greedy"]["outputs"] == expected  # lossless, whichever side of the veth the drafts are
        for run in (r["greedy"], r["sampled"]):
            assert run["drafted"] > 0 and run["accepted"] > 0 and run["steps"] > 0 and run["channel_bytes"] > 0
    # Seeded: the same tokens whichever transport carried the drafts (target-only decoding's, in fact).
    assert inline["sampled"]["outputs"] == shm["sampled"]["outputs"]
    per_step = {(t, m): r[m]["channel_bytes"] / r[m]["steps"]
                for t, r in results.items() for m in ("greedy", "sampled")}
    # No q crosses for seeded rows: one row's q alone would add vocab x k floats to a step. The sampled run's
    # steps carry a few more bytes than the greedy run's (other acceptance, so other step shapes: 1.5x was seen),
    # so the bound is the q of half a row, not a ratio.
    one_row_q = ref.config.vocab_size * K * 4
    assert per_step["inline", "sampled"] < per_step["inline", "greedy"] + one_row_q / 2
    print("\ntransport  nodes  run      steps  bytes/step  step ms  control-plane ms/step  accepted/drafted")
    for name, r in results.items():
        for mode in ("greedy", "sampled"):
            m = r[mode]
            print(f"{name:9s}  {len(r['drafts']):5d}  {mode:7s}  {m['steps']:5d}  "
                  f"{m['channel_bytes'] / m['steps']:10.1f}  {1000 * m['wall_s'] / m['steps']:7.2f}  "
                  f"{1000 * m['control_plane_s'] / m['steps']:21.2f}  {m['accepted']}/{m['drafted']}")
