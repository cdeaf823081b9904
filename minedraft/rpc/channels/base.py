"""Token channel contracts: what travels per step (BlockRef), what the handshake exchanges once
(ChannelSpec), the writer/reader interfaces and the errors.

The draft service writes a block of draft tokens [B, k] (int64) and optionally the draft's
distributions q [B, k, V] (float) every step; the target service reads it back given the small
BlockRef that travels over gRPC. Only the transport differs (see negotiate.py)."""

from __future__ import annotations

import abc
import os
import socket
from dataclasses import asdict, dataclass, field, fields

import torch


class ChannelError(RuntimeError):
    """Any failure of the data plane (bad ref, segment missing, CUDA IPC unavailable...)."""


class StaleBlockError(ChannelError):
    """The slot a ref points to was overwritten (or is being overwritten) since the ref was made."""


class BlockTooLargeError(ChannelError):
    """The block does not fit in one slot of the writer's ring."""


class NegotiationError(ChannelError):
    """The two ends share no usable transport (or a forced one is not supported by both)."""


def host_id() -> str:
    # Same-host transports need a shared /dev/shm (and, for CUDA IPC, the same GPUs); containers on
    # one machine have different hostnames, so the operator can set one id for all of them.
    return os.environ.get("MINEDRAFT_HOST_ID") or socket.gethostname()


def _from_dict(cls, d: dict):
    # Tolerate missing keys (protobuf defaults) and extra ones (newer peers).
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class BlockRef:
    """Per-step reference to one block; small enough to ride in every gRPC message."""

    transport: str
    slot: int
    offset: int  # byte offset of the slot in the ring
    nbytes: int  # header + tokens + probs
    generation: int  # write counter; the slot header must still hold it when read
    batch: int
    k: int
    vocab: int  # 0 when no probs
    has_probs: bool
    payload: bytes = b""  # inline transport only

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BlockRef":
        ref = _from_dict(cls, d)
        ref.payload = bytes(ref.payload or b"")
        return ref


@dataclass
class ChannelSpec:
    """What the handshake exchanges once so that the reader can open the writer's ring."""

    transport: str
    name: str = ""  # shm segment name
    handle: bytes = b""  # CUDA IPC memory handle of the ring's allocation (offset 0)
    device: str = "cpu"  # writer's ring device, in the writer's numbering
    num_slots: int = 0
    slot_bytes: int = 0  # for inline: the largest block accepted
    pid: int = field(default_factory=os.getpid)
    hostname: str = field(default_factory=host_id)
    device_uuid: str = ""  # GPU uuid: device numbers differ between processes/containers

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ChannelSpec":
        spec = _from_dict(cls, d)
        spec.handle = bytes(spec.handle or b"")
        return spec


class ChannelWriter(abc.ABC):
    """Producer end (draft service). Not meant to be shared between threads without care: writes
    are serialised by a lock, but a ring slot is reused after num_slots writes."""

    transport: str = ""

    @abc.abstractmethod
    def spec(self) -> ChannelSpec: ...

    @abc.abstractmethod
    def write(self, tokens: torch.Tensor, probs: torch.Tensor | None = None) -> BlockRef: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ChannelReader(abc.ABC):
    """Consumer end (target service). read() returns tensors it owns (copied out of the ring)."""

    @abc.abstractmethod
    def read(
        self, ref: BlockRef, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
