"""Figures for the README's bundled-pair section: greedy acceptance at k=4 on held-out prompts, and
the draft-to-target cost ratio of one forward on this CPU (1 torch thread).

    python scripts/measure_pair.py [--prompts 32] [--max-tokens 64]
"""

import argparse
import json
import time

import torch

from minedraft import Engine, SamplingParams
from minedraft.assets import default_draft_path, default_target_path, load_heldout_prompts
from minedraft.runner.model_runner import ModelRunner


def forward_ms(path: str, batch: int, repeats: int = 20) -> float:
    runner = ModelRunner(path, max_num_seqs=batch)
    rows = [runner.allocate() for _ in range(batch)]
    runner.forward(rows, [[5] * 100] * batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.forward(rows, [[7]] * batch)
        times.append(time.perf_counter() - t0)
        for r in rows:
            runner.rollback(r, 100)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine = Engine(mode="sd", num_speculative_tokens=4)
    engine.generate(load_heldout_prompts(args.prompts), SamplingParams(max_tokens=args.max_tokens))
    m = engine.metrics
    out = {"prompts": args.prompts, "max_tokens": args.max_tokens, "k": 4,
           "acceptance_rate": round(m.acceptance_rate, 3), "mean_accepted_length": round(m.mean_accepted_length, 3),
           "acceptance_per_pos": [round(a, 3) for a in m.acceptance_per_pos]}
    for batch in (1, 16):
        t, d = forward_ms(default_target_path(), batch), forward_ms(default_draft_path(), batch)
        out[f"forward_ms_batch{batch}"] = {"target": round(t, 2), "draft": round(d, 2),
                                           "draft_over_target": round(d / t, 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
