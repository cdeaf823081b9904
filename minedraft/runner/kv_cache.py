"""The paged KV cache's memory: per layer, K and V of `num_blocks * block_size` token slots.

A slot is `block * block_size + offset`; which blocks belong to which sequence is the block
manager's business (block_manager.py). Writes scatter new K/V into their slots; reads gather a
sequence's slots back (padding slots point at the zeroed null block 0).
"""

from __future__ import annotations

import torch

from minedraft.runner.transfer import host_tensor


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * num_layers * num_kv_heads * head_dim * dtype.itemsize


class PagedKVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (num_blocks * block_size, num_kv_heads, head_dim)
        # empty, not zeros: on CPU untouched pages cost no memory until a block is first used.
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        for t in self.k + self.v:
            t[:block_size].zero_()  # the null block
        self.num_blocks, self.block_size = num_blocks, block_size

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [N, Hkv, D] for the N token slots `slots` [N]."""
        self.k[layer].index_copy_(0, slots, k)
        self.v[layer].index_copy_(0, slots, v)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy whole blocks (source, destination): a shared block's private copy before a write."""
        if not copies:
            return
        bs = self.block_size
        offsets = torch.arange(bs, device=self.k[0].device)
        src = torch.cat([s * bs + offsets for s, _ in copies])
        dst = torch.cat([d * bs + offsets for _, d in copies])
        for t in self.k + self.v:
            t.index_copy_(0, dst, t.index_select(0, src))

    def locate(self, table: list[int], length: int) -> int | torch.Tensor:
        """Where a sequence's first `length` positions are (blocks `table`), for `row`: the first slot
        when its blocks follow each other in memory (a prompt prefilled at once), else its block ids."""
        n = -(-length // self.block_size)
        if table[n - 1] - table[0] == n - 1 and table[:n] == list(range(table[0], table[0] + n)):
            return table[0] * self.block_size
        return host_tensor(table[:n], torch.long, self.k[0].device)

    def row(self, layer: int, where: int | torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of one sequence's first `length` positions, [length, Hkv, D], from `locate`: a view of
        the cache (no copy) for contiguous blocks, else whole blocks gathered (each one contiguous run)."""
        k, v = self.k[layer], self.v[layer]
        if isinstance(where, int):
            return k[where:where + length], v[where:where + length]
        bs = self.block_size
        shape = (where.numel() * bs, *k.shape[1:])
        return (k.view(-1, bs, *shape[1:]).index_select(0, where).view(shape)[:length],
                v.view(-1, bs, *shape[1:]).index_select(0, where).view(shape)[:length])

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values at `slots` (any shape S): [*S, Hkv, D]."""
        flat = slots.reshape(-1)
        shape = (*slots.shape, *self.k[layer].shape[1:])
        return self.k[layer].index_select(0, flat).view(shape), self.v[layer].index_select(0, flat).view(shape)
