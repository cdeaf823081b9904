"""Is it grpc's? A bare grpc server (sync or aio, no MineDraft code) that refuses every call at once with
RESOURCE_EXHAUSTED, and one asyncio client opening N server-streaming calls at once: how many does the
client see as CANCELLED instead? With grpc's defaults ~10% at 2,000: grpc-core cancels incoming calls past
`grpc.server.max_pending_requests` (1,000) that the application has not picked up yet. With the options
every MineDraft service uses (minedraft.rpc.grpc_common.server_options: the limit raised), none.

    python scripts/grpc_burst_refusal.py [N]
"""

import asyncio
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from minedraft.rpc.grpc_common import server_options


class AioRefuser(health_pb2_grpc.HealthServicer):
    async def Watch(self, request, context):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full; retry later")
        yield


class SyncRefuser(health_pb2_grpc.HealthServicer):
    def Watch(self, request, context):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full; retry later")
        yield


async def burst(port: int, n: int) -> dict:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
    codes: dict = {}

    async def one(i):
        try:
            async for _ in health_pb2_grpc.HealthStub(channels[i % 8]).Watch(health_pb2.HealthCheckRequest(),
                                                                           timeout=60):
                pass
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        codes[code] = codes.get(code, 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    for ch in channels:
        await ch.close()
    return codes


async def main(n: int) -> None:
    for label, options in (("grpc defaults", None), ("server_options()", server_options())):
        server = grpc.aio.server(options=options)
        health_pb2_grpc.add_HealthServicer_to_server(AioRefuser(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"grpc.aio server, {label}, {n} calls: {await burst(port, n)}")
        await server.stop(0)
        sync = grpc.server(futures.ThreadPoolExecutor(16), options=options)
        health_pb2_grpc.add_HealthServicer_to_server(SyncRefuser(), sync)
        port = sync.add_insecure_port("127.0.0.1:0")
        sync.start()
        print(f"sync server, {label}, {n} calls: {await burst(port, n)}")
        sync.stop(0)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
