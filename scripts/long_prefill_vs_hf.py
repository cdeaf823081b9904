"""A Qwen3-0.6B-shaped checkpoint (random weights): one 2,000-token prompt + 7 short ones, 8 new
tokens each, in psd on the Engine's defaults, against transformers' time for the long prompt alone
(issue 21's aim: <= 1.2x). Each measurement runs in a fresh process (this script re-runs itself
with --one), the two alternate over --rounds, and the best (least) time of each is compared.
--dtype bfloat16 saves the pair in bfloat16, as Qwen3-0.6B is published: both sides then run in it on
their defaults where the CPU computes bf16 (transformers keeps a checkpoint's dtype; so does our auto).

    PYTHONPATH=. python3 scripts/long_prefill_vs_hf.py [--rounds 2] [--folder /tmp/qwen3-shape] [--dtype bfloat16]
        [--engine-args '{"max_num_batched_tokens": 2048, "prefill_chunk_tokens": 2048}']  # not the defaults
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
LONG, SHORT, NUM_SHORT, NEW = 2000, 40, 7, 8


def prompts():
    import torch

    g = torch.Generator().manual_seed(0)
    return ([torch.randint(10, 150_000, (LONG,), generator=g).tolist()]
            + [torch.randint(10, 150_000, (SHORT,), generator=g).tolist() for _ in range(NUM_SHORT)])


def in_bf16(path: str, folder: pathlib.Path) -> str:
    """A bfloat16 copy of the checkpoint (made once)."""
    from test_cpu_dtype import bf16_copy

    copy = folder / (pathlib.Path(path).name + "-bf16")
    return str(copy) if copy.is_dir() else bf16_copy(path, copy)


def one(kind: str, target: str, draft: str, engine_args: dict | None = None) -> float:
    import torch

    ps = prompts()
    if kind == "hf":
        from minedraft.runner.checkpoint import checkpoint_dtype
        from minedraft.runner.hf_adapter import reference_model

        model = reference_model(target, dtype=torch.bfloat16 if checkpoint_dtype(target) == "bfloat16" else None)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(torch.tensor([ps[0]]), max_new_tokens=NEW, do_sample=False,
                           attention_mask=torch.ones(1, LONG, dtype=torch.long))
        return time.perf_counter() - t0
    from minedraft import Engine, SamplingParams

    engine = Engine(target, draft, mode="psd", **(engine_args or {}))
    t0 = time.perf_counter()
    engine.generate(ps, SamplingParams(max_tokens=NEW, ignore_eos=True))
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--folder", default="/tmp/qwen3-shape")
    p.add_argument("--one", choices=("hf", "engine"))
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the checkpoints' dtype")
    p.add_argument("--engine-args", default="{}", help="Engine keywords (JSON) for the engine's side")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from real_scale_models import draft_small, target_0_6b

    folder = pathlib.Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    target, draft = target_0_6b(folder), draft_small(folder)
    if args.dtype == "bfloat16":
        target, draft = in_bf16(target, folder), in_bf16(draft, folder)
    if args.one:
        print(json.dumps({"seconds": one(args.one, target, draft, json.loads(args.engine_args))}))
        return
    times = {"hf": [], "engine": []}
    for r in range(args.rounds):
        for kind in (("hf", "engine") if r % 2 == 0 else ("engine", "hf")):
            out = subprocess.run([sys.executable, __file__, "--one", kind, "--folder", args.folder, "--dtype",
                                  args.dtype, "--engine-args", args.engine_args],
                                 capture_output=True, text=True, timeout=900, check=True)
            times[kind].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
            print(f"round {r + 1} {kind}: {times[kind][-1]:.1f} s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    print(f"transformers, long prompt alone: {best['hf']:.1f} s; engine psd, long + {NUM_SHORT} short: "
          f"{best['engine']:.1f} s; ratio {best['engine'] / best['hf']:.2f} (aim <= 1.2)")


if __name__ == "__main__":
    main()
