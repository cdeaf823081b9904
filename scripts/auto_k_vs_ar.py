"""In-process psd `-k auto` against ar (issue 24): one Engine, 16 held-out prompts x 64 tokens, the
two interleaved over 10 rounds (the first 2 unmeasured), best round of each, and how many steps of
each auto round speculated (k > 0). Compare code versions in fresh processes, alternated:

    PYTHONPATH=. python3 scripts/auto_k_vs_ar.py
"""

import time

from minedraft import Engine, SamplingParams
from minedraft.assets import load_heldout_prompts

ROUNDS, UNMEASURED = 10, 2

prompts = load_heldout_prompts(16)
params = SamplingParams(max_tokens=64, ignore_eos=True)
engine = Engine(mode="psd")


def run(mode: str, k) -> float:
    engine.scheduler.reconfigure(mode, k)
    for p in prompts:
        engine.add_request(p, params)
    t, n = time.perf_counter(), 0
    while engine.has_unfinished():
        for r in engine.step():
            if r.finished:
                n += len(r.output_ids)
    return n / (time.perf_counter() - t)


best = {"ar": 0.0, "auto": 0.0}
speculative_steps = []
for i in range(ROUNDS):
    order = (("ar", 2), ("psd", "auto")) if i % 2 == 0 else (("psd", "auto"), ("ar", 2))
    for mode, k in order:
        tps = run(mode, k)
        if i < UNMEASURED:
            continue
        key = "ar" if mode == "ar" else "auto"
        best[key] = max(best[key], tps)
        if mode == "psd":
            speculative_steps.append(sum(engine.scheduler.metrics.k_steps["psd"][1:]))
print({k: round(v) for k, v in best.items()}, "auto/ar", round(best["auto"] / best["ar"], 3),
      "k>0 steps per auto round", speculative_steps)
