"""Feature channels: the target's hidden states on their way to an EAGLE draft node.

The same transports and block layout as the token channel, in the other direction (the target
writes, the draft node reads): a block's "tokens" are the positions [N, 1] (int64) and its "q" the
features [N, 1, width] (width: H, or 3H for an EAGLE-3 node; the target sizes the ring by the node's
feature_layers), so the ring code, its seqlock and its checks are reused unchanged. Which
rows belong to which request travels beside the BlockRef as spans (request id, start position, first
row, rows). A block larger than a ring slot (a long prefill) travels inline instead; the reader
takes either.

Slot lifetime. A block's rows are read by the node at the next Add or Propose that the gateway
sends it for those requests, which may come many target calls later: a request decoded target-only
(k = 0, no draft node, the pipeline merged) collects a block per call and is read only when it is
drafted again. A ring that reused slots round-robin overwrote such blocks after NUM_SLOTS writes, and
the node drafted from zeros. So a ring slot is reused only once every request with rows in it is
known to be done with them, which the target sees by itself (no acknowledgement travels):
- the request is verified (Verify): a verified request was proposed, and the Propose that drafted it
  carried (and the node read, before replying) every block the target had written for it;
- or it left the target (released, preempted, re-added after a failure): nobody reads its rows.
A write takes the next free slot; with none free (many requests decoding target-only for a long
stretch) the block goes inline, in the target's reply, which is always correct, only heavier. The
slots free themselves as those requests are drafted again. A reader that still meets an overwritten
slot (a gateway that lost track, a target restart) gets StaleBlockError and counts those positions
missing: acceptance only, never the output."""

from __future__ import annotations

import dataclasses

import torch

from minedraft.rpc.channels.base import BlockRef, BlockTooLargeError, ChannelError, ChannelSpec
from minedraft.rpc.channels.negotiate import make_writer, open_reader

NUM_SLOTS = 16  # a request's features wait for its next Propose: PSD's other batch writes meanwhile
SPILL_BYTES = 256 << 20  # an inline block this large still fits a gRPC message (grpc_common)


@dataclasses.dataclass
class Span:
    request_id: str
    start: int  # position of the span's first row
    row: int  # its first row in the block
    rows: int


def rows_per_slot(max_num_seqs: int, max_k: int) -> int:
    """What one verify of a full batch commits (pending token + max_k accepted per row)."""
    return max_num_seqs * (max_k + 1)


class FeatureWriter:
    """One feature channel of the target (one per transport in use)."""

    def __init__(self, transport: str, device: str, hidden: int, dtype: torch.dtype, max_rows: int,
                 num_slots: int = NUM_SLOTS):
        self.transport = transport
        capacity = dict(max_batch=max_rows, max_k=1, vocab=hidden, probs_dtype=dtype)
        kwargs = {} if transport == "inline" else {"num_slots": num_slots}
        self.ring = make_writer(transport, device, **capacity, **kwargs) if transport != "inline" else None
        self.spill = make_writer("inline", "cpu", **capacity, slot_bytes=SPILL_BYTES)
        self.num_slots = num_slots if self.ring is not None else 0
        # ring slot -> the requests whose rows in it may still be unread (see the module docstring)
        self.readers: dict[int, set[str]] = {}
        self._next = 0  # where the search for a free slot starts (round-robin among the free ones)
        self.spilled = 0  # blocks that went inline because every ring slot was still waiting

    def spec(self) -> ChannelSpec:
        return (self.ring or self.spill).spec()

    def write(self, rows: list[tuple[str, int, torch.Tensor]]) -> tuple[BlockRef, list[Span]] | None:
        """rows: (request id, start position, features [n, hidden]); None when there are none."""
        rows = [r for r in rows if r[2].shape[0]]
        if not rows:
            return None
        spans, at = [], 0
        for rid, start, f in rows:
            spans.append(Span(rid, start, at, f.shape[0]))
            at += f.shape[0]
        feats = torch.cat([f for _, _, f in rows]).contiguous()
        positions = torch.cat([torch.arange(s.start, s.start + s.rows) for s in spans])[:, None]
        probs = feats[:, None, :]
        if self.ring is not None:
            slot = self._free_slot()
            if slot is not None:
                try:
                    ref = self.ring.write(positions, probs, slot=slot)
                except BlockTooLargeError:
                    pass  # a long prefill: inline, in the reply itself
                else:
                    self.readers[slot] = {s.request_id for s in spans}
                    self._next = (slot + 1) % self.num_slots
                    return ref, spans
            else:
                self.spilled += 1
        return self.spill.write(positions, probs.cpu()), spans

    def _free_slot(self) -> int | None:
        for i in range(self.num_slots):
            slot = (self._next + i) % self.num_slots
            if slot not in self.readers:
                return slot
        return None

    def done_with(self, request_ids=(), alive=None) -> None:
        """These requests read (or will never read) their rows of every block written so far; with
        alive (a container of request ids), so is every request not in it. A slot whose requests are
        all done is free again. Called by the target, whose calls are serialised, before a write."""
        gone = set(request_ids)
        for slot in list(self.readers):
            waiting = self.readers[slot]
            waiting -= gone
            if alive is not None:
                waiting.intersection_update(alive)
            if not waiting:
                del self.readers[slot]

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
        self.spill.close()


class FeatureReader:
    """The draft node's end of one feature channel (and of its inline spill)."""

    def __init__(self, spec: ChannelSpec):
        self.transport = spec.transport
        self.ring = open_reader(spec) if spec.transport != "inline" else None
        self.inline = open_reader(ChannelSpec("inline"))

    def read(self, ref: BlockRef, spans: list[Span], device="cpu") -> list[tuple[str, int, torch.Tensor]]:
        """(request id, start, features [rows, hidden]) per span. Raises StaleBlockError when the
        ring slot was overwritten before this read (the caller counts those positions missing)."""
        reader = self.inline if ref.transport == "inline" else self.ring
        if reader is None:
            raise ChannelError(f"a {ref.transport} feature block on an inline feature channel")
        positions, feats = reader.read(ref, device)
        out = []
        for s in spans:
            if s.row < 0 or s.row + s.rows > positions.shape[0] or int(positions[s.row, 0]) != s.start:
                raise ChannelError(f"feature span {s} does not match its block of {positions.shape[0]} rows")
            out.append((s.request_id, s.start, feats[s.row:s.row + s.rows, 0]))
        return out

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
