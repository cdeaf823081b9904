"""The gateway service: public Generate/Abort/GetModelInfo API over the engine loop, which runs the
scheduler against gRPC clients of one target service and a draft service."""

from __future__ import annotations

import argparse
import os
import queue
import signal
import threading
import time

import grpc

from gateway.detokenizer import IncrementalDetokenizer
from gateway.engine_loop import EngineLoop, QueueFull
from gateway.prometheus_metrics import GatewayMetrics
from gateway.recovery import TargetRecovery
from minedraft.rpc.auth import ENV_VAR as API_KEY_ENV, ApiKeyInterceptor, load_keys
from minedraft.runner import hf_adapter
from minedraft.rpc.grpc_common import (add_health_and_reflection, exit_after, log, make_server, params_from_proto,
                                   set_serving, setup_logging)
from gateway.draft_pool import DraftPool
from minedraft.rpc.remote_workers import TIMEOUTS, RemoteTargetWorker
from minedraft.spec.request import build_request
from minedraft.spec.scheduler import MODES, Scheduler, check_mode_and_k
from minedraft.v1 import gateway_pb2, gateway_pb2_grpc

SERVICE = "minedraft.v1.Gateway"


class Workers:
    """The target, the pool of draft nodes (each with its token channel) and what they reported."""

    def __init__(self, target_address: str, draft_endpoints: list[str], transport: str | None):
        self.target = RemoteTargetWorker(target_address)
        self.target_info = self.target.info()
        self.draft = None
        if draft_endpoints:
            self.draft = DraftPool(draft_endpoints, self.target, self.target_info, transport)
            self.draft.refresh()
            if not self.draft.live:
                raise ValueError(f"no draft node reachable at {', '.join(draft_endpoints)}")

    @property
    def transport(self) -> str:
        return self.draft.transport if self.draft is not None else "none"

    @property
    def context_len(self) -> int:
        """What a request may use: the target's context, or a live draft's when that is shorter."""
        draft = self.draft.context_len if self.draft is not None else None
        return min(self.target_info.context_len, draft or self.target_info.context_len)


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, args):
        self.args = args
        self.loop: EngineLoop | None = None
        self.workers: Workers | None = None
        self.tokenizer = None
        self.eos_ids: tuple = ()
        self.ready = threading.Event()
        self.operator_allowed = True  # see _require_operator; main() decides
        self.metrics = GatewayMetrics()
        self.draft_endpoints = [e.strip() for e in (args.draft or "").split(",") if e.strip()]

    # -- start-up ----------------------------------------------------------------------------------
    def connect_forever(self, health, stop: threading.Event) -> None:
        """Connect to the workers, retrying with backoff; SERVING once both answer and the channel
        is open. Logs one line per failed attempt, never crashes."""
        delay = 0.5
        while not stop.is_set():
            try:
                workers = Workers(self.args.target, self.draft_endpoints, self.args.transport)
                break
            except (grpc.RpcError, ValueError) as exc:
                detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                log.warning("gateway: workers not ready (target %s, draft %s): %s; retrying in %.1fs",
                            self.args.target, self.args.draft, detail, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
        else:
            return
        self.workers = workers
        tokenizer_path = self.args.tokenizer or workers.target_info.model
        try:
            self.tokenizer = hf_adapter.load_tokenizer(tokenizer_path)
            self.eos_ids = hf_adapter.load_model_config(tokenizer_path).eos_token_ids
        except (OSError, ValueError) as exc:
            log.warning("gateway: no tokenizer at %s (%s): token-id prompts only", tokenizer_path, exc)
        mode = self.args.mode if workers.draft is not None else "ar"
        scheduler = Scheduler(workers.target, workers.draft, mode, self.args.k, self.args.max_num_seqs)
        self.metrics.bind(scheduler, workers.target, workers.draft)
        self.recovery = TargetRecovery(self, health, [SERVICE], self.args.recovery_timeout_s, stop)
        self.loop = EngineLoop(scheduler, max_waiting=self.args.max_waiting, observer=self.metrics,
                               recover=self.recovery.recover)
        threading.Thread(target=self._watch_workers, args=(stop,), daemon=True).start()
        self.ready.set()
        set_serving(health, [SERVICE], True)
        log.info("gateway: ready (mode %s, k %d, transport %s)", mode, self.args.k, workers.transport)

    def _watch_workers(self, stop: threading.Event) -> None:
        """Join draft nodes that appear (scale-up, DNS) or come back after a failure; notice a target
        that is unreachable (NOT_SERVING) or restarted while idle, and recover on the engine loop."""
        while not stop.wait(self.args.draft_refresh_s):
            try:
                if self.workers.draft is not None:
                    self.workers.draft.refresh()
                target = self.workers.target_info.instance_id
                info = self.workers.target.info(timeout=2.0)
                if not self.ready.is_set() or info.instance_id != target:
                    self.loop.call(self.recovery.recover_if_needed)
            except grpc.RpcError:
                self.recovery.mark_unreachable()
            except Exception as exc:  # noqa: BLE001 - keep watching whatever happens
                log.warning("gateway: worker watch failed: %s", exc)

    # -- API --------------------------------------------------------------------------------------
    def _require_ready(self, context):
        if not self.ready.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "gateway: draft/target workers are not ready yet")

    def submit(self, prompt: str | list[int], params, rid: str, events=None) -> list[int]:
        """Tokenise, validate and queue one request (gRPC and HTTP alike); events go to `events`.
        Returns the prompt's token ids. Raises ValueError naming the field, or QueueFull."""
        prompt_ids = list(prompt) if not isinstance(prompt, str) else []
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt: must not be empty (give prompt or prompt_ids)")
            if self.tokenizer is None:
                raise ValueError("prompt: this gateway has no tokenizer; send prompt_ids")
            prompt_ids = self.tokenizer.encode(prompt)
        ti = self.workers.target_info
        req = build_request(rid, prompt_ids, params, ti.vocab_size, self.workers.context_len, self.eos_ids)
        self.loop.submit(req, events)
        return prompt_ids

    def Generate(self, request, context):
        self._require_ready(context)
        events = queue.Queue()
        try:
            params = params_from_proto(request.params)
            rid = request.request_id or f"gw-{time.monotonic_ns()}"
            prompt_ids = self.submit(list(request.prompt_ids) or request.prompt, params, rid, events)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except QueueFull as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        context.add_callback(lambda: self.loop.abort(rid))  # client gone: free its rows
        detok = IncrementalDetokenizer(self.tokenizer)
        while True:
            event = events.get()
            if event.error:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"request failed: {event.error}")
            yield gateway_pb2.GenerateResponse(
                request_id=rid, token_ids=event.new_tokens, text=detok.push(event.new_tokens, event.finished),
                finished=event.finished, finish_reason=event.finish_reason or "",
                num_prompt_tokens=len(prompt_ids), num_generated_tokens=event.num_generated,
                num_drafted=event.num_drafted, num_accepted=event.num_accepted)
            if event.finished:
                return

    def Abort(self, request, context):
        self._require_ready(context)
        return gateway_pb2.AbortReply(found=self.loop.abort(request.request_id))

    def _model_info(self) -> gateway_pb2.ModelInfo:
        w, s = self.workers, self.loop.scheduler
        return gateway_pb2.ModelInfo(
            target_model=w.target_info.model, draft_model=",".join(self.draft_endpoints),
            mode=s.mode, num_speculative_tokens=s.k, vocab_size=w.target_info.vocab_size,
            context_len=w.context_len, transport=w.transport,
            draft_endpoints=w.draft.live if w.draft is not None else [], target_endpoint=self.args.target,
            max_num_seqs=s.max_num_seqs)

    def GetModelInfo(self, request, context):
        self._require_ready(context)
        return self._model_info()

    def _require_operator(self, context, what: str):
        """Configure and GetStats(reset) change the service for everyone. With an API key they need it
        (the interceptor checks every call); without one, only a gateway bound to loopback takes them."""
        if not self.operator_allowed:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"{what} is an operator call: set --api-key (or bind the gateway to loopback) to use it")

    def Configure(self, request, context):
        self._require_ready(context)
        self._require_operator(context, "Configure")
        try:
            self.loop.call(lambda s: s.reconfigure(request.mode or None, request.num_speculative_tokens or None,
                                                   request.max_num_seqs or None))
        except ValueError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return self._model_info()

    def GetStats(self, request, context):
        self._require_ready(context)
        if request.reset:
            self._require_operator(context, "GetStats with reset")
        m = self.loop.stats(request.reset)
        return stats_to_proto(m, self.loop.scheduler.mode)


def stats_to_proto(m, mode: str) -> gateway_pb2.Stats:
    b = gateway_pb2.StepBreakdown(**m.breakdown())
    return gateway_pb2.Stats(
        spec_decode_num_drafts=m.spec_decode_num_drafts, spec_decode_num_draft_tokens=m.spec_decode_num_draft_tokens,
        spec_decode_num_accepted_tokens=m.spec_decode_num_accepted_tokens,
        spec_decode_num_accepted_tokens_per_pos=m.spec_decode_num_accepted_tokens_per_pos, steps=b, mode=mode)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minedraft serve gateway", description="Run the gateway.")
    parser.add_argument("--target", default="127.0.0.1:50052", help="target service address")
    parser.add_argument("--draft", default="127.0.0.1:50053",
                        help="draft service address(es), comma-separated; a DNS name with several "
                             "addresses counts as several nodes ('' for none: target-only)")
    parser.add_argument("--draft-refresh-s", type=float, default=2.0,
                        help="how often to look for new or recovered draft nodes")
    parser.add_argument("--mode", choices=MODES, default="psd")
    parser.add_argument("-k", "--num-speculative-tokens", dest="k", type=int, default=4)
    parser.add_argument("--transport", default="auto", choices=["auto", "cuda_ipc", "shm", "inline"],
                        help="force the token channel's transport (default: best both ends support)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the target's model folder)")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-waiting", type=int, default=1024,
                        help="requests queued beyond --max-num-seqs; past it gRPC answers RESOURCE_EXHAUSTED, HTTP 429")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--tls-cert", default=None, help="PEM certificate: serve gRPC and HTTP over TLS")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.add_argument("--recovery-timeout-s", type=float, default=60.0,
                        help="how long running requests wait for a failed or restarted target to come back "
                             "before they end with UNAVAILABLE")
    parser.add_argument("--worker-timeout-s", type=float, default=60.0,
                        help="deadline of a worker step call; a worker that does not answer is treated as dead")
    parser.add_argument("--prefill-timeout-s", type=float, default=600.0, help="deadline of a worker's prefill call")
    parser.add_argument("--drain-s", type=float, default=5.0,
                        help="on SIGTERM, how long in-flight requests may finish before they end with UNAVAILABLE "
                             "(the process exits within drain + 5 s)")
    add_front_door_arguments(parser)
    parser.add_argument("--log-level", default="INFO")
    return parser


def add_front_door_arguments(parser: argparse.ArgumentParser) -> None:
    """HTTP and API-key flags (`minedraft up` has its own copy: the CLI must not import the gateway)."""
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("MINEDRAFT_HTTP_PORT", "8000")),
                        help="OpenAI-compatible HTTP API on --bind (default 8000, or MINEDRAFT_HTTP_PORT; 0: off)")
    parser.add_argument("--served-model-name", default=None,
                        help="the model name of the HTTP API (default: the target folder's name)")
    parser.add_argument("--api-key", action="append", default=None,
                        help=f"require this key on HTTP and gRPC (repeat or comma-separate for several; "
                             f"default: ${API_KEY_ENV}); health checks and /metrics stay open")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.transport == "auto":
        args.transport = None
    try:
        check_mode_and_k(args.mode if args.draft else "ar", args.k, bool(args.draft))
    except ValueError as exc:
        raise SystemExit(f"gateway: {exc}")
    TIMEOUTS.step_s, TIMEOUTS.prefill_s = args.worker_timeout_s, args.prefill_timeout_s
    servicer = GatewayServicer(args)
    keys = load_keys(args.api_key)
    servicer.operator_allowed = bool(keys) or args.bind in ("127.0.0.1", "localhost", "::1")
    # One thread per open Generate stream.
    server = make_server(max_workers=256, interceptors=[ApiKeyInterceptor(keys)] if keys else [])
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    health = add_health_and_reflection(server, [SERVICE])
    address = f"{args.bind}:{args.port}"
    if server_port(server, address, args.tls_cert, args.tls_key) == 0:
        raise SystemExit(f"gateway: cannot listen on {address}")
    http = None
    if args.http_port:
        from gateway.http_api import HttpFrontend, HttpServer

        http = HttpServer(HttpFrontend(servicer, keys, args.served_model_name).app(), args.bind, args.http_port,
                          tls_cert=args.tls_cert, tls_key=args.tls_key)
    server.start()
    log.info("gateway listening on %s (NOT_SERVING until the workers answer)", address)
    if http is not None:
        http.start()
        log.info("gateway: OpenAI-compatible HTTP API on http://%s (/v1/completions, /v1/chat/completions, "
                 "/v1/models, /health, /metrics)", http.address)
    log.info("gateway: %s", f"API key required on gRPC and HTTP ({len(keys)} key(s))" if keys else "no API key set")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=servicer.connect_forever, args=(health, stop), daemon=True).start()
    while not stop.is_set():
        time.sleep(0.2)
    drain(servicer, health, http, server, args.drain_s)
    return 0


def server_port(server, address: str, tls_cert: str | None, tls_key: str | None) -> int:
    """The public port: TLS when --tls-cert/--tls-key are given, else plaintext (loopback by default)."""
    if bool(tls_cert) != bool(tls_key):
        raise SystemExit("gateway: --tls-cert and --tls-key go together")
    if not tls_cert:
        return server.add_insecure_port(address)
    with open(tls_key, "rb") as k, open(tls_cert, "rb") as c:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    return server.add_secure_port(address, creds)


def drain(servicer, health, http, server, drain_s: float) -> None:
    """SIGTERM: refuse new requests (NOT_SERVING, UNAVAILABLE), let those in flight finish for
    drain_s, end the rest with UNAVAILABLE, exit; within drain + 5 s whatever happens."""
    exit_after(drain_s + 4.0, "gateway")
    servicer.ready.clear()
    set_serving(health, [SERVICE], False)
    loop = servicer.loop
    in_flight = len(loop.streams) if loop is not None else 0
    log.info("gateway: stopping; %d request(s) in flight get up to %.0f s to finish", in_flight, drain_s)
    deadline = time.monotonic() + drain_s
    while loop is not None and loop.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    if loop is not None and loop.streams:
        loop.fail_all_now("gateway shutting down (drain time over)")
        time.sleep(0.2)  # let the handlers send their status
    if http is not None:
        http.stop()
    server.stop(grace=1.0).wait(2.0)
    if loop is not None:
        loop.stop()
        loop.scheduler.close()  # its worker threads and the draft pool's node connections
    log.info("gateway stopped")
