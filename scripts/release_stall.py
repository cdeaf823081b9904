"""Time every worker call the scheduler makes while a step's calls are in flight (issue 24, item 4).

    python scripts/release_stall.py [--requests 16] [--mode psd] [-k 3]

Starts a target and a draft service (bundled pair, one thread each) on loopback, drives a Scheduler over
RemoteTargetWorker + DraftPool directly (no gateway), and reports, per worker call made between a step
sending its calls and the next step collecting them, how many there were and how long they took."""

from __future__ import annotations

import argparse
import collections
import socket
import sys
import time

from gateway.draft_pool import DraftPool
from minedraft import assets
from minedraft.launcher import LocalCluster
from minedraft.rpc.remote_workers import RemoteTargetWorker
from minedraft.spec.request import Request
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.scheduler import Scheduler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BLOCKING = ("Info", "Add", "Decode", "Release", "Handshake", "OpenChannel")


def instrument(worker, calls, scheduler_ref):
    """Wrap the worker's blocking RPCs: record (name, seconds) for those made while a step is in flight
    (Verify and Propose go out with .future and are collected by the next step: not wrapped)."""
    stub, role = worker.stub, type(worker).__name__.replace("Remote", "").replace("Worker", "").lower()
    for name in BLOCKING:
        method = getattr(stub, name, None)
        if method is None:
            continue

        def timed(*args, _m=method, _n=f"{role}.{name}", **kwargs):
            sched = scheduler_ref[0]
            busy = sched is not None and sched.in_flight is not None
            t0 = time.perf_counter()
            try:
                return _m(*args, **kwargs)
            finally:
                if busy:
                    calls[_n].append(time.perf_counter() - t0)
        setattr(stub, name, timed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--mode", default="psd")
    ap.add_argument("-k", type=int, default=3)
    args = ap.parse_args(argv)
    ports = {"target": free_port(), "draft": free_port()}
    py = [sys.executable, "-m"]
    cluster = LocalCluster({
        "target": py + ["target_service", "--port", str(ports["target"]), "--threads", "1"],
        "draft": py + ["draft_service", "--port", str(ports["draft"]), "--threads", "1"]})
    cluster.start()
    try:
        cluster.wait_healthy({n: f"127.0.0.1:{p}" for n, p in ports.items()}, timeout=120, progress=lambda m: None)
        target = RemoteTargetWorker(f"127.0.0.1:{ports['target']}")
        pool = DraftPool([f"127.0.0.1:{ports['draft']}"], target, target.info(), None)
        pool.refresh()
        calls, ref = collections.defaultdict(list), [None]
        instrument(target, calls, ref)
        for node in pool.nodes.values():
            instrument(node, calls, ref)
        sched = Scheduler(target, pool, args.mode, args.k, max_num_seqs=64)
        ref[0] = sched
        prompts = assets.load_heldout_prompts()[:args.requests]
        from minedraft.runner import hf_adapter
        tok = hf_adapter.load_tokenizer(assets.default_target_path())
        for i, p in enumerate(prompts):  # different lengths: requests finish at different steps
            ids = tok(p)["input_ids"] if isinstance(p, str) else p
            n = 8 + 5 * i
            sched.add(Request(f"r{i}", list(ids), SamplingParams(max_tokens=n, ignore_eos=True), seed=i,
                              max_new_tokens=n, stop_ids=frozenset()))
        t0 = time.perf_counter()
        steps = 0
        while sched.has_unfinished():
            sched.step()
            steps += 1
        wall = time.perf_counter() - t0
        print(f"{args.mode} k={args.k}: {steps} steps, {wall:.2f} s")
        for name, ts in sorted(calls.items()):
            print(f"  while in flight: {name}: {len(ts)} call(s), total {sum(ts) * 1e3:.1f} ms, "
                  f"max {max(ts) * 1e3:.1f} ms")
        if not calls:
            print("  while in flight: no worker call")
        print(f"  target active {target.info().num_active}, free blocks {target.info().num_free_kv_blocks}/"
              f"{target.info().num_kv_blocks}")
        sched.close()
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
