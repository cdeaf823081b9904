"""Python client for the gateway's public API (proto: proto/minedraft/v1/gateway.proto).

    from minedraft.client import MineDraftClient
    with MineDraftClient("127.0.0.1:50051") as client:
        for chunk in client.generate("def fibonacci(n):", max_tokens=64):
            print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

import os
from typing import AsyncIterator, Iterator

import grpc

from minedraft.rpc.auth import auth_metadata, client_key
from minedraft.rpc.grpc_common import GRPC_OPTIONS, params_to_proto
from minedraft.spec.sampling import SamplingParams
from minedraft.v1 import gateway_pb2, gateway_pb2_grpc


def _request(prompt, params: SamplingParams, request_id: str) -> gateway_pb2.GenerateRequest:
    msg = gateway_pb2.GenerateRequest(params=params_to_proto(params), request_id=request_id)
    if isinstance(prompt, str):
        msg.prompt = prompt
    else:
        msg.prompt_ids.extend(prompt)
    return msg


def _channel(api, address: str, tls_ca: str | None):
    """TLS when a CA file is given (or $MINEDRAFT_TLS_CA): the gateway's --tls-cert must chain to it."""
    tls_ca = tls_ca or os.environ.get("MINEDRAFT_TLS_CA")
    if not tls_ca:
        return api.insecure_channel(address, options=GRPC_OPTIONS)
    with open(tls_ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return api.secure_channel(address, creds, options=GRPC_OPTIONS)


class MineDraftClient:
    """api_key: sent as `authorization: Bearer KEY` on every call (default: $MINEDRAFT_API_KEY)."""

    def __init__(self, address: str = "127.0.0.1:50051", api_key: str | None = None, tls_ca: str | None = None):
        self.address = address
        self.channel = _channel(grpc, address, tls_ca)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.metadata = auth_metadata(client_key(api_key))

    def generate(self, prompt: str | list[int], request_id: str = "", timeout: float | None = None,
                 **params) -> Iterator[gateway_pb2.GenerateResponse]:
        """Stream the response chunks; params are SamplingParams fields (validated here first)."""
        call = self.stub.Generate(_request(prompt, SamplingParams(**params), request_id), timeout=timeout,
                                  metadata=self.metadata)
        return call

    def generate_text(self, prompt: str | list[int], **params) -> str:
        return "".join(chunk.text for chunk in self.generate(prompt, **params))

    def generate_ids(self, prompt: str | list[int], **params) -> tuple[list[int], gateway_pb2.GenerateResponse]:
        """All generated ids and the final chunk (finish reason, counts)."""
        ids, last = [], None
        for chunk in self.generate(prompt, **params):
            ids.extend(chunk.token_ids)
            last = chunk
        return ids, last

    def abort(self, request_id: str) -> bool:
        return self.stub.Abort(gateway_pb2.AbortRequest(request_id=request_id), metadata=self.metadata).found

    def model_info(self) -> gateway_pb2.ModelInfo:
        return self.stub.GetModelInfo(gateway_pb2.ModelInfoRequest(), metadata=self.metadata)

    def configure(self, mode: str = "", num_speculative_tokens: int | str = 0,
                  max_num_seqs: int = 0) -> gateway_pb2.ModelInfo:
        """Operator call: switch mode, k (a number, "auto", or 0 to keep it) or max_num_seqs between requests."""
        auto = num_speculative_tokens == "auto"
        request = gateway_pb2.ConfigureRequest(mode=mode, num_speculative_tokens=0 if auto else num_speculative_tokens,
                                               max_num_seqs=max_num_seqs, auto_k=auto)
        return self.stub.Configure(request, metadata=self.metadata)

    def stats(self, reset: bool = False) -> gateway_pb2.Stats:
        return self.stub.GetStats(gateway_pb2.StatsRequest(reset=reset), metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncMineDraftClient:
    """The same over grpc.aio, for asyncio programs."""

    def __init__(self, address: str = "127.0.0.1:50051", api_key: str | None = None, tls_ca: str | None = None):
        self.channel = _channel(grpc.aio, address, tls_ca)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.metadata = auth_metadata(client_key(api_key))

    async def generate(self, prompt, request_id: str = "", **params) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        async for chunk in self.stub.Generate(_request(prompt, SamplingParams(**params), request_id),
                                              metadata=self.metadata):
            yield chunk

    async def close(self) -> None:
        await self.channel.close()


def generate_text(address: str, prompt: str | list[int], api_key: str | None = None, **params) -> str:
    with MineDraftClient(address, api_key=api_key) as client:
        return client.generate_text(prompt, **params)
