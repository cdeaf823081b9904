"""What the EAGLE service tests share: one target, and per feature-channel transport an EAGLE node and a
gateway that forces that transport; the node's Info; every prompt generated at once through a gateway."""

from __future__ import annotations

import sys

import grpc

from minedraft.v1 import worker_pb2, worker_pb2_grpc

from cluster import free_port, run_concurrently, start_healthy

TRANSPORTS = ("inline", "shm")


def start_eagle_system(log_dir: str, target: str | None = None, head: str | None = None):
    """target/head: checkpoint folders (None: the bundled target and EAGLE head). The cluster's
    `ports` name target, eagle_<transport> and gw_<transport>."""
    py = [sys.executable, "-m"]
    ports = {name: free_port() for name in ("target", *(f"{kind}_{t}" for t in TRANSPORTS for kind in ("eagle", "gw")))}
    models = ["--model", target] if target else []
    commands = {"target": py + ["target_service", *models, "--port", str(ports["target"]), "--threads", "1"]}
    node_models = (["--model", head] if head else []) + (["--target-model", target] if target else [])
    for t in TRANSPORTS:
        commands[f"eagle_{t}"] = py + ["draft_service", "--method", "eagle", *node_models,
                                       "--port", str(ports[f"eagle_{t}"]), "--threads", "1"]
        commands[f"gw_{t}"] = py + ["gateway", "--target", f"127.0.0.1:{ports['target']}", "--port",
                                    str(ports[f"gw_{t}"]), "--http-port", "0", "--draft",
                                    f"127.0.0.1:{ports[f'eagle_{t}']}", "--transport", t, "-k", "3"]
    cluster = start_healthy(commands, {n: f"127.0.0.1:{p}" for n, p in ports.items()}, log_dir)
    cluster.ports = ports
    return cluster


def node_info(system, transport: str) -> worker_pb2.WorkerInfo:
    with grpc.insecure_channel(f"127.0.0.1:{system.ports['eagle_' + transport]}") as ch:
        return worker_pb2_grpc.DraftWorkerStub(ch).Info(worker_pb2.InfoRequest(), timeout=5)


def generate_all(address: str, prompts: list[list[int]], max_tokens: int, **kwargs) -> list[list[int]]:
    """Every prompt's tokens, the requests sent at once."""
    return [ids for ids, _ in run_concurrently(address, prompts, max_tokens=max_tokens, ignore_eos=True, **kwargs)]
