"""Host-to-device copies that do not stall the host.

torch copies a pageable host tensor to the GPU synchronously (it waits for the stream), so building
a small input tensor from a list costs a host sync every time. Through pinned memory and
non_blocking the copy is queued like a kernel; torch's caching host allocator keeps the pinned
block alive until the copy has run."""

from __future__ import annotations

import torch


def host_tensor(data, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A (nested) host list as a tensor on `device`, without a host sync on CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.tensor(data, dtype=dtype, device=device)
    return torch.tensor(data, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A tensor on `device`; a host tensor goes to a GPU through pinned memory, without a host sync."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
