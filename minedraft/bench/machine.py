"""`minedraft bench`: what the machine is and where the processes run (written into the report)."""

from __future__ import annotations

import os
import platform
import socket

__all__ = ["machine_info", "placement_text"]


def placement_text(args) -> str:
    if args.on_gpu:
        return (f"target and draft services share {args.device}; no CPU pinning; in-process and HF modes run "
                "in the bench process on the same GPU")
    if args.pin:
        return ("target pinned to core 0, draft to core 1, 1 torch thread each, both at nice 10; gateway unpinned; "
                "in-process and HF modes: bench process on cores {0,1}, 1 torch thread (in-process draft on the "
                "scheduler's worker thread, target on the calling thread)")
    return "no CPU pinning (--no-pin or fewer than 2 usable cores); torch default threads in every process"


def machine_info(args) -> dict:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu_model": cpu, "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "hostname": socket.gethostname(), "device": args.device,
            "pinned": args.pin, "placement": placement_text(args)}
    if args.on_gpu and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info
