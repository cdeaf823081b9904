"""The public gRPC API (minedraft.v1.Gateway): Generate, Abort, GetModelInfo, Configure, GetStats,
on the connection's Frontend and engine loop."""

from __future__ import annotations

import queue
import time

import grpc

from gateway.detokenizer import IncrementalDetokenizer
from gateway.engine_loop import QueueFull
from minedraft.config import AUTO_K
from minedraft.rpc.grpc_common import params_from_proto
from minedraft.v1 import gateway_pb2, gateway_pb2_grpc

SERVICE = "minedraft.v1.Gateway"


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, conn, operator_allowed: bool):
        """conn: the gateway's Connection. operator_allowed: see _require_operator (main decides)."""
        self.conn, self.operator_allowed = conn, operator_allowed

    def _require_ready(self, context):
        if not self.conn.ready.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "gateway: draft/target workers are not ready yet")

    def Generate(self, request, context):
        self._require_ready(context)
        frontend = self.conn.frontend
        events = queue.Queue()
        try:
            params = params_from_proto(request.params)
            rid = request.request_id or f"gw-{time.monotonic_ns()}"
            req = frontend.submit(list(request.prompt_ids) or request.prompt, params, rid, events)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except QueueFull as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        num_prompt = len(req.prompt_ids)
        context.add_callback(lambda: frontend.abort(rid))  # client gone: free its rows
        detok = IncrementalDetokenizer(frontend.tokenizer)
        while True:
            event = events.get()
            if event.error:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"request failed: {event.error}")
            yield gateway_pb2.GenerateResponse(
                request_id=rid, token_ids=event.new_tokens, text=detok.push(event.new_tokens, event.finished),
                finished=event.finished, finish_reason=event.finish_reason or "",
                num_prompt_tokens=num_prompt, num_generated_tokens=event.num_generated,
                num_drafted=event.num_drafted, num_accepted=event.num_accepted)
            if event.finished:
                return

    def Abort(self, request, context):
        self._require_ready(context)
        return gateway_pb2.AbortReply(found=self.conn.frontend.abort(request.request_id))

    def _model_info(self) -> gateway_pb2.ModelInfo:
        info, w = self.conn.frontend.model_info(), self.conn.workers
        return gateway_pb2.ModelInfo(
            target_model=info.model, draft_model=",".join(self.conn.draft_endpoints),
            mode=info.mode, num_speculative_tokens=0 if info.auto_k else info.num_speculative_tokens,
            auto_k=info.auto_k, max_k=self.conn.loop.scheduler.controller.bound(), vocab_size=info.vocab_size,
            context_len=info.context_len, transport=w.transport,
            draft_endpoints=w.draft.live if w.draft is not None else [], target_endpoint=self.conn.args.target,
            max_num_seqs=info.max_num_seqs)

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
        k = AUTO_K if request.auto_k else request.num_speculative_tokens or None
        try:
            self.conn.loop.call(lambda s: s.reconfigure(request.mode or None, k, request.max_num_seqs or None))
        except ValueError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return self._model_info()

    def GetStats(self, request, context):
        self._require_ready(context)
        if request.reset:
            self._require_operator(context, "GetStats with reset")
        m = self.conn.loop.stats(request.reset)
        stats = stats_to_proto(m, self.conn.loop.scheduler.mode)
        for name, worker in worker_list(self.conn.workers):
            try:
                i = worker.info(timeout=1.0)
            except Exception:  # noqa: BLE001 - a worker away right now is left out, the rest still answer
                continue
            stats.prefix_cache[name].CopyFrom(gateway_pb2.PrefixCacheStats(
                prefix_cache_queries=i.prefix_cache_queries, prefix_cache_hits=i.prefix_cache_hits))
        return stats


def worker_list(workers) -> list[tuple[str, object]]:
    """(name, worker) of the target and every draft node the pool holds now."""
    out = [("target", workers.target)]
    if workers.draft is not None:
        out += [(f"draft {address}", node) for address, node in list(workers.draft.nodes.items())]
    return out


def stats_to_proto(m, mode: str) -> gateway_pb2.Stats:
    b = gateway_pb2.StepBreakdown(**m.breakdown())
    k_steps = {name: gateway_pb2.KSteps(steps_at_k=counts, share_k0=m.k_share(name, 0))
               for name, counts in m.k_steps.items()}
    return gateway_pb2.Stats(
        spec_decode_num_drafts=m.spec_decode_num_drafts, spec_decode_num_draft_tokens=m.spec_decode_num_draft_tokens,
        spec_decode_num_accepted_tokens=m.spec_decode_num_accepted_tokens,
        spec_decode_num_accepted_tokens_per_pos=m.spec_decode_num_accepted_tokens_per_pos, steps=b, mode=mode,
        k_steps=k_steps)
