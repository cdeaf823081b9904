"""CUDA IPC transport: the ring is one device allocation exported once with cudaIpcGetMemHandle.

The ring is allocated with a plain cudaMalloc through CuPy (not a caching pool), so the handle's
base is the ring itself (offset 0); torch sees it through DLPack. The consumer opens the handle once
per process (cached, ref-counted) on the device that holds it, and copies each block out with
`.to(device)` (peer copy when devices differ). Ordering: the writer waits for an event recorded on
its own stream after the block's copies (never a device-wide sync: other streams keep running)
before returning the ref, and the ref only reaches the reader after the producer's gRPC reply.
CuPy is imported lazily: this module imports without it."""

from __future__ import annotations

import os
import threading

import torch

from minedraft.rpc.channels import _ring
from minedraft.rpc.channels.base import ChannelError, ChannelSpec, host_id


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise ChannelError("the cuda_ipc transport needs CuPy (pip install cupy-cuda12x)") from e
    if not torch.cuda.is_available():
        raise ChannelError("the cuda_ipc transport needs CUDA")
    return cupy


def _uuid(index: int) -> str:
    try:
        return str(torch.cuda.get_device_properties(index).uuid)
    except (AttributeError, RuntimeError):
        return ""


def _local_index(spec: ChannelSpec) -> int:
    """This process's number for the writer's GPU (CUDA_VISIBLE_DEVICES may renumber it)."""
    if spec.device_uuid:
        for i in range(torch.cuda.device_count()):
            if _uuid(i) == spec.device_uuid:
                return i
    index = torch.device(spec.device).index or 0
    if index >= torch.cuda.device_count():
        raise ChannelError(f"the writer's GPU {spec.device} ({spec.device_uuid}) is not visible here")
    return index


class CudaIpcWriter(_ring.RingWriter):
    transport = "cuda_ipc"

    def __init__(self, device: str = "cuda", num_slots: int = 4, **capacity):
        cp = _cupy()
        super().__init__(num_slots, **capacity)
        dev = torch.device(device)
        if dev.type != "cuda":
            raise ChannelError(f"cuda_ipc needs a cuda device, got {device}")
        self._index = dev.index if dev.index is not None else torch.cuda.current_device()
        size = num_slots * self.slot_bytes
        with cp.cuda.Device(self._index):
            self._mem = cp.cuda.memory.Memory(size)  # raw cudaMalloc: IPC handle base == ring
            arr = cp.ndarray((size,), dtype=cp.uint8, memptr=cp.cuda.MemoryPointer(self._mem, 0))
            self._handle = bytes(cp.cuda.runtime.ipcGetMemHandle(self._mem.ptr))
        self._ring = torch.from_dlpack(arr)
        self._ring.zero_()
        torch.cuda.synchronize(self._index)

    def _publish(self) -> None:
        # The copies into the ring were queued on this device's current stream (cross-device
        # copies join it); the ref must not leave before they land. An event waits for exactly
        # that work, not for what other streams of the device run meanwhile.
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self._index))
        done.synchronize()

    def spec(self) -> ChannelSpec:
        return ChannelSpec("cuda_ipc", handle=self._handle, device=f"cuda:{self._index}",
                           num_slots=self.num_slots, slot_bytes=self.slot_bytes, pid=os.getpid(),
                           hostname=host_id(), device_uuid=_uuid(self._index))

    def close(self) -> None:
        # Readers should close first: freeing memory another process still maps is undefined.
        with self._lock:
            if self._ring is not None:
                torch.cuda.synchronize(self._index)
                self._ring = None
                self._mem = None


# handle -> [device pointer, device index, open readers]; a handle is opened once per process.
_OPEN: dict[bytes, list] = {}
_OPEN_LOCK = threading.Lock()


def _open_handle(cp, handle: bytes, index: int) -> int:
    with _OPEN_LOCK:
        entry = _OPEN.get(handle)
        if entry is None:
            try:
                with cp.cuda.Device(index):
                    ptr = cp.cuda.runtime.ipcOpenMemHandle(
                        handle, cp.cuda.runtime.cudaIpcMemLazyEnablePeerAccess)
            except Exception as e:  # CUDARuntimeError: different host, namespace, or a dead writer
                raise ChannelError(f"cannot open CUDA IPC handle on cuda:{index}: {e}") from e
            entry = _OPEN[handle] = [ptr, index, 0]
        entry[2] += 1
        return entry[0]


def _close_handle(cp, handle: bytes) -> None:
    with _OPEN_LOCK:
        entry = _OPEN.get(handle)
        if entry is None:
            return
        entry[2] -= 1
        if entry[2] == 0:
            del _OPEN[handle]
            with cp.cuda.Device(entry[1]):
                cp.cuda.runtime.ipcCloseMemHandle(entry[0])


class CudaIpcReader(_ring.RingReader):
    transport = "cuda_ipc"

    def __init__(self, spec: ChannelSpec):
        if spec.pid == os.getpid():
            raise ChannelError("a CUDA IPC handle cannot be opened in the process that exported it; "
                               "use shm or inline in one process (or read the writer's tensors)")
        cp = _cupy()
        self._cp, self._handle = cp, spec.handle
        index = _local_index(spec)
        size = spec.num_slots * spec.slot_bytes
        ptr = _open_handle(cp, spec.handle, index)
        mem = cp.cuda.UnownedMemory(ptr, size, spec.handle, index)
        arr = cp.ndarray((size,), dtype=cp.uint8, memptr=cp.cuda.MemoryPointer(mem, 0))
        self._ring = torch.from_dlpack(arr)

    def close(self) -> None:
        if self._ring is not None:
            torch.cuda.synchronize(self._ring.device)
            self._ring = None
            _close_handle(self._cp, self._handle)
