"""Seeded sampled requests (the coupling, spec/coupled_sampling.py) against unseeded ones (rejection
sampling) in process: 16 held-out prompts x 64 tokens at temperature 0.9 / top-p 0.95, sd and psd at
k 4 on the bundled pair. Each (mode, seeded) runs in a fresh process; the kinds alternate over
--rounds and the best round of each is kept. Prints tok/s and the acceptance rate.

    PYTHONPATH=. python3 scripts/coupled_vs_rejection.py [--rounds 3]
"""

import argparse
import json
import subprocess
import sys
import time


def one(mode: str, seeded: bool) -> dict:
    from minedraft import Engine, SamplingParams
    from minedraft.assets import load_heldout_prompts

    prompts = load_heldout_prompts(16)
    engine = Engine(mode=mode, num_speculative_tokens=4)
    engine.generate(prompts[:2], SamplingParams(max_tokens=8, ignore_eos=True))  # warm-up
    params = [SamplingParams(temperature=0.9, top_p=0.95, max_tokens=64, ignore_eos=True,
                             seed=i if seeded else None) for i in range(len(prompts))]
    t0 = time.perf_counter()
    rids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    n, accepted, drafted = 0, 0, 0
    while engine.has_unfinished():
        for r in engine.step():
            if r.finished and r.request_id in rids:
                n, accepted, drafted = n + len(r.output_ids), accepted + r.num_accepted, drafted + r.num_drafted
    return {"tok_s": n / (time.perf_counter() - t0), "acceptance": accepted / max(drafted, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--one", nargs=2)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1] == "seeded")))
        return
    best: dict = {}
    for r in range(args.rounds):
        for mode in ("sd", "psd"):
            kinds = ("seeded", "unseeded") if r % 2 == 0 else ("unseeded", "seeded")
            for kind in kinds:
                out = subprocess.run([sys.executable, __file__, "--one", mode, kind], capture_output=True,
                                     text=True, timeout=600, check=True)
                got = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"round {r + 1} {mode} {kind}: {got['tok_s']:.0f} tok/s, acceptance {got['acceptance']:.3f}",
                      flush=True)
                key = (mode, kind)
                if key not in best or got["tok_s"] > best[key]["tok_s"]:
                    best[key] = got
    for mode in ("sd", "psd"):
        s, u = best[mode, "seeded"], best[mode, "unseeded"]
        print(f"{mode}: seeded (coupling) {s['tok_s']:.0f} tok/s, acceptance {s['acceptance']:.3f}; "
              f"unseeded (rejection) {u['tok_s']:.0f} tok/s, acceptance {u['acceptance']:.3f}; "
              f"ratio {s['tok_s'] / u['tok_s']:.2f}")


if __name__ == "__main__":
    main()
