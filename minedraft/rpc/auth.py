"""API keys: one mechanism for the gateway's HTTP and gRPC front doors.

Keys come from `--api-key` (repeatable, or comma-separated) or MINEDRAFT_API_KEY (comma-separated).
Clients send `Authorization: Bearer KEY` (HTTP header or gRPC metadata `authorization`). Health
checks stay open so that orchestrators can probe without a secret."""

from __future__ import annotations

import hashlib
import hmac
import os

import grpc

ENV_VAR = "MINEDRAFT_API_KEY"
# Open without a key: health probes (docker, k8s, `minedraft health`) carry no secret.
OPEN_GRPC_SERVICES = ("grpc.health.v1.Health",)


def parse_keys(values) -> tuple[str, ...]:
    """Split comma-separated values into keys, dropping blanks."""
    if isinstance(values, str):
        values = [values]
    return tuple(k.strip() for v in values or () for k in v.split(",") if k.strip())


def load_keys(cli_values=None) -> tuple[str, ...]:
    """The flag wins over the environment; none of either = no authentication."""
    return parse_keys(cli_values) or parse_keys(os.environ.get(ENV_VAR, ""))


def client_key(explicit: str | None = None) -> str | None:
    """The key a client sends: the explicit one, else the first in MINEDRAFT_API_KEY."""
    if explicit:
        return explicit
    keys = parse_keys(os.environ.get(ENV_VAR, ""))
    return keys[0] if keys else None


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def key_matches(presented: str | None, keys: tuple[str, ...]) -> bool:
    """Constant time in the presented key's content: every key is compared, no early exit."""
    # Digests first: compare_digest on strings of different lengths could reveal the length.
    candidate = hashlib.sha256((presented or "").encode()).digest()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(candidate, hashlib.sha256(key.encode()).digest())
    return ok and presented is not None


def authorized(header: str | None, keys: tuple[str, ...]) -> bool:
    return not keys or key_matches(bearer_token(header), keys)


def auth_metadata(key: str | None) -> tuple:
    return (("authorization", f"Bearer {key}"),) if key else ()


DENIED = "missing or invalid API key (send metadata 'authorization: Bearer KEY')"


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """On the gateway's grpc.aio server: refuse every RPC but the open ones with UNAUTHENTICATED unless
    `authorization: Bearer KEY`."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

        self._deny = {"unary_unary": grpc.unary_unary_rpc_method_handler(deny),
                      "unary_stream": grpc.unary_stream_rpc_method_handler(deny),
                      "stream_unary": grpc.stream_unary_rpc_method_handler(deny),
                      "stream_stream": grpc.stream_stream_rpc_method_handler(deny)}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").rpartition("/")[0]
        header = next((v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"), None)
        if handler is None or service in OPEN_GRPC_SERVICES or authorized(header, self.keys):
            return handler  # None: an unknown method, UNIMPLEMENTED as usual
        # Same streaming shape as the real handler, so the client sees a clean status.
        shape = ("stream" if handler.request_streaming else "unary") + "_" + \
            ("stream" if handler.response_streaming else "unary")
        return self._deny[shape]
