"""The GPU check's report: step times (minedraft.bench.step_times) and the bench (minedraft bench --json)
merged into one JSON (issue 14's contract), a PNG of the step times, and a short table.

    python -m minedraft.bench.gpu_report --steps STEPS.json [--bench BENCH.json] --json OUT.json [--plot OUT.png]

Only measured numbers go in: a missing or failed part is recorded as missing, never filled in.
"""

from __future__ import annotations

import argparse
import json
import sys

RATIO_KEYS = ("psd_over_sd_throughput", "paper_psd_over_sd_throughput", "psd_over_sd_latency_mean",
              "paper_psd_over_sd_latency_mean")


def _load(path: str | None) -> tuple[dict | None, str | None]:
    if not path:
        return None, "not run"
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def merge(steps: dict | None, bench: dict | None, notes: dict | None = None) -> dict:
    """{"machine": {"gpu": ...}, "step_times": [...], "ratios": {...}, "runs": [...]}: step rows as
    measured; ratios and runs from the bench (keys it did not produce stay absent)."""
    machine = dict((steps or {}).get("machine") or {})
    if bench and bench.get("machine"):
        machine["bench"] = bench["machine"]
    report = dict(machine=machine, step_times=list((steps or {}).get("step_times") or []),
                  ratios={k: v for k, v in ((bench or {}).get("ratios") or {}).items()},
                  runs=list((bench or {}).get("runs") or []))
    if steps and steps.get("config"):
        report["step_config"] = steps["config"]
    if notes:
        report["notes"] = notes
    return report


def graph_speedups(step_times: list[dict]) -> list[dict]:
    """Graphs off / on, per (model, batch, q)."""
    by_key: dict[tuple, dict] = {}
    for r in step_times:
        by_key.setdefault((r["model"], r["batch"], r["q"]), {})[bool(r["cuda_graphs"])] = r
    out = []
    for (model, batch, q), pair in sorted(by_key.items()):
        if True in pair and False in pair and pair[True]["ms"]:
            out.append(dict(model=model, batch=batch, q=q, speedup=round(pair[False]["ms"] / pair[True]["ms"], 3)))
    return out


def table(report: dict) -> str:
    lines = [f"GPU: {report['machine'].get('gpu')}  bandwidth {report['machine'].get('hbm_bandwidth_gbs')} GB/s "
             f"({report['machine'].get('bandwidth_source')})",
             f"{'model':17s} {'B':>3s} {'q':>2s} {'off ms':>8s} {'on ms':>8s} {'roof ms':>8s} {'on/roof':>7s} "
             f"{'hf ms':>8s}"]
    rows: dict[tuple, dict] = {}
    for r in report["step_times"]:
        rows.setdefault((r["model"], r["batch"], r["q"]), {})[bool(r["cuda_graphs"])] = r
    for (model, b, q), pair in rows.items():
        on, off = pair.get(True), pair.get(False)
        any_row = on or off
        roof = any_row.get("roofline_ms")
        fmt = lambda v: f"{v:8.3f}" if isinstance(v, (int, float)) else f"{'-':>8s}"  # noqa: E731
        ratio = f"{on['ms'] / roof:7.2f}" if on and roof else f"{'-':>7s}"
        lines.append(f"{model:17s} {b:3d} {q:2d} {fmt(off and off['ms'])} {fmt(on and on['ms'])} {fmt(roof)} "
                     f"{ratio} {fmt(any_row.get('hf_ms'))}")
    for k in RATIO_KEYS:
        if k in report["ratios"]:
            lines.append(f"{k}: {report['ratios'][k]:.3f}")
    for k, v in (report.get("notes") or {}).items():
        lines.append(f"note {k}: {v}")
    return "\n".join(lines)


def plot(report: dict, path: str) -> str | None:
    """Step time per batch for each model/q: graphs off, on, transformers and the roofline. Returns
    why it was not drawn, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed"
    series: dict[tuple, dict] = {}
    for r in report["step_times"]:
        s = series.setdefault((r["model"], r["q"]), {"off": {}, "on": {}, "hf": {}, "roof": {}})
        s["on" if r["cuda_graphs"] else "off"][r["batch"]] = r["ms"]
        s["hf"][r["batch"]] = r.get("hf_ms")
        s["roof"][r["batch"]] = r.get("roofline_ms")
    if not series:
        return "no step times"
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.8), squeeze=False)
    for ax, ((model, q), s) in zip(axes[0], sorted(series.items())):
        for key, label, style in (("off", "graphs off", "o-"), ("on", "graphs on", "s-"),
                                  ("hf", "transformers", "^--"), ("roof", "HBM roofline", "k:")):
            pts = sorted((b, v) for b, v in s[key].items() if v is not None)
            if pts:
                ax.plot([b for b, _ in pts], [v for _, v in pts], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{model}, q={q}", fontsize=9)
        ax.set_xlabel("batch")
        ax.set_ylabel("ms per step")
        ax.legend(fontsize=7)
    fig.suptitle(f"step time on {report['machine'].get('gpu') or report['machine'].get('device')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minedraft.bench.gpu_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", required=True, help="minedraft.bench.step_times JSON")
    p.add_argument("--bench", default=None, help="minedraft bench --json output")
    p.add_argument("--json", required=True, help="merged report")
    p.add_argument("--plot", default=None, help="PNG of the step times")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    steps, steps_err = _load(args.steps)
    bench, bench_err = _load(args.bench)
    notes = {k: v for k, v in (("step_times", steps_err), ("bench", bench_err)) if v}
    report = merge(steps, bench, notes)
    report["graph_speedups"] = graph_speedups(report["step_times"])
    if args.plot:
        why = plot(report, args.plot)
        if why:
            report.setdefault("notes", {})["plot"] = why
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
