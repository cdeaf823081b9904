"""`minedraft up` supervises its children: the draft and then the target SIGKILLed with streams in
flight are restarted by `up` itself (logged) and every stream ends with exactly the target-only tokens;
SIGTERM to `up` stops the gateway first, which drains its streams to the end, then the workers.
`--no-restart` keeps the old behaviour: one child gone stops all three."""

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
from test_recovery import PROMPTS, expected_tokens
from test_up import alive

from minedraft import SamplingParams
from minedraft.client import MineDraftClient
from minedraft.launcher import worker_pid

from cluster import free_port

N_TOKENS = 64


def start_up(tmp_path, *flags):
    ports = {n: free_port() for n in ("gateway", "target", "draft")}
    proc = subprocess.Popen([sys.executable, "-m", "minedraft", "up", "--port", str(ports["gateway"]),
                             "--target-port", str(ports["target"]), "--draft-port", str(ports["draft"]),
                             "--http-port", "0", "-k", "3", "--log-dir", str(tmp_path), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "MineDraft is up" in line:
            break
    assert any("MineDraft is up" in line for line in lines), "".join(lines)
    output = []  # the rest of up's output, read on a thread so that its pipe never fills
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()
    return proc, {n: f"127.0.0.1:{p}" for n, p in ports.items()}, output


class Streams:
    def __init__(self, address, n_tokens=N_TOKENS):
        self.results = [[[], None] for _ in PROMPTS]
        self.threads = [threading.Thread(target=self._run, args=(address, i, n_tokens)) for i in range(len(PROMPTS))]
        for t in self.threads:
            t.start()

    def _run(self, address, i, n_tokens):
        try:
            with MineDraftClient(address) as client:
                for chunk in client.generate(PROMPTS[i], timeout=240, max_tokens=n_tokens, ignore_eos=True):
                    self.results[i][0].extend(chunk.token_ids)
        except grpc.RpcError as exc:
            self.results[i][1] = exc

    def wait_tokens(self, n):
        deadline = time.monotonic() + 120
        while min(len(r[0]) for r in self.results) < n:
            assert time.monotonic() < deadline, "streams stalled"
            time.sleep(0.01)

    def join(self):
        for t in self.threads:
            t.join(300)
        assert not any(t.is_alive() for t in self.threads), "a stream hangs"
        return [err for _, err in self.results], [tokens for tokens, _ in self.results]


def kill_worker(address) -> int:
    pid = worker_pid(address)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_up_restarts_killed_workers_and_drains_on_sigterm(tmp_path):
    expected = expected_tokens(SamplingParams(max_tokens=N_TOKENS, ignore_eos=True), "ar")
    proc, addr, output = start_up(tmp_path, "--drain-s", "60")
    try:
        streams = Streams(addr["gateway"])
        streams.wait_tokens(4)
        old_draft = kill_worker(addr["draft"])
        streams.wait_tokens(16)
        old_target = kill_worker(addr["target"])
        errors, tokens = streams.join()
        assert errors == [None] * len(PROMPTS)
        assert tokens == expected
        deadline = time.monotonic() + 60  # both back, as new processes
        while worker_pid(addr["draft"]) in (None, old_draft) or worker_pid(addr["target"]) in (None, old_target):
            assert time.monotonic() < deadline, "a worker was not restarted"
            time.sleep(0.3)
        said = "".join(output)
        assert "draft exited (code -9); restarting it" in said and "target exited (code -9); restarting it" in said

        # SIGTERM with streams in flight: the gateway drains them to the end before the workers stop.
        children = [worker_pid(addr["target"]), worker_pid(addr["draft"])]
        streams = Streams(addr["gateway"])
        streams.wait_tokens(4)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        errors, tokens = streams.join()
        assert errors == [None] * len(PROMPTS)
        assert tokens == expected
        assert proc.wait(60) == 0
        print(f"SIGTERM to up with {len(PROMPTS)} streams in flight: all complete, up gone in "
              f"{time.monotonic() - t0:.1f} s")
        time.sleep(0.5)
        assert not any(alive(pid) for pid in children)
        said = "".join(output)
        assert "the gateway drains first" in said and "all three stopped" in said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_no_restart_stops_all_three(tmp_path):
    proc, addr, output = start_up(tmp_path, "--no-restart")
    try:
        target = worker_pid(addr["target"])
        os.kill(worker_pid(addr["draft"]), signal.SIGKILL)
        assert proc.wait(60) == 1
        time.sleep(0.5)
        assert not alive(target)
        assert "draft exited (code -9); stopping the others (--no-restart)" in "".join(output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
