"""Whether this machine can run the CUDA-IPC channel tests."""

import torch


def cuda_and_cupy() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True
