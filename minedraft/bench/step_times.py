"""Step times of the runner on real model shapes with random weights, beside the HBM roofline and
beside transformers' own forward on the same weights (issue 14).

    python -m minedraft.bench.step_times --json OUT.json              # GPU: Qwen3-8B / Qwen3-0.6B shapes, bf16
    python -m minedraft.bench.step_times --json OUT.json --cpu-smoke  # tiny shapes on CPU: checks the script

Models are made on the spot (no download): transformers builds each from its config directly on the
device, and our runner shares those very weight tensors (no second copy). For each batch B every row
holds `--context` tokens; one step appends q tokens (decode and draft: 1; verify: k+1) and is rolled
back, so every timed step sees the same context. Measured: wall time per step including the host
work (that is what graphs remove), cuda_graphs on and off; transformers' forward of the same q tokens
over a DynamicCache of the same context. Roofline: weight bytes read once, plus the KV of the whole
context and the new tokens, over the device's memory bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

# Qwen3-8B and Qwen3-0.6B as their config.json give them (head_dim 128, 8 KV heads both).
SHAPES = {
    "qwen3-8b-shape": dict(role="target", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                           num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "qwen3-0.6b-shape": dict(role="draft", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                             num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True),
}
COMMON = dict(head_dim=128, vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0,
              rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=256, bos_token_id=1,
             eos_token_id=2)
# Peak memory bandwidth by device name, when the device does not tell (bytes/s; vendor figures).
KNOWN_BANDWIDTH = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "A100-SXM4-80GB": 2.04e12,
                   "A100": 1.555e12, "L40S": 0.864e12}


def hbm_bandwidth(device: torch.device) -> tuple[float | None, str]:
    """Peak bandwidth (bytes/s) and where it came from: the device's memory clock and bus width
    (through CuPy), else the name table; None on CPU."""
    if device.type != "cuda":
        return None, "none (cpu)"
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(device.index or 0)
        clock_khz, bus_bits = props["memoryClockRate"], props["memoryBusWidth"]
        if clock_khz and bus_bits:
            return 2.0 * clock_khz * 1e3 * bus_bits / 8, "memory clock x bus width (double data rate)"
    except Exception:  # noqa: BLE001 - CuPy missing or an older driver: fall back to the table
        pass
    name = torch.cuda.get_device_name(device)
    for key, bw in KNOWN_BANDWIDTH.items():
        if key in name:
            return bw, f"table ({key})"
    return None, "unknown"


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Measured: a device-to-device copy reads and writes nbytes (bytes/s)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = _timed(lambda: dst.copy_(src), device, iters=5, warmup=2)
    return 2 * nbytes / (statistics.median(times) / 1e3)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, iters: int, warmup: int = 3) -> list[float]:
    """Wall milliseconds of fn per call, host work included, device drained before and after."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def weight_bytes(model, tied: bool) -> int:
    """Bytes a step reads of the weights: every parameter once, except an untied input embedding
    (only the step's rows of it are read)."""
    seen, total = set(), 0
    embed = model.get_input_embeddings().weight
    for p in model.parameters():
        if p.data_ptr() in seen or (p is embed and not tied):
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


def kv_bytes_per_token(cfg, dtype) -> int:
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize


def our_model(hf, device):
    """Our Model over transformers' weight tensors (same names; assign shares them)."""
    from minedraft.runner.hf_adapter import model_config_from_hf
    from minedraft.runner.model import Model, rope_inv_freq

    cfg = model_config_from_hf(hf.config)
    with torch.device("meta"):
        model = Model(cfg)
    model.load_state_dict(hf.state_dict(), strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.inv_freq = rope_inv_freq(cfg).to(device)
    return model.eval(), cfg


def measure_model(name, spec, args, device, dtype, bandwidth) -> list[dict]:
    from transformers import Qwen3Config

    from minedraft.runner.block_manager import blocks_for
    from minedraft.runner.hf_adapter import crop_kv_cache, forward_with_cache, new_kv_cache, random_model
    from minedraft.runner.model_runner import ModelRunner

    role = spec["role"]
    shape = {k: v for k, v in spec.items() if k != "role"}
    if args.cpu_smoke:
        shape.update(SMOKE)
    hf_cfg = Qwen3Config(**{**COMMON, **shape})
    hf = random_model(hf_cfg, device, dtype, seed=0)
    model, cfg = our_model(hf, device)
    ctx, qs = args.context, ([1] if role == "draft" else [1, args.k + 1])
    lookahead = args.k + 2
    max_b = max(args.batches)
    runner = ModelRunner("", str(device), dtype, max_num_seqs=max_b, max_model_len=ctx + lookahead,
                         lookahead=lookahead, role=f"{name} {role}", max_num_batched_tokens=max(ctx, 256),
                         num_kv_blocks=1 + max_b * blocks_for(ctx + 2 * lookahead, 16), cuda_graphs=True,
                         preloaded=(model, cfg))
    graphs = runner.graphs
    w_bytes, kv_tok = weight_bytes(hf, cfg.tie_word_embeddings), kv_bytes_per_token(hf_cfg, dtype)
    gen = torch.Generator().manual_seed(1)
    rows_out = []
    for b in args.batches:
        prompts = torch.randint(10, cfg.vocab_size, (b, ctx), generator=gen)
        seqs = [runner.allocate() for _ in range(b)]
        runner.forward(seqs, prompts.tolist())
        cache = new_kv_cache(hf)
        with torch.inference_mode():
            forward_with_cache(hf.model, prompts.to(device), cache)  # no logits for the context
        for q in qs:
            toks = [[7] * q for _ in range(b)]
            ids = torch.full((b, q), 7, device=device)

            # Each closure takes this iteration's values as defaults: a late-binding closure would read
            # whatever the names hold when it runs (and `del` below unbinds some of them).
            def ours(runner=runner, seqs=seqs, toks=toks, q=q, ctx=ctx):
                runner.forward(seqs, toks, all_positions=q > 1)
                for s in seqs:
                    runner.rollback(s, ctx)

            def theirs(hf=hf, ids=ids, cache=cache, ctx=ctx):
                with torch.inference_mode():
                    forward_with_cache(hf, ids, cache)
                crop_kv_cache(cache, ctx)

            hf_ms = statistics.median(_timed(theirs, device, args.iters))
            roofline = (w_bytes + b * (ctx + q) * kv_tok) / bandwidth * 1e3 if bandwidth else None
            for use_graphs in (False, True):
                runner.graphs = graphs if use_graphs else None
                times = _timed(ours, device, args.iters)
                rows_out.append(dict(model=name, role=role, batch=b, q=q, context=ctx,
                                     ms=round(statistics.median(times), 4), ms_min=round(min(times), 4),
                                     roofline_ms=None if roofline is None else round(roofline, 4),
                                     cuda_graphs=use_graphs, graphs_captured=use_graphs and graphs.capture,
                                     hf_ms=round(hf_ms, 4)))
                print(_row_text(rows_out[-1]), flush=True)
        for s in seqs:
            runner.free(s)
        del cache, ours, theirs  # the closures' defaults hold this batch's cache: let it go with them
    del runner, model, hf
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows_out


def _row_text(r: dict) -> str:
    roof = f"{r['roofline_ms']:9.3f}" if r["roofline_ms"] is not None else f"{'-':>9s}"
    ratio = f"{r['ms'] / r['roofline_ms']:6.2f}x" if r["roofline_ms"] else f"{'-':>7s}"
    return (f"{r['model']:17s} {r['role']:6s} B={r['batch']:<3d} q={r['q']:<2d} "
            f"graphs={'on ' if r['cuda_graphs'] else 'off'} "
            f"{r['ms']:9.3f} ms  roofline {roof} ms {ratio}  transformers {r['hf_ms']:9.3f} ms")


def machine(device: torch.device, args) -> dict:
    import transformers

    bw, source = hbm_bandwidth(device)
    info = dict(device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                torch=torch.__version__, cuda=torch.version.cuda, transformers=transformers.__version__,
                hbm_bandwidth_gbs=None if bw is None else round(bw / 1e9, 1), bandwidth_source=source,
                copy_bandwidth_gbs=round(copy_bandwidth(device, (1 << 30) if device.type == "cuda" else 1 << 24)
                                         / 1e9, 1),
                dtype=str(args.dtype), cpu_smoke=args.cpu_smoke)
    if device.type == "cuda":
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m minedraft.bench.step_times", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="write the step-time report here")
    p.add_argument("--device", default=None, help="default: cuda:0 (cpu with --cpu-smoke)")
    p.add_argument("--batches", default=None, help="comma list (default 1,8,32,64; smoke 1,2)")
    p.add_argument("--context", type=int, default=None, help="tokens per row before the step (default 512; smoke 24)")
    p.add_argument("-k", type=int, default=4, help="draft tokens: the verify step is k+1 tokens per row")
    p.add_argument("--iters", type=int, default=None, help="timed steps per point (default 20; smoke 2)")
    p.add_argument("--models", default=",".join(SHAPES), help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes in fp32 on CPU: checks the script only")
    args = p.parse_args(argv)
    smoke = args.cpu_smoke
    args.device = torch.device(args.device or ("cpu" if smoke else "cuda:0"))
    args.dtype = torch.float32 if args.device.type == "cpu" else torch.bfloat16
    args.batches = [int(b) for b in (args.batches or ("1,2" if smoke else "1,8,32,64")).split(",")]
    args.context = args.context or (24 if smoke else 512)
    args.iters = args.iters or (2 if smoke else 20)
    args.models = [m for m in args.models.split(",") if m]
    unknown = set(args.models) - set(SHAPES)
    if unknown:
        p.error(f"--models: unknown {sorted(unknown)}")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        print("step_times: no CUDA device (use --cpu-smoke to check the script on CPU)", file=sys.stderr)
        return 2
    report = dict(machine=machine(args.device, args), step_times=[],
                  config=dict(context=args.context, k=args.k, iters=args.iters, batches=args.batches))
    bw = report["machine"]["hbm_bandwidth_gbs"]
    bw = bw * 1e9 if bw else report["machine"]["copy_bandwidth_gbs"] * 1e9  # CPU: the measured copy
    for name in args.models:
        report["step_times"] += measure_model(name, SHAPES[name], args, args.device, args.dtype, bw)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
