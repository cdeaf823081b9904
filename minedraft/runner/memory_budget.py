"""How many KV blocks a runner gets, and which max_model_len that allows.

The number of blocks comes from a memory budget, never from max_position_embeddings:
- GPU: `gpu_memory_utilization` of the device for this process in all (weights, the activation
  peak measured by one profiling forward, and the cache), as vLLM does; never more than is free.
- CPU: `kv_cache_memory` GiB, by default a quarter of the memory that is actually available (so
  that a target and a draft process on one machine both fit, with room for their weights).
The cache is never larger than `max_num_seqs` sequences of `max_model_len` need.

max_model_len defaults to the checkpoint's. When not even one sequence of it fits, a defaulted
max_model_len is lowered to what fits, with a warning; one the user asked for is refused with the
numbers and the flags to change.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

from minedraft.runner.block_manager import blocks_for
from minedraft.runner.kv_cache import kv_bytes_per_token

log = logging.getLogger("minedraft")
GIB = 1 << 30
CPU_DEFAULT_SHARE = 0.25
GPU_RESERVED_BYTES = 512 << 20  # CUDA context, cuBLAS workspaces and allocator slack outside torch's count
MIN_MODEL_LEN = 32


@dataclasses.dataclass
class CachePlan:
    num_blocks: int  # including the null block
    block_size: int
    max_model_len: int
    bytes_per_block: int
    source: str  # where the budget came from, for the log line

    @property
    def num_tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    def summary(self, role: str, lookahead: int) -> str:
        per_seq = blocks_for(self.max_model_len + lookahead, self.block_size)
        fits = (self.num_blocks - 1) // per_seq
        return (f"{role} KV cache: {self.num_blocks - 1} blocks x {self.block_size} tokens = {self.num_tokens} tokens "
                f"({self.nbytes / GIB:.2f} GiB, {self.source}); {fits} sequences of max_model_len "
                f"{self.max_model_len} fit")


def available_host_memory() -> int:
    """MemAvailable, or less where a cgroup limit says so (containers)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
        if limit != "max":
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return max(avail, 0)


def budget_bytes(device: torch.device, kv_cache_memory: float | None, gpu_memory_utilization: float,
                 non_kv_bytes: int) -> tuple[int, str]:
    """(bytes for the cache, a phrase saying where that came from)."""
    if kv_cache_memory is not None:
        if not kv_cache_memory > 0:
            raise ValueError(f"kv_cache_memory: must be > 0 GiB, got {kv_cache_memory!r}")
        return int(kv_cache_memory * GIB), f"--kv-cache-memory {kv_cache_memory:g} GiB"
    if device.type == "cuda":
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization: must be in (0, 1], got {gpu_memory_utilization!r}")
        free, total = torch.cuda.mem_get_info(device)
        budget = int(gpu_memory_utilization * total) - non_kv_bytes - GPU_RESERVED_BYTES
        budget = min(budget, free - GPU_RESERVED_BYTES)
        return budget, (f"--gpu-memory-utilization {gpu_memory_utilization:g} of {total / GIB:.1f} GiB, "
                        f"{non_kv_bytes / GIB:.2f} GiB for weights and activations")
    avail = available_host_memory()
    return int(CPU_DEFAULT_SHARE * avail), (f"{CPU_DEFAULT_SHARE:.0%} of {avail / GIB:.1f} GiB available; "
                                            "--kv-cache-memory to change")


def plan_kv_cache(cfg, dtype: torch.dtype, device: torch.device, *, max_num_seqs: int, max_model_len: int | None,
                  lookahead: int, block_size: int = 16, kv_cache_memory: float | None = None,
                  gpu_memory_utilization: float = 0.9, non_kv_bytes: int = 0,
                  num_kv_blocks: int | None = None, role: str = "") -> CachePlan:
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: must be an integer >= 1, got {block_size!r}")
    if not isinstance(max_num_seqs, int) or max_num_seqs < 1:
        raise ValueError(f"max_num_seqs: must be an integer >= 1, got {max_num_seqs!r}")
    ckpt_len = cfg.max_position_embeddings
    if max_model_len is not None and not 1 < max_model_len <= ckpt_len:
        raise ValueError(f"max_model_len: must be in [2, {ckpt_len}] (the checkpoint's max_position_embeddings), "
                         f"got {max_model_len!r}")
    want_len = max_model_len or ckpt_len
    per_block = kv_bytes_per_token(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, dtype) * block_size
    cap = 1 + max_num_seqs * blocks_for(want_len + lookahead, block_size)  # more would never be used
    if num_kv_blocks is not None:
        if not isinstance(num_kv_blocks, int) or num_kv_blocks < 2:
            raise ValueError(f"num_kv_blocks: must be an integer >= 2, got {num_kv_blocks!r}")
        num_blocks, source = num_kv_blocks, "--num-kv-blocks"
    else:
        budget, source = budget_bytes(device, kv_cache_memory, gpu_memory_utilization, non_kv_bytes)
        num_blocks = budget // per_block
        if num_blocks > cap:
            num_blocks, source = cap, source + f"; capped at what {max_num_seqs} full sequences need"
    if num_blocks < 2:
        raise ValueError(f"{role} kv cache: the budget ({source}) holds no KV block of {per_block} bytes; "
                         "raise --kv-cache-memory or --gpu-memory-utilization")
    fits_len = (num_blocks - 1) * block_size - lookahead
    if fits_len < want_len:
        if max_model_len is not None or fits_len < MIN_MODEL_LEN:
            raise ValueError(
                f"max_model_len: a sequence of {want_len} tokens (+{lookahead} speculative) needs "
                f"{blocks_for(want_len + lookahead, block_size)} KV blocks of {per_block / 2**20:.2f} MiB, but "
                f"the budget ({source}) holds {num_blocks - 1}; lower --max-model-len (at most {max(fits_len, 0)} "
                "fits) or raise --kv-cache-memory / --gpu-memory-utilization")
        log.warning("%s: max_model_len LOWERED from the checkpoint's %d to %d tokens: that is all the KV cache "
                    "budget (%s) holds; raise --kv-cache-memory / --gpu-memory-utilization for more",
                    role or "runner", want_len, fits_len, source)
        want_len = fits_len
    return CachePlan(int(num_blocks), block_size, want_len, per_block, source)
