"""The gateway's one asyncio event loop, on a thread of its own: the public gRPC server (grpc.aio) and
the HTTP app run on it, so an open stream is a coroutine waiting on a queue, not a thread. The engine
loop (its own thread) hands each request's events over with call_soon_threadsafe (`AsyncioSink`).
Health is answered from the readiness flag on this loop: it answers at once under any load."""

from __future__ import annotations

import asyncio
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class AioHost:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="minedraft-aio", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()

    def run(self, coro, timeout: float | None = None):
        """Run coro on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro):
        """Start coro on the loop; returns its concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class AsyncioSink:
    """What the engine loop .put()s events into: forwards them to an asyncio.Queue on its loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening
            pass


class ReadinessHealth(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 on the aio server: SERVING while the gateway is ready ("" and its services),
    NOT_FOUND for a service it does not have."""

    WATCH_POLL_S = 0.2

    def __init__(self, ready, service_names: list[str]):
        self.ready, self.names = ready, {"", *service_names}

    def _status(self, service: str):
        if service not in self.names:
            return None
        return health_pb2.HealthCheckResponse.SERVING if self.ready.is_set() else \
            health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request, context):
        status = self._status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request, context):
        last = None
        while True:
            status = self._status(request.service)
            if status is None:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(self.WATCH_POLL_S)


def add_health_and_reflection(server, ready, service_names: list[str]) -> None:
    from grpc_reflection.v1alpha import reflection

    health_pb2_grpc.add_HealthServicer_to_server(ReadinessHealth(ready, service_names), server)
    names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
