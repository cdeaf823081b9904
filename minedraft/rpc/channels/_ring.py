"""Block layout and the ring logic shared by every transport.

A block is a 64-byte header, the tokens, then (64-byte aligned) the probabilities. Ring transports
(shm, cuda_ipc) keep `num_slots` slots of `slot_bytes` in one uint8 tensor (host or device) and only
differ in how that tensor is allocated and shared; inline sends the same bytes in the message.

Staleness is a seqlock on the header's generation: the writer zeroes it before touching a slot and
publishes the full header last; the reader copies the block out, then re-reads the ring's header and
only accepts the copy if it still carries the ref's generation."""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import torch

from minedraft.rpc.channels.base import (
    BlockRef,
    BlockTooLargeError,
    ChannelError,
    ChannelReader,
    ChannelWriter,
    StaleBlockError,
)

HEADER_BYTES = 64
ALIGN = 64  # keeps every section aligned for any dtype view (and for DMA)
MAGIC = 0x4D444348  # "MDCH"
VERSION = 2
# magic, version, flags (bit0: has probs), generation, batch, k, vocab, token dtype, probs dtype, probs rows
_HEADER = struct.Struct("<IHHQIIIBBI")
_GEN = slice(8, 16)  # where the generation lives inside the header
_DTYPES = {1: torch.int64, 2: torch.int32, 3: torch.float32, 4: torch.float16, 5: torch.bfloat16}
_CODES = {v: c for c, v in _DTYPES.items()}

DEFAULT_CAPACITY = dict(max_batch=64, max_k=8, vocab=8192, probs_dtype=torch.float32)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Layout:
    batch: int
    k: int
    vocab: int  # 0: no probs
    tok_dtype: torch.dtype = torch.int64
    prob_dtype: torch.dtype = torch.float32
    prob_rows: int = -1  # rows of q: only the sampled requests send one (-1: batch)

    @property
    def q_rows(self) -> int:
        return self.batch if self.prob_rows < 0 else self.prob_rows

    @property
    def tok_bytes(self) -> int:
        return self.batch * self.k * self.tok_dtype.itemsize

    @property
    def probs_offset(self) -> int:
        return _align(HEADER_BYTES + self.tok_bytes)

    @property
    def nbytes(self) -> int:
        if not self.vocab:
            return HEADER_BYTES + self.tok_bytes
        return self.probs_offset + self.q_rows * self.k * self.vocab * self.prob_dtype.itemsize


def slot_bytes_for(max_batch=64, max_k=8, vocab=8192, probs_dtype=torch.float32, slot_bytes=None) -> int:
    """Slot size for a capacity (an explicit slot_bytes wins)."""
    if slot_bytes:
        return _align(int(slot_bytes))
    return _align(Layout(max_batch, max_k, vocab, torch.int64, probs_dtype).nbytes)


def layout_of(tokens: torch.Tensor, probs: torch.Tensor | None) -> Layout:
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ChannelError(f"tokens must be int64/int32 [B, k], got {tokens.dtype} {tuple(tokens.shape)}")
    b, k = tokens.shape
    if probs is None:
        return Layout(b, k, 0, tokens.dtype)
    if probs.dim() != 3 or probs.shape[0] > b or probs.shape[1] != k or probs.shape[2] == 0:
        raise ChannelError(f"probs must be [S<={b}, k={k}, V>0] (the sampled rows), got {tuple(probs.shape)}")
    if probs.dtype not in _CODES or not probs.dtype.is_floating_point:
        raise ChannelError(f"probs dtype {probs.dtype} not supported (float32/float16/bfloat16)")
    return Layout(b, k, probs.shape[2], tokens.dtype, probs.dtype, probs.shape[0])


def pack_header(layout: Layout, generation: int) -> torch.Tensor:
    raw = _HEADER.pack(MAGIC, VERSION, 1 if layout.vocab else 0, generation, layout.batch, layout.k,
                       layout.vocab, _CODES[layout.tok_dtype], _CODES[layout.prob_dtype], layout.q_rows)
    return torch.frombuffer(bytearray(raw.ljust(HEADER_BYTES, b"\0")), dtype=torch.uint8)


def unpack_header(raw: bytes) -> tuple[int, Layout | None]:
    """(generation, layout); layout is None when the slot holds no published block."""
    magic, version, flags, gen, b, k, v, tc, pc, rows = _HEADER.unpack_from(raw)
    if magic != MAGIC or gen == 0:
        return gen if magic == MAGIC else 0, None
    if version != VERSION or tc not in _DTYPES or pc not in _DTYPES:
        raise ChannelError(f"unsupported block header (version {version}, dtype codes {tc}/{pc})")
    return gen, Layout(b, k, v if flags & 1 else 0, _DTYPES[tc], _DTYPES[pc], rows if flags & 1 else -1)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8).reshape(-1)


def encode_into(dst: torch.Tensor, layout: Layout, generation: int, tokens, probs) -> None:
    """Write one block into the uint8 tensor `dst` (host or device), header last (seqlock).
    non_blocking: into a device ring, a host source is staged by the driver at once (safe to free
    after the call) instead of torch waiting for the stream after each copy; the writer publishes
    once all are queued. A host ring ignores it."""
    dst[_GEN].zero_()
    dst[HEADER_BYTES:HEADER_BYTES + layout.tok_bytes].copy_(_as_bytes(tokens), non_blocking=True)
    if probs is not None:
        dst[layout.probs_offset:layout.nbytes].copy_(_as_bytes(probs), non_blocking=True)
    dst[:HEADER_BYTES].copy_(pack_header(layout, generation), non_blocking=True)


def decode(blk: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Views of a block copy (uint8 tensor that starts with the header)."""
    b, k, v = layout.batch, layout.k, layout.vocab
    tokens = blk[HEADER_BYTES:HEADER_BYTES + layout.tok_bytes].view(layout.tok_dtype).view(b, k)
    if not v:
        return tokens, None
    return tokens, blk[layout.probs_offset:layout.nbytes].view(layout.prob_dtype).view(layout.q_rows, k, v)


def check_layout(ref: BlockRef, gen: int, layout: Layout | None) -> Layout:
    if gen != ref.generation or layout is None:
        raise StaleBlockError(
            f"{ref.transport} slot {ref.slot} holds generation {gen}, the ref wants {ref.generation}: "
            "overwritten since (the reader lags more than num_slots writes behind)")
    if (layout.batch, layout.k, layout.vocab, layout.nbytes) != (ref.batch, ref.k, ref.vocab, ref.nbytes):
        raise ChannelError(f"block header {layout} does not match ref {ref}")
    return layout


class RingWriter(ChannelWriter):
    """Writes blocks round-robin into `self._ring` (uint8 tensor of num_slots * slot_bytes),
    set up by the subclass."""

    def __init__(self, num_slots: int = 4, **capacity):
        if num_slots < 1:
            raise ChannelError("num_slots must be >= 1")
        cap = {**DEFAULT_CAPACITY, **capacity}
        unknown = set(cap) - set(DEFAULT_CAPACITY) - {"slot_bytes"}
        if unknown:
            raise TypeError(f"unknown capacity arguments {sorted(unknown)}")
        self.capacity = cap
        self.num_slots = num_slots
        self.slot_bytes = slot_bytes_for(**cap)
        self._gen = 0
        self._lock = threading.Lock()
        self._ring: torch.Tensor | None = None

    def _publish(self) -> None:
        """Make the block visible to the reader before the ref leaves (device sync for CUDA)."""

    def _check_size(self, layout: Layout) -> None:
        if layout.nbytes > self.slot_bytes:
            c = self.capacity
            raise BlockTooLargeError(
                f"block B={layout.batch}, k={layout.k}, V={layout.vocab} ({layout.prob_dtype}) needs "
                f"{layout.nbytes} bytes but a {self.transport} slot holds {self.slot_bytes} (capacity "
                f"max_batch={c['max_batch']}, max_k={c['max_k']}, vocab={c['vocab']}); create the "
                "writer with a larger capacity")

    def write(self, tokens, probs=None, slot: int | None = None) -> BlockRef:
        """slot: where to write (the feature channel picks a free one); None: round-robin."""
        layout = layout_of(tokens, probs)
        self._check_size(layout)
        with self._lock:
            if self._ring is None:
                raise ChannelError(f"{self.transport} writer is closed")
            self._gen += 1
            slot = (self._gen - 1) % self.num_slots if slot is None else slot
            off = slot * self.slot_bytes
            encode_into(self._ring[off:off + layout.nbytes], layout, self._gen, tokens, probs)
            self._publish()
            return BlockRef(self.transport, slot, off, layout.nbytes, self._gen, layout.batch,
                            layout.k, layout.vocab, bool(layout.vocab))


class RingReader(ChannelReader):
    """Copies blocks out of `self._ring`, set up by the subclass."""

    transport = ""
    _ring: torch.Tensor | None = None

    def read(self, ref, device="cpu"):
        ring = self._ring
        if ring is None:
            raise ChannelError(f"{self.transport} reader is closed")
        if ref.transport != self.transport or ref.offset < 0 or ref.offset + ref.nbytes > ring.numel():
            raise ChannelError(f"ref {ref.transport} slot {ref.slot} [{ref.offset}, +{ref.nbytes}) "
                               f"does not fit this {self.transport} ring of {ring.numel()} bytes")
        # One copy out of the ring into memory we own, so the slot can be reused right away.
        blk = torch.empty(ref.nbytes, dtype=torch.uint8, device=device)
        blk.copy_(ring[ref.offset:ref.offset + ref.nbytes])
        # Seqlock check: the header read AFTER the copy must still carry the ref's generation.
        head = ring[ref.offset:ref.offset + HEADER_BYTES].cpu().numpy().tobytes()
        layout = check_layout(ref, *unpack_header(head))
        return decode(blk, layout)
