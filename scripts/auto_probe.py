"""In-process probe of k = auto against ar and fixed k (issue 24): one Engine, its runs interleaved,
best of 3 rounds per configuration, and auto's k histogram and mean accepted length.

    python3 scripts/auto_probe.py MODE CONCURRENCY [budget|nobudget]

CONCURRENCY 1 sends the prompts one at a time. `budget` turns the controller's per-row budget on
(SpeculationController.use_budget, off by default). Compare configurations in fresh processes.
"""

import collections
import sys
import time

from minedraft import Engine, SamplingParams
from minedraft.assets import load_heldout_prompts
from minedraft.spec import controller

mode, conc = sys.argv[1], int(sys.argv[2])
controller.SpeculationController.use_budget = len(sys.argv) > 3 and sys.argv[3] == "budget"
prompts = load_heldout_prompts(max(conc, 4))
params = SamplingParams(max_tokens=64, ignore_eos=True)
engine = Engine(mode=mode)


def drain() -> int:
    n = 0
    while engine.has_unfinished():
        for r in engine.step():
            if r.finished:
                n += len(r.output_ids)
    return n


def run(m, k):
    engine.scheduler.reconfigure(m, k)
    t = time.perf_counter()
    n = 0
    if conc == 1:
        for p in prompts:
            engine.add_request(p, params)
            n += drain()
    else:
        for p in prompts:
            engine.add_request(p, params)
        n = drain()
    metrics = engine.scheduler.metrics
    return n / (time.perf_counter() - t), dict(metrics.k_steps), round(metrics.mean_accepted_length, 2)


configs = [("ar", None), (mode, "auto"), (mode, 2), (mode, 4)]
for m, k in (("ar", None), (mode, 2), (mode, "auto")):  # warm-up, unmeasured
    run(m, k or 2)
best = collections.defaultdict(list)
for r in range(3):
    for m, k in configs[r % 4:] + configs[:r % 4]:
        tps, ks, acc = run(m, k or 2)
        best[(m, k)].append(tps)
        if k == "auto" and r == 2:
            print("auto: steps per k", ks, "mean accepted length", acc)
print(sys.argv[1:], {f"{m} k={k}": round(max(v)) for (m, k), v in best.items()})
