"""The public gRPC API (minedraft.v1.Gateway) on grpc.aio: Generate, Abort, GetModelInfo, Configure,
GetStats, on the connection's Frontend and engine loop."""

from __future__ import annotations

import asyncio
import time

import grpc

from gateway.aio_host import AsyncioSink
from gateway.detokenizer import IncrementalDetokenizer
from gateway.engine_loop import QueueFull
from minedraft.config import AUTO_K
from minedraft.rpc.grpc_common import params_from_proto
from minedraft.v1 import gateway_pb2, gateway_pb2_grpc

SERVICE = "minedraft.v1.Gateway"


OFF_LOOP_CHARS = 16 << 10  # text prompts longer than this are tokenised on a worker thread


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """On the gateway's asyncio loop (gateway/aio_host.py): nothing here may block it. A call that waits
    for the engine loop (stats, Configure) or tokenises a long prompt goes to a worker thread."""

    def __init__(self, conn, operator_allowed: bool):
        """conn: the gateway's Connection. operator_allowed: see _require_operator (main decides)."""
        self.conn, self.operator_allowed = conn, operator_allowed

    async def _require_ready(self, context):
        if not self.conn.ready.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway: draft/target workers are not ready yet")

    async def Generate(self, request, context):
        await self._require_ready(context)
        frontend = self.conn.frontend
        sink = AsyncioSink(asyncio.get_running_loop())
        rid = request.request_id or f"gw-{time.monotonic_ns()}"
        try:
            if request.prompt and request.prompt_ids:
                raise ValueError("prompt: give prompt (text) or prompt_ids, not both")
            params = params_from_proto(request.params)
            prompt = list(request.prompt_ids) or request.prompt
            if isinstance(prompt, str) and len(prompt) > OFF_LOOP_CHARS:
                req = await asyncio.to_thread(frontend.submit, prompt, params, rid, sink)
            else:
                req = frontend.submit(prompt, params, rid, sink)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except QueueFull as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        num_prompt = len(req.prompt_ids)
        detok = IncrementalDetokenizer(frontend.tokenizer)
        ended = False
        try:
            while True:
                event = await sink.queue.get()
                if event.error:
                    ended = True
                    code = grpc.StatusCode.INVALID_ARGUMENT if event.fault else grpc.StatusCode.UNAVAILABLE
                    await context.abort(code, f"request failed: {event.error}")
                ended = event.finished
                yield gateway_pb2.GenerateResponse(
                    request_id=rid, token_ids=event.new_tokens, text=detok.push(event.new_tokens, event.finished),
                    finished=event.finished, finish_reason=event.finish_reason or "",
                    num_prompt_tokens=num_prompt, num_generated_tokens=event.num_generated,
                    num_drafted=event.num_drafted, num_accepted=event.num_accepted)
                if event.finished:
                    return
        finally:
            if not ended:  # the client left (cancelled, deadline): free its rows
                frontend.abort(rid)

    async def Abort(self, request, context):
        await self._require_ready(context)
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

    async def GetModelInfo(self, request, context):
        await self._require_ready(context)
        return self._model_info()

    async def _require_operator(self, context, what: str):
        """Configure and GetStats(reset) change the service for everyone. With an API key they need it
        (the interceptor checks every call); without one, only a gateway bound to loopback takes them."""
        if not self.operator_allowed:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{what} is an operator call: set --api-key (or bind the gateway to loopback) to "
                                "use it")

    async def Configure(self, request, context):
        await self._require_ready(context)
        await self._require_operator(context, "Configure")
        k = AUTO_K if request.auto_k else request.num_speculative_tokens or None
        try:
            await asyncio.to_thread(self.conn.loop.call, lambda s: s.reconfigure(request.mode or None, k,
                                                                                  request.max_num_seqs or None))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return self._model_info()

    async def GetStats(self, request, context):
        await self._require_ready(context)
        if request.reset:
            await self._require_operator(context, "GetStats with reset")
        m = await asyncio.to_thread(self.conn.loop.stats, request.reset)  # waits for the step lock
        stats = stats_to_proto(m, self.conn.loop.scheduler.mode)
        for name, info in await asyncio.to_thread(worker_infos, self.conn.workers):
            stats.prefix_cache[name].CopyFrom(gateway_pb2.PrefixCacheStats(
                prefix_cache_queries=info.prefix_cache_queries, prefix_cache_hits=info.prefix_cache_hits))
        if self.conn.workers.draft is not None:
            stats.feature_requests_held = len(self.conn.workers.draft.features.relay)
        return stats


def worker_infos(workers) -> list[tuple[str, object]]:
    """(name, Info) of the target and every draft node the pool holds now (blocking calls: run it off
    the event loop). A worker away right now is left out; the rest still answer."""
    out = []
    nodes = [("target", workers.target)]
    if workers.draft is not None:
        nodes += [(f"draft {address}", node) for address, node in list(workers.draft.nodes.items())]
    for name, worker in nodes:
        try:
            out.append((name, worker.info(timeout=1.0)))
        except Exception:  # noqa: BLE001
            continue
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
