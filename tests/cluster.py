"""Start real target / draft / gateway processes on loopback for tests."""

from __future__ import annotations

import socket
import sys
import time
import types

from minedraft.launcher import LocalCluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(target: str, draft: str | None, transport: str = "auto", mode: str = "psd", k: int = 3,
                  log_dir: str | None = None, extra_gateway: list[str] = ()):
    ports = types.SimpleNamespace(target=free_port(), draft=free_port(), gateway=free_port())
    py = [sys.executable, "-m"]
    commands = {
        "target": py + ["target_service", "--model", target, "--port", str(ports.target), "--threads", "1"],
        "gateway": py + ["gateway", "--target", f"127.0.0.1:{ports.target}",
                         "--draft", f"127.0.0.1:{ports.draft}" if draft else "", "--port", str(ports.gateway),
                         "--transport", transport, "--mode", mode, "-k", str(k), *extra_gateway],
    }
    if draft:
        commands["draft"] = py + ["draft_service", "--model", draft, "--port", str(ports.draft), "--threads", "1"]
    addresses = {"target": f"127.0.0.1:{ports.target}", "gateway": f"127.0.0.1:{ports.gateway}"}
    if draft:
        addresses["draft"] = f"127.0.0.1:{ports.draft}"
    cluster = start_healthy(commands, addresses, log_dir)
    cluster.addresses = addresses
    return cluster


def start_healthy(commands: dict[str, list[str]], addresses: dict[str, str], log_dir: str | None,
                  timeout: float = 120):
    """Start the commands and wait until every address answers health (all stopped if one does not)."""
    cluster = LocalCluster(commands, log_dir=log_dir)
    cluster.start()
    try:
        cluster.wait_healthy(addresses, timeout=timeout, progress=lambda m: None)
    except Exception:
        cluster.stop()
        raise
    return cluster


def run_concurrently(address, prompt_list, **params):
    """Every prompt through the gateway at address at once, one client thread each: per prompt
    MineDraftClient.generate_ids' (ids, last chunk)."""
    import threading

    from minedraft.client import MineDraftClient

    results = [None] * len(prompt_list)

    def one(i):
        with MineDraftClient(address) as client:
            results[i] = client.generate_ids(prompt_list[i], **params)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompt_list))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def wait_until(predicate, timeout: float = 20.0, poll: float = 0.1) -> bool:
    """Whether predicate() came true within timeout seconds (polled every `poll`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False
