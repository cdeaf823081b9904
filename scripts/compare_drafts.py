"""Model draft vs EAGLE head on the bundled pair, in process (Engine), greedy: acceptance per drafted
token and the draft's compute per step (Proposal.compute_s summed over steps, divided by steps).

    PYTHONPATH=. python3 scripts/compare_drafts.py --requests 16 --max-tokens 64 -k 4 --mode sd
"""

from __future__ import annotations

import argparse
import json
import time

from minedraft import Engine, SamplingParams
from minedraft.assets import load_heldout_prompts


def measure(method: str, args) -> dict:
    prompts = load_heldout_prompts(args.requests)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    with Engine(draft_method=method, mode=args.mode, num_speculative_tokens=args.k,
                max_num_seqs=args.requests) as engine:
        t0 = time.perf_counter()
        results = engine.generate(prompts, params)
        wall = time.perf_counter() - t0
        m = engine.metrics
        steps = m.breakdown()
    tokens = sum(len(r.token_ids) for r in results)
    return {"method": method, "acceptance_per_drafted_token": round(m.acceptance_rate, 3),
            "acceptance_per_pos": [round(a, 3) for a in m.acceptance_per_pos],
            "draft_step_ms": round(1000 * steps["draft_compute_s"] / max(1, steps["num_steps"]), 2),
            "steps": steps["num_steps"], "tokens_per_s": round(tokens / wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("-k", type=int, default=4)
    p.add_argument("--mode", default="sd", choices=["sd", "psd"])
    p.add_argument("--temperature", type=float, default=0.0)
    args = p.parse_args()
    rows = [measure(method, args) for method in ("model", "eagle")]
    for row in rows:
        print(json.dumps(row))
    print(f"eagle/model draft step: {rows[1]['draft_step_ms'] / max(rows[0]['draft_step_ms'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
