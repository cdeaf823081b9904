"""`minedraft up` on the bundled pair: starts all three, answers `minedraft generate`, and stops
cleanly on SIGINT (Ctrl-C) and on SIGTERM with no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cluster import free_port


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError):
                pass
    return out


def nice_and_role(pid: int) -> tuple[int, str]:
    with open(f"/proc/{pid}/stat") as f:
        nice = int(f.read().rsplit(")", 1)[1].split()[16])
    with open(f"/proc/{pid}/cmdline") as f:
        argv = f.read().split("\0")
    return nice, argv[2]  # python -m <role>


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_generate_and_clean_stop(tmp_path, stop_signal):
    gw, tp, dp = free_port(), free_port(), free_port()
    up = subprocess.Popen([sys.executable, "-m", "minedraft", "up", "--port", str(gw), "--target-port", str(tp),
                           "--draft-port", str(dp), "--log-dir", str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "MineDraft is up" in line:
                break
        assert any("MineDraft is up" in line for line in lines), "".join(lines)
        children = children_of(up.pid)
        assert len(children) == 3
        if (os.cpu_count() or 1) >= 2:  # pinned: the workers yield their cores to the gateway
            roles = {role: nice for nice, role in map(nice_and_role, children)}
            assert roles == {"target_service": min(os.nice(0) + 10, 19), "draft_service": min(os.nice(0) + 10, 19),
                             "gateway": os.nice(0)}
        gen = subprocess.run([sys.executable, "-m", "minedraft", "generate", "def fibonacci(n):", "--address",
                              f"127.0.0.1:{gw}", "--max-tokens", "32", "-v"],
                             capture_output=True, text=True, timeout=120)
        assert gen.returncode == 0, gen.stderr
        assert len(gen.stdout.strip()) > 10
        assert "length" in gen.stderr or "stop" in gen.stderr
    finally:
        up.send_signal(stop_signal)
        try:
            rest, _ = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0
    assert "all three stopped" in rest
    deadline = time.time() + 10
    while any(alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(c) for c in children)
