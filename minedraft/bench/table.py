"""`minedraft bench`: the table it prints (per mode, step-time breakdown, CPU, ratios, model vs measurement)."""

from __future__ import annotations

import math
import os

from minedraft.bench.report import GOALS, RATIO_DEFINITIONS, ratio

__all__ = ["format_table", "std_text"]


def _protocol_lines(report: dict) -> list[str]:
    """Both protocols side by side: measured ratios and the simulated model's, ideal and with overhead."""
    t, cfg = report.get("theory", {}), report["config"]
    rows = []
    if "services" in t:
        rows.append((f"equal concurrency ({cfg['concurrency']} running)", t["services"]))
    if "paper" in t:
        n = t["paper"]["inputs"]["batch_size"]
        rows.append((f"paper (SD {n}, PSD 2x{n}; {t['paper']['inputs']['requests_queued']} queued)", t["paper"]))
    if not rows:
        return []
    lines = ["", "protocols side by side (services; model = simulation.simulate, ideal = no control plane, +oh = with "
                 "SD's measured per-step overhead)",
             f"  {'protocol':<38}{'psd/sd thr':>11}{'ideal':>8}{'+oh':>7}{'eff':>7}{'psd/sd lat':>12}{'ideal':>8}"
             f"{'+oh':>7}"]
    for name, x in rows:
        meas, ideal, oh = x["measured"], x["simulated"]["ideal"], x["simulated"]["with_overhead"]
        thr = meas["psd_over_sd_throughput"]
        lines.append(f"  {name:<38}{_f(thr):>11}{_f(ideal['psd_over_sd_throughput']):>8}"
                     f"{_f(oh['psd_over_sd_throughput']):>7}{_f(ratio(thr, ideal['psd_over_sd_throughput'])):>7}"
                     f"{_f(meas['psd_over_sd_latency']):>12}{_f(ideal['psd_over_sd_latency']):>8}"
                     f"{_f(oh['psd_over_sd_latency']):>7}")
    lines.append("  (eff = measured psd/sd throughput / the ideal model's: the overlap efficiency)")
    return lines


def std_text(run: dict) -> str:
    """The "±" column: the std over rounds, "n/a" with one round (there is no spread to show)."""
    return "n/a" if run.get("rounds", 0) < 2 else f"{run['throughput_tok_s_std']:.1f}"


def _f(x, fmt="{:.3f}", none="-"):
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def format_table(report: dict) -> str:
    cfg, machine = report["config"], report["machine"]
    lines = [
        f"minedraft bench: {cfg['num_requests']} requests ({cfg['arrivals']}), concurrency {cfg['concurrency']}, "
        f"k={cfg['k']}, temperature {cfg['temperature']}, max_tokens {cfg['max_tokens']}, {cfg['rounds']} rounds "
        f"interleaved; batch-1 modes on {cfg['hf_requests']} prompts",
        f"target {cfg['target']}  draft {cfg['draft']} ({cfg.get('draft_method', 'model')})  "
        f"prompts: {cfg['prompt_source']}",
        "EOS ignored in every mode: each request generates exactly max_tokens tokens "
        "(ours: ignore_eos; transformers: min_new_tokens = max_new_tokens)",
        f"machine: {machine['cpu_model']}, {machine['logical_cores']} cores, torch {machine['torch']}, "
        f"device {machine['device']}",
        f"placement: {machine['placement']}",
        "",
        f"{'mode':<12}{'tok/s':>9}{'±':>7}{'lat mean':>10}{'p50':>8}{'p99':>8}{'TTFT':>8}{'acc rate':>10}"
        f"{'acc len':>9}  per-position acceptance",
    ]
    for r in report["runs"]:
        per_pos = " ".join(f"{a:.2f}" for a in r["acceptance_per_pos"]) if r["acceptance_per_pos"] else "-"
        est = "~" if r.get("acceptance_estimated") else ""
        lines.append(
            f"{r['mode']:<12}{r['throughput_tok_s']:>9.1f}{std_text(r):>7}"
            f"{r['latency_mean_s']:>10.3f}{r['latency_p50_s']:>8.3f}{r['latency_p99_s']:>8.3f}"
            f"{_f(r['ttft_mean_s']):>8}{est + _f(r['acceptance_rate']):>10}"
            f"{est + _f(r['mean_accepted_length'], '{:.2f}'):>9}"
            f"  {per_pos}")
    lines.append("(throughput = generated tokens / round wall time, mean ± std over rounds, n/a with one round; "
                 "latencies in s over all requests of all rounds; ~ = estimated from transformers' target "
                 "forward count)")
    bd = [r for r in report["runs"] if r.get("step_breakdown", {}).get("fractions")]
    if bd:
        lines += ["", "step-time breakdown (fractions of step wall time; each side: compute + control plane + idle "
                      "= 1; cp total = control plane of both sides)",
                  f"{'mode':<12}{'steps':>7}{'step ms':>9}{'draft cmp':>11}{'draft cp':>10}{'draft idle':>11}"
                  f"{'verify cmp':>12}{'target cp':>11}{'target idle':>12}{'cp total':>10}{'in svc':>8}{'between':>9}"
                  f"{'KB/step':>9}{'feat KB':>9}"]
        for r in bd:
            f = r["step_breakdown"]["fractions"]
            lines.append(f"{r['mode']:<12}{f['num_steps']:>7}{1e3 * f['mean_step_s']:>9.2f}{f['draft_compute']:>11.1%}"
                         f"{f['draft_control_plane']:>10.1%}{f['draft_idle']:>11.1%}{f['verify_compute']:>12.1%}"
                         f"{f['target_control_plane']:>11.1%}{f['target_idle']:>12.1%}{f['control_plane']:>10.1%}"
                         f"{f['control_plane_in_services']:>8.1%}{f['control_plane_transport']:>9.1%}"
                         f"{f.get('channel_bytes_per_step', 0.0) / 1024:>9.1f}"
                         f"{f.get('feature_bytes_per_step', 0.0) / 1024:>9.1f}")
        lines.append("(cp total = in svc (channel read/write and bookkeeping inside the services) + between (gRPC, "
                     "(de)serialisation, gateway work, scheduling delays); KB/step = what the drafts wrote into "
                     "the token channel per step: tokens, and q for the sampled rows only; feat KB = what the target "
                     "wrote into feature channels per step, EAGLE nodes only)")
    cpu = [r for r in report["runs"] if r.get("cpu_ms_per_step")]
    if cpu:
        names = list(cpu[0]["cpu_ms_per_step"])
        lines += ["", "CPU per step (ms of CPU time, each process; busy = all of them / (wall x "
                      f"{os.cpu_count()} cores))",
                  f"{'mode':<12}" + "".join(f"{n:>10}" for n in names) + f"{'sum':>10}{'busy':>8}"]
        for r in cpu:
            c = r["cpu_ms_per_step"]
            lines.append(f"{r['mode']:<12}" + "".join(f"{c[n]:>10.2f}" for n in names)
                         + f"{sum(c.values()):>10.2f}{r['cpu_busy_fraction']:>8.0%}")
    ratios = report["ratios"]
    lines += ["", "ratios (see JSON ratio_definitions)"]
    goals = {name: (goal, how) for name, goal, how in GOALS}
    for name in RATIO_DEFINITIONS:
        if name in ratios:
            goal = ""
            if name in goals:
                g, how = goals[name]
                met = ratios[name] >= g if how == "ge" else ratios[name] <= g
                goal = f"   goal {'>=' if how == 'ge' else '<='} {g:g}: {'met' if met else 'NOT met'}"
            lines.append(f"  {name:<40}{ratios[name]:>8.3f}{goal}")
    lines += _protocol_lines(report)
    for label, t in report.get("theory", {}).items():
        if label == "paper":
            lines += _paper_lines(t)
            continue
        i = t["inputs"]
        lines += ["", f"theory vs measurement ({label}: {', '.join(t['modes'])}): alpha {i['alpha']:.3f} "
                      f"(from SD's mean accepted length), B={i['batch_size']}, k={i['k']}",
                  f"  inputs: t_draft {1e3 * i['t_draft']:.2f} ms (half batch {1e3 * i['t_draft_half']:.2f}), "
                  f"t_verify {1e3 * i['t_verify']:.2f} ms (half {1e3 * i['t_verify_half']:.2f}), "
                  f"t_target_decode {1e3 * i['t_target_decode']:.2f} ms, "
                  f"overhead {1e3 * i['overhead_sd']:.2f} ms/step, "
                  f"prefill {1e3 * i.get('prefill_per_request', 0.0):.2f} ms/request (in the simulation only)",
                  "  (+overhead: SD's measured non-compute time per step added to the SD and the PSD step; its SD step "
                  "equals the measurement by construction)",
                  f"  {'quantity':<26}{'ideal':>10}{'+overhead':>11}{'measured':>10}{'err(+oh)':>10}"]
        ideal, loaded = t["predicted"]["ideal"], t["predicted"]["with_overhead"]
        for key in ("step_time_sd", "step_time_psd", "step_time_ar", "steps_per_round_sd", "steps_per_round_psd",
                    "psd_over_sd_throughput", "psd_over_sd_latency", "sd_over_ar_throughput"):
            if key not in t["measured"] or t["measured"][key] is None:
                continue
            scale, unit = (1e3, " ms") if key.startswith("step_time") else (1.0, "")
            err = loaded["relative_error"].get(key)
            lines.append(f"  {key + unit:<26}{scale * ideal[key]:>10.3f}{scale * loaded[key]:>11.3f}"
                         f"{scale * t['measured'][key]:>10.3f}{_f(err, '{:+.0%}'):>10}")
        if "simulated" in t:
            lines += _simulated_lines(t)
    return "\n".join(lines)


def _simulated_lines(t: dict) -> list[str]:
    ideal, loaded = t["simulated"]["ideal"], t["simulated"]["with_overhead"]
    lines = ["  simulated (the scheduler's policy on the cost curve, round tails included):"]
    for key in ("steps_per_round_sd", "steps_per_round_psd", "latency_sd_s", "latency_psd_s",
                "psd_over_sd_throughput", "psd_over_sd_latency"):
        if key in t["measured"] and t["measured"][key] is not None:
            err = loaded["relative_error"].get(key)
            lines.append(f"  {key:<26}{ideal[key]:>10.3f}{loaded[key]:>11.3f}{t['measured'][key]:>10.3f}"
                         f"{_f(err, '{:+.0%}'):>10}")
    return lines


def _paper_lines(t: dict) -> list[str]:
    i = t["inputs"]
    lines = ["", "theory vs measurement (paper protocol: sd-paper, psd-paper): "
                 f"alpha {i['alpha']:.3f}, N={i['batch_size']}, "
                 f"{i['requests_queued']} queued, k={i['k']}",
             f"  inputs: t_draft {1e3 * i['t_draft']:.2f} ms, t_verify {1e3 * i['t_verify']:.2f} ms at N (sd-paper), "
             f"overhead {1e3 * i['overhead_sd']:.2f} ms/step, prefill {1e3 * i.get('prefill_per_request', 0.0):.2f} "
             "ms/request; full batches for ever would give psd/sd throughput "
             f"{t['steady_state_psd_over_sd_throughput']:.3f}",
             f"  {'quantity':<26}{'ideal':>10}{'+overhead':>11}{'measured':>10}{'err(+oh)':>10}"]
    return lines + _simulated_lines(t)[1:] + [
        f"  {'makespan_sd_s':<26}{t['simulated']['ideal']['makespan_sd_s']:>10.3f}"
        f"{t['simulated']['with_overhead']['makespan_sd_s']:>11.3f}{t['measured']['makespan_sd_s']:>10.3f}",
        f"  {'makespan_psd_s':<26}{t['simulated']['ideal']['makespan_psd_s']:>10.3f}"
        f"{t['simulated']['with_overhead']['makespan_psd_s']:>11.3f}{t['measured']['makespan_psd_s']:>10.3f}"]
