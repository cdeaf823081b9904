"""CUDA graphs for the uniform steps: the draft's one-token decode, the target's (k+1)-token verify
and plain AR decode.

A graph replays fixed kernels on fixed addresses, so every step of one shape must run on the same
buffers. `StaticBatch` holds them for one (batch bucket B, tokens per row Q, block-table width W):
token ids, positions and block tables are copied in; write slots, key slots and the causal mask are
derived from them by tensor ops inside the graph (nothing read back to the host). A step of b rows is
padded to the next bucket of BATCH_BUCKETS (padding rows: null block table, positions 0..Q-1, their
K/V written into the null block, whose reads are always masked; their logits are dropped), and a
row's blocks are padded to the next power-of-two width (extra key columns are masked), so a few
graphs serve every step.

`GraphRunner.run` is the same code with or without capture: on CUDA the first step of a shape
captures it (lazily; all graphs share one memory pool), later steps replay; on CPU (tests) "replay"
is a plain call of the same function over the same static buffers. What is not uniform, too wide or
too large (prefill, B above the largest bucket) runs eagerly in the runner.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from minedraft.runner.attention import attend_uniform, window_mask
from minedraft.runner.block_manager import NULL_BLOCK
from minedraft.runner.transfer import host_tensor

log = logging.getLogger("minedraft")

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MIN_WIDTH = 16  # blocks: the smallest key width captured (256 tokens at block_size 16)
# A graph gathers [B, W * block_size] keys per layer; above this many key slots the transient
# gather (and the graph's pool) grows too large to keep one per bucket: such steps run eagerly.
MAX_GRAPH_KEY_SLOTS = 1 << 18


def bucket_for(n: int, buckets) -> int | None:
    """The smallest bucket >= n, or None when n is larger than all of them."""
    return next((b for b in buckets if b >= n), None)


def width_bucket(blocks: int, max_blocks: int, min_width: int = MIN_WIDTH) -> int:
    """Block-table width for a step whose longest row needs `blocks`: the next power of two from
    min_width, never above max_blocks (which always fits: no row is longer)."""
    w = min_width
    while w < blocks:
        w *= 2
    return min(w, max(max_blocks, blocks))


class StaticBatch:
    """The static buffers of one graph; duck-types attention.ForwardBatch's uniform path."""

    uniform = True

    def __init__(self, batch: int, q: int, width: int, block_size: int, device: torch.device):
        self.batch, self.q, self.width, self.block_size = batch, q, width, block_size
        n = batch * q
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.arange(q, device=device).repeat(batch)  # padding rows: 0..q-1
        self.block_tables = torch.full((batch, width), NULL_BLOCK, dtype=torch.long, device=device)
        self.logits_index = torch.arange(n, device=device)  # every row: verify wants all Q positions
        self._key_pos = torch.arange(width * block_size, device=device)
        self.write_slots = self.key_slots = self._delta = None
        self._masks: dict = {}

    def prepare(self) -> None:
        """Derive slots and masks from the inputs; tensor ops only, so they are part of the graph."""
        bs, pos = self.block_size, self.positions.view(self.batch, self.q)
        self.write_slots = (self.block_tables.gather(1, pos // bs) * bs + pos % bs).reshape(-1)
        t = self._key_pos
        slots = self.block_tables[:, t // bs] * bs + t % bs  # [B, T]
        kv_len = pos[:, -1:] + 1
        self.key_slots = torch.where(t[None, :] < kv_len, slots, NULL_BLOCK)
        self._delta = pos[:, None, :, None] - t[None, None, None, :]  # [B, 1, Q, T]
        self._masks = {}

    def attend(self, layer, q, k, v, cache, window):
        if window not in self._masks:
            self._masks[window] = window_mask(self._delta, window)
        return attend_uniform(q, cache, layer, self.key_slots, self._masks[window], q.shape[1] != k.shape[1])

    def fill(self, tokens, starts: list[int], tables: list[list[int]]) -> None:
        """Copy one step's inputs in. tokens: [b][q] host lists or a [b, q] device tensor (a draft
        step's sampled tokens). Positions and tables are rewritten for every row, padding included:
        a padding row left with an earlier step's real table would write K/V into that sequence."""
        b, q, dev = len(starts), self.q, self.input_ids.device
        if torch.is_tensor(tokens):
            self.input_ids[:b * q].copy_(tokens.reshape(-1), non_blocking=True)
        else:  # padding rows keep whatever valid ids they hold: their logits are dropped
            self.input_ids[:b * q].copy_(host_tensor([t for row in tokens for t in row], torch.long, dev))
        starts = list(starts) + [0] * (self.batch - b)
        self.positions.copy_(host_tensor([s + i for s in starts for i in range(q)], torch.long, dev))
        rows = [tbl[:self.width] for tbl in tables] + [[]] * (self.batch - b)
        padded = [row + [NULL_BLOCK] * (self.width - len(row)) for row in rows]
        self.block_tables.copy_(host_tensor(padded, torch.long, dev))


@dataclasses.dataclass
class _Entry:
    batch: StaticBatch
    graph: object = None  # torch.cuda.CUDAGraph once captured
    logits: torch.Tensor | None = None  # the graph's output buffer [B * Q, V]


class GraphRunner:
    """Static-shape execution of uniform steps for one model and its paged cache."""

    def __init__(self, model, cache, block_size: int, max_blocks: int, device: torch.device,
                 max_q: int = 16, max_tokens: int | None = None, batch_buckets=BATCH_BUCKETS,
                 max_key_slots: int = MAX_GRAPH_KEY_SLOTS, capture: bool | None = None):
        self.model, self.cache, self.block_size = model, cache, block_size
        self.max_blocks, self.device, self.max_q = max_blocks, device, max_q
        self.max_tokens = max_tokens  # a step above the runner's chunk size runs eagerly, as before
        self.batch_buckets, self.max_key_slots = tuple(batch_buckets), max_key_slots
        self.capture = device.type == "cuda" if capture is None else capture
        self.entries: dict[tuple[int, int, int], _Entry] = {}
        self._pool = None
        self.replays = 0  # steps that ran here (tests and logs)

    def shape_for(self, num_rows: int, q: int, longest: int) -> tuple[int, int, int] | None:
        """(B bucket, Q, W) for a step of num_rows rows of q tokens whose longest row ends at
        position `longest`; None when it should run eagerly."""
        b = bucket_for(num_rows, self.batch_buckets)
        if b is None or not 1 <= q <= self.max_q:
            return None
        if self.max_tokens is not None and num_rows * q > self.max_tokens:
            return None
        w = width_bucket(-(-longest // self.block_size), self.max_blocks)
        if b * w * self.block_size > self.max_key_slots:
            return None
        return b, q, w

    def run(self, shape, tokens, starts: list[int], tables: list[list[int]]) -> torch.Tensor:
        """Logits [b, Q, V] (fp32, a copy) of the b = len(starts) real rows."""
        entry = self.entries.get(shape)
        if entry is None:
            entry = self.entries[shape] = _Entry(StaticBatch(*shape, self.block_size, self.device))
        entry.batch.fill(tokens, starts, tables)
        if entry.logits is None and self.capture:
            entry.logits = self._capture_or_none(entry)
        if entry.graph is not None:
            entry.graph.replay()
            logits = entry.logits
        else:
            logits = self._call(entry.batch)
        self.replays += 1
        b, q = len(starts), shape[1]
        # A copy: the graph's buffer is overwritten by the next replay of this shape.
        return logits[:b * q].view(b, q, -1).clone()

    def _call(self, batch: StaticBatch) -> torch.Tensor:
        batch.prepare()
        return self.model(batch, self.cache)

    def _capture_or_none(self, entry: _Entry) -> torch.Tensor | None:
        """Capture; when the device has no memory left for the graph pool (it is not in the KV budget),
        say so once and run every step eagerly from then on rather than fail the request."""
        try:
            return self._capture(entry)
        except torch.OutOfMemoryError as exc:
            self.capture = False
            torch.cuda.empty_cache()
            log.warning("cuda graph capture out of memory (%s): steps run eagerly from now on; lower "
                        "--gpu-memory-utilization to leave room for graphs", str(exc).splitlines()[0])
            return None

    def _capture(self, entry: _Entry) -> torch.Tensor:
        # Warm-up on a side stream (lazy inits, cuBLAS workspaces) with this step's real inputs: a
        # forward is idempotent on the cache (it rewrites the same K/V), so the replay after it is exact.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._call(entry.batch)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: in-process PSD runs the other model on another thread meanwhile; only this
        # thread's calls may invalidate the capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self._call(entry.batch)
        self._pool = graph.pool()
        entry.graph = graph
        b, q, w = (entry.batch.batch, entry.batch.q, entry.batch.width)
        log.info("cuda graph captured: batch %d, %d tokens per row, %d key tokens", b, q, w * self.block_size)
        return logits
