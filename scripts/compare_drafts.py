"""Model draft vs EAGLE head(s) on the bundled pair, in process (Engine), greedy by default: acceptance
per drafted token and per position, and the draft's compute per step (Proposal.compute_s summed over
steps, divided by steps; and its median over proposals, which a shared machine's load spikes move
less; and the CPU time of the drafting thread per proposal, which other processes' load moves least:
the in-process draft runs at one intra-op thread, so its work is that thread's).
Several heads (--heads) and modes (--modes) run interleaved, --rounds times, so a
shared machine's load hits every row alike.

    PYTHONPATH=. python3 scripts/compare_drafts.py --requests 8 --max-tokens 48 -k 4 --modes sd psd \\
        --heads minedraft/assets/tiny-eagle /tmp/new-head
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from minedraft import Engine, SamplingParams
from minedraft.assets import load_heldout_prompts


def measure(method: str, head: str | None, mode: str, args) -> dict:
    prompts = load_heldout_prompts(args.requests)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    with Engine(draft=head, draft_method=method, mode=mode, num_speculative_tokens=args.k,
                max_num_seqs=args.requests) as engine:
        draft, each, cpu = engine.scheduler.draft, [], []
        propose = draft.propose

        def timed(*a, **kw):
            c0 = time.thread_time()
            out = propose(*a, **kw)
            cpu.append(time.thread_time() - c0)
            each.append(out.compute_s)
            return out

        draft.propose = timed
        t0 = time.perf_counter()
        results = engine.generate(prompts, params)
        wall = time.perf_counter() - t0
        m = engine.metrics
        steps = m.breakdown()
    tokens = sum(len(r.token_ids) for r in results)
    return {"mode": mode, "method": method, "head": head, "acceptance_per_drafted_token": round(m.acceptance_rate, 3),
            "acceptance_per_pos": [round(a, 3) for a in m.acceptance_per_pos],
            "draft_step_ms": round(1000 * steps["draft_compute_s"] / max(1, steps["num_steps"]), 2),
            "draft_proposal_median_ms": round(1000 * statistics.median(each), 2) if each else None,
            "draft_cpu_ms": round(1000 * statistics.median(cpu), 2) if cpu else None,
            "steps": steps["num_steps"], "tokens_per_s": round(tokens / wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("-k", type=int, default=4)
    p.add_argument("--modes", nargs="+", default=["sd"], choices=["sd", "psd"])
    p.add_argument("--heads", nargs="+", default=[None], help="EAGLE head folders (default: the bundled head)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the interleaved rows this many times")
    p.add_argument("--temperature", type=float, default=0.0)
    args = p.parse_args()
    runs = [("model", None)] + [("eagle", h) for h in args.heads]
    for rnd in range(args.rounds):
        for mode in args.modes:
            rows = [measure(method, head, mode, args) for method, head in runs]
            for row in rows:
                print(json.dumps({"round": rnd, **row}), flush=True)
            for row in rows[1:]:
                ratio = row["draft_step_ms"] / max(rows[0]["draft_step_ms"], 1e-9)
                cpu = row["draft_cpu_ms"] / max(rows[0]["draft_cpu_ms"], 1e-9)
                print(f"round {rnd} {mode}: eagle {row['head'] or 'bundled'} / model draft step: {ratio:.2f} "
                      f"(drafting thread's CPU time: {cpu:.2f})", flush=True)


if __name__ == "__main__":
    main()
