"""Token channels: the data plane that carries draft tokens (and q) from draft to target.

Transports: cuda_ipc (same host, GPU ring), shm (same host, shared-memory ring), inline (bytes in
the gRPC message). See negotiate.py for the handshake."""

from minedraft.rpc.channels.base import (
    BlockRef,
    BlockTooLargeError,
    ChannelError,
    ChannelReader,
    ChannelSpec,
    ChannelWriter,
    NegotiationError,
    StaleBlockError,
    host_id,
)
from minedraft.rpc.channels.negotiate import (
    PREFERENCE,
    choose_transport,
    cuda_ipc_available,
    local_capabilities,
    make_writer,
    open_reader,
)

__all__ = [
    "BlockRef",
    "BlockTooLargeError",
    "ChannelError",
    "ChannelReader",
    "ChannelSpec",
    "ChannelWriter",
    "NegotiationError",
    "PREFERENCE",
    "StaleBlockError",
    "choose_transport",
    "cuda_ipc_available",
    "host_id",
    "local_capabilities",
    "make_writer",
    "open_reader",
]
