"""Every kind of draft node applies its CPU placement (`--cpu-cores`, `--nice`) and refuses a port already
taken at once: a model-free or EAGLE node started by `minedraft up`'s pinning must yield its core to the
gateway like a model draft does (the model-free nodes once skipped both)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cluster import free_port, start_healthy

NICE = 7


def nice_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


@pytest.mark.parametrize("method", ["model", "ngram", "suffix", "eagle"])
def test_every_draft_node_applies_its_placement(method, tmp_path):
    port = free_port()
    core = min(os.sched_getaffinity(0))
    cmd = [sys.executable, "-m", "draft_service", "--method", method, "--port", str(port), "--threads", "1",
           "--cpu-cores", str(core), "--nice", str(NICE)]
    cluster = start_healthy({"draft": cmd}, {"draft": f"127.0.0.1:{port}"}, str(tmp_path))
    try:
        pid = cluster.procs["draft"].pid
        assert nice_of(pid) == min(os.nice(0) + NICE, 19)
        assert os.sched_getaffinity(pid) == {core}
        # a second node on the same port says so at once, before loading anything
        t0 = time.monotonic()
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert str(port) in second.stderr and "in use" in second.stderr.lower(), second.stderr[-2000:]
        assert time.monotonic() - t0 < 30
    finally:
        cluster.stop()
