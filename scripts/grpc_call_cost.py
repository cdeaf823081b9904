"""`python scripts/grpc_call_cost.py`: what one unary call to a worker costs the caller, three ways:
blocking, grpc's future API, and a future while a health watch stream keeps the channel's completion
thread alive (with no call in flight, grpc starts a new one per future). Starts a target service
pinned to core 0; rounds interleaved; prints wall and client CPU per call (the best round)."""

import resource
import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from minedraft.v1 import worker_pb2, worker_pb2_grpc


def main(calls: int = 400, rounds: int = 3) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "target_service", "--port", str(port), "--cpu-cores", "0",
                             "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = worker_pb2_grpc.TargetWorkerStub(channel)
        deadline = time.monotonic() + 180
        while True:
            try:
                stub.Info(worker_pb2.InfoRequest(), timeout=5)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        request = worker_pb2.ReleaseRequest(request_ids=[])
        ways = {"blocking": lambda: stub.Release(request, timeout=5),
                "future": lambda: stub.Release.future(request, timeout=5).result(),
                "future+watch": lambda: stub.Release.future(request, timeout=5).result()}
        results: dict[str, list[tuple[float, float]]] = {}
        for _ in range(rounds):
            for name, call in ways.items():
                watch = None
                if name == "future+watch":
                    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
                before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                for _ in range(calls):
                    call()
                wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
                if watch is not None:
                    watch.cancel()
                cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                results.setdefault(name, []).append((wall / calls * 1e3, cpu / calls * 1e3))
        for name, values in results.items():
            print(f"{name:14s} wall {min(w for w, _ in values):.3f} ms/call   client CPU "
                  f"{min(c for _, c in values):.3f} ms/call")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
