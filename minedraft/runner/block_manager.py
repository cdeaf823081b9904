"""Which KV blocks each sequence owns (a block table per sequence), which are free, and which hold a
cached prefix (automatic prefix caching).

Pure bookkeeping on the host, no tensors: the paged cache (kv_cache.py) holds the memory, this class
hands out its block ids. Block 0 is the null block: never given out, kept zeroed, and used to pad
block tables, so a padded read sees finite zeros. A sequence's length is the number of positions
whose K/V are written; it owns exactly ceil(length / block_size) blocks once they are written,
and `reserve` grows that ahead of a forward pass, all or nothing.

Prefix caching (as vLLM's): a full block whose tokens are all committed and written is sealed: it
gets a hash of (its parent block's hash, its token ids) and is registered under it. Blocks are
reference-counted; a new sequence whose committed tokens start with registered blocks shares them
read-only. A block nobody holds keeps its contents and hash in an LRU: it counts as free, comes
back on a hit, and is evicted (unregistered) only when a fresh block is needed. Committed tokens
are told by `commit` (a prompt at `new_sequence`); drafted tokens written for a verify are never
committed, so a block holding one is never sealed. Writes only go at or past a sequence's length:
a block they reach that is shared or registered (after a rollback into a sealed block) is first
made private (`reserve` returns the copy the runner makes: copy-on-write), so a shared block never
changes.
"""

from __future__ import annotations

import collections
import hashlib
from array import array


class NoRoom(RuntimeError):
    """Not enough free KV blocks for what was asked; nothing was changed. The scheduler answers it
    by preempting a request (or by admitting fewer)."""

    def __init__(self, needed: int = 0, free: int = 0, message: str | None = None):
        super().__init__(message or f"no room: this step needs {needed} more KV blocks, {free} free")


NULL_BLOCK = 0


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def block_hash(parent: bytes, token_ids: list[int]) -> bytes:
    """A full block's identity: sha256 over its parent's hash and its token ids (no collisions in
    practice: a collision would hand a sequence someone else's K/V)."""
    return hashlib.sha256(parent + array("q", token_ids).tobytes()).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, salt: str = ""):
        if num_blocks < 2:
            raise ValueError(f"kv cache: {num_blocks} blocks leave none besides the null block")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.caching = enable_prefix_caching
        self._root = hashlib.sha256(salt.encode()).digest()  # the first block's parent: what else shapes K/V
        self._free = list(range(num_blocks - 1, NULL_BLOCK, -1))  # never-cached blocks; pop() gives low ids first
        self._lru: collections.OrderedDict[int, None] = collections.OrderedDict()  # cached, unheld; oldest first
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}  # registered block -> its hash
        self._cached: dict[bytes, int] = {}  # hash -> registered block
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}
        self._ids: dict[int, list[int]] = {}  # committed token ids of each sequence (caching only)
        self._hashes: dict[int, list[bytes]] = {}  # hashes of its sealed blocks, a prefix of its table
        self._next_seq = 0
        self.prefix_cache_queries = 0  # tokens looked up at new_sequence (vLLM's counter names)
        self.prefix_cache_hits = 0  # tokens found there

    # -- capacity -----------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks a sequence can get: never used, or cached but held by nobody (evicted on demand)."""
        return len(self._free) + len(self._lru)

    @property
    def num_usable(self) -> int:
        return self.num_blocks - 1

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_usable

    def extra_blocks(self, seq: int, new_length: int) -> int:
        """Blocks seq must gain to hold new_length positions (a copy-on-write included)."""
        grow = max(0, blocks_for(new_length, self.block_size) - len(self.tables[seq]))
        return grow + (1 if new_length > self.lengths[seq] and self._needs_copy(seq) else 0)

    # -- prefix lookup ----------------------------------------------------------------------------------
    def _chain(self, tokens: list[int], num_blocks: int) -> list[bytes]:
        bs, out, parent = self.block_size, [], self._root
        for i in range(num_blocks):
            parent = block_hash(parent, tokens[i * bs:(i + 1) * bs])
            out.append(parent)
        return out

    def _shareable(self, tokens: list[int]) -> int:
        """How many leading full blocks of a sequence with these committed tokens may come from the
        cache: its last committed token is always computed again (its logits, or the draft's pending
        token), so at most (n - 1) // block_size."""
        return (len(tokens) - 1) // self.block_size if self.caching and tokens else 0

    def prefix_plan(self, token_lists: list[list[int]]) -> list[tuple[int, bool]]:
        """For sequences about to be created in this order: (free blocks its prefill takes, whether it
        shares blocks an earlier one of the list writes first). Nothing changes."""
        planned: set[bytes] = set()
        out = []
        for tokens in token_lists:
            chain = self._chain(tokens, self._shareable(tokens))
            shared, follower = 0, False
            for h in chain:
                block = self._cached.get(h)
                if block is not None:  # an LRU block comes out of the free count, once
                    shared += self._refs[block] > 0 or h in planned
                elif h in planned:
                    shared, follower = shared + 1, True
                else:
                    break
            planned.update(chain)
            out.append((blocks_for(len(tokens), self.block_size) - shared, follower))
        return out

    # -- sequences ------------------------------------------------------------------------------------
    def new_sequence(self, tokens: list[int] | None = None) -> int:
        """A sequence whose committed tokens start with `tokens`. With caching, its leading full blocks
        found in the cache are shared: its length starts past them (the caller prefills the rest), and
        its own full blocks are registered as they fill. `caching` may change while sequences live (the
        target turns it off while it exports EAGLE features): each sequence keeps what it had at birth."""
        seq = self._next_seq
        self._next_seq += 1
        self.tables[seq], self.lengths[seq], self._hashes[seq] = [], 0, []
        if not self.caching:
            return seq
        self._ids[seq] = list(tokens or ())
        for h in self._chain(self._ids[seq], self._shareable(self._ids[seq])):
            block = self._cached.get(h)
            if block is None:
                break
            if self._refs[block] == 0:
                del self._lru[block]
            self._refs[block] += 1
            self.tables[seq].append(block)
            self._hashes[seq].append(h)
        self.lengths[seq] = len(self.tables[seq]) * self.block_size
        self.prefix_cache_queries += len(self._ids[seq])
        self.prefix_cache_hits += self.lengths[seq]
        return seq

    def commit(self, seq: int, tokens: list[int]) -> None:
        """tokens are committed: the contents of the sequence's next committed positions."""
        if tokens and seq in self._ids:  # a sequence made with caching on (see new_sequence)
            self._ids[seq].extend(tokens)
            self._seal(seq)

    def advance(self, seq: int, count: int) -> None:
        """count more positions were written (after reserve)."""
        self.lengths[seq] += count
        if seq in self._ids:
            self._seal(seq)

    def _seal(self, seq: int) -> None:
        """Hash and register every full block that is both written and committed."""
        hashes, ids, table, bs = self._hashes[seq], self._ids[seq], self.tables[seq], self.block_size
        while len(hashes) < min(self.lengths[seq], len(ids)) // bs:
            i = len(hashes)
            h = block_hash(hashes[-1] if hashes else self._root, ids[i * bs:(i + 1) * bs])
            block = table[i]
            if h not in self._cached and block not in self._hash_of:  # else: a duplicate stays private
                self._cached[h], self._hash_of[block] = block, h
            hashes.append(h)

    def _take(self) -> int:
        if self._free:
            block = self._free.pop()
        else:  # evict the least recently freed cached block
            block, _ = self._lru.popitem(last=False)
            del self._cached[self._hash_of.pop(block)]
        self._refs[block] = 1
        return block

    def _drop(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            if block in self._hash_of:
                self._lru[block] = None  # most recently freed: evicted last
            else:
                self._free.append(block)

    def _needs_copy(self, seq: int) -> bool:
        """Whether the block the next write lands in is someone else's too (or may become so)."""
        length, table = self.lengths[seq], self.tables[seq]
        i = length // self.block_size
        if length % self.block_size == 0 or i >= len(table):
            return False
        return self._refs[table[i]] > 1

    def reserve(self, growth: dict[int, int]) -> list[tuple[int, int]]:
        """Make every seq able to hold `growth[seq]` positions; all or nothing (NoRoom). Returns the
        (source, destination) blocks the cache must copy before the writes (copy-on-write)."""
        needed = sum(self.extra_blocks(s, n) for s, n in growth.items())
        if needed > self.num_free:
            raise NoRoom(needed, self.num_free)
        copies = []
        for seq, n in growth.items():
            table = self.tables[seq]
            if n > self.lengths[seq] and self.lengths[seq] % self.block_size:
                i = self.lengths[seq] // self.block_size
                if i < len(table) and self._needs_copy(seq):
                    old = table[i]
                    table[i] = self._take()
                    copies.append((old, table[i]))
                    self._drop(old)
                elif i < len(table) and table[i] in self._hash_of:  # ours alone: unregister, write in place
                    del self._cached[self._hash_of.pop(table[i])]
            for _ in range(max(0, blocks_for(n, self.block_size) - len(table))):
                table.append(self._take())
        return copies

    def truncate(self, seq: int, length: int) -> None:
        """Forget positions >= length and give back the blocks past it (rollback). A sealed block cut
        into keeps its registration until the next write to it (reserve makes it private then)."""
        if not 0 <= length <= self.lengths[seq]:
            raise ValueError(f"rollback of sequence {seq} to {length} beyond its length {self.lengths[seq]}")
        self.lengths[seq] = length
        del self._hashes[seq][length // self.block_size:]
        table = self.tables[seq]
        keep = blocks_for(length, self.block_size)
        while len(table) > keep:
            self._drop(table.pop())

    def free(self, seq: int) -> None:
        table = self.tables.pop(seq, None)
        self.lengths.pop(seq, None)
        self._ids.pop(seq, None)
        self._hashes.pop(seq, None)
        for block in reversed(table or ()):  # the tail first: it is evicted before the shared head
            self._drop(block)
