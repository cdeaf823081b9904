"""`minedraft bench`: the serving matrix, measured in the same run as the per-mode table.

Rows ("loads"): closed-loop concurrency (`--matrix-concurrency`, default 1,16,64: that many requests in
flight, max(concurrency, 4) requests per round) and one open-loop row of Poisson arrivals at `--rate`
requests/s (default 8 in the full matrix, none in `--quick`; 24 requests). Regimes (`--matrix-regimes`):
`greedy` (the main run's prompts: the bundled held-out code, or --prompts, at T=0), `sampled` (the same
prompts at T=1.0), `prose` (natural-language prompts, far from the pair's training corpus, at
T=1.0: the default low-acceptance regime, see minedraft.bench.prose for why) and `noise` (random token
ids at T=1.0: the lowest acceptance found on the bundled pair, 0.56, a stress case rather than
traffic). Default: greedy,prose. Columns: ar, and sd / psd at
every k of `--ks` (default auto,2,4; `--k-sweep`: 1..6 beside auto).

A k is passed through as it is, "auto" included (Configure / Scheduler.reconfigure), so "auto" is one
more column. Code that refuses it (a ValueError or INVALID_ARGUMENT / FAILED_PRECONDITION naming
num_speculative_tokens, or a client whose protocol carries k as an integer) is found by one probe
before the matrix: auto is then left out with a one-line note and the rest runs.

Every run of one cell (load x regime) runs in the same round, in an order rotated each round. A cell's
figure is its throughput (generated tokens / round wall time) for closed-loop rows and its mean
latency for the Poisson row (where throughput is the arrival rate's, for every mode); every ratio is
written as a speed-up (> 1: the numerator is faster). Per cell and mode: auto / best fixed k of the
same mode, auto / best fixed (mode, k) of either mode, auto / ar, best fixed / ar.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import sys
import time
import types

from minedraft.bench.report import aggregate
from minedraft.bench.runners import Workload, check_round

SPEC_MODES = ("sd", "psd")
REGIMES = {"greedy": 0.0, "sampled": 1.0, "prose": 1.0, "noise": 1.0}  # regime -> temperature
K_SWEEP = (1, 2, 3, 4, 5, 6)
DEFAULT_RATE = 8.0
POISSON_REQUESTS = 24
MIN_REQUESTS = 4
QUICK = dict(matrix_concurrency="1,4", matrix_max_tokens=16, matrix_rounds=1)
DEFAULTS = dict(matrix_concurrency="1,16,64", matrix_max_tokens=64, matrix_rounds=4)
AIM_AUTO_OVER_BEST, AIM_AUTO_OVER_AR = 0.97, 1.00

__all__ = ["Load", "add_arguments", "format_matrix", "resolve", "run_matrix", "summarize"]


@dataclasses.dataclass(frozen=True)
class Load:
    name: str
    concurrency: int
    num_requests: int
    rate: float | None = None

    @property
    def metric(self) -> str:
        return "latency_mean_s" if self.rate else "throughput_tok_s"


def add_arguments(p) -> None:
    g = p.add_argument_group("serving matrix (after the per-mode runs, on the same services)")
    g.add_argument("--matrix", choices=("on", "off", "only"), default="on",
                   help="on: run it after the per-mode table (default); off: skip it; only: run just the matrix")
    g.add_argument("--ks", default="auto,2,4", help="k values of the sd/psd columns; 'auto' is one of them "
                                                   "(left out with a note where the installed code refuses it)")
    g.add_argument("--k-sweep", action="store_true", help="k = 1..6 (and auto where --ks has it)")
    g.add_argument("--matrix-concurrency", default=None,
                   help=f"closed-loop rows (default {DEFAULTS['matrix_concurrency']}, "
                        f"--quick {QUICK['matrix_concurrency']})")
    g.add_argument("--matrix-regimes", default="greedy,prose", help=f"comma list of: {', '.join(REGIMES)}")
    g.add_argument("--matrix-max-tokens", type=int, default=None,
                   help=f"tokens per request (default {DEFAULTS['matrix_max_tokens']}, "
                        f"--quick {QUICK['matrix_max_tokens']})")
    g.add_argument("--matrix-rounds", type=int, default=None,
                   help=f"rounds, interleaved (default {DEFAULTS['matrix_rounds']}, --quick {QUICK['matrix_rounds']})")
    g.add_argument("--matrix-backend", choices=("services", "inproc"), default="services",
                   help="services: through the three processes (default); inproc: the in-process Engine")


def parse_ks(text: str, sweep: bool) -> list:
    ks: list = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        if item == "auto":
            ks.append("auto")
        elif item.isdigit() and 1 <= int(item) <= 16:
            ks.append(int(item))
        else:
            raise SystemExit(f"minedraft bench: --ks: {item!r} is neither 'auto' nor an integer in [1, 16]")
    if sweep:
        ks = [k for k in ks if k == "auto"] + list(K_SWEEP)
    if not ks:
        raise SystemExit("minedraft bench: --ks is empty")
    return list(dict.fromkeys(ks))


def resolve(args) -> None:
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.ks = parse_ks(args.ks, args.k_sweep)
    try:
        conc = [int(x) for x in args.matrix_concurrency.split(",") if x.strip()]
    except ValueError:
        raise SystemExit("minedraft bench: --matrix-concurrency: a comma list of integers") from None
    if any(c < 1 for c in conc):
        raise SystemExit("minedraft bench: --matrix-concurrency: values must be >= 1")
    loads = [Load(f"c{c}", c, max(c, MIN_REQUESTS)) for c in dict.fromkeys(conc)]
    rate = args.rate if args.rate else (None if args.quick else DEFAULT_RATE)
    if rate:
        loads.append(Load(f"poisson {rate:g}/s", 64, POISSON_REQUESTS, rate))
    args.matrix_loads = loads
    regimes = [r.strip() for r in args.matrix_regimes.split(",") if r.strip()]
    if not regimes or any(r not in REGIMES for r in regimes):
        raise SystemExit(f"minedraft bench: --matrix-regimes: choose from {', '.join(REGIMES)}")
    args.matrix_regimes = list(dict.fromkeys(regimes))
    for name in ("matrix_max_tokens", "matrix_rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"minedraft bench: --{name.replace('_', '-')} must be >= 1")
    if args.matrix != "off" and not loads:
        raise SystemExit("minedraft bench: the matrix has no rows")
    # the speculative modes --modes names (ar is every row's baseline); both where it names neither
    args.matrix_modes = tuple(m for m in SPEC_MODES if m in args.modes) or SPEC_MODES


# -- workloads --------------------------------------------------------------------------------------
def _random_ids(args, count: int) -> list[list[int]]:
    from minedraft.runner import hf_adapter

    vocab = hf_adapter.load_model_config(args.target).vocab_size
    rng = random.Random(args.seed + 7)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(8, 20))] for _ in range(count)]


def _prose_ids(args, count: int, room: int, noise: bool = False) -> tuple[list[list[int]], str]:
    from minedraft.bench.prose import PROSE_PROMPTS
    from minedraft.runner import hf_adapter

    tokenizer = None if noise else hf_adapter.load_tokenizer(args.target)
    if tokenizer is None:  # noise, or a checkpoint without a tokenizer: token ids drawn at random
        ids = _random_ids(args, len(PROSE_PROMPTS))
        source = "random token ids" + ("" if noise else " (no tokenizer)")
    else:
        ids = [tokenizer.encode(x, add_special_tokens=True) for x in PROSE_PROMPTS]
        source = "bundled natural-language prompts (minedraft.bench.prose)"
    ids = [x[-room:] for x in ids]
    return [ids[i % len(ids)] for i in range(count)], source


def build_workloads(args) -> tuple[dict, dict]:
    """(load name, regime) -> Workload; regime -> where its prompts came from."""
    from minedraft.bench.cli import load_prompts
    from minedraft.runner import hf_adapter

    count = max(load.num_requests for load in args.matrix_loads)
    # room for the largest k the matrix may verify (auto: up to the drafts' channel size)
    k_room = max([k for k in args.ks if k != "auto"] + [8])
    ns = types.SimpleNamespace(**{**vars(args), "max_tokens": args.matrix_max_tokens, "k": k_room})
    sources, prompts = {}, {}
    for regime in args.matrix_regimes:
        if regime in ("prose", "noise"):
            ctx = hf_adapter.load_model_config(args.target).max_position_embeddings
            room = max(1, ctx - args.matrix_max_tokens - k_room - 2)
            prompts[regime], sources[regime] = _prose_ids(args, count, room, noise=regime == "noise")
        else:
            prompts[regime], sources[regime], _ = load_prompts(ns, count)
    out = {}
    for load in args.matrix_loads:
        for regime in args.matrix_regimes:
            n = load.num_requests
            arrivals = [0.0] * n
            if load.rate:
                rng, t = random.Random(args.seed + 1), 0.0
                for i in range(n):
                    arrivals[i], t = t, t + rng.expovariate(load.rate)
            out[load.name, regime] = Workload(prompts[regime][:n], arrivals, load.concurrency, args.matrix_max_tokens,
                                              REGIMES[regime], args.seed)
    return out, sources


# -- backends: how one run goes, and whether "auto" is accepted --------------------------------------
def _refusal(exc) -> str | None:
    """The message when `exc` is the installed code refusing num_speculative_tokens='auto', else None."""
    import grpc

    if isinstance(exc, TypeError):  # the protocol carries k as an integer: the client cannot send "auto"
        return f"num_speculative_tokens: the gateway protocol takes an integer ({exc})"
    if isinstance(exc, grpc.RpcError):
        ok = exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
        text = exc.details() or ""
        return text if ok and "num_speculative_tokens" in text else None
    text = str(exc)
    return text if isinstance(exc, ValueError) and "num_speculative_tokens" in text else None


class ServicesBackend:
    name = "services"

    def __init__(self, bench):
        from minedraft.bench.cli import service_max_num_seqs

        self.bench, self.limit = bench, service_max_num_seqs(bench.args)

    def probe_auto(self) -> str | None:
        client = self.bench.client
        try:
            client.configure(mode="sd", num_speculative_tokens="auto")
        except Exception as exc:  # noqa: BLE001 - anything else is re-raised below
            note = _refusal(exc)
            if note is None:
                raise
            return note
        finally:
            client.configure(mode="sd", num_speculative_tokens=self.bench.args.k)
        return None

    def run(self, mode, k, workload, round_index):
        from minedraft.bench.runners import run_service_round

        pids = {name: proc.pid for name, proc in self.bench.cluster.procs.items()}
        return run_service_round(self.bench.client, mode, 0 if k is None else k, workload, round_index,
                                 max_num_seqs=self.limit, pids=pids)


class InprocBackend:
    name = "inproc"

    def __init__(self, bench):
        self.bench = bench

    def probe_auto(self) -> str | None:
        scheduler = self.bench.engine.scheduler
        try:
            scheduler.reconfigure("sd", "auto")
        except ValueError as exc:
            note = _refusal(exc)
            if note is None:
                raise
            return note
        finally:
            scheduler.reconfigure("sd", self.bench.args.k)
        return None

    def run(self, mode, k, workload, round_index):
        from minedraft.bench.cli import bench_process_placement
        from minedraft.bench.runners import run_inproc_round

        with bench_process_placement(self.bench.args.pin):
            return run_inproc_round(self.bench.engine, mode, k or self.bench.args.k, workload, round_index)


# -- the run ----------------------------------------------------------------------------------------
def run_matrix(bench, args) -> dict:
    from tqdm import tqdm

    t0 = time.perf_counter()
    backend = InprocBackend(bench) if args.matrix_backend == "inproc" else ServicesBackend(bench)
    ks = list(args.ks)
    notes = []
    if "auto" in ks:
        refused = backend.probe_auto()
        if refused:
            ks.remove("auto")
            notes.append(f"k=auto skipped: the installed code refuses it ({refused})")
            print(f"minedraft bench: matrix: {notes[-1]}", file=sys.stderr, flush=True)
    columns = [("ar", None)] + [(mode, k) for mode in args.matrix_modes for k in ks]
    workloads, sources = build_workloads(args)
    warm_tokens = min(8, args.matrix_max_tokens)
    for regime in args.matrix_regimes:  # unmeasured: the sampled path's first calls, a fresh backend
        w = next(x for (_, r), x in workloads.items() if r == regime)
        warm = Workload(w.prompts[:2], [0.0, 0.0], 2, warm_tokens, w.temperature, w.seed)
        for mode, k in [("ar", None)] + [(m, ks[0]) for m in args.matrix_modes if ks]:
            backend.run(mode, k, warm, -1)
    results: dict[tuple, list] = {}
    bar = tqdm(total=args.matrix_rounds * len(workloads) * len(columns), desc="matrix", unit="run",
               file=sys.stderr, disable=not args.progress)
    for r in range(args.matrix_rounds):
        for (load_name, regime), w in workloads.items():
            shift = r % len(columns)
            for mode, k in columns[shift:] + columns[:shift]:
                bar.set_postfix_str(f"round {r + 1} {load_name} {regime} {mode} k={k}")
                result = backend.run(mode, k, w, r)
                check_round(result, w, len(w.prompts), allow_no_drafts=(k == "auto"))
                results.setdefault((load_name, regime, mode, k), []).append(result)
                bar.update(1)
    bar.close()
    loads = {load.name: load for load in args.matrix_loads}
    runs = []
    for (load_name, regime, mode, k), rounds in results.items():
        run = aggregate(rounds, k if k is not None else 1)[0]
        load = loads[load_name]
        runs.append({"load": load_name, "concurrency": load.concurrency, "rate": load.rate, "regime": regime,
                     "temperature": REGIMES[regime], "mode": mode, "k": k,
                     **{key: run[key] for key in ("rounds", "requests_per_round", "tokens_per_round",
                                                  "throughput_tok_s", "throughput_tok_s_std",
                                                  "throughput_tok_s_rounds", "latency_mean_s", "latency_p50_s",
                                                  "latency_p99_s", "ttft_mean_s", "acceptance_rate",
                                                  "mean_accepted_length", "acceptance_per_pos")},
                     "latency_mean_s_rounds": [sum(q.latency_s for q in x.requests) / len(x.requests)
                                               for x in rounds]})
        runs[-1]["figure"] = best_round(runs[-1], load.metric)
    out = summarize(runs, args.matrix_loads, args.matrix_regimes)
    out.update(backend=backend.name, ks_requested=list(args.ks), ks=ks, auto=("auto" in ks), notes=notes,
               max_tokens=args.matrix_max_tokens, rounds=args.matrix_rounds, prompt_sources=sources,
               loads=[dataclasses.asdict(x) for x in args.matrix_loads],
               regimes={r: {"temperature": REGIMES[r], "prompts": sources[r]} for r in args.matrix_regimes},
               wall_s=time.perf_counter() - t0)
    print(f"minedraft bench: matrix ({len(results)} runs x {args.matrix_rounds} rounds) took {out['wall_s']:.0f}s",
          file=sys.stderr, flush=True)
    return out


# -- the report -------------------------------------------------------------------------------------
def best_round(run: dict, metric: str):
    """A run's figure: its best round (highest throughput, lowest mean latency). On a shared machine
    a round is only ever slowed by a neighbour, never sped up: the best of interleaved rounds is the
    least disturbed measurement of each configuration."""
    rounds = run.get(metric + "_rounds") or [run.get(metric)]
    rounds = [x for x in rounds if x is not None]
    if not rounds:
        return None
    return max(rounds) if metric == "throughput_tok_s" else min(rounds)


def relative_spread(run: dict, metric: str) -> float | None:
    """std / mean over a run's rounds of the metric its cell reports (None with one round). A Poisson row
    reports mean latency, which near saturation swings far more than throughput: one run's rounds read
    588-974 ms while its throughput moved 4%, and the column said 4%."""
    rounds = [x for x in (run.get(metric + "_rounds") or []) if x is not None]
    mean = statistics.mean(rounds) if len(rounds) > 1 else 0.0
    return statistics.stdev(rounds) / mean if mean else None


def _speedup(a, b, metric: str):
    """How much faster a is than b: throughput a/b, latency b/a; None where either is missing."""
    if a is None or b is None or not a or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b if metric == "throughput_tok_s" else b / a


def summarize(runs: list[dict], loads: list[Load], regimes: list[str]) -> dict:
    """From the matrix's runs (one dict per load, regime, mode, k) to its cells: one per load x regime x
    speculative mode, with the ratios of the aims. Pure: the tests feed it made-up runs."""
    cells = []
    for load in loads:
        metric = load.metric
        for regime in regimes:
            mine = [x for x in runs if x["load"] == load.name and x["regime"] == regime]
            value = {(x["mode"], x["k"]): x.get("figure", x[metric]) for x in mine}
            ar = value.get(("ar", None))
            sign = 1.0 if metric == "throughput_tok_s" else -1.0  # larger throughput, smaller latency wins

            def pick(items, best=True, sign=sign):
                items = [(key, v) for key, v in items if v is not None]
                if not items:
                    return None
                return (max if best else min)(items, key=lambda kv: sign * kv[1])

            overall = pick([(key, v) for key, v in value.items() if key[0] in SPEC_MODES and key[1] != "auto"])
            for mode in SPEC_MODES:
                by_k = {k: v for (m, k), v in value.items() if m == mode}
                if not by_k:
                    continue
                fixed = pick([(k, v) for k, v in by_k.items() if k != "auto"])
                worst = pick([(k, v) for k, v in by_k.items() if k != "auto"], best=False)
                auto = by_k.get("auto")
                acc = {str(x["k"]): x["acceptance_rate"] for x in mine if x["mode"] == mode}
                spread = [v for v in (relative_spread(x, metric) for x in mine if x["mode"] in ("ar", mode))
                          if v is not None]
                cells.append({
                    "load": load.name, "concurrency": load.concurrency, "rate": load.rate, "regime": regime,
                    "temperature": REGIMES.get(regime), "mode": mode, "metric": metric,
                    "ar": ar, "by_k": {str(k): v for k, v in by_k.items()}, "auto": auto,
                    "acceptance_rate": acc,
                    "best_fixed_k": fixed[0] if fixed else None, "best_fixed": fixed[1] if fixed else None,
                    "best_fixed_overall": ({"mode": overall[0][0], "k": overall[0][1], "value": overall[1]}
                                           if overall else None),
                    "auto_over_best_fixed": _speedup(auto, fixed and fixed[1], metric),
                    "auto_over_best_fixed_overall": _speedup(auto, overall and overall[1], metric),
                    "auto_over_ar": _speedup(auto, ar, metric),
                    "best_fixed_over_ar": _speedup(fixed and fixed[1], ar, metric),
                    "best_over_worst_fixed": _speedup(fixed and fixed[1], worst and worst[1], metric),
                    "max_relative_std": max(spread) if spread else None,
                })
    with_auto = [c for c in cells if c["auto_over_best_fixed"] is not None]
    aims = None
    if with_auto:
        aims = {"cells": len(with_auto),
                "auto_over_best_fixed_ge_0.97": sum(c["auto_over_best_fixed"] >= AIM_AUTO_OVER_BEST for c in with_auto),
                "auto_over_ar_ge_1.00": sum(c["auto_over_ar"] >= AIM_AUTO_OVER_AR for c in with_auto
                                            if c["auto_over_ar"] is not None)}
    return {"runs": runs, "cells": cells, "aims": aims,
            "definitions": {
                "metric": "throughput_tok_s (generated tokens / round wall time) for closed-loop rows; latency_mean_s "
                          "(request sent -> last token) for the Poisson row; of the best of the interleaved rounds "
                          "(see best_round)",
                "ratios": "speed-ups: throughput a/b, or latency b/a; > 1 means the first is faster",
                "auto_over_best_fixed": "auto / the best fixed k of the same mode in the same cell",
                "auto_over_best_fixed_overall": "auto / the best fixed (mode, k) of sd and psd in the same cell",
                "auto_over_ar": "auto / target-only decoding (ar) in the same cell",
                "best_fixed_over_ar": "the best fixed k of this mode / ar",
                "best_over_worst_fixed": "the best fixed k / the worst fixed k of this mode: what choosing k is worth",
                "max_relative_std": "the largest std / mean over rounds of the cell's metric (throughput, or the "
                                    "Poisson row's mean latency) among ar and this mode's runs"}}


def _v(x, metric: str) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}" if metric == "throughput_tok_s" else f"{1e3 * x:.0f}ms"


def _r(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_matrix(m: dict) -> str:
    ks = m["ks"]
    head = (f"{'load':<16}{'regime':<9}{'mode':<6}{'ar':>9}" + "".join(f"{'k=' + str(k):>9}" for k in ks)
            + f"{'best k':>8}{'±':>6}{'acc':>6}{'auto/best':>11}{'auto/any':>10}{'auto/ar':>9}{'best/ar':>9}"
            + f"{'k range':>9}")
    fixed_ks = [k for k in ks if k != "auto"]
    acc_k = max(fixed_ks) if fixed_ks else "auto"
    lines = ["", f"serving matrix ({m['backend']}; {m['max_tokens']} tokens per request, EOS ignored; "
                 f"{m['rounds']} round(s), every run of a row interleaved; best round): tok/s, or mean latency for the "
                 "Poisson row; ratios are speed-ups (> 1: faster)", head]
    for c in m["cells"]:
        metric = c["metric"]
        acc = c["acceptance_rate"].get(str(acc_k))
        std = "n/a" if c["max_relative_std"] is None else f"{c['max_relative_std']:.0%}"
        lines.append(f"{c['load']:<16}{c['regime']:<9}{c['mode']:<6}{_v(c['ar'], metric):>9}"
                     + "".join(f"{_v(c['by_k'].get(str(k)), metric):>9}" for k in ks)
                     + f"{str(c['best_fixed_k']):>8}{std:>6}{_r(acc):>6}{_r(c['auto_over_best_fixed']):>11}"
                     + f"{_r(c['auto_over_best_fixed_overall']):>10}"
                     + f"{_r(c['auto_over_ar']):>9}{_r(c['best_fixed_over_ar']):>9}"
                     + f"{_r(c['best_over_worst_fixed']):>9}")
    lines.append("(auto/best = auto / the best fixed k of the same mode; auto/any = auto / the best fixed (mode, k) of "
                 "sd and psd; ± = the largest std/mean over rounds of the row's figure (tok/s, or latency) among its "
                 "runs, n/a with one round; acc = "
                 "acceptance at the largest fixed k; k range = best fixed k / worst fixed k)")
    lines += [f"note: {n}" for n in m["notes"]]
    if m["aims"]:
        a = m["aims"]
        lines.append(f"aims: auto >= {AIM_AUTO_OVER_BEST} x best fixed k in {a['auto_over_best_fixed_ge_0.97']} of "
                     f"{a['cells']} cells; auto >= {AIM_AUTO_OVER_AR:.2f} x ar in {a['auto_over_ar_ge_1.00']} of "
                     f"{a['cells']}")
    return "\n".join(lines)
