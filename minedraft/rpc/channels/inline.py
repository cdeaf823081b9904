"""Inline transport: the block's bytes ride in BlockRef.payload (the two ends are on different hosts).

Same block layout as the rings, so a payload is self-describing; there is no slot to go stale.
Keep the block under the gRPC message limit (the services raise grpc.max_*_message_length)."""

from __future__ import annotations

import os

import torch

from minedraft.rpc.channels import _ring
from minedraft.rpc.channels.base import BlockRef, ChannelError, ChannelReader, ChannelSpec, host_id


class InlineWriter(_ring.RingWriter):
    transport = "inline"

    def __init__(self, device: str = "cpu", **capacity):
        # The capacity only bounds the message size; nothing is preallocated.
        super().__init__(num_slots=1, **capacity)
        self._closed = False

    def spec(self) -> ChannelSpec:
        return ChannelSpec("inline", device="cpu", num_slots=0, slot_bytes=self.slot_bytes,
                           pid=os.getpid(), hostname=host_id())

    def write(self, tokens, probs=None) -> BlockRef:
        layout = _ring.layout_of(tokens, probs)
        self._check_size(layout)
        with self._lock:
            if self._closed:
                raise ChannelError("inline writer is closed")
            self._gen += 1
            gen = self._gen
        buf = bytearray(layout.nbytes)
        _ring.encode_into(torch.frombuffer(buf, dtype=torch.uint8), layout, gen, tokens, probs)
        return BlockRef("inline", 0, 0, layout.nbytes, gen, layout.batch, layout.k, layout.vocab,
                        bool(layout.vocab), payload=bytes(buf))

    def close(self) -> None:
        self._closed = True


class InlineReader(ChannelReader):
    transport = "inline"

    def __init__(self, spec: ChannelSpec | None = None):
        pass  # nothing to open: every ref carries its bytes

    def read(self, ref, device="cpu"):
        if ref.transport != "inline" or len(ref.payload) != ref.nbytes:
            raise ChannelError(f"not an inline block: {ref.transport}, payload {len(ref.payload)} "
                               f"bytes for nbytes={ref.nbytes}")
        # One copy into a buffer we own (bytes are immutable; torch wants a writable buffer).
        blk = torch.frombuffer(bytearray(ref.payload), dtype=torch.uint8)
        layout = _ring.check_layout(ref, *_ring.unpack_header(ref.payload[:_ring.HEADER_BYTES]))
        tokens, probs = _ring.decode(blk, layout)
        if torch.device(device).type == "cpu":
            return tokens, probs
        return tokens.to(device), None if probs is None else probs.to(device)

    def close(self) -> None:
        pass
