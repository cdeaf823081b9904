"""What draft_service and target_service share: model loading, Info/Add/Release, a lock around the
worker (gRPC calls arrive on a thread pool; the runner is single-threaded), and the serve() loop."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import uuid

import torch

from minedraft.config import MAX_SPECULATIVE_TOKENS
from minedraft.rpc.channels import host_id, local_capabilities
from minedraft.rpc.grpc_common import (
    abort_with,
    add_health_and_reflection,
    exit_after,
    listen,
    log,
    make_server,
    params_from_proto,
    port_in_use,
    port_taken,
    set_serving,
    setup_logging,
)
from minedraft.rpc.service_metrics import start_service_metrics
from minedraft.runner import hf_adapter
from minedraft.runner.model_runner import ModelRunner
from minedraft.spec.compat import tokenizer_digest
from minedraft.spec.workers import NewRequest, RequestFault
from minedraft.v1 import worker_pb2


def device_uuid(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return str(getattr(props, "uuid", ""))
    return ""


MODEL_FREE_CONTEXT = 2**31 - 1  # WorkerInfo.context_len of a draft without a KV cache: no limit


class WorkerServicerBase:
    role = ""

    def __init__(self, runner: ModelRunner | None, model_path: str, worker, max_num_seqs: int,
                 max_k: int = MAX_SPECULATIVE_TOKENS, method: str = "", facts: dict | None = None):
        """runner None: a model-free draft (minedraft/drafting/worker.py), which holds no vocabulary,
        tokenizer or context limit of its own: it reads the target's ids and any length; or an EAGLE
        head, whose facts (the target's vocabulary, tokenizer and context) come in `facts`."""
        self.runner = runner
        # The target checks ids against its vocabulary; a draft also reads the ids of a larger target
        # vocabulary (it has a prefix of it; see LocalDraftWorker._forward).
        self.accepts_ids_below = runner.vocab_size if self.role == "target" else 1 << 31
        self.worker = worker
        self.lock = threading.Lock()
        if runner is not None:
            facts = dict(device=str(runner.device), device_uuid=device_uuid(str(runner.device)),
                         vocab_size=runner.vocab_size, context_len=runner.context_len,
                         architecture=runner.cfg.architecture,
                         max_num_batched_tokens=runner.max_num_batched_tokens,
                         # the pool's compat check
                         tokenizer_fingerprint=tokenizer_digest(hf_adapter.load_tokenizer(model_path)))
        elif facts is None:  # vocabulary 0 and no tokenizer pass the pool's compat check against any target
            facts = dict(device="cpu", vocab_size=0, context_len=MODEL_FREE_CONTEXT)
        self.info = worker_pb2.WorkerInfo(
            role=self.role, model=model_path, transports=local_capabilities(facts["device"]), hostname=host_id(),
            pid=os.getpid(), max_k=max_k, max_num_seqs=max_num_seqs, method=method,
            instance_id=uuid.uuid4().hex, **facts)  # new at every start: the gateway sees a restart by it

    def Info(self, request, context):
        reply = worker_pb2.WorkerInfo()
        reply.CopyFrom(self.info)
        reply.num_active = len(self.worker.book.states)
        for name, value in self.worker.book.kv_usage().items():
            setattr(reply, name, value)
        reply.missing_features = getattr(self.worker, "missing_features", 0)
        return reply

    def _new_requests(self, request) -> list[NewRequest]:
        """Each request checked on its own: a bad one is a RequestFault naming it (it fails alone)."""
        out = []
        for r in request.requests:
            try:
                out.append(self._new_request(r))
            except ValueError as exc:
                raise RequestFault([r.request_id], f"request {r.request_id!r}: {exc}") from None
        return out

    def _new_request(self, r) -> NewRequest:
        ids = list(r.prompt_ids)
        if not ids:
            raise ValueError("prompt_ids: empty prompt")
        if any(not 0 <= t < self.accepts_ids_below for t in ids):
            raise ValueError(f"prompt_ids: token id outside the vocabulary [0, {self.accepts_ids_below})")
        if len(ids) >= self.info.context_len + (1 if r.resume else 0):
            raise ValueError(f"prompt_ids: {len(ids)} tokens leave no room in the context")
        return NewRequest(r.request_id, ids, params_from_proto(r.params), r.seed, resume=r.resume)

    def ride(self, request) -> int:
        """An Add with `ride`: admit its requests as riders (prefilled by the worker's next forward);
        with none, prefill the riders still waiting. The number admitted."""
        if request.requests:
            return self.worker.ride(self._new_requests(request))
        self.worker.settle_riders()
        return 0

    def Release(self, request, context):
        with self.lock:
            before = len(self.worker.book.states)
            self.worker.release(list(request.request_ids))
            return worker_pb2.ReleaseReply(num_released=before - len(self.worker.book.states))

    def guarded(self, context, fn, request=None):
        """Run fn under the worker lock, mapping errors to gRPC status codes. `request.release_ids`
        (Add, Propose, Verify, Decode) are released first, under the same lock: requests that finished
        while this call's predecessor ran, whose release rode on this call (remote_workers.py)."""
        try:
            with self.lock:
                if request is not None and request.release_ids:
                    self.worker.release(list(request.release_ids))
                return fn()
        except Exception as exc:  # noqa: BLE001 - every error becomes a status for the caller
            abort_with(context, exc)


def apply_cpu_placement(threads: int | None, cpu_cores: str | None, nice: int = 0) -> None:
    """Before any thread starts (gRPC's, torch's): they inherit the priority set here."""
    if nice:
        os.nice(nice)
    if cpu_cores:
        os.sched_setaffinity(0, {int(c) for c in cpu_cores.split(",")})
    if threads:
        torch.set_num_threads(threads)


def serve(servicer, add_to_server, service_full_name: str, args) -> None:
    """Start the server, mark it SERVING, and run until SIGTERM/SIGINT."""
    server = make_server()
    start_service_metrics(servicer, args)  # before registering: it wraps the step RPCs to time them
    add_to_server(servicer, server)
    health = add_health_and_reflection(server, [service_full_name])
    address = f"{args.bind}:{args.port}"
    listen(server, address, servicer.role)
    server.start()
    set_serving(health, [service_full_name], True)
    log.info("%s serving %s on %s (device %s, transports %s)", servicer.role, servicer.info.model, address,
             servicer.info.device, ",".join(servicer.info.transports))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        time.sleep(0.2)
    # Drain: NOT_SERVING at once, in-flight calls get --drain-s to finish, and the process is gone
    # within drain + 5 s whatever happens.
    log.info("%s: stopping (draining up to %.0f s)", servicer.role, args.drain_s)
    exit_after(args.drain_s + 4.0, servicer.role)
    set_serving(health, [service_full_name], False)
    server.stop(grace=args.drain_s).wait(args.drain_s + 1.0)
    servicer.close()
    log.info("%s stopped", servicer.role)


def prepare_service(config, role: str) -> None:
    """What every worker service does before it loads anything: logging, a port already taken (said at
    once, not after a minute of loading), and the CPU placement (cores, threads, nice) that every thread
    started later inherits. config: a TargetConfig or DraftConfig (minedraft.config)."""
    setup_logging(config.service.log_level)
    address = f"{config.service.bind}:{config.service.port}"
    if config.service.port and port_in_use(address):
        raise SystemExit(port_taken(role, address))
    apply_cpu_placement(config.placement.threads, config.placement.cpu_cores, config.placement.nice)


def load_runner(config, role: str, lookahead: int) -> tuple[ModelRunner, str]:
    """config: a TargetConfig or DraftConfig (minedraft.config)."""
    model = config.model
    prepare_service(config, role)
    path = model.model
    if not path:
        from minedraft import assets

        path = assets.default_target_path() if role == "target" else assets.default_draft_path()
    log.info("%s: loading %s on %s", role, path, model.device)
    runner = ModelRunner(path, model.device, None if model.dtype == "auto" else model.dtype, lookahead=lookahead,
                         role=role, **dataclasses.asdict(model.cache))
    return runner, path
