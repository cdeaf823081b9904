"""`minedraft bench --repetition`: a workload where copying pays, and the drafters that copy.

The prompt set (minedraft/assets/repetition_prompts.jsonl) is built from the held-out stdlib files of
the tiny pair's corpus (minedraft/assets/tiny-corpus.json), two tasks whose answer is mostly a copy
of the prompt:
- rename: "rewrite this function with NAME renamed to NEW_NAME", the answer started with its renamed
  first line;
- typo: "repeat this docstring and fix the typo", a letter swap planted in one word.
`python -m minedraft.bench.repetition --build` rebuilds it (needs the stdlib sources of the corpus).

Modes, in process (placed as the default bench's in-process modes: cores {0, 1}, one torch thread),
interleaved over rounds, one request at a time by default (--concurrency):
  ar; sd-model, sd-ngram, sd-suffix; psd-model, psd-ngram, psd-suffix (the scheduler over a draft
  model or a model-free proposer, minedraft/drafting/); hf-target (transformers' greedy generate) and
  hf-prompt-lookup (`generate(prompt_lookup_num_tokens=k)`, transformers' n-gram drafting).
Besides the runs: `proposer_cost`, each model-free proposer's time per step at --cost-rows rows
against the target's verify at those rows (the issue's aim: well under 5%).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import statistics
import sys
import time

from minedraft.bench.runners import RoundResult, Workload, check_round, run_inproc_round

METHOD_MODES = ("sd-model", "sd-ngram", "sd-suffix", "psd-model", "psd-ngram", "psd-suffix")
REPETITION_MODES = ("ar",) + METHOD_MODES + ("hf-target", "hf-prompt-lookup")
PROMPTS_FILE = "repetition_prompts.jsonl"
MAX_PROMPT_TOKENS = 300  # with 128 new tokens and a verify's k + 1, inside the tiny pair's 512


def prompts_path() -> str:
    from minedraft.assets import assets_dir

    return str(assets_dir() / PROMPTS_FILE)


# -- the prompt set -------------------------------------------------------------------------------------
def _functions(source: str) -> list[tuple[str, str, str | None]]:
    """(name, source, docstring) of the functions and methods of 5..18 lines."""
    lines = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and 5 <= node.end_lineno - node.lineno + 1 <= 18:
            text = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if not node.name.startswith("__"):
                out.append((node.name, text, ast.get_docstring(node)))
    return out


def _plant_typo(text: str, rng: random.Random) -> str | None:
    words = [w for w in text.split() if w.isalpha() and len(w) >= 6]
    if not words:
        return None
    word = rng.choice(words)
    i = rng.randrange(1, len(word) - 2)
    typo = word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return text.replace(word, typo, 1) if typo != word else None


def build_prompts(stdlib_root: str, heldout_files: list[str], tokenizer, per_task: int = 12,
                  seed: int = 0) -> list[dict]:
    """The prompt set: `per_task` prompts of each task, every prompt within MAX_PROMPT_TOKENS."""
    rng = random.Random(seed)
    renames, typos = [], []
    for rel in heldout_files:
        path = os.path.join(stdlib_root, rel)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            source = f.read()
        for name, text, doc in _functions(source):
            new = name + "_v2" if not name.endswith("_") else name + "v2"
            renamed = text.replace(name, new)
            first, _, rest = renamed.partition("\n")
            prompt = (f"# Rewrite this function with `{name}` renamed to `{new}`.\n{text}\n\n"
                      f"# The rewritten function:\n{first}\n")
            if len(tokenizer.encode(prompt)) <= MAX_PROMPT_TOKENS:
                renames.append(dict(task="rename", file=rel, prompt=prompt, expected=rest))
            if doc and len(doc) > 80:
                typo = _plant_typo(doc, rng)
                if typo:
                    prompt = f'"""{typo}"""\n\n# The same docstring with its typo fixed:\n"""'
                    if len(tokenizer.encode(prompt)) <= MAX_PROMPT_TOKENS:
                        typos.append(dict(task="typo", file=rel, prompt=prompt, expected=doc + '"""'))
    rng.shuffle(renames)
    rng.shuffle(typos)
    items = renames[:per_task] + typos[:per_task]
    rng.shuffle(items)
    return items


def load_prompts() -> list[dict]:
    with open(prompts_path(), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_prompts(items: list[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")


# -- the run ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("repetition workload (--repetition)")
    g.add_argument("--repetition", action="store_true",
                   help="run the repetition workload (copy tasks) instead of the default bench: ar, sd/psd with "
                        "model, ngram and suffix drafts, hf-target and hf-prompt-lookup, in process")
    g.add_argument("--repetition-modes", default=",".join(REPETITION_MODES),
                   help=f"comma list of: {', '.join(REPETITION_MODES)}")
    g.add_argument("--cost-rows", type=int, default=64,
                   help="rows at which each model-free proposer's step is timed against the target's verify")


def _engines(args, modes: list[str]) -> dict:
    from minedraft.engine import Engine

    methods = {m.split("-", 1)[1] for m in modes if m in METHOD_MODES}
    if "ar" in modes and not methods:
        methods.add("ngram")  # ar runs on any engine; a model-free one loads no draft
    engines = {}
    for method in sorted(methods):
        engines[method] = Engine(args.target, args.draft if method == "model" else None, mode="sd",
                                 num_speculative_tokens=args.k, device=args.device, draft_method=method,
                                 max_num_seqs=max(64, args.cost_rows))
    return engines


def _round(engines, peer, mode: str, workload: Workload, r: int, k: int) -> RoundResult:
    if mode == "ar":
        return run_inproc_round(next(iter(engines.values())), "ar", k, workload, r)
    if mode in METHOD_MODES:
        schedule, method = mode.split("-", 1)
        result = run_inproc_round(engines[method], schedule, k, workload, r)
        result.mode = mode
        return result
    from minedraft.bench.hf_peer import run_hf_round

    return run_hf_round(peer, mode, workload, r, list(range(len(workload.prompts))))


def proposer_cost(engine_target, prompts: list[list[int]], rows: int, k: int, steps: int = 20) -> dict:
    """Seconds per step of each model-free proposer at `rows` rows (histories: the prompts, grown by
    k tokens a step) beside the target's verify of those rows at k, in this process."""
    import torch

    from minedraft.drafting.worker import ModelFreeDraftWorker, make_proposer
    from minedraft.spec.local_workers import LocalTargetWorker
    from minedraft.spec.sampling import SamplingParams
    from minedraft.spec.workers import NewRequest, Proposal

    greedy = SamplingParams(temperature=0.0, max_tokens=steps * (k + 1))
    reqs = [NewRequest(f"cost-{i}", list(prompts[i % len(prompts)]), greedy, i) for i in range(rows)]
    ids = [r.request_id for r in reqs]
    out = {}
    for method in ("ngram", "suffix"):
        worker = ModelFreeDraftWorker(make_proposer(method))
        worker.add(reqs)
        t = []
        for s in range(steps):
            updates = {rid: [int(x) for x in torch.randint(3, 200, (k,))] for rid in ids} if s else {}
            t0 = time.perf_counter()
            worker.propose(ids, k, updates)
            t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        worker.release(ids)  # suffix: each output joins the global trie, a cost per finished request
        out[f"{method}_release_s"] = (time.perf_counter() - t0) / rows
        out[f"{method}_s"] = statistics.median(t)
    target = LocalTargetWorker(engine_target.target_runner)  # the engine is idle: its runner has room
    target.add(reqs)

    t = []
    for _ in range(5):
        prop = Proposal(ids, k, torch.full((rows, k), 5, dtype=torch.int64))
        t0 = time.perf_counter()
        target.verify(prop)
        t.append(time.perf_counter() - t0)
    target.release(ids)
    out["target_verify_s"] = statistics.median(t)
    for method in ("ngram", "suffix"):
        out[f"{method}_share"] = out[f"{method}_s"] / out["target_verify_s"]
    out.update(rows=rows, k=k, steps=steps)
    return out


def run(args) -> dict:
    from tqdm import tqdm

    from minedraft.bench import report as bench_report
    from minedraft.bench.machine import machine_info

    modes = [m.strip() for m in args.repetition_modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in REPETITION_MODES]
    if bad or not modes:
        raise SystemExit(f"minedraft bench: --repetition-modes: unknown {bad or modes}; "
                         f"choose from {', '.join(REPETITION_MODES)}")
    items = load_prompts()
    from minedraft.runner import hf_adapter

    tokenizer = hf_adapter.load_tokenizer(args.target)
    n = min(args.num_requests, len(items))
    prompts = [tokenizer.encode(it["prompt"]) for it in items[:n]]
    workload = Workload(prompts, [0.0] * n, min(args.concurrency, n), args.max_tokens, args.temperature, args.seed)
    engines = _engines(args, modes)
    peer = None
    if any(m.startswith("hf-") for m in modes):
        from minedraft.bench.hf_peer import HFPeer

        peer = HFPeer(args.target, None, args.device, args.k)
    warm = Workload(prompts[:1], [0.0], 1, min(8, args.max_tokens), args.temperature, args.seed)
    for mode in modes:
        _round(engines, peer, mode, warm, -1, args.k)
    results = []
    bar = tqdm(total=args.rounds * len(modes), desc="bench repetition", unit="round", file=sys.stderr,
               disable=not args.progress)
    for r in range(args.rounds):
        shift = r % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            result = _round(engines, peer, mode, workload, r, args.k)
            check_round(result, workload, n)
            results.append(result)
            bar.update(1)
    bar.close()
    order = {m: i for i, m in enumerate(modes)}
    results.sort(key=lambda x: (order[x.mode], x.round))
    runs = bench_report.aggregate(results, args.k)
    for run_ in runs:
        run_["concurrency"] = 1 if run_["mode"].startswith("hf-") else workload.concurrency
        for key in ("latencies_s", "requests_by_round"):
            run_.pop(key, None)
    cost = proposer_cost(next(iter(engines.values())), prompts, args.cost_rows, args.k)
    for engine in engines.values():
        engine.close()
    return {"runs": runs, "ratios": repetition_ratios(runs), "proposer_cost": cost,
            "machine": machine_info(args),
            "config": dict(workload="repetition", prompts=prompts_path(), num_requests=n, rounds=args.rounds,
                           k=args.k, max_tokens=args.max_tokens, concurrency=workload.concurrency,
                           temperature=args.temperature, target=args.target, draft=args.draft, modes=modes,
                           tasks=sorted({it["task"] for it in items[:n]})),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def repetition_ratios(runs: list[dict]) -> dict:
    thr = {r["mode"]: r["throughput_tok_s"] for r in runs}
    out = {}
    for mode in METHOD_MODES:
        if mode in thr and "ar" in thr:
            out[f"{mode}_over_ar_throughput"] = thr[mode] / thr["ar"]
    if "hf-prompt-lookup" in thr and "hf-target" in thr:
        out["hf_prompt_lookup_over_hf_target_throughput"] = thr["hf-prompt-lookup"] / thr["hf-target"]
        for mode in ("sd-ngram", "sd-suffix"):
            if mode in thr:
                out[f"{mode}_over_hf_prompt_lookup_throughput"] = thr[mode] / thr["hf-prompt-lookup"]
    return out


def format_report(report: dict) -> str:
    cfg = report["config"]
    lines = [f"minedraft bench --repetition: {cfg['num_requests']} copy prompts ({', '.join(cfg['tasks'])}), "
             f"concurrency {cfg['concurrency']}, k={cfg['k']}, max_tokens {cfg['max_tokens']}, {cfg['rounds']} rounds",
             f"{'mode':<18}{'tok/s':>9}{'lat mean':>10}{'acc rate':>10}{'acc len':>9}"]
    for r in report["runs"]:
        acc = "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.2f}"
        alen = "-" if r["mean_accepted_length"] is None else f"{r['mean_accepted_length']:.2f}"
        est = "~" if r.get("acceptance_estimated") else ""
        lines.append(f"{r['mode']:<18}{r['throughput_tok_s']:>9.1f}{r['latency_mean_s']:>10.3f}{est + acc:>10}"
                     f"{est + alen:>9}")
    lines += [f"  {name}: {value:.2f}" for name, value in report["ratios"].items()]
    c = report["proposer_cost"]
    lines.append(f"proposer cost at {c['rows']} rows, k={c['k']}: ngram {1e3 * c['ngram_s']:.2f} ms "
                 f"({100 * c['ngram_share']:.1f}% of the target's verify, {1e3 * c['target_verify_s']:.1f} ms), "
                 f"suffix {1e3 * c['suffix_s']:.2f} ms ({100 * c['suffix_share']:.1f}%); a finished request "
                 f"({(c['steps'] - 1) * c['k']} output tokens) costs suffix {1e3 * c['suffix_release_s']:.2f} ms "
                 "more (its output joins the global trie)")
    return "\n".join(lines)


def main(argv=None) -> int:
    """`python -m minedraft.bench.repetition --build`: rebuild the bundled prompt set."""
    p = argparse.ArgumentParser(prog="python -m minedraft.bench.repetition")
    p.add_argument("--build", action="store_true", help="rebuild minedraft/assets/" + PROMPTS_FILE)
    p.add_argument("--out", default=None, help="write there instead")
    args = p.parse_args(argv)
    if not args.build:
        p.print_help()
        return 0
    from minedraft.assets import assets_dir, default_target_path
    from minedraft.runner import hf_adapter

    with open(assets_dir() / "tiny-corpus.json", encoding="utf-8") as f:
        corpus = json.load(f)
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    items = build_prompts(root, corpus["heldout_file_list"], hf_adapter.load_tokenizer(default_target_path()))
    write_prompts(items, args.out or prompts_path())
    print(f"wrote {len(items)} prompts from {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
