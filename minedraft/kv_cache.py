"""A preallocated batched KV cache whose rows each have their own length (ragged).

Row r holds one sequence; `lengths[r]` says how many positions of it are valid. Appending writes at
positions lengths[r]..; rolling back only lowers lengths[r] (the stale entries are overwritten later);
freeing a row returns it to the pool. No operation copies another row.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, max_rows: int, max_len: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (max_rows, num_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_rows = max_rows
        self.max_len = max_len
        self.lengths = [0] * max_rows  # host-side: the scheduler reads them every step
        self._free = list(range(max_rows - 1, -1, -1))

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError(f"KV cache full: all {self.max_rows} rows in use")
        row = self._free.pop()
        self.lengths[row] = 0
        return row

    def free(self, row: int) -> None:
        self.lengths[row] = 0
        self._free.append(row)

    def rollback(self, row: int, length: int) -> None:
        if not 0 <= length <= self.lengths[row]:
            raise ValueError(f"rollback of row {row} to {length} beyond its length {self.lengths[row]}")
        self.lengths[row] = length

    def write(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """k, v: [B, Hkv, Q, D] for rows [B] at positions [B, Q]."""
        row_index = rows[:, None].expand_as(positions)
        self.k[layer][row_index, :, positions] = k.transpose(1, 2)
        self.v[layer][row_index, :, positions] = v.transpose(1, 2)

    def read(self, layer: int, rows: torch.Tensor, upto: int, contiguous_from: int | None):
        """Keys and values [B, Hkv, upto, D] of the given rows (a view when rows are contiguous)."""
        if contiguous_from is not None:
            sl = slice(contiguous_from, contiguous_from + rows.shape[0])
            return self.k[layer][sl, :, :upto], self.v[layer][sl, :, :upto]
        return self.k[layer][rows, :, :upto], self.v[layer][rows, :, :upto]
