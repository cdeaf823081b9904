"""The passes of a draft chain after its first: one token per row, built once per proposal.

A draft chain (an EAGLE head's k steps) runs, after its first pass, k - 1 passes of one token per
row at positions start_b, start_b + 1, ... over the same rows and block tables. A ForwardBatch for
each costs Python lists over the rows and host-to-device copies, ~10% of a one-layer head's pass on
CPU; ChainSteps computes every step's slots once and each step's batch is a few tensor slices.
The batches duck-type ForwardBatch's uniform path (as cuda_graphs.StaticBatch does), so attention
is the same code; a chain whose rows are mostly padding (one long row among short ones) is not
uniform there either: `usable` is False and the caller builds ForwardBatches as before."""

from __future__ import annotations

import torch

from minedraft.runner.attention import SeqSlice, _mostly_padding, attend_uniform, window_mask
from minedraft.runner.transfer import host_tensor


class ChainSteps:
    def __init__(self, starts: list[int], tables: list[list[int]], block_size: int, steps: int,
                 device: torch.device):
        """starts[b]: row b's length before the chain's first one-token pass; steps: how many passes."""
        self.usable = steps > 0 and not _mostly_padding([SeqSlice(0, s + steps - 1, 1) for s in starts])
        if not self.usable:
            return
        t_max = max(starts) + steps
        width = -(-t_max // block_size)
        padded = [tbl[:width] + [0] * (width - len(tbl[:width])) for tbl in tables]
        table = host_tensor(padded, torch.long, device)  # [B, blocks]
        self.pos = torch.arange(t_max, device=device)
        self.slots = table[:, self.pos // block_size] * block_size + self.pos % block_size  # [B, Tmax]
        self.starts = host_tensor(starts, torch.long, device)
        self.rows = torch.arange(len(starts), device=device)
        self.max_start = max(starts)

    def batch(self, step: int, tokens: torch.Tensor) -> "ChainBatch":
        """The batch of pass `step` (0-based) feeding tokens [B] (on the device)."""
        return ChainBatch(self, step, tokens)


class ChainBatch:
    uniform = True

    def __init__(self, chain: ChainSteps, step: int, tokens: torch.Tensor):
        self.input_ids = tokens.reshape(-1).to(torch.long)
        self.positions = chain.starts + step
        self.write_slots = chain.slots[chain.rows, self.positions]
        self.logits_index = chain.rows
        t = chain.max_start + step + 1
        pos = chain.pos[:t]
        self.key_slots = torch.where(pos[None, :] <= self.positions[:, None], chain.slots[:, :t], 0)  # null block
        self._delta = self.positions[:, None, None, None] - pos[None, None, None, :]  # [B, 1, 1, T]
        self._masks: dict = {}

    def attend(self, layer, q, k, v, cache, window):
        if window not in self._masks:
            self._masks[window] = window_mask(self._delta, window)
        return attend_uniform(q, cache, layer, self.key_slots, self._masks[window], q.shape[1] != k.shape[1])
