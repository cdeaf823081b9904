"""Picking and opening a transport.

Start-up handshake (over gRPC): the reader sends local_capabilities() and host_id(); the writer
calls choose_transport(), make_writer() and returns writer.spec(); the reader calls open_reader(spec).
Per step only BlockRefs travel."""

from __future__ import annotations

import torch

from minedraft.config import TRANSPORTS
from minedraft.rpc.channels.base import ChannelError, ChannelReader, ChannelSpec, ChannelWriter, NegotiationError

PREFERENCE = TRANSPORTS  # fastest first; the flags' choices come from the same tuple
SAME_HOST_ONLY = frozenset({"cuda_ipc", "shm"})


def cuda_ipc_available() -> bool:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def local_capabilities(device: str | torch.device = "cpu") -> list[str]:
    """Transports this end can use, best first."""
    caps = []
    if torch.device(device).type == "cuda" and cuda_ipc_available():
        caps.append("cuda_ipc")
    return caps + ["shm", "inline"]


def choose_transport(writer_caps, reader_caps, same_host: bool, forced: str | None = None) -> str:
    """Best transport both ends support (cuda_ipc > shm > inline; the first two need one host)."""
    usable = [t for t in PREFERENCE
              if t in writer_caps and t in reader_caps and (same_host or t not in SAME_HOST_ONLY)]
    sides = f"writer supports {list(writer_caps)}, reader supports {list(reader_caps)}, same_host={same_host}"
    if forced:
        if forced not in usable:
            raise NegotiationError(f"forced transport {forced!r} is not usable by both ends: {sides}")
        return forced
    if not usable:
        raise NegotiationError(f"no common transport: {sides}")
    return usable[0]


def make_writer(transport: str, device: str = "cpu", **capacity) -> ChannelWriter:
    """capacity: num_slots, max_batch, max_k, vocab, probs_dtype, slot_bytes (see _ring)."""
    if transport == "inline":
        from minedraft.rpc.channels.inline import InlineWriter

        capacity.pop("num_slots", None)
        return InlineWriter(device, **capacity)
    if transport == "shm":
        from minedraft.rpc.channels.shm import ShmWriter

        return ShmWriter(device, **capacity)
    if transport == "cuda_ipc":
        from minedraft.rpc.channels.cuda_ipc import CudaIpcWriter

        return CudaIpcWriter(device, **capacity)
    raise ChannelError(f"unknown transport {transport!r} (known: {', '.join(PREFERENCE)})")


def open_reader(spec: ChannelSpec) -> ChannelReader:
    """Open the writer's channel once; keep the reader for the life of the connection."""
    if spec.transport == "inline":
        from minedraft.rpc.channels.inline import InlineReader

        return InlineReader(spec)
    if spec.transport == "shm":
        from minedraft.rpc.channels.shm import ShmReader

        return ShmReader(spec)
    if spec.transport == "cuda_ipc":
        from minedraft.rpc.channels.cuda_ipc import CudaIpcReader

        return CudaIpcReader(spec)
    raise ChannelError(f"unknown transport {spec.transport!r} (known: {', '.join(PREFERENCE)})")
