"""`minedraft bench`: from round results to per-mode figures and the ratios between modes.

The latency model's prediction beside them is :mod:`minedraft.bench.prediction`; the printed table
:mod:`minedraft.bench.table`; the figure :mod:`minedraft.bench.plot`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics

from minedraft.bench.runners import HF_MODES, INPROC_MODES, PAPER_MODES, SERVICE_MODES, RoundResult

RATIO_DEFINITIONS = {
    "psd_over_sd_throughput": "services: psd throughput / sd throughput (same cluster, same workload)",
    "psd_over_sd_latency_mean": "services: psd mean end-to-end latency / sd mean end-to-end latency",
    "sd_over_ar_throughput": "services: sd throughput / ar throughput",
    "psd_over_ar_throughput": "services: psd throughput / ar throughput",
    "psd_over_sd_throughput_inproc": "in-process (no gRPC): psd-inproc / sd-inproc throughput",
    "psd_over_sd_latency_mean_inproc": "in-process: psd-inproc / sd-inproc mean latency",
    "sd_services_over_inproc_throughput": "sd through the services / sd-inproc: what gRPC and the channel cost",
    "psd_services_over_inproc_throughput": "psd through the services / psd-inproc",
    "ours_over_hf_assisted_throughput": "batch 1: our in-process sd (sd-b1) / transformers assisted generate "
                                        "(hf-assisted), same --hf-requests prompts, one request at a time",
    "ours_over_hf_assisted_latency_mean": "batch 1: sd-b1 mean latency / hf-assisted mean latency",
    "hf_assisted_over_hf_target_throughput": "transformers assisted / target-only generate, batch 1",
    "control_plane_fraction_psd": "psd services: control plane (gRPC + channel, both sides) / step wall time",
    "control_plane_fraction_sd": "sd services: control plane / step wall time",
    "paper_psd_over_sd_throughput": "the paper's protocol (services): psd-paper / sd-paper throughput; SD runs up to N "
                                    "requests, PSD two batches of up to N, 4N queued at once; tokens / makespan",
    "paper_psd_over_sd_latency_mean": "the paper's protocol: psd-paper / sd-paper mean latency from submission "
                                      "(queueing included)",
    "overlap_efficiency": "equal concurrency: measured psd/sd throughput / the simulated model's zero-overhead "
                          "prediction (minedraft.bench.simulation.simulate: the scheduler's policy, round tails, "
                          "cost curve)",
    "overlap_efficiency_closed_form": "equal concurrency: measured psd/sd throughput / theory.predict's ideal "
                                      "(full balanced batches for ever)",
    "paper_overlap_efficiency": "paper protocol: measured psd/sd throughput / the simulated zero-overhead prediction",
}

# The aims (2-core CPU, bundled pair, 16 concurrent requests, k=4, greedy); shown beside the
# measurement, never asserted. (ratio, goal, "ge" | "le")
GOALS = [("psd_over_sd_throughput", 1.6, "ge"), ("psd_over_sd_latency_mean", 0.65, "le"),
         ("control_plane_fraction_psd", 0.05, "le"), ("sd_over_ar_throughput", 2.0, "ge"),
         ("ours_over_hf_assisted_throughput", 1.5, "ge"), ("paper_psd_over_sd_throughput", 1.75, "ge"),
         ("paper_psd_over_sd_latency_mean", 0.61, "le"), ("overlap_efficiency", 0.95, "ge")]


def kind_of(mode: str) -> str:
    if mode in PAPER_MODES:
        return "paper"
    return "service" if mode in SERVICE_MODES else "inproc" if mode in INPROC_MODES else "hf"


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ratio(a, b):
    """a / b, or None when either is missing or NaN or b is 0."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def breakdown_fractions(b: dict) -> dict:
    """Step-time breakdown as fractions of the summed step wall time. Each side adds up to 1:
    compute + control plane (call wall time minus compute: gRPC, channel, (de)serialisation) + idle."""
    wall = b["wall_s"]
    if not wall:
        return {}
    return {
        "num_steps": b["num_steps"],
        "mean_step_s": wall / max(1, b["num_steps"]),
        "draft_compute": b["draft_compute_s"] / wall,
        "verify_compute": b["verify_compute_s"] / wall,
        "draft_control_plane": max(0.0, b["draft_call_s"] - b["draft_compute_s"]) / wall,
        "target_control_plane": max(0.0, b["verify_call_s"] - b["verify_compute_s"]) / wall,
        "control_plane": b["control_plane_s"] / wall,
        # the control plane split: inside the services (channel read/write, bookkeeping) and
        # between them (gRPC, serialisation, the gateway's own work and scheduling delays)
        "control_plane_in_services": (max(0.0, b["draft_service_s"] - b["draft_compute_s"])
                                      + max(0.0, b["verify_service_s"] - b["verify_compute_s"])) / wall,
        "control_plane_transport": (max(0.0, b["draft_call_s"] - b["draft_service_s"])
                                    + max(0.0, b["verify_call_s"] - b["verify_service_s"])) / wall,
        "draft_idle": b["draft_idle_s"] / wall,
        "target_idle": b["target_idle_s"] / wall,
        "channel_bytes_per_step": b.get("channel_bytes", 0.0) / max(1, b["num_steps"]),
        "feature_bytes_per_step": b.get("feature_bytes", 0.0) / max(1, b["num_steps"]),  # EAGLE nodes only
    }


def _sum_breakdowns(items: list[dict]) -> dict:
    out = dict(items[0])
    for b in items[1:]:
        for key, value in b.items():
            out[key] += value
    return out


def aggregate(results: list[RoundResult], k: int | str) -> list[dict]:
    """One figure set per mode: throughput = mean over rounds of (tokens / round wall time);
    latency and TTFT over every request of every round; acceptance from the summed counters."""
    by_mode: dict[str, list[RoundResult]] = {}
    for r in results:
        by_mode.setdefault(r.mode, []).append(r)
    runs = []
    for mode, rounds in by_mode.items():
        thr = [r.num_tokens / r.wall_s for r in rounds]
        lat = [q.latency_s for r in rounds for q in r.requests]
        ttft = [q.ttft_s for r in rounds for q in r.requests if q.ttft_s is not None]
        run = {
            "mode": mode, "kind": kind_of(mode), "rounds": len(rounds),
            "requests_per_round": len(rounds[0].requests),
            "tokens_per_round": rounds[0].num_tokens,
            "throughput_tok_s": statistics.fmean(thr),
            "throughput_tok_s_std": statistics.stdev(thr) if len(thr) > 1 else 0.0,
            "throughput_tok_s_rounds": thr,
            "wall_s_rounds": [r.wall_s for r in rounds],
            "latency_mean_s": statistics.fmean(lat), "latency_p50_s": _percentile(lat, 50),
            "latency_p99_s": _percentile(lat, 99),
            "ttft_mean_s": statistics.fmean(ttft) if ttft else None,
            "acceptance_rate": None, "mean_accepted_length": None, "mean_accepted_len": None,
            "acceptance_per_pos": None, "acceptance_estimated": False,
            "latencies_s": lat,
            "requests_by_round": [[dataclasses.asdict(q) for q in r.requests] for r in rounds],
        }
        counters = [r.counters for r in rounds if r.counters is not None]
        if counters:
            drafts = sum(c["num_drafts"] for c in counters)
            drafted = sum(c["num_draft_tokens"] for c in counters)
            accepted = sum(c["num_accepted_tokens"] for c in counters)
            run["counters"] = {"spec_decode_num_drafts": drafts, "spec_decode_num_draft_tokens": drafted,
                               "spec_decode_num_accepted_tokens": accepted}
            run["acceptance_rate"] = accepted / drafted if drafted else 0.0
            run["mean_accepted_length"] = run["mean_accepted_len"] = 1.0 + accepted / max(1, drafts)
            if counters[0].get("num_accepted_tokens_per_pos") is not None:
                # k = "auto" (or per-row lengths): as many positions as the longest draft reached
                width = k if isinstance(k, int) else max(len(c["num_accepted_tokens_per_pos"]) for c in counters)
                per_pos = [sum(c["num_accepted_tokens_per_pos"][i] for c in counters
                               if i < len(c["num_accepted_tokens_per_pos"])) for i in range(width)]
                run["counters"]["spec_decode_num_accepted_tokens_per_pos"] = per_pos
                run["acceptance_per_pos"] = [a / max(1, drafts) for a in per_pos]
            run["acceptance_estimated"] = bool(counters[0].get("estimated"))
        cpu = [r.cpu_s for r in rounds if r.cpu_s]
        if cpu and rounds[0].steps:
            num_steps = sum(r.steps["num_steps"] for r in rounds if r.steps) or 1
            wall = sum(r.wall_s for r in rounds)
            total = {name: sum(c[name] for c in cpu) for name in cpu[0]}
            run["cpu_ms_per_step"] = {name: 1e3 * v / num_steps for name, v in total.items()}
            # share of the machine's cores busy during the rounds (all processes of the run)
            run["cpu_busy_fraction"] = sum(total.values()) / (wall * (os.cpu_count() or 1))
        steps = [r.steps for r in rounds if r.steps is not None]
        if steps:
            total = _sum_breakdowns(steps)
            run["step_breakdown"] = {"sums_s": total, "fractions": breakdown_fractions(total)}
        runs.append(run)
    return runs


def compute_ratios(runs: list[dict]) -> dict:
    m = {r["mode"]: r for r in runs}

    def thr(mode):
        return m[mode]["throughput_tok_s"] if mode in m else None

    def lat(mode):
        return m[mode]["latency_mean_s"] if mode in m else None

    def cp(mode):
        return m.get(mode, {}).get("step_breakdown", {}).get("fractions", {}).get("control_plane")

    ratios = {
        "psd_over_sd_throughput": ratio(thr("psd"), thr("sd")),
        "psd_over_sd_latency_mean": ratio(lat("psd"), lat("sd")),
        "sd_over_ar_throughput": ratio(thr("sd"), thr("ar")),
        "psd_over_ar_throughput": ratio(thr("psd"), thr("ar")),
        "psd_over_sd_throughput_inproc": ratio(thr("psd-inproc"), thr("sd-inproc")),
        "psd_over_sd_latency_mean_inproc": ratio(lat("psd-inproc"), lat("sd-inproc")),
        "sd_services_over_inproc_throughput": ratio(thr("sd"), thr("sd-inproc")),
        "psd_services_over_inproc_throughput": ratio(thr("psd"), thr("psd-inproc")),
        "ours_over_hf_assisted_throughput": ratio(thr("sd-b1"), thr("hf-assisted")),
        "ours_over_hf_assisted_latency_mean": ratio(lat("sd-b1"), lat("hf-assisted")),
        "hf_assisted_over_hf_target_throughput": ratio(thr("hf-assisted"), thr("hf-target")),
        "control_plane_fraction_psd": cp("psd"),
        "control_plane_fraction_sd": cp("sd"),
        "paper_psd_over_sd_throughput": ratio(thr("psd-paper"), thr("sd-paper")),
        "paper_psd_over_sd_latency_mean": ratio(lat("psd-paper"), lat("sd-paper")),
    }
    # Paired per-round ratios: both modes ran in the same round, so drift cancels within a pair.
    per_round = {}
    for name, a, b in (("psd_over_sd_throughput", "psd", "sd"), ("sd_over_ar_throughput", "sd", "ar"),
                       ("psd_over_sd_throughput_inproc", "psd-inproc", "sd-inproc"),
                       ("ours_over_hf_assisted_throughput", "sd-b1", "hf-assisted"),
                       ("paper_psd_over_sd_throughput", "psd-paper", "sd-paper")):
        if a in m and b in m:
            per_round[name] = [x / y for x, y in zip(m[a]["throughput_tok_s_rounds"], m[b]["throughput_tok_s_rounds"])]
    ratios["per_round"] = per_round
    return {key: value for key, value in ratios.items() if value is not None and value != {}}


def model_ratios(theory_report: dict) -> dict:
    """Measured psd/sd throughput over the model's zero-overhead prediction (the overlap efficiency)."""
    out = {}
    services, paper = theory_report.get("services"), theory_report.get("paper")
    if services:
        measured = services["measured"]["psd_over_sd_throughput"]
        out["overlap_efficiency"] = ratio(measured, services["simulated"]["ideal"]["psd_over_sd_throughput"])
        closed_form = services["predicted"]["ideal"]["psd_over_sd_throughput"]
        out["overlap_efficiency_closed_form"] = ratio(measured, closed_form)
    if paper:
        out["paper_overlap_efficiency"] = ratio(paper["measured"]["psd_over_sd_throughput"],
                                                paper["simulated"]["ideal"]["psd_over_sd_throughput"])
    return {key: value for key, value in out.items() if value is not None}


__all__ = ["GOALS", "HF_MODES", "RATIO_DEFINITIONS", "aggregate", "breakdown_fractions", "compute_ratios", "kind_of",
           "model_ratios", "ratio"]
