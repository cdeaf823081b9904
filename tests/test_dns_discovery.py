"""Draft discovery under change, as on Kubernetes: one DNS name whose A records are the draft nodes (a headless
Service), answered by a real DNS server on loopback (dnslib), first with 1 address, then 3, then 2, while
requests run. The gateway resolves it through the system resolver (getaddrinfo) exactly as in production;
only its /etc/resolv.conf differs: the gateway runs in a mount namespace of its own (unshare) where a test
resolv.conf is bind-mounted over it. Joins must serve requests within 2 x --draft-refresh-s; the leaver (gone
from DNS and killed, like a deleted pod) is dropped by failover; every output equals target-only greedy."""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

dnslib = pytest.importorskip("dnslib", reason="dnslib is not installed: pip install -e '.[test]'")
from dnslib.server import BaseResolver, DNSLogger, DNSServer  # noqa: E402

from minedraft.client import MineDraftClient  # noqa: E402
from minedraft.launcher import LocalCluster  # noqa: E402
from minedraft.runner.hf_adapter import greedy_generate  # noqa: E402

from cluster import free_port  # noqa: E402

NAME = "drafts.minedraft.test"
DNS_IP = "127.0.0.153"  # resolv.conf takes no port: the server answers on 53 at an address of its own
NODES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
REFRESH_S = 2.0
MAX_TOKENS = 16


class Records(BaseResolver):
    """A records of NAME: whatever `addresses` holds now, TTL 0 (nothing cached)."""

    def __init__(self):
        self.addresses: list[str] = []
        self.queries = 0

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".")
        self.queries += 1
        if qname == NAME and request.q.qtype == dnslib.QTYPE.A:
            for a in list(self.addresses):
                reply.add_answer(dnslib.RR(NAME, dnslib.QTYPE.A, rdata=dnslib.A(a), ttl=0))
        elif qname != NAME:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        return reply


def _can_isolate_resolver() -> str | None:
    """None when a mount namespace with its own resolv.conf can be made here, else why not."""
    if sys.platform != "linux" or not shutil.which("unshare"):
        return "needs Linux and util-linux's unshare"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount --bind /dev/null /etc/resolv.conf"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a mount namespace (root needed): {probe.stderr.strip()}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((DNS_IP, 53))
    except OSError as exc:
        return f"cannot bind a DNS server to {DNS_IP}:53: {exc}"
    return None


def prompts():
    return [[1] + [(5 * i + 3 * j) % 91 + 4 for j in range(4 + i % 3)] for i in range(4)]


def proposes(node: str, port: int) -> int:
    """How many Propose RPCs a draft node has served (its Prometheus counter)."""
    text = urllib.request.urlopen(f"http://{node}:{port}/metrics", timeout=5).read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("minedraft:worker_rpc_seconds_count") and 'rpc="Propose"' in line)


@pytest.fixture(scope="module")
def system(llama_pair, tmp_path_factory):
    reason = _can_isolate_resolver()
    if reason:
        pytest.skip(f"DNS discovery test SKIPPED: {reason}")
    target, draft, ref = llama_pair
    tmp = tmp_path_factory.mktemp("dns")
    records = Records()
    dns = DNSServer(records, address=DNS_IP, port=53, logger=DNSLogger("-request,-reply", logf=lambda s: None))  # UDP
    dns.start_thread()
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_IP}\noptions timeout:1 attempts:2\n")
    p = {"target": free_port(), "draft": free_port(), "draft_metrics": free_port(), "gateway": free_port()}
    py = [sys.executable, "-m"]
    commands = {"target": py + ["target_service", "--model", target, "--port", str(p["target"]), "--threads", "1"]}
    for i, node in enumerate(NODES):
        commands[f"d{i}"] = py + ["draft_service", "--model", draft, "--bind", node, "--port", str(p["draft"]),
                                  "--metrics-port", str(p["draft_metrics"]), "--threads", "1"]
    records.addresses = NODES[:1]
    gateway = shlex.join(py + ["gateway", "--target", f"127.0.0.1:{p['target']}", "--draft", f"{NAME}:{p['draft']}",
                               "--port", str(p["gateway"]), "--draft-refresh-s", str(REFRESH_S), "-k", "3"])
    commands["gateway"] = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f"mount --bind {resolv} /etc/resolv.conf && exec {gateway}"]
    cluster = LocalCluster(commands, log_dir=str(tmp))
    cluster.start()
    try:
        cluster.wait_healthy({"target": f"127.0.0.1:{p['target']}", "gateway": f"127.0.0.1:{p['gateway']}",
                              **{f"d{i}": f"{n}:{p['draft']}" for i, n in enumerate(NODES)}},
                             timeout=120, progress=lambda m: None)
        cluster.p, cluster.records, cluster.logs = p, records, tmp
        cluster.expected = [greedy_generate(ref, q, MAX_TOKENS) for q in prompts()]
        yield cluster
    finally:
        cluster.stop()
        dns.stop()


def live(gw) -> list[str]:
    with MineDraftClient(gw) as client:
        return sorted(client.model_info().draft_endpoints)


class Load:
    """One client thread per prompt, each sending its request again as soon as it ends (so that new
    requests keep arriving), until stopped; every output is checked."""

    def __init__(self, gw, expected):
        self.gw, self.expected, self.wrong, self.done = gw, expected, [], 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(len(expected))]

    def _loop(self, i):
        with MineDraftClient(self.gw) as client:
            while not self.stop.is_set():
                out = [t for chunk in client.generate(prompts()[i], max_tokens=MAX_TOKENS, ignore_eos=True)
                       for t in chunk.token_ids]
                if out != self.expected[i]:
                    self.wrong.append((i, out))
                self.done += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in self.threads)


def wait_serving(system, nodes, since: dict, deadline_s: float) -> float:
    """Seconds until every node in nodes has served a Propose past its count in since."""
    start = time.monotonic()
    pending = set(nodes)
    while pending and time.monotonic() - start < deadline_s:
        pending = {n for n in pending if proposes(n, system.p["draft_metrics"]) <= since[n]}
        time.sleep(0.05)
    assert not pending, f"{sorted(pending)} served no draft within {deadline_s:.1f}s"
    return time.monotonic() - start


def test_draft_nodes_join_and_leave_through_dns(system):
    gw = f"127.0.0.1:{system.p['gateway']}"
    port = system.p["draft"]
    assert live(gw) == [f"{NODES[0]}:{port}"]
    with Load(gw, system.expected) as load:
        wait_serving(system, NODES[:1], {NODES[0]: 0}, deadline_s=30)
        counts = {n: proposes(n, system.p["draft_metrics"]) for n in NODES}
        assert counts[NODES[1]] == counts[NODES[2]] == 0  # not in DNS yet: unknown to the gateway

        system.records.addresses = NODES[:3]  # scale 1 -> 3
        joined_s = wait_serving(system, NODES[1:], counts, deadline_s=2 * REFRESH_S + 2.0)
        assert live(gw) == [f"{n}:{port}" for n in NODES]

        system.records.addresses = NODES[:2]  # 3 -> 2: the pod leaves DNS and is gone
        system.procs["d2"].kill()
        deadline = time.monotonic() + 30
        while live(gw) != [f"{n}:{port}" for n in NODES[:2]] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live(gw) == [f"{n}:{port}" for n in NODES[:2]]
        queries = system.records.queries  # the next refresh reads the 2 addresses and keeps both
        while system.records.queries == queries and time.monotonic() < deadline:
            time.sleep(0.1)
        assert system.records.queries > queries
        assert live(gw) == [f"{n}:{port}" for n in NODES[:2]]
        after = {n: proposes(n, system.p["draft_metrics"]) for n in NODES[:2]}
        wait_serving(system, NODES[:2], after, deadline_s=10)
        done_at_end = load.done
        while load.done < done_at_end + len(prompts()):  # a full set more with only the two survivors
            time.sleep(0.1)
    print(f"\nDNS discovery: joins served drafts {joined_s:.2f}s after the DNS change "
          f"(--draft-refresh-s {REFRESH_S}); {load.done} requests, "
          f"{len(load.wrong)} wrong outputs; DNS queries answered: {system.records.queries}")
    assert joined_s <= 2 * REFRESH_S
    assert load.wrong == [] and load.done >= 3 * len(prompts())
