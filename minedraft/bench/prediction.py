"""`minedraft bench`: the latency model fed with a run's own measured times, beside the measurement.

:func:`compute_theory` fits the closed form (:mod:`minedraft.spec.theory`) and the simulated scheduler
(:mod:`minedraft.bench.simulation`) to the step times of the equal-concurrency runs (services and
in-process) and of the paper protocol.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

from minedraft.bench import simulation
from minedraft.bench.report import ratio
from minedraft.spec import theory

__all__ = ["compute_theory"]


def _per_step(run: dict, key: str) -> float:
    s = run["step_breakdown"]["sums_s"]
    return s[key] / max(1, s["num_steps"])


def _prefill_per_request(run: dict) -> float:
    """A round's time outside its decode steps, per request: admission (prefill on both workers, which
    the steps exclude) plus the round's first and last hand-offs."""
    outside = statistics.fmean(run["wall_s_rounds"]) - run["step_breakdown"]["sums_s"]["wall_s"] / run["rounds"]
    return max(0.0, outside) / max(1, run["requests_per_round"])


def compute_theory(runs: list[dict], k: int, batch_size: int, max_tokens: int, paper_batch: int | None = None,
                   num_requests: int | None = None) -> dict:
    """Feed minedraft.spec.theory with times measured in this run and set its prediction beside the
    measurement, for the services (ar, sd, psd) and in-process (sd-inproc, psd-inproc).

    Inputs: t_draft = SD's draft compute per step / k, t_verify = SD's verify compute per step (full
    batch); the half-batch times the same from the PSD round's steps; t_target_decode = AR's target
    compute per step (falls back to t_verify without an AR round); alpha fitted to SD's mean
    accepted length. Two predictions: `ideal` (no per-step overhead) and `with_overhead`, where SD's
    measured non-compute time per step (wall - k t_draft - t_verify: gRPC, channel, scheduling) is
    added to both the SD and the PSD step (a PSD step still makes both calls, in parallel).

    `simulated`: simulation.simulate, the scheduler's own policy step by step (round tails, PSD's lone
    batches at the end, admission) on a cost curve through the full- and half-batch times; `paper`:
    the same for the paper's protocol (sd-paper, psd-paper)."""
    m = {r["mode"]: r for r in runs}
    out, services_cost = {}, None
    for label, sd, psd, ar in (("services", "sd", "psd", "ar"), ("inproc", "sd-inproc", "psd-inproc", None)):
        if sd not in m or psd not in m or "step_breakdown" not in m[sd] or "step_breakdown" not in m[psd]:
            continue
        sd_run, psd_run = m[sd], m[psd]
        t_d = _per_step(sd_run, "draft_compute_s") / k
        t_v = _per_step(sd_run, "verify_compute_s")
        t_d_half = _per_step(psd_run, "draft_compute_s") / k
        t_v_half = _per_step(psd_run, "verify_compute_s")
        ar_run = m.get(ar) if ar else None
        t_ar = _per_step(ar_run, "verify_compute_s") if ar_run and "step_breakdown" in ar_run else t_v
        wall_sd = _per_step(sd_run, "wall_s")
        wall_psd = _per_step(psd_run, "wall_s")
        alpha = theory.alpha_from_mean_accepted_length(min(k + 1.0, max(1.0, sd_run["mean_accepted_length"])), k)
        overhead = max(0.0, wall_sd - k * t_d - t_v)
        inputs = dict(alpha=alpha, k=k, batch_size=batch_size, t_draft=t_d, t_verify=t_v, t_draft_half=t_d_half,
                      t_verify_half=t_v_half, t_target_decode=t_ar, overhead_sd=overhead, overhead_psd=overhead)
        common = dict(t_draft=t_d, t_verify=t_v, t_target_decode=t_ar, alpha=alpha, k=k, batch_size=batch_size,
                      t_draft_half=t_d_half, t_verify_half=t_v_half)
        ideal = theory.predict(**common)
        loaded = theory.predict(**common, overhead_sd=overhead, overhead_psd=overhead)
        measured = {
            "step_time_sd": wall_sd, "step_time_psd": wall_psd,
            "psd_over_sd_throughput": ratio(psd_run["throughput_tok_s"], sd_run["throughput_tok_s"]),
            "psd_over_sd_latency": ratio(psd_run["latency_mean_s"], sd_run["latency_mean_s"]),
        }
        # Decode steps per round: the model expects (max_tokens - 1) / E per request (the first token
        # comes from prefill), every request advancing together; a round really lasts until its
        # slowest request is done, so more steps here mean stragglers (acceptance varies by request).
        measured["steps_per_round_sd"] = sd_run["step_breakdown"]["sums_s"]["num_steps"] / sd_run["rounds"]
        measured["steps_per_round_psd"] = psd_run["step_breakdown"]["sums_s"]["num_steps"] / psd_run["rounds"]
        if ar_run:
            measured["step_time_ar"] = _per_step(ar_run, "wall_s") if "step_breakdown" in ar_run else None
            measured["sd_over_ar_throughput"] = ratio(sd_run["throughput_tok_s"], ar_run["throughput_tok_s"])
        preds = {}
        for name, p in (("ideal", ideal), ("with_overhead", loaded)):
            d = {"tokens_per_step": p.tokens_per_step, "step_time_ar": p.step_time_ar, "step_time_sd": p.step_time_sd,
                 "step_time_psd": p.step_time_psd, "psd_over_sd_throughput": p.psd_over_sd_throughput,
                 "psd_over_sd_latency": p.psd_over_sd_latency, "sd_over_ar_throughput": p.sd_over_ar_throughput,
                 "latency_sd_s": p.latency_s("sd", max_tokens), "latency_psd_s": p.latency_s("psd", max_tokens),
                 "steps_per_round_sd": (max_tokens - 1) / p.tokens_per_step,
                 "steps_per_round_psd": 2 * (max_tokens - 1) / p.tokens_per_step}
            d["relative_error"] = {key: (d[key] - v) / v for key, v in measured.items()
                                   if v and key in d and d[key] is not None and math.isfinite(d[key])}
            preds[name] = d
        cost = theory.CostModel.through(batch_size, t_d, t_v, max(1, batch_size // 2), t_d_half, t_v_half)
        cost = dataclasses.replace(cost, prefill_per_request=_prefill_per_request(sd_run))
        inputs["prefill_per_request"] = cost.prefill_per_request
        out[label] = {"modes": [x for x in (ar, sd, psd) if x and x in m], "inputs": inputs, "measured": measured,
                      "predicted": preds,
                      "simulated": _simulate_pair(cost, overhead, alpha, k, num_requests or batch_size, batch_size,
                                                  batch_size, max_tokens, measured)}
        if label == "services":
            services_cost = cost
    paper = _paper_theory(m, k, paper_batch, max_tokens, services_cost) if paper_batch else None
    if paper:
        out["paper"] = paper
    return out


def _simulate_pair(cost, overhead: float, alpha: float, k: int, num_requests: int, sd_running: int,
                   psd_running: int, max_tokens: int, measured: dict) -> dict:
    """simulation.simulate for SD and PSD, ideal (no overhead) and with the measured per-step overhead,
    beside the measurement."""
    out = {}
    for name, oh in (("ideal", 0.0), ("with_overhead", overhead)):
        c = dataclasses.replace(cost, overhead=oh)
        sd = simulation.simulate("sd", num_requests, sd_running, max_tokens, k, alpha, c)
        psd = simulation.simulate("psd", num_requests, psd_running, max_tokens, k, alpha, c)
        d = {"psd_over_sd_throughput": psd.throughput_tok_s / sd.throughput_tok_s,
             "psd_over_sd_latency": psd.latency_mean_s / sd.latency_mean_s,
             "steps_per_round_sd": sd.steps, "steps_per_round_psd": psd.steps,
             "makespan_sd_s": sd.makespan_s, "makespan_psd_s": psd.makespan_s,
             "latency_sd_s": sd.latency_mean_s, "latency_psd_s": psd.latency_mean_s}
        d["relative_error"] = {key: (d[key] - v) / v for key, v in measured.items() if v and key in d}
        out[name] = d
    out["cost_model"] = dataclasses.asdict(cost)
    return out


def _paper_theory(m: dict, k: int, n: int, max_tokens: int, cost) -> dict | None:
    """The paper's protocol: SD with N running, PSD with two batches of N, 4N queued. Step costs: the
    equal-concurrency runs' cost curve (its shape), scaled to sd-paper's own times at N (its level: 4N
    prompts, longer contexts); without that curve, sd-paper's times flat in the batch size."""
    from minedraft.bench.runners import PAPER_QUEUE_FACTOR

    sd_run, psd_run = m.get("sd-paper"), m.get("psd-paper")
    if not sd_run or not psd_run or "step_breakdown" not in sd_run or "step_breakdown" not in psd_run:
        return None
    t_d = _per_step(sd_run, "draft_compute_s") / k
    t_v = _per_step(sd_run, "verify_compute_s")
    if cost is None:
        cost = theory.CostModel.through(n, t_d, t_v, n, t_d, t_v)
    else:
        fd, fv = ratio(t_d, cost.draft(n)) or 1.0, ratio(t_v, cost.verify(n)) or 1.0
        cost = theory.CostModel(cost.draft_fixed * fd, cost.draft_per_row * fd, cost.verify_fixed * fv,
                                cost.verify_per_row * fv)
    cost = dataclasses.replace(cost, prefill_per_request=_prefill_per_request(sd_run))
    alpha = theory.alpha_from_mean_accepted_length(min(k + 1.0, max(1.0, sd_run["mean_accepted_length"])), k)
    overhead = max(0.0, _per_step(sd_run, "wall_s") - k * t_d - t_v)
    measured = {
        "psd_over_sd_throughput": ratio(psd_run["throughput_tok_s"], sd_run["throughput_tok_s"]),
        "psd_over_sd_latency": ratio(psd_run["latency_mean_s"], sd_run["latency_mean_s"]),
        "steps_per_round_sd": sd_run["step_breakdown"]["sums_s"]["num_steps"] / sd_run["rounds"],
        "steps_per_round_psd": psd_run["step_breakdown"]["sums_s"]["num_steps"] / psd_run["rounds"],
        "makespan_sd_s": statistics.fmean(sd_run["wall_s_rounds"]),
        "makespan_psd_s": statistics.fmean(psd_run["wall_s_rounds"]),
        "latency_sd_s": sd_run["latency_mean_s"], "latency_psd_s": psd_run["latency_mean_s"],
        "step_time_sd": _per_step(sd_run, "wall_s"), "step_time_psd": _per_step(psd_run, "wall_s"),
    }
    q = PAPER_QUEUE_FACTOR * n
    steady = (k * cost.draft(n) + cost.verify(n)) / max(k * cost.draft(n), cost.verify(n))
    return {"modes": ["sd-paper", "psd-paper"],
            "inputs": {"alpha": alpha, "k": k, "batch_size": n, "requests_queued": q, "t_draft": t_d, "t_verify": t_v,
                       "overhead_sd": overhead, "prefill_per_request": cost.prefill_per_request},
            "measured": measured,
            # full batches for ever: (k t_draft(N) + t_verify(N)) / max(k t_draft(N), t_verify(N))
            "steady_state_psd_over_sd_throughput": steady,
            "simulated": _simulate_pair(cost, overhead, alpha, k, q, n, 2 * n, max_tokens, measured)}
