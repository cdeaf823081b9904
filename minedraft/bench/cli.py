"""`minedraft bench`: AR vs SD vs PSD through the real services, SD/PSD in-process, and the
Hugging Face peer, measured in ONE run, interleaved over rounds so that machine drift hits every
mode alike.

    minedraft bench                                   # defaults: 16 requests at once, k=4, greedy, 64 tokens
    minedraft bench --rate 4 --json out.json --plot out.png
    minedraft bench --modes sd,psd --rounds 5
    minedraft bench --matrix only --k-sweep            # just the serving matrix, k = 1..6 beside auto

After the per-mode runs the same services run the serving matrix (concurrency 1, 16, 64 and Poisson
arrivals x greedy / prose x ar, sd, psd at --ks auto,2,4; see minedraft.bench.matrix): per cell auto /
best fixed k and auto / ar, a table and, with --plot, a heat map beside the figure. Its speculative modes
are those --modes names (sd, psd: both where it names neither).

Modes (``--modes``, comma list; default all):
  ar, sd, psd            the three services (target, draft, gateway processes), one cluster; the mode
                         is switched with Configure between rounds
  sd-paper, psd-paper    the paper's protocol through the same services: SD runs up to N requests
                         (--paper-batch, 16), PSD two batches of up to N each, 4N queued at once;
                         throughput = tokens / makespan, latency from submission (queueing included)
  sd-inproc, psd-inproc  the same scheduler over in-process workers (no gRPC): the control plane's cost
  sd-b1                  in-process sd, one request at a time over the --hf-requests prompts: "ours"
                         in the ours/HF ratio
  hf-assisted, hf-target transformers generate(assistant_model=draft) and target-only generate,
                         batch 1 (HF assisted generation needs batch 1), same --hf-requests prompts

Every round of every mode sends the same prompts (as token ids, tokenised once here) and generates
exactly --max-tokens tokens per request: EOS is ignored everywhere (ours: SamplingParams.ignore_eos;
transformers: min_new_tokens = max_new_tokens), so token counts are equal across modes.

CPU placement (default on CPU, --no-pin to turn off): the target service is pinned to core 0 and
the draft service to core 1, one torch thread each (the paper's two devices map onto two cores),
both at nice 10; the gateway is unpinned and runs first on either core. The in-process and HF
modes run in this bench process, whose main thread (and the scheduler's worker thread it starts) is
restricted to cores {0, 1} during those rounds with one torch thread: the in-process draft runs on
the scheduler's worker thread while the target runs on the calling thread, so the two still overlap
on two cores, placed by the OS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import sys
import tempfile
import time
import types

from minedraft.bench import chat as bench_chat
from minedraft.bench import long_prompt as bench_long
from minedraft.bench import matrix as bench_matrix
from minedraft.bench import mixed_pool as bench_mixed_pool
from minedraft.bench import repetition as bench_repetition
from minedraft.bench.machine import machine_info
from minedraft.bench.runners import (
    ALL_MODES,
    BATCH1_MODES,
    HF_MODES,
    INPROC_MODES,
    PAPER_MODES,
    PAPER_QUEUE_FACTOR,
    SERVICE_MODES,
    BenchError,
    Workload,
    check_round,
    run_inproc_round,
    run_service_round,
)
from minedraft.config import ENGINE_DRAFT_METHODS, TRANSPORT_CHOICES

QUICK = dict(num_requests=4, max_tokens=8, rounds=2, hf_requests=2, paper_batch=2)
DEFAULTS = dict(num_requests=16, max_tokens=64, rounds=5, hf_requests=4, paper_batch=16)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minedraft bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--target", default=None, help="target checkpoint folder (default: the bundled tiny target)")
    p.add_argument("--draft", default=None, help="draft checkpoint folder (default: the bundled tiny draft, or "
                                                  "with --draft-method eagle the bundled head)")
    p.add_argument("--draft-method", default="model", choices=ENGINE_DRAFT_METHODS,
                   help="how sd/psd draft, in process and over the services: model (--draft), eagle (--draft is a "
                        "head folder), ngram or suffix (no draft model); the hf-* peers keep the bundled draft model")
    p.add_argument("--prompts", default=None,
                   help='JSONL file, one {"prompt": str} (or {"prompt_ids": [int, ...]}) per line '
                        "(default: the held-out prompts bundled with the pair)")
    p.add_argument("--num-requests", type=int, default=None,
                   help=f"requests per round (default {DEFAULTS['num_requests']})")
    p.add_argument("--concurrency", type=int, default=None, help="max requests in flight (default: all of them)")
    p.add_argument("--rate", type=float, default=None,
                   help="Poisson arrivals, requests/s (default: all arrive at once); the same schedule every round")
    p.add_argument("-k", "--num-speculative-tokens", dest="k", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"tokens per request (default {DEFAULTS['max_tokens']})")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"rounds per mode, interleaved (default {DEFAULTS['rounds']})")
    p.add_argument("--modes", default=",".join(ALL_MODES), help=f"comma list of: {', '.join(ALL_MODES)}")
    p.add_argument("--hf-requests", type=int, default=None,
                   help=f"prompts for the serial batch-1 modes sd-b1, hf-* (default {DEFAULTS['hf_requests']})")
    p.add_argument("--paper-batch", type=int, default=None, metavar="N",
                   help=f"the paper's protocol (sd-paper, psd-paper): SD runs up to N requests, PSD two batches "
                        f"of up to N, {PAPER_QUEUE_FACTOR}N queued at once (default {DEFAULTS['paper_batch']})")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (GPU: both services share it, no CPU pinning)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="on CPU, do not pin the services (see CPU placement below)")
    p.add_argument("--transport", default="auto", choices=TRANSPORT_CHOICES)
    p.add_argument("--seed", type=int, default=0,
                   help="synthetic prompts, Poisson arrivals and per-request sampling seeds")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the short unmeasured warm-up round of each mode")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--plot", default=None, help="write a PNG: throughput, latency CDF, step-time breakdown")
    p.add_argument("--log-dir", default=None, help="service logs (default: a temporary folder)")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--quick", action="store_true",
                   help="tiny settings for tests: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--no-progress", dest="progress", action="store_false")
    bench_matrix.add_arguments(p)
    bench_chat.add_arguments(p)
    bench_long.add_arguments(p)
    bench_repetition.add_arguments(p)
    bench_mixed_pool.add_arguments(p)
    return p


def resolve_args(args) -> argparse.Namespace:
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad or not modes:
        raise SystemExit(f"minedraft bench: --modes: unknown {bad or modes}; choose from {', '.join(ALL_MODES)}")
    args.modes = list(dict.fromkeys(modes))
    for name in ("num_requests", "max_tokens", "rounds", "hf_requests", "paper_batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"minedraft bench: --{name.replace('_', '-')} must be >= 1")
    args.hf_requests = min(args.hf_requests, args.num_requests)
    args.concurrency = min(args.concurrency or args.num_requests, args.num_requests)
    if args.concurrency < 1:
        raise SystemExit("minedraft bench: --concurrency must be >= 1")
    if args.rate is not None and args.rate <= 0:
        raise SystemExit("minedraft bench: --rate must be > 0")
    if not 1 <= args.k <= 16:
        raise SystemExit("minedraft bench: -k must be in [1, 16]")
    bench_matrix.resolve(args)
    if args.matrix == "only":
        args.modes = []
    if args.target is None:  # the bundled pair (and head)
        from minedraft.assets import default_draft_path, default_eagle_path, default_target_path

        args.target = default_target_path()
        bundled_draft = default_draft_path()
        args.draft = args.draft or {"model": bundled_draft, "eagle": default_eagle_path()}.get(args.draft_method)
    else:
        bundled_draft = None
    # transformers' assisted generation (hf-assisted) needs a draft model, whatever sd/psd draft with
    args.peer_draft = args.draft if args.draft_method == "model" else bundled_draft
    needs_draft = args.matrix != "off" or any(m != "ar" and m != "hf-target" for m in args.modes)
    if needs_draft and not args.draft and args.draft_method in ("model", "eagle"):
        raise SystemExit("minedraft bench: --draft is needed for the speculative modes")
    for path in (args.target, args.draft):
        if path and not os.path.isdir(path):
            raise SystemExit(f"minedraft bench: checkpoint folder {path!r} does not exist "
                             "(the bundled pair is built by `minedraft train-tiny`)")
    args.on_gpu = args.device.startswith("cuda")
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    args.pin = bool(args.pin and not args.on_gpu and {0, 1} <= allowed)
    return args


# -- workload ---------------------------------------------------------------------------------------
def load_prompts(args, count: int | None = None) -> tuple[list[list[int]], str, int]:
    """Token-id prompts for `count` requests (default --num-requests; the list cycles), where they came
    from, and how many were cut to fit."""
    count = count or args.num_requests
    from minedraft.runner import hf_adapter

    cfg = hf_adapter.load_model_config(args.target)
    tokenizer = hf_adapter.load_tokenizer(args.target)
    items: list = []
    if args.prompts:
        with open(args.prompts, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    obj = json.loads(line)
                    if "prompt_ids" in obj:
                        items.append([int(t) for t in obj["prompt_ids"]])
                    elif "prompt" in obj:
                        items.append(str(obj["prompt"]))
                    else:
                        raise SystemExit(f"minedraft bench: {args.prompts}:{n}: no 'prompt' or 'prompt_ids'")
        source = args.prompts
    else:
        from minedraft.assets import heldout_prompts_path, load_heldout_prompts

        if tokenizer is not None and os.path.isfile(heldout_prompts_path()):
            items, source = load_heldout_prompts(), "bundled held-out prompts"
        else:  # a checkpoint without tokenizer: fixed random token ids
            rng = random.Random(args.seed)
            items = [[rng.randrange(3, cfg.vocab_size) for _ in range(rng.randint(6, 16))]
                     for _ in range(count)]
            source = "synthetic token ids (no tokenizer / prompt file)"
    if not items:
        raise SystemExit("minedraft bench: no prompts")
    if any(isinstance(x, str) for x in items) and tokenizer is None:
        raise SystemExit("minedraft bench: text prompts need a checkpoint with a tokenizer; give prompt_ids")
    ids = [tokenizer.encode(x, add_special_tokens=True) if isinstance(x, str) else x for x in items]
    # Room for every request to run its full max_tokens plus one verify pass of k+1 positions.
    room = cfg.max_position_embeddings - args.max_tokens - args.k - 2
    if room < 1:
        raise SystemExit(f"minedraft bench: --max-tokens {args.max_tokens} leaves no room for a prompt in the "
                         f"target's context of {cfg.max_position_embeddings}")
    cut = sum(len(x) > room for x in ids)
    ids = [x[-room:] for x in ids]  # keep the end of an over-long prompt (where generation continues)
    ids = [ids[i % len(ids)] for i in range(count)]
    return ids, source, cut


def paper_workload(args, prompts: list[list[int]]) -> Workload:
    """The paper's protocol: 4N requests queued at once, all sent (the gateway runs N or 2N of them)."""
    n = PAPER_QUEUE_FACTOR * args.paper_batch
    return Workload(prompts[:n], [0.0] * n, n, args.max_tokens, args.temperature, args.seed)


def make_workload(args, prompts: list[list[int]]) -> Workload:
    prompts = prompts[:args.num_requests]
    if args.rate:
        rng, t, arrivals = random.Random(args.seed + 1), 0.0, []
        for _ in prompts:
            arrivals.append(t)
            t += rng.expovariate(args.rate)
    else:
        arrivals = [0.0] * len(prompts)
    return Workload(prompts, arrivals, args.concurrency, args.max_tokens, args.temperature, args.seed)


# -- placement --------------------------------------------------------------------------------------
@contextlib.contextmanager
def bench_process_placement(pin: bool):
    """Restrict this (calling) thread, and the threads it starts meanwhile, to cores {0, 1}."""
    if not pin:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0, 1})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# -- the cluster ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_max_num_seqs(args) -> int:
    """What the workers (and the gateway, between paper rounds) are started with: room for every protocol."""
    matrix = [x.concurrency for x in args.matrix_loads] if args.matrix != "off" else []
    return max(64, args.concurrency, PAPER_MODES["psd-paper"][1] * args.paper_batch, *matrix)


def start_cluster(args, log_dir: str):
    """Start the three services (not waiting for them: the caller loads its own models meanwhile)."""
    from minedraft.launcher import LocalCluster, service_commands

    ns = types.SimpleNamespace(target=args.target, draft=args.draft, device=args.device, draft_device=None,
                               bind_workers="127.0.0.1", target_port=free_port(), draft_port=free_port(),
                               port=free_port(), bind="127.0.0.1", mode="sd", k=args.k, transport=args.transport,
                               pin=args.pin, max_num_seqs=service_max_num_seqs(args), http_port=0,
                               draft_method=args.draft_method)
    cluster = LocalCluster(service_commands(ns), log_dir=log_dir)
    cluster.start()
    cluster.addresses = {"target": f"127.0.0.1:{ns.target_port}", "draft": f"127.0.0.1:{ns.draft_port}",
                         "gateway": f"127.0.0.1:{ns.port}"}
    return cluster


# -- the run ----------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.client = self.engine = self.peer = None
        self.cluster = None

    def setup(self, log_dir: str) -> str:
        args = self.args
        matrix_on = {"services": args.matrix != "off" and args.matrix_backend == "services",
                     "inproc": args.matrix != "off" and args.matrix_backend == "inproc"}
        if matrix_on["services"] or any(m in SERVICE_MODES or m in PAPER_MODES for m in args.modes):
            self.cluster = start_cluster(args, log_dir)
        with bench_process_placement(args.pin):  # load our models while the services start
            if args.pin:
                import torch

                torch.set_num_threads(1)
            if matrix_on["inproc"] or any(m in INPROC_MODES for m in args.modes):
                from minedraft.engine import Engine

                # room for every k the matrix verifies
                k = max([args.k] + [x for x in args.ks if x != "auto"]) if matrix_on["inproc"] else args.k
                self.engine = Engine(args.target, args.draft, mode="sd", num_speculative_tokens=k,
                                     device=args.device, draft_method=args.draft_method)
            if any(m in HF_MODES for m in args.modes):
                from minedraft.bench.hf_peer import HFPeer

                self.peer = HFPeer(args.target, args.peer_draft, args.device, args.k)
        if self.cluster is None:
            return ""
        from minedraft.client import MineDraftClient

        self.cluster.wait_healthy(self.cluster.addresses, timeout=args.startup_timeout, progress=lambda m: None)
        self.client = MineDraftClient(self.cluster.addresses["gateway"])
        return self.client.model_info().transport

    def run_round(self, mode: str, workload: Workload, round_index: int, hf_indices: list[int]):
        args = self.args
        if mode in SERVICE_MODES or mode in PAPER_MODES:
            limit = PAPER_MODES[mode][1] * args.paper_batch if mode in PAPER_MODES else service_max_num_seqs(args)
            pids = {name: proc.pid for name, proc in self.cluster.procs.items()}
            return run_service_round(self.client, mode, args.k, workload, round_index, max_num_seqs=limit, pids=pids)
        with bench_process_placement(args.pin):
            if mode == "sd-b1":
                return run_inproc_round(self.engine, mode, args.k, workload, round_index, indices=hf_indices,
                                        concurrency=1, at_once=True)
            if mode in INPROC_MODES:
                return run_inproc_round(self.engine, mode, args.k, workload, round_index)
            from minedraft.bench.hf_peer import run_hf_round

            return run_hf_round(self.peer, mode, workload, round_index, hf_indices)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.stop()
        if self.engine is not None:
            self.engine.scheduler.close()


def run(args) -> dict:
    from tqdm import tqdm

    from minedraft.bench import prediction
    from minedraft.bench import report as bench_report

    prompts, source, cut = load_prompts(args, max(args.num_requests, PAPER_QUEUE_FACTOR * args.paper_batch))
    workload, paper = make_workload(args, prompts), paper_workload(args, prompts)
    prompts = prompts[:args.num_requests]
    hf_indices = list(range(args.hf_requests))
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="minedraft-bench-")
    os.makedirs(log_dir, exist_ok=True)
    bench = Bench(args)
    results = []
    try:
        what = ", ".join(args.modes + (["matrix"] if args.matrix != "off" else []))
        print(f"minedraft bench: starting ({what}); service logs in {log_dir}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        transport = bench.setup(log_dir)
        print(f"minedraft bench: models loaded and services healthy in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr, flush=True)
        if args.warmup and args.modes:  # unmeasured: first-call allocations, thread start-up, gRPC connections
            warm = Workload([prompts[0], prompts[-1]], [0.0, 0.0], 2, min(8, args.max_tokens), args.temperature,
                            args.seed)
            for mode in args.modes:
                bench.run_round(mode, warm, -1, [0])
        bar = tqdm(total=args.rounds * len(args.modes), desc="bench", unit="round", file=sys.stderr,
                   disable=not args.progress or not args.modes)
        for r in range(args.rounds if args.modes else 0):
            shift = r % len(args.modes)  # rotate the order too, so no mode always runs first or last
            for mode in args.modes[shift:] + args.modes[:shift]:
                bar.set_postfix_str(f"round {r + 1} {mode}")
                w = paper if mode in PAPER_MODES else workload
                result = bench.run_round(mode, w, r, hf_indices)
                check_round(result, w, args.hf_requests if mode in BATCH1_MODES else len(w.prompts),
                            allow_no_drafts=args.draft_method in ("ngram", "suffix"))  # nothing may match
                results.append(result)
                bar.update(1)
        bar.close()
        if args.modes:
            print(f"minedraft bench: per-mode runs took {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        matrix = bench_matrix.run_matrix(bench, args) if args.matrix != "off" else None
    finally:
        bench.close()
    order = {m: i for i, m in enumerate(args.modes)}
    results.sort(key=lambda x: (order[x.mode], x.round))
    runs = bench_report.aggregate(results, args.k)
    for r in runs:
        r["concurrency"] = 1 if r["mode"] in BATCH1_MODES else args.concurrency
        if r["mode"] in PAPER_MODES:  # running at once; the rest of the 4N wait in the gateway's queue
            r["concurrency"] = PAPER_MODES[r["mode"]][1] * args.paper_batch
            r["requests_queued"] = len(paper.prompts)
    config = {key: getattr(args, key) for key in ("target", "draft", "draft_method", "num_requests", "concurrency",
                                                  "rate", "k", "temperature", "max_tokens", "rounds", "modes",
                                                  "hf_requests", "paper_batch", "device", "pin", "seed", "warmup",
                                                  "quick")}
    config.update(prompt_source=source, prompts_truncated=cut, ignore_eos=True, transport=transport,
                  log_dir=log_dir, arrivals=f"Poisson {args.rate:g} req/s" if args.rate else "all at once",
                  mode_order="each round rotates the mode list by one; modes interleaved within every round",
                  prompt_lengths={"min": min(map(len, prompts)), "max": max(map(len, prompts)),
                                  "mean": sum(map(len, prompts)) / len(prompts)},
                  notes=["EOS ignored in every mode so each request generates exactly max_tokens tokens",
                         "latency: request sent -> last token; TTFT: request sent -> first chunk with tokens",
                         "throughput: generated tokens / round wall time (first request sent -> last done)",
                         "sd-b1, hf-assisted, hf-target: one request at a time over the first hf_requests prompts",
                         "hf-assisted acceptance is estimated from the target's forward count",
                         "theory: batch size = concurrency, batches assumed full (exact for all-at-once arrivals "
                         "until the tail; with --rate the running batch is smaller); 'simulated' runs the "
                         "scheduler's policy with round tails, all requests queued at once",
                         f"paper protocol (sd-paper, psd-paper): {PAPER_QUEUE_FACTOR}N requests queued at once, "
                         f"SD runs up to N = {args.paper_batch}, PSD two batches of up to N; throughput = tokens / "
                         "makespan, latency from submission (queueing included)"])
    theory = prediction.compute_theory(runs, args.k, args.concurrency, args.max_tokens, args.paper_batch,
                                       args.num_requests)
    ratios = bench_report.compute_ratios(runs)
    ratios.update(bench_report.model_ratios(theory))
    report = {"runs": runs, "ratios": ratios,
            "ratio_definitions": bench_report.RATIO_DEFINITIONS,
            "theory": theory,
            "machine": machine_info(args), "config": config,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if matrix is not None:
        report["matrix"] = matrix
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repetition:  # its own scenario: one request at a time and long copies unless told otherwise
        args.concurrency = args.concurrency or 1
        args.max_tokens = args.max_tokens or (8 if args.quick else 128)
        args.matrix = "off"
    args = resolve_args(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.repetition:
        return _main_repetition(args)
    if args.mixed_pool:
        return _main_mixed_pool(args)
    import grpc

    try:
        if args.chat or args.long_prompt:  # scenarios of their own: not in the default run's time budget
            report = {}
            if args.chat:
                report["chat"] = bench_chat.run(args)
                print(bench_chat.format_chat(report["chat"]), flush=True)
            if args.long_prompt:
                report["long_prompt"] = bench_long.run(args)
                print(bench_long.format_long(report["long_prompt"]), flush=True)
            if args.json:
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump(report, f, indent=1)
            return 0
        report = run(args)
    except BenchError as exc:
        print(f"minedraft bench: FAILED consistency check: {exc}", file=sys.stderr, flush=True)
        return 1
    except grpc.RpcError as exc:
        print(f"minedraft bench: gateway call failed: {exc.code().name}: {exc.details()} (see the service logs)",
              file=sys.stderr, flush=True)
        return 1
    except (RuntimeError, TimeoutError, ValueError) as exc:
        print(f"minedraft bench: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    from minedraft.bench.plot import write_plot
    from minedraft.bench.table import format_table

    if report["runs"]:
        print(format_table(report), flush=True)
    if "matrix" in report:
        print(bench_matrix.format_matrix(report["matrix"]), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        for path in write_plot(report, args.plot):
            print(f"minedraft bench: wrote {path}", file=sys.stderr, flush=True)
    return 0


def _main_repetition(args) -> int:
    """In this process, placed as the default bench's in-process modes: cores {0, 1}, one torch thread
    per model thread (two threads on a busy 2-core machine ran 10x slower, ours and transformers' alike)."""
    try:
        with bench_process_placement(args.pin):
            if args.pin:
                import torch

                torch.set_num_threads(1)
            report = bench_repetition.run(args)
    except BenchError as exc:
        print(f"minedraft bench: FAILED consistency check: {exc}", file=sys.stderr, flush=True)
        return 1
    print(bench_repetition.format_report(report), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return 0


def _main_mixed_pool(args) -> int:
    try:
        report = bench_mixed_pool.run(args)
    except (BenchError, RuntimeError, TimeoutError) as exc:
        print(f"minedraft bench: --mixed-pool: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    print(bench_mixed_pool.format_report(report), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
