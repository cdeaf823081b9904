"""Where the in-process Engine's two models run (issue 24: in-process PSD, thread placement).

    python scripts/inproc_placement.py [--rounds 3] [--configs psd:default,psd:draft1,...]

Each (mode, placement) runs in a fresh process, rounds interleaved (a round runs every config once),
and the minimum over rounds is reported (the machine is shared: minima, not means). A run times
Engine(mode, num_speculative_tokens=4).generate on the first 16 bundled held-out prompts, 64 tokens
each, ignore_eos, after one untimed warm-up generate.

Placements (the in-process PSD drafts on the scheduler's worker thread while the target verifies on
the caller's thread; each thread that enters torch gets its own intra-op pool):
  default    nothing set: each thread uses torch.get_num_threads() intra-op threads
  engine     the Engine's own default (EngineConfig.placement; see minedraft/spec/placement.py)
  draft1     the draft thread uses 1 intra-op thread
  draft1pin  the draft thread uses 1 intra-op thread, pinned to the last core
  both1      the draft thread and the caller's thread use 1 intra-op thread each
  both1pin   the same, the caller's thread pinned to core 0 and the draft's to the last core
  two        `default`, two identical engines in one process, timed alternately (reports both)
  two1       `both1`, two identical engines in one process, timed alternately
  passive    `default` with OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead of spinning)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_CONFIGS = ("ar:default,sd:default,sd:both1,psd:default,psd:draft1,psd:draft1pin,psd:both1,psd:both1pin,"
                   "psd:engine")


def _draft_thread_setup(threads: int | None, core: int | None):
    def setup():
        import torch

        if core is not None:
            os.sched_setaffinity(0, {core})  # 0: the calling thread (Linux)
        if threads:
            torch.set_num_threads(threads)
    return setup


def child(mode: str, placement: str) -> dict:
    import torch

    from minedraft import Engine, SamplingParams
    from minedraft.assets import load_heldout_prompts

    cores = sorted(os.sched_getaffinity(0))
    prompts = load_heldout_prompts()[:16]
    params = SamplingParams(max_tokens=64, ignore_eos=True)
    kwargs = {} if placement == "engine" else {"cpu_threads_per_model": None}  # None: torch's own
    try:
        make = lambda: Engine(mode=mode, num_speculative_tokens=4, **kwargs)  # noqa: E731
        engines = [make() for _ in range(2 if placement.startswith("two") else 1)]
    except TypeError:  # an Engine without cpu_threads_per_model (before this change)
        kwargs = {}
        engines = [Engine(mode=mode, num_speculative_tokens=4) for _ in range(2 if placement.startswith("two") else 1)]
    placement = "both1" if placement == "two1" else placement
    draft_threads, draft_core = {"draft1": (1, None), "draft1pin": (1, cores[-1]), "both1": (1, None),
                                 "both1pin": (1, cores[-1])}.get(placement, (None, None))
    if placement.startswith("both"):
        if placement == "both1pin":
            os.sched_setaffinity(0, {cores[0]})
        torch.set_num_threads(1)
    if draft_threads:
        for e in engines:
            e.scheduler.set_worker_thread_setup(_draft_thread_setup(draft_threads, draft_core))
    for e in engines:
        e.generate(prompts[:4], SamplingParams(max_tokens=8, ignore_eos=True))  # warm-up
    times = [[] for _ in engines]
    for _ in range(2):
        for i, e in enumerate(engines):
            t0 = time.perf_counter()
            out = e.generate(prompts, params)
            times[i].append(time.perf_counter() - t0)
    n = sum(len(r.token_ids) for r in out)
    return {"mode": mode, "placement": placement, "tok_s": [n / min(t) for t in times],
            "main_threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated mode:placement")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child.split(":"))), flush=True)
        return 0
    configs = args.configs.split(",")
    results: dict[str, list[list[float]]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in configs:
            env = dict(os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if c.endswith(":passive") else {}))
            out = subprocess.run([sys.executable, __file__, "--child", c], capture_output=True, text=True, env=env)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"{c}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            tok_s = json.loads(line[0][7:])["tok_s"]
            results[c].append(tok_s)
            print(f"round {r + 1} {c:14s} " + " ".join(f"{t:7.1f}" for t in tok_s) + " tok/s", flush=True)
    print(f"\n{'config':14s} {'best tok/s':>10s} {'median':>8s}  (best of {args.rounds} fresh processes)")
    for c, runs in results.items():
        if not runs:
            continue
        for i in range(len(runs[0])):
            col = [run[i] for run in runs]
            label = c if len(runs[0]) == 1 else f"{c}#{i + 1}"
            print(f"{label:14s} {max(col):10.1f} {statistics.median(col):8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
