"""ModelRunner: a model plus its ragged KV cache, addressed by cache row.

It knows nothing about requests or sampling: feed it per-row token lists, get logits back.
"""

from __future__ import annotations

import torch

from minedraft.checkpoint import load_model
from minedraft.kv_cache import KVCache
from minedraft.model import BatchInfo

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown {dtype!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[dtype]


class ModelRunner:
    def __init__(self, path: str, device: str = "cpu", dtype=None, max_rows: int = 64,
                 max_model_len: int | None = None, lookahead: int = 16):
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, device)
        self.model, self.cfg = load_model(path, device=str(self.device), dtype=self.dtype)
        # A sequence never grows past context_len; `lookahead` slack lets a verify pass of k+1
        # speculative positions run at the very end of the context without a bounds check.
        self.context_len = min(self.cfg.max_position_embeddings, max_model_len or 1 << 30)
        self.cache = KVCache(self.cfg.num_layers, max_rows, self.context_len + lookahead,
                             self.cfg.num_kv_heads, self.cfg.head_dim, self.dtype, self.device)
        self.vocab_size = self.cfg.vocab_size

    # -- rows -------------------------------------------------------------------------------------
    def allocate(self) -> int:
        return self.cache.allocate()

    def free(self, row: int) -> None:
        self.cache.free(row)

    def length(self, row: int) -> int:
        return self.cache.lengths[row]

    def rollback(self, row: int, length: int) -> None:
        self.cache.rollback(row, length)

    # -- compute ----------------------------------------------------------------------------------
    def forward(self, rows: list[int], tokens: list[list[int]], all_positions: bool = False) -> torch.Tensor:
        """Append tokens[i] to row rows[i]; return logits of each row's last token [B, V], or of
        every position [B, Q, V] (rows shorter than Q are padded; their padded logits are junk)."""
        counts = [len(t) for t in tokens]
        q_len = max(counts)
        starts = [self.cache.lengths[r] for r in rows]
        if max(starts) + q_len > self.cache.max_len:
            raise ValueError(f"sequence would exceed the KV cache ({self.cache.max_len} positions)")
        padded = [t + [0] * (q_len - len(t)) for t in tokens]
        input_ids = torch.tensor(padded, dtype=torch.long, device=self.device)
        batch = BatchInfo(rows, starts, q_len, self.device)
        if all_positions:
            logits = self.model(input_ids, batch, self.cache)
        else:
            last = torch.tensor([[c - 1] for c in counts], dtype=torch.long, device=self.device)
            logits = self.model(input_ids, batch, self.cache, logits_index=last)[:, 0]
        for r, c in zip(rows, counts):
            self.cache.lengths[r] += c
        return logits
