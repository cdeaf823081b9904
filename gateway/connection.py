"""The gateway's link to its workers: connect with backoff, then build what serves requests on them
(scheduler, engine loop, target recovery, the Frontend), say when the gateway is ready, and keep
watching the workers. The gRPC and HTTP APIs read `ready` and `frontend` from here."""

from __future__ import annotations

import threading

import grpc

from gateway.draft_pool import DraftPool
from gateway.engine_loop import EngineLoop
from gateway.recovery import TargetRecovery
from minedraft.config import AUTO_K, TimeoutConfig
from minedraft.rpc.grpc_common import log
from minedraft.rpc.remote_workers import RemoteTargetWorker
from minedraft.runner import hf_adapter
from minedraft.spec.frontend import Frontend, PromptWords
from minedraft.spec.scheduler import Scheduler

# The gateway's error messages name its own fields (gRPC prompt/prompt_ids).
GATEWAY_WORDS = PromptWords(holder="this gateway", instead="send prompt_ids", empty_hint=" (give prompt or prompt_ids)")


class Workers:
    """The target, the pool of draft nodes (each with its token channel) and what they reported."""

    def __init__(self, target_address: str, draft_endpoints: list[str], transport: str | None, k: int,
                 timeouts: TimeoutConfig):
        self.target = RemoteTargetWorker(target_address, timeouts=timeouts)
        self.target_info = self.target.info()
        self.draft = None
        if draft_endpoints:
            self.draft = DraftPool(draft_endpoints, self.target, self.target_info, transport)
            self.draft.require_k(1 if k == AUTO_K else k)  # auto: the nodes' --max-k bound k instead
            self.draft.refresh()
            if not self.draft.live and self.draft.rejected:
                raise ValueError("no draft node can serve: " + "; ".join(
                    f"{a}: {why}" for a, why in self.draft.rejected.items()))
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


def _stop_staging(scheduler) -> None:
    """An EAGLE node needs the features of every committed position: a staged chunk's stand-in request
    would take them under another id (and the target's prefix cache, which staging rides on, is off)."""
    if scheduler.prefill_chunk_tokens:
        log.info("gateway: an EAGLE draft node is attached: staged prefill is off (--prefill-chunk-tokens 0)")
    scheduler.prefill_chunk_tokens = 0


class Readiness:
    """Whether the gateway takes requests: one flag, which grpc.health reports (SERVING / NOT_SERVING,
    gateway/aio_host.py) and both APIs check."""

    def __init__(self):
        self._flag = threading.Event()

    def is_set(self) -> bool:
        return self._flag.is_set()

    def set(self, serving: bool) -> None:
        (self._flag.set if serving else self._flag.clear)()


class Connection:
    """Set once ready (and kept): workers, loop (the EngineLoop), recovery, frontend."""

    def __init__(self, args, ready: Readiness, metrics):
        self.args, self.ready, self.metrics = args, ready, metrics
        self.draft_endpoints = [e.strip() for e in (args.draft or "").split(",") if e.strip()]
        self.workers: Workers | None = None
        self.loop: EngineLoop | None = None
        self.recovery: TargetRecovery | None = None
        self.frontend: Frontend | None = None

    def connect_forever(self, stop: threading.Event) -> None:
        """Connect to the workers, retrying with backoff; SERVING once both answer and the channel
        is open. Logs one line per failed attempt, never crashes."""
        args = self.args
        delay = 0.5
        while not stop.is_set():
            try:
                workers = Workers(args.target, self.draft_endpoints, args.transport, args.k, args.config.timeouts)
                break
            except (grpc.RpcError, ValueError) as exc:
                detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                log.warning("gateway: workers not ready (target %s, draft %s): %s; retrying in %.1fs",
                            args.target, args.draft, detail, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
        else:
            return
        self.workers = workers
        tokenizer, eos_ids = None, ()
        tokenizer_path = args.tokenizer or workers.target_info.model
        try:
            tokenizer = hf_adapter.load_tokenizer(tokenizer_path)
            eos_ids = hf_adapter.load_model_config(tokenizer_path).eos_token_ids
        except (OSError, ValueError) as exc:
            log.warning("gateway: no tokenizer at %s (%s): token-id prompts only", tokenizer_path, exc)
        mode = args.mode if workers.draft is not None else "ar"
        scheduler = Scheduler(workers.target, workers.draft, mode, args.k, args.max_num_seqs, max_k=args.max_k,
                              prefill_chunk_tokens=args.prefill_chunk_tokens)
        if workers.draft is not None:
            workers.draft.features.on_first = lambda: _stop_staging(scheduler)
            if workers.draft.features.channels:
                _stop_staging(scheduler)
        self.metrics.bind(scheduler, workers.target, workers.draft)
        self.recovery = TargetRecovery(workers, self.ready, args.target, args.recovery_timeout_s, stop)
        self.loop = EngineLoop(scheduler, max_waiting=args.max_waiting, observer=self.metrics,
                               recover=self.recovery.recover, isolate=self.recovery.isolate)
        # Read per request: recovery replaces target_info, draft nodes come and go.
        self.frontend = Frontend(self.loop, tokenizer, eos_ids, vocab_size=lambda: workers.target_info.vocab_size,
                                 context_len=lambda: workers.context_len, model=lambda: workers.target_info.model,
                                 words=GATEWAY_WORDS)
        threading.Thread(target=self._watch_workers, args=(stop,), daemon=True).start()
        self.ready.set(True)
        log.info("gateway: ready (mode %s, k %s, transport %s)", mode, args.k, workers.transport)

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
