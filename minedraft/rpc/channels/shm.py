"""POSIX shared-memory transport: the ring lives in one segment made by the producer.

The producer creates the segment once (and unlinks it on close; its resource tracker unlinks it if
the producer dies). The consumer maps it once by name and never registers it with its own resource
tracker, which would otherwise unlink the producer's segment (and warn) when the consumer exits."""

from __future__ import annotations

import mmap
import os
import secrets
from multiprocessing import shared_memory

import torch

from minedraft.rpc.channels import _ring
from minedraft.rpc.channels.base import ChannelError, ChannelSpec, host_id


class _Mapping:
    """A consumer-side mapping of a named segment that the resource tracker does not know about."""

    def __init__(self, name: str):
        import _posixshmem  # what SharedMemory uses on POSIX

        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            self._mmap = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        self.buf.release()
        self._mmap.close()


def _attach(name: str):
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        pass
    try:
        return _Mapping(name)
    except ImportError:  # no _posixshmem (Windows): no resource tracker to avoid either
        return shared_memory.SharedMemory(name=name)


class ShmWriter(_ring.RingWriter):
    transport = "shm"

    def __init__(self, device: str = "cpu", num_slots: int = 4, **capacity):
        super().__init__(num_slots, **capacity)
        name = f"md_{os.getpid()}_{secrets.token_hex(4)}"  # short: macOS allows 31 chars
        self._seg = shared_memory.SharedMemory(name=name, create=True, size=num_slots * self.slot_bytes)
        self._ring = torch.frombuffer(self._seg.buf, dtype=torch.uint8)
        self._ring.zero_()  # generation 0 everywhere: no slot holds a block yet

    def spec(self) -> ChannelSpec:
        return ChannelSpec("shm", name=self._seg.name, device="cpu", num_slots=self.num_slots,
                           slot_bytes=self.slot_bytes, pid=os.getpid(), hostname=host_id())

    def close(self) -> None:
        with self._lock:
            if self._ring is None:
                return
            self._ring = None  # drop the buffer export before closing the mapping
            self._seg.close()
            self._seg.unlink()


class ShmReader(_ring.RingReader):
    transport = "shm"

    def __init__(self, spec: ChannelSpec):
        try:
            self._seg = _attach(spec.name)
        except (FileNotFoundError, OSError) as e:
            raise ChannelError(f"cannot attach shm segment {spec.name!r} of pid {spec.pid} on "
                               f"{spec.hostname!r} (not the same host/IPC namespace, or closed): {e}") from e
        self._ring = torch.frombuffer(self._seg.buf, dtype=torch.uint8)
        if self._ring.numel() < spec.num_slots * spec.slot_bytes:
            self.close()
            raise ChannelError(f"shm segment {spec.name!r} is smaller than the spec says")

    def close(self) -> None:
        if self._ring is not None:
            self._ring = None
            self._seg.close()
