"""Faults with real processes: a target killed and restarted, a draft killed and restarted on the same
endpoint, a SIGSTOPped target, a target that stays away, a gateway stopped with streams in flight.
Every stream ends with its tokens (exactly those of an uninterrupted run) or a clear status."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from minedraft import Engine, SamplingParams
from minedraft.assets import load_heldout_prompts
from minedraft.client import MineDraftClient
from minedraft.rpc.grpc_common import check_health

from cluster import free_port

K = 3
MAX_TOKENS = 160
PROMPTS = load_heldout_prompts(6)


class Stack:
    """Target, draft and gateway as separate processes, each restartable on its own port."""

    def __init__(self, tmp_path, gateway_flags=(), wait=("target", "draft", "gateway"), target_program=None,
                 draft_flags=()):
        """target_program: argv that runs a target service in place of `python -m target_service`;
        draft_flags: more flags of the draft service (e.g. --method eagle)."""
        self.ports = {name: free_port() for name in ("target", "draft", "gateway")}
        self.addr = {name: f"127.0.0.1:{p}" for name, p in self.ports.items()}
        self.logs = tmp_path
        py = [sys.executable, "-m"]
        self.commands = {
            "target": (target_program or py + ["target_service"]) + ["--port", str(self.ports["target"]),
                                                                      "--threads", "1"],
            "draft": py + ["draft_service", "--port", str(self.ports["draft"]), "--threads", "1", *draft_flags],
            "gateway": py + ["gateway", "--target", self.addr["target"], "--draft", self.addr["draft"],
                             "--port", str(self.ports["gateway"]), "--http-port", "0", "-k", str(K),
                             "--draft-refresh-s", "0.5", *gateway_flags],
        }
        self.procs = {}
        for name in self.commands:
            self.start(name)
        for name in wait:
            self.wait_healthy(name)

    def start(self, name):
        log = open(self.logs / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(self.commands[name], stdout=log, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def wait_healthy(self, name, timeout=120):
        deadline = time.monotonic() + timeout
        while not check_health(self.addr[name], timeout=1.0):
            assert self.procs[name].poll() is None, f"{name} exited: {(self.logs / f'{name}.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{name} not healthy after {timeout} s"
            time.sleep(0.2)

    def log(self, name) -> str:
        return (self.logs / f"{name}.log").read_text()

    def signal(self, name, sig):
        self.procs[name].send_signal(sig)
        if sig == signal.SIGKILL:
            self.procs[name].wait(10)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    s.stop()


def expected_tokens(params: SamplingParams, mode: str = "psd") -> list[list[int]]:
    """What an uninterrupted run gives, in-process (seeded sampling draws the same per committed length)."""
    engine = Engine(mode=mode, num_speculative_tokens=K)
    return [r.token_ids for r in engine.generate(PROMPTS, params)]


class Streams:
    """Every prompt streamed through the gateway, each on its own thread."""

    def __init__(self, address, params: SamplingParams, timeout=180):
        self.tokens = [[] for _ in PROMPTS]
        self.errors = [None] * len(PROMPTS)
        self.done = [threading.Event() for _ in PROMPTS]
        kwargs = dict(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                      seed=params.seed, ignore_eos=params.ignore_eos)
        self.threads = [threading.Thread(target=self._run, args=(address, i, kwargs, timeout), daemon=True)
                        for i in range(len(PROMPTS))]
        for t in self.threads:
            t.start()

    def _run(self, address, i, kwargs, timeout):
        try:
            with MineDraftClient(address) as client:
                for chunk in client.generate(PROMPTS[i], timeout=timeout, **kwargs):
                    self.tokens[i].extend(chunk.token_ids)
        except grpc.RpcError as exc:
            self.errors[i] = exc
        finally:
            self.done[i].set()

    def wait_some_tokens(self, n=8, timeout=60):
        deadline = time.monotonic() + timeout
        while min(len(t) for t in self.tokens) < n:
            assert time.monotonic() < deadline, "streams did not start"
            time.sleep(0.01)

    def join(self, timeout=240):
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a stream hangs"


GREEDY = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, seed=21, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_target_killed_and_restarted_streams_resume_identically(stack, params):
    # greedy and seeded sampled output alike: exactly target-only decoding's (seeded rows are coupled)
    expected = expected_tokens(params, "ar")
    streams = Streams(stack.addr["gateway"], params)
    streams.wait_some_tokens()
    stack.signal("target", signal.SIGKILL)
    time.sleep(0.5)
    stack.start("target")
    streams.join()
    assert streams.errors == [None] * len(PROMPTS)
    assert streams.tokens == expected
    assert re.search(r"target \S+ \(restarted\); [1-9]\d* running request\(s\) resume", stack.log("gateway"))
    with MineDraftClient(stack.addr["gateway"]) as client:  # and it keeps serving
        assert len(client.generate_ids(PROMPTS[0], max_tokens=8, ignore_eos=True)[0]) == 8


def test_draft_killed_and_restarted_on_the_same_endpoint(stack):
    expected = expected_tokens(GREEDY, "ar")  # lossless: equal to target-only greedy
    streams = Streams(stack.addr["gateway"], GREEDY)
    streams.wait_some_tokens()
    stack.signal("draft", signal.SIGKILL)
    stack.start("draft")
    streams.join()
    assert streams.errors == [None] * len(PROMPTS)
    assert streams.tokens == expected
    deadline = time.monotonic() + 30
    with MineDraftClient(stack.addr["gateway"]) as client:
        while len(client.model_info().draft_endpoints) != 1:  # the same endpoint joined again
            assert time.monotonic() < deadline, "the restarted draft node was not picked up again"
            time.sleep(0.2)
        assert client.generate_ids(PROMPTS[1], max_tokens=32, ignore_eos=True)[0] == expected[1][:32]


def test_stopped_target_is_detected_and_recovers_after_sigcont(tmp_path):
    s = Stack(tmp_path, gateway_flags=["--worker-timeout-s", "2"])
    try:
        expected = expected_tokens(GREEDY)
        streams = Streams(s.addr["gateway"], GREEDY)
        streams.wait_some_tokens()
        s.signal("target", signal.SIGSTOP)
        time.sleep(4)  # past the step deadline: the gateway is reconnecting, NOT_SERVING
        assert not check_health(s.addr["gateway"], timeout=1.0)
        s.signal("target", signal.SIGCONT)
        streams.join()
        assert streams.errors == [None] * len(PROMPTS)
        assert streams.tokens == expected
        assert check_health(s.addr["gateway"], timeout=2.0)
        assert re.search(r"\(reconnected\); [1-9]\d* running request\(s\) resume", s.log("gateway"))
    finally:
        s.stop()


def test_target_that_stays_away_ends_streams_with_unavailable_then_recovers(tmp_path):
    s = Stack(tmp_path, gateway_flags=["--recovery-timeout-s", "2"])
    try:
        streams = Streams(s.addr["gateway"], GREEDY)
        streams.wait_some_tokens()
        s.signal("target", signal.SIGKILL)
        streams.join(timeout=30)
        assert all(e is not None and e.code() == grpc.StatusCode.UNAVAILABLE for e in streams.errors)
        # the streams end with the target's failure, once the gateway gave up waiting for it
        assert all(e.details().startswith("request failed: UNAVAILABLE") for e in streams.errors)
        assert "target not back within 2 s" in s.log("gateway")
        with pytest.raises(grpc.RpcError) as refused:  # while it is away: refused at once, not hung
            with MineDraftClient(s.addr["gateway"]) as client:
                client.generate_ids(PROMPTS[0], max_tokens=4, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        s.start("target")
        s.wait_healthy("target")
        s.wait_healthy("gateway", timeout=30)  # picked up again by itself
        with MineDraftClient(s.addr["gateway"]) as client:
            assert client.generate_ids(PROMPTS[0], max_tokens=16, ignore_eos=True)[0] == \
                expected_tokens(SamplingParams(max_tokens=16, ignore_eos=True))[0]
    finally:
        s.stop()


def test_gateway_sigterm_drains_and_exits_in_bound(tmp_path):
    drain = 1.0
    s = Stack(tmp_path, gateway_flags=["--drain-s", str(drain)])
    try:
        streams = Streams(s.addr["gateway"], SamplingParams(max_tokens=400, ignore_eos=True))
        streams.wait_some_tokens()
        t0 = time.monotonic()
        s.signal("gateway", signal.SIGTERM)
        s.procs["gateway"].wait(drain + 5)
        elapsed = time.monotonic() - t0
        streams.join(timeout=10)
        assert elapsed < drain + 5
        for tokens, err in zip(streams.tokens, streams.errors):  # finished, or told why not
            assert len(tokens) == 400 or (err is not None and err.code() == grpc.StatusCode.UNAVAILABLE), err
        for name in ("target", "draft"):  # workers exit promptly on SIGTERM too
            s.signal(name, signal.SIGTERM)
            s.procs[name].wait(5 + 5)
    finally:
        s.stop()


def test_overload_every_request_completes_correctly_or_is_refused(tmp_path):
    """Offered several times what the gateway admits (4 running + 4 waiting), for a bounded time:
    each request completes with the target-only tokens or gets RESOURCE_EXHAUSTED at once."""
    s = Stack(tmp_path, gateway_flags=["--max-num-seqs", "4", "--max-waiting", "4"])
    try:
        n_tokens = 24
        expected = expected_tokens(SamplingParams(max_tokens=n_tokens, ignore_eos=True), "ar")
        outcomes, latencies, lock = [], [], threading.Lock()

        def one(i):
            t0 = time.monotonic()
            try:
                with MineDraftClient(s.addr["gateway"]) as client:
                    got = client.generate_ids(PROMPTS[i % len(PROMPTS)], max_tokens=n_tokens, ignore_eos=True,
                                              timeout=120)[0]
                outcome = "completed" if got == expected[i % len(PROMPTS)] else "WRONG"
            except grpc.RpcError as exc:
                outcome = "refused" if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else exc.code().name
            with lock:
                outcomes.append(outcome)
                if outcome == "completed":
                    latencies.append(time.monotonic() - t0)

        threads, t_end, i = [], time.monotonic() + 4.0, 0
        while time.monotonic() < t_end:  # bursts of 12 every 0.25 s
            for _ in range(12):
                threads.append(threading.Thread(target=one, args=(i,), daemon=True))
                threads[-1].start()
                i += 1
            time.sleep(0.25)
        for t in threads:
            t.join(150)
        assert not any(t.is_alive() for t in threads), "a request hangs"
        counts = {k: outcomes.count(k) for k in set(outcomes)}
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
        print(f"overload: offered {i}, {counts}, p99 latency of completed {p99:.2f} s")
        assert len(outcomes) == i  # none lost
        assert set(counts) <= {"completed", "refused"}, counts
        assert counts.get("completed", 0) >= 8 and counts.get("refused", 0) > 0
    finally:
        s.stop()
