"""One forward pass's token layout over the paged cache, and attention over it.

Tokens of all sequences are packed into one stream of N tokens (no padding to the longest prompt):
the projections and MLPs run on [N, hidden]. Attention takes one of two paths:
- uniform: every sequence brings the same small number Q of tokens (decode: 1, verify: k+1, a
  draft step: 1). Queries are viewed as [B, Q], each sequence's keys are gathered from its blocks
  into [B, T] (T = longest sequence, padding reads the null block and is masked) and one
  scaled_dot_product_attention call does the batch. This path has fixed shapes per (B, T), which
  is what CUDA graphs capture (cuda_graphs.StaticBatch: the same attention over static buffers).
- varlen: prefill chunks of any lengths. One attention call per sequence over its own keys only;
  a sequence that starts at position 0 attends to its fresh K/V with is_causal (the fused kernels
  on CPU and GPU, no [Q, T] mask), a continued one (chunked prefill) gathers its earlier keys.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from minedraft.runner.kv_cache import PagedKVCache
from minedraft.runner.transfer import host_tensor

UNIFORM_MAX_Q = 32  # decode/verify/draft steps; longer uniform chunks take the varlen path
# The uniform path gathers every row's keys up to the longest row: with one long row among short ones
# (a 2,000-token prompt's first decode beside 40-token ones) that is mostly padding, so such a batch
# takes the varlen path (each row reads its own keys) when padding would be this many times the keys.
# At 3x a 2,003-key row among two 43-key ones stayed uniform: that verify took 1.19 s at one thread
# against 0.31 s for the long row alone (issue 21's profile), so 1.5x now.
UNIFORM_MAX_PADDING, UNIFORM_PADDED_FROM = 1.5, 256
# The uniform path's key length T is rounded up to a multiple of this. torch's CPU attention sums a
# row's keys in an order that depends on T unless T is a multiple of 64 (measured, bf16 and fp32; masked
# keys past that add exact zeros): a verify (T = its longest row + k + 1) and a decode of the same
# position (T = the longest row + 1) then rounded differently, and on a bf16 pair a logit tie went to
# another token in sd than in ar (tests/test_cpu_dtype.py, AVX512-BF16 CPU).
UNIFORM_KEY_GRAIN = 64


def attend_uniform(q: torch.Tensor, cache: PagedKVCache, layer: int, key_slots: torch.Tensor,
                   mask: torch.Tensor, gqa: bool) -> torch.Tensor:
    """q [B*Q, H, D] of B rows of Q tokens, keys at key_slots [B, T], mask [B, 1, Q, T] -> [B*Q, H*D]."""
    n, h, d = q.shape
    b = key_slots.shape[0]
    qb = q.view(b, -1, h, d).transpose(1, 2)  # [B, H, Q, D]
    keys, values = cache.gather(layer, key_slots)  # [B, T, Hkv, D]
    out = F.scaled_dot_product_attention(qb, keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask,
                                         enable_gqa=gqa)
    return out.transpose(1, 2).reshape(n, h * d)


def window_mask(delta: torch.Tensor, window: int | None) -> torch.Tensor:
    """Which keys a query sees, from delta = query position - key position."""
    mask = delta >= 0
    return mask if window is None else mask & (delta < window)


def _mostly_padding(seqs) -> bool:
    kv = [s.start + s.q_len for s in seqs]
    return max(kv) > UNIFORM_PADDED_FROM and len(kv) * max(kv) > UNIFORM_MAX_PADDING * sum(kv)


@dataclasses.dataclass
class SeqSlice:
    """The tokens one sequence brings to a forward pass."""

    seq: int
    start: int  # its length (positions written) before this pass
    q_len: int
    tokens: list[int] | torch.Tensor = ()  # its q_len tokens (a draft step's stay on the device)


class ForwardBatch:
    def __init__(self, seqs: list[SeqSlice], tokens: list[int] | torch.Tensor, block_tables: list[list[int]],
                 block_size: int, logits_index: list[int], device: torch.device):
        self.seqs = seqs
        self.device = device
        self.block_size = block_size
        positions = [s.start + i for s in seqs for i in range(s.q_len)]
        slots = [tbl[p // block_size] * block_size + p % block_size
                 for s, tbl in zip(seqs, block_tables) for p in range(s.start, s.start + s.q_len)]
        # Tokens may already be on the device (a draft step feeds its last sampled tokens back).
        self.input_ids = (tokens.reshape(-1).to(device, torch.long) if torch.is_tensor(tokens)
                          else host_tensor(tokens, torch.long, device))
        self.positions = host_tensor(positions, torch.long, device)
        self.write_slots = host_tensor(slots, torch.long, device)
        self.logits_index = host_tensor(logits_index, torch.long, device)
        q_lens = {s.q_len for s in seqs}
        self.uniform = len(q_lens) == 1 and next(iter(q_lens)) <= UNIFORM_MAX_Q and not _mostly_padding(seqs)
        self._masks: dict = {}
        if self.uniform:
            self._init_uniform(block_tables)
        else:
            self.q_offsets = [0]
            for s in seqs:
                self.q_offsets.append(self.q_offsets[-1] + s.q_len)
            # a continued row reads its earlier keys from its blocks (PagedKVCache.row: a view when they
            # are contiguous, else whole blocks gathered), never slot by slot
            self.tables = [None if s.start == 0 else tbl for s, tbl in zip(seqs, block_tables)]
            self._where: list = [None] * len(seqs)

    def _init_uniform(self, block_tables: list[list[int]]) -> None:
        b, q = len(self.seqs), self.seqs[0].q_len
        kv_lens = host_tensor([s.start + q for s in self.seqs], torch.long, self.device)
        t = int(max(s.start for s in self.seqs)) + q
        t = -(-t // UNIFORM_KEY_GRAIN) * UNIFORM_KEY_GRAIN
        width = -(-t // self.block_size)
        padded = [tbl[:width] + [0] * (width - len(tbl[:width])) for tbl in block_tables]
        tables = host_tensor(padded, torch.long, self.device)  # [B, blocks]
        pos = torch.arange(t, device=self.device)
        slots = tables[:, pos // self.block_size] * self.block_size + pos % self.block_size  # [B, T]
        self.key_slots = torch.where(pos[None, :] < kv_lens[:, None], slots, 0)  # padding reads the null block
        q_pos = self.positions.view(b, q)
        self._delta = q_pos[:, None, :, None] - pos[None, None, None, :]  # [B, 1, Q, T]

    def _uniform_mask(self, window: int | None) -> torch.Tensor:
        if window not in self._masks:
            self._masks[window] = window_mask(self._delta, window)
        return self._masks[window]

    def _varlen_mask(self, i: int, window: int | None) -> torch.Tensor | None:
        s = self.seqs[i]
        if s.start == 0 and (window is None or window >= s.q_len):
            return None  # plain causal: is_causal=True
        key = (i, window)
        if key not in self._masks:
            q_pos = torch.arange(s.start, s.start + s.q_len, device=self.device)
            k_pos = torch.arange(s.start + s.q_len, device=self.device)
            self._masks[key] = window_mask(q_pos[:, None] - k_pos[None, :], window)
        return self._masks[key]

    def _row_keys(self, i: int, cache: PagedKVCache):
        """Where continued row i's keys are in the cache (located once per pass, read at every layer)."""
        if self._where[i] is None:
            s = self.seqs[i]
            self._where[i] = cache.locate(self.tables[i], s.start + s.q_len)
        return self._where[i]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: PagedKVCache,
               window: int | None) -> torch.Tensor:
        """q [N, H, D], k/v [N, Hkv, D] (already written to the cache) -> [N, H * D]."""
        n, h, d = q.shape
        gqa = h != k.shape[1]
        if self.uniform:
            return attend_uniform(q, cache, layer, self.key_slots, self._uniform_mask(window), gqa)
        outs = []
        for i, s in enumerate(self.seqs):
            lo, hi = self.q_offsets[i], self.q_offsets[i + 1]
            qi = q[lo:hi].transpose(0, 1)[None]  # [1, H, q, D]
            if self.tables[i] is None:
                ki, vi = k[lo:hi], v[lo:hi]
            else:
                ki, vi = cache.row(layer, self._row_keys(i, cache), s.start + s.q_len)
            mask = self._varlen_mask(i, window)
            out = F.scaled_dot_product_attention(qi, ki.transpose(0, 1)[None], vi.transpose(0, 1)[None],
                                                 attn_mask=mask, is_causal=mask is None, enable_gqa=gqa)
            outs.append(out[0].transpose(0, 1).reshape(hi - lo, h * d))
        return torch.cat(outs) if len(outs) > 1 else outs[0]
