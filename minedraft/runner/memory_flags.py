"""The KV cache's command-line flags (and --cuda-graphs), shared by `serve target|draft` and `up`
(same names as Engine's keywords). No torch here: the CLI imports it."""

from __future__ import annotations

import argparse

# flag attribute -> Engine / ModelRunner keyword (the same name)
MEMORY_FLAGS = ("kv_cache_memory", "gpu_memory_utilization", "max_num_batched_tokens", "block_size", "num_kv_blocks",
                "cuda_graphs")


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-num-seqs", type=int, default=64, help="concurrent requests (default 64)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="longest sequence (default: the checkpoint's, lowered with a warning when the "
                             "KV budget cannot hold one such sequence; a value given here is refused instead)")
    parser.add_argument("--kv-cache-memory", type=float, default=None, metavar="GIB",
                        help="CPU: GiB for the KV cache (default: 25%% of the memory available at start)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                        help="GPU: share of the device this process may use in all (default 0.9)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None,
                        help="prefill chunk: most tokens in one forward (default 512 on CPU, 8192 on GPU)")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default 16)")
    parser.add_argument("--num-kv-blocks", type=int, default=None,
                        help="force the number of KV blocks (tests; overrides the memory budget)")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                        help="CUDA graphs for decode, draft and verify steps (default: off until a GPU run "
                             "has exercised them; see the README's GPU section)")


def memory_kwargs(args) -> dict:
    return {name: getattr(args, name) for name in MEMORY_FLAGS}


def memory_argv(args) -> list[str]:
    """The flags again, as a worker's command line (what `up` passes to target and draft); flags
    absent from args (callers that build their own namespace) keep the workers' defaults."""
    out = []
    for name in ("max_num_seqs", "max_model_len") + MEMORY_FLAGS:
        value = getattr(args, name, None)
        if isinstance(value, bool):  # BooleanOptionalAction: --flag / --no-flag
            out.append(("--" if value else "--no-") + name.replace("_", "-"))
        elif value is not None:
            out += ["--" + name.replace("_", "-"), str(value)]
    return out
