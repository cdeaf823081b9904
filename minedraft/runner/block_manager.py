"""Which KV blocks each sequence owns (a block table per sequence), and which are free.

Pure bookkeeping on the host, no tensors: the paged cache (kv_cache.py) holds the memory, this class
hands out its block ids. Block 0 is the null block: never given out, kept zeroed, and used to pad
block tables, so a padded read sees finite zeros. A sequence's length is the number of positions
whose K/V are written; it owns exactly ceil(length / block_size) blocks once they are written,
and `reserve` grows that ahead of a forward pass, all or nothing.
"""

from __future__ import annotations


class NoRoom(RuntimeError):
    """Not enough free KV blocks for what was asked; nothing was changed. The scheduler answers it
    by preempting a request (or by admitting fewer)."""

    def __init__(self, needed: int = 0, free: int = 0, message: str | None = None):
        super().__init__(message or f"no room: this step needs {needed} more KV blocks, {free} free")


NULL_BLOCK = 0


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 2:
            raise ValueError(f"kv cache: {num_blocks} blocks leave none besides the null block")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free = list(range(num_blocks - 1, NULL_BLOCK, -1))  # pop() hands out low ids first
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}
        self._next_seq = 0

    # -- capacity -----------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_usable(self) -> int:
        return self.num_blocks - 1

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_usable

    def extra_blocks(self, seq: int, new_length: int) -> int:
        """Blocks seq must gain to hold new_length positions."""
        return max(0, blocks_for(new_length, self.block_size) - len(self.tables[seq]))

    # -- sequences ------------------------------------------------------------------------------------
    def new_sequence(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self.tables[seq] = []
        self.lengths[seq] = 0
        return seq

    def reserve(self, growth: dict[int, int]) -> None:
        """Make every seq able to hold `growth[seq]` positions; all or nothing (NoRoom)."""
        needed = sum(self.extra_blocks(s, n) for s, n in growth.items())
        if needed > len(self._free):
            raise NoRoom(needed, len(self._free))
        for seq, n in growth.items():
            table = self.tables[seq]
            for _ in range(self.extra_blocks(seq, n)):
                table.append(self._free.pop())

    def truncate(self, seq: int, length: int) -> None:
        """Forget positions >= length and give back the blocks past it (rollback)."""
        if not 0 <= length <= self.lengths[seq]:
            raise ValueError(f"rollback of sequence {seq} to {length} beyond its length {self.lengths[seq]}")
        self.lengths[seq] = length
        self._trim(seq, length)

    def _trim(self, seq: int, length: int) -> None:
        table = self.tables[seq]
        keep = blocks_for(length, self.block_size)
        while len(table) > keep:
            self._free.append(table.pop())

    def free(self, seq: int) -> None:
        table = self.tables.pop(seq, None)
        self.lengths.pop(seq, None)
        if table:
            self._free.extend(reversed(table))
