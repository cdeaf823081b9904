"""OpenAI-compatible HTTP API in the gateway process (Starlette app served by uvicorn on its own thread).

Requests go through the same Frontend (and engine loop) as gRPC. The loop thread hands each
request's events to an asyncio.Queue through call_soon_threadsafe, so waiting for tokens costs no
thread and no polling.
A client that disconnects (stream or not) has its request aborted, which frees its rows."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.aio_host import AsyncioSink
from gateway.chat_template import render_chat
from gateway.detokenizer import IncrementalDetokenizer
from gateway.engine_loop import QueueFull
from gateway.openai_protocol import (
    ApiError,
    error_body,
    full_response,
    model_list,
    new_id,
    parse_json,
    parse_request,
    stream_chunk,
    usage_chunk,
)
from gateway.stop_strings import StopStringMatcher
from minedraft.config import DEFAULT_MAX_REQUEST_BYTES
from minedraft.rpc.auth import authorized

log = logging.getLogger("minedraft.gateway.http")


OFF_LOOP_BYTES = 16 << 10  # bodies larger than this are tokenised on a worker thread


DRAIN_BYTES = 16 << 20  # an oversized body is read and dropped up to this much before the 413 goes out
DRAIN_S = 5.0


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes without keeping the rest."""
    declared = request.headers.get("content-length")
    body = request.stream()
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await _drain(body)
        raise _too_large(int(declared), limit)
    chunks, n = [], 0
    async for chunk in body:
        n += len(chunk)
        if n > limit:
            await _drain(body)
            raise _too_large(n, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(body) -> None:
    """Read and drop what the client is still sending (bounded), so that it is not cut off mid-send with a
    reset before it can read the 413: closing on unread data makes the kernel send RST, which can discard
    the reply in the client's receive buffer. Past DRAIN_BYTES or DRAIN_S the connection is simply closed."""
    n = 0
    with anyio.move_on_after(DRAIN_S):
        async for chunk in body:
            n += len(chunk)
            if n > DRAIN_BYTES:
                return


def _too_large(n: int, limit: int) -> ApiError:
    return ApiError(413, f"the request body is {'over ' if n > limit else ''}{n} bytes; this gateway takes at most "
                         f"{limit} (--max-request-bytes)", code="request_too_large")


def field_of(message: str) -> str | None:
    """The field a ValueError's message starts with ("max_tokens: must be ..."), or None."""
    head = message.split(":", 1)[0]
    return head if ":" in message and re.fullmatch(r"[a-z_][a-z0-9_.\[\]]*", head) else None


class EngineFailed(Exception):
    def __init__(self, message: str, fault: bool = False):
        super().__init__(message)
        self.fault = fault  # the request's own fault: 400, not 503

    def api_error(self) -> ApiError:
        if self.fault:
            return ApiError(400, f"request failed: {self}")
        return ApiError(503, f"request failed: {self}", type_="service_unavailable")


def default_model_name(path: str) -> str:
    """The target folder's name; for a Hugging Face cache snapshot
    (.../models--Qwen--Qwen2.5-7B/snapshots/<rev>) the repository id, Qwen/Qwen2.5-7B."""
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    return parts[-1] or "minedraft"


class HttpFrontend:
    """The routes. `conn`: the gateway's Connection (its `ready` flag, and its `frontend` once ready);
    `metrics`: the GatewayMetrics that /metrics exposes (kept as .prometheus: .metrics is that route)."""

    def __init__(self, conn, metrics, keys: tuple[str, ...], served_model_name: str | None,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.conn, self.prometheus, self.keys, self._name = conn, metrics, keys, served_model_name
        self.max_request_bytes = max_request_bytes

    @property
    def model_name(self) -> str:
        return self._name or default_model_name(self.conn.frontend.model)

    def app(self) -> Starlette:
        routes = [Route("/health", self.health), Route("/metrics", self.metrics),
                  Route("/v1/models", self.models),
                  Route("/v1/completions", self.completions, methods=["POST"]),
                  Route("/v1/chat/completions", self.chat_completions, methods=["POST"])]
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _internal_error})

    # -- open endpoints -----------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        ok = self.conn.ready.is_set()
        return JSONResponse({"status": "ok" if ok else "not ready"}, status_code=200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        body, content_type = self.prometheus.exposition()
        return Response(body, media_type=content_type)

    # -- API ----------------------------------------------------------------------------------------
    def _guard(self, request: Request) -> None:
        if not authorized(request.headers.get("authorization"), self.keys):
            raise ApiError(401, "missing or invalid API key (send the header 'Authorization: Bearer KEY')",
                           code="invalid_api_key")
        if not self.conn.ready.is_set():
            raise ApiError(503, "the gateway is not ready: draft/target workers are not connected yet",
                           type_="service_unavailable")

    async def models(self, request: Request) -> Response:
        try:
            self._guard(request)
        except ApiError as exc:
            return _error(exc)
        return JSONResponse(model_list(self.model_name, self.conn.frontend.context_len))

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Response:
        try:
            self._guard(request)
            raw = await read_body(request, self.max_request_bytes)
            frontend = self.conn.frontend
            req = parse_request(parse_json(raw), chat, frontend.context_len)
            if req.model != self.model_name:
                raise ApiError(404, f"model: {req.model!r} does not exist; this server serves {self.model_name!r}",
                               "model", code="model_not_found")
            rid = new_id(chat)
            sink = AsyncioSink(asyncio.get_running_loop())

            def submit() -> int:
                prompt = render_chat(frontend.tokenizer, req.messages) if chat else req.prompt
                return len(frontend.submit(prompt, req.params, rid, sink).prompt_ids)

            # Tokenising a long prompt takes a while: on a thread, so that /health and the other
            # streams on this event loop go on meanwhile.
            num_prompt = await asyncio.to_thread(submit) if len(raw) > OFF_LOOP_BYTES else submit()
        except ApiError as exc:
            return _error(exc)
        except QueueFull as exc:
            return _error(ApiError(429, str(exc), type_="rate_limit_error", code="queue_full"))
        except ValueError as exc:  # SamplingParams / prompt checks: their messages start with the field
            message = str(exc)
            return _error(ApiError(400, message, field_of(message)))
        pieces = self._pieces(rid, sink, req.stop_strings)
        if req.stream:
            return _SSEResponse(self._sse(pieces, rid, chat, num_prompt, req.include_usage),
                                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await self._collect(request, pieces, rid, chat, num_prompt)

    async def _pieces(self, rid: str, sink: AsyncioSink, stop_strings: list[str]):
        """(text, finish_reason or None, tokens generated so far) as the engine commits tokens;
        aborts the request when it leaves early (stop string, client gone, error)."""
        frontend = self.conn.frontend
        detok = IncrementalDetokenizer(frontend.tokenizer)
        stops = StopStringMatcher(stop_strings)
        done = False
        try:
            while True:
                event = await sink.queue.get()
                if event.error:
                    done = True
                    raise EngineFailed(event.error, event.fault)
                text, hit = stops.push(detok.push(event.new_tokens, event.finished), final=event.finished)
                if hit:
                    yield text, "stop", event.num_generated
                    return
                if event.finished:
                    done = True
                    yield text, event.finish_reason, event.num_generated
                    return
                if text:
                    yield text, None, event.num_generated
        finally:
            if not done:  # stop string, disconnect or cancellation: free the rows now
                frontend.abort(rid)

    async def _collect(self, request: Request, pieces, rid: str, chat: bool, num_prompt: int) -> Response:
        async def gather():
            texts, reason, n = [], None, 0
            async for piece in pieces:  # reason and n: the last piece's
                text, reason, n = piece
                texts.append(text)
            return "".join(texts), reason, n

        work = asyncio.ensure_future(gather())
        gone = asyncio.ensure_future(_wait_disconnect(request))
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():  # the client left: cancelling runs _pieces' finally, which aborts
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            await pieces.aclose()
            return Response(status_code=499)
        gone.cancel()
        try:
            text, reason, n = work.result()
        except EngineFailed as exc:
            return _error(exc.api_error())
        return JSONResponse(full_response(rid, self.model_name, chat, text, reason, num_prompt, n))

    async def _sse(self, pieces, rid: str, chat: bool, num_prompt: int, include_usage: bool):
        model, n = self.model_name, 0
        try:
            if chat:  # OpenAI opens a chat stream with the role
                yield _sse(stream_chunk(rid, model, chat, "", first=True, include_usage=include_usage))
            async for piece in pieces:
                text, reason, n = piece  # n: the last piece's, for the usage chunk
                if text or reason:
                    yield _sse(stream_chunk(rid, model, chat, text, reason, include_usage=include_usage))
            if include_usage:
                yield _sse(usage_chunk(rid, model, chat, num_prompt, n))
        except EngineFailed as exc:
            yield _sse(exc.api_error().body())
        finally:
            await pieces.aclose()
        yield "data: [DONE]\n\n"


class _SSEResponse(StreamingResponse):
    """Always watch for the client leaving while streaming. (Starlette skips that under ASGI spec
    >= 2.4 servers and relies on a failed send, which may be long in coming while a request waits.)"""

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as group:
            async def stream():
                await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown path, wrong method: still OpenAI's error shape."""
    return JSONResponse(error_body(f"{request.method} {request.url.path}: {exc.detail}"), status_code=exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("HTTP %s %s failed", request.method, request.url.path)
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "internal_error"), status_code=500)


async def _wait_disconnect(request: Request) -> None:
    """Once the body is read, the ASGI receive() only returns when the client disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class HttpServer:
    """uvicorn on the gateway's event loop (gateway/aio_host.py), beside the gRPC server. The socket is
    bound here, in the caller's thread, so that a port in use fails start-up with a clear message."""

    def __init__(self, app, bind: str, port: int, log_level: str = "warning", tls_cert: str | None = None,
                 tls_key: str | None = None):
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((bind, port))
        except OSError as exc:
            self.sock.close()
            raise SystemExit(f"gateway: cannot listen for HTTP on {bind}:{port}: {exc}") from None
        self.address = f"{bind}:{self.sock.getsockname()[1]}"
        # A short graceful shutdown: SIGTERM must not wait on clients that keep streams open.
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2, access_log=False,
                                ssl_certfile=tls_cert, ssl_keyfile=tls_key)  # HTTPS with --tls-cert
        self.server = uvicorn.Server(config)
        self.serving = None

    def start(self, host) -> None:
        """host: the AioHost whose loop serves it."""
        self.serving = host.spawn(self.server.serve(sockets=[self.sock]))

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self.serving is not None:
            try:
                self.serving.result(timeout)
            except Exception:  # noqa: BLE001 - shutting down: a slow or failed close must not hang it
                pass
        self.sock.close()
