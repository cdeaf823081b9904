"""`minedraft bench --plot FILE`: the per-mode figure (FILE) and the serving matrix's heat map
(FILE with `-matrix` before its suffix).

The figure has one question per panel, each with the ratio that answers it written on it: does
speculation pay through the services, PSD vs SD in the paper's protocol, what the services cost
against in-process, ours vs transformers at batch 1 (throughput bars, the value on every bar), the
latency of the same three groups (one CDF panel per protocol, never batch 1 beside batch 16), and where
a step's time goes (horizontal stacked bars, percentages written in). The colours are one per kind of
decoding (target only, SD, PSD, transformers assisted), with a legend.
"""

from __future__ import annotations

import math
import os
import textwrap

__all__ = ["matrix_plot_path", "write_matrix_plot", "write_plot"]

KIND_COLORS = {"target only": "#8c8c8c", "SD": "#1f77b4", "PSD": "#ff7f0e", "transformers assisted": "#2ca02c"}


def _color(mode: str) -> str:
    if mode in ("ar", "hf-target"):
        return KIND_COLORS["target only"]
    if mode == "hf-assisted":
        return KIND_COLORS["transformers assisted"]
    return KIND_COLORS["PSD"] if mode.startswith("psd") else KIND_COLORS["SD"]


def matrix_plot_path(path: str) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}-matrix{ext or '.png'}"


def write_plot(report: dict, path: str) -> list[str]:
    """Write the figure(s); return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    if report.get("runs"):
        _write_modes_figure(report, path)
        written.append(path)
    if report.get("matrix", {}).get("cells"):
        out = matrix_plot_path(path) if written else path
        write_matrix_plot(report["matrix"], out)
        written.append(out)
    return written


def _ratio_box(ax, text: str) -> None:
    ax.text(0.02, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=10, fontweight="bold",
            bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="0.6", alpha=0.9))


def _r(by: dict, a: str, b: str, key: str = "throughput_tok_s") -> float | None:
    if a in by and b in by and by[b][key]:
        return by[a][key] / by[b][key]
    return None


def _bars(ax, runs: list[dict], title: str, ratio_lines: list[str]) -> None:
    modes = [r["mode"] for r in runs]
    values = [r["throughput_tok_s"] for r in runs]
    errs = [r["throughput_tok_s_std"] if r["rounds"] > 1 else 0.0 for r in runs]
    bars = ax.bar(modes, values, yerr=errs, color=[_color(m) for m in modes], capsize=3, width=0.65)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() / 2, f"{v:,.0f}", ha="center", va="center",
                fontsize=9, color="white", fontweight="bold")
    lines = [x for x in ratio_lines if x]
    top = max(v + e for v, e in zip(values, errs))
    ax.set_ylim(0, top * (1.08 + 0.12 * len(lines)))  # room for the ratio box above the tallest bar
    ax.set_ylabel("generated tokens / s")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=9)
    if lines:
        _ratio_box(ax, "\n".join(lines))


def _fmt(name: str, x: float | None) -> str:
    return f"{name} = {x:.2f}x" if x is not None else ""


def _cdf(ax, runs: list[dict], title: str, ratio_lines: list[str]) -> None:
    for r in runs:
        xs = sorted(r["latencies_s"])
        style = "--" if r["kind"] == "inproc" else "-"
        ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", color=_color(r["mode"]),
                linestyle=style, label=f"{r['mode']} (mean {r['latency_mean_s']:.2f}s)")
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("fraction of requests done")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    lines = [x for x in ratio_lines if x]
    if lines:
        _ratio_box(ax, "\n".join(lines))


def _breakdown(ax, runs: list[dict]) -> None:
    parts = [("compute", "#4c72b0"), ("control plane", "#dd5555"), ("idle", "#d9d9d9")]
    labels, y = [], 0
    for r in reversed(runs):
        f = r["step_breakdown"]["fractions"]
        sides = [("target", (f["verify_compute"], f["target_control_plane"], f["target_idle"]))]
        if r["mode"] != "ar":  # ar has no draft side
            sides.insert(0, ("draft", (f["draft_compute"], f["draft_control_plane"], f["draft_idle"])))
        for side, values in sides:
            left = 0.0
            for (name, color), v in zip(parts, values):
                ax.barh(y, v, left=left, color=color, height=0.75, label=name if y == 0 else None)
                if v >= 0.07:
                    ax.text(left + v / 2, y, f"{v:.0%}", ha="center", va="center", fontsize=8)
                left += v
            labels.append(f"{r['mode']} {side}  ({1e3 * f['mean_step_s']:.1f} ms/step)")
            y += 1
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of step wall time")
    cp = [f"{r['mode']} {r['step_breakdown']['fractions']['control_plane']:.0%}" for r in runs
          if r["kind"] == "service"]
    ax.set_title("where a step's time goes" + ("\ncontrol plane (both sides): " + ", ".join(cp) if cp else ""),
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)


def _write_modes_figure(report: dict, path: str) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    runs = report["runs"]
    by = {r["mode"]: r for r in runs}
    cfg = report["config"]

    def pick(*modes):
        return [by[m] for m in modes if m in by]

    n = cfg["concurrency"]
    panels = []
    group = pick("ar", "sd", "psd")
    if group:
        panels.append(lambda ax: _bars(ax, group, f"does speculation pay? services, {n} requests at once",
                                       [_fmt("sd/ar", _r(by, "sd", "ar")), _fmt("psd/ar", _r(by, "psd", "ar")),
                                        _fmt("psd/sd", _r(by, "psd", "sd"))]))
    paper = pick("sd-paper", "psd-paper")
    if paper:
        pb = cfg["paper_batch"]
        panels.append(lambda ax: _bars(ax, paper, f"PSD vs SD, the paper's protocol (N={pb}, {4 * pb} queued)",
                                       [_fmt("psd/sd", _r(by, "psd-paper", "sd-paper"))]))
    inproc = pick("sd-inproc", "sd", "psd-inproc", "psd")
    if pick("sd-inproc", "psd-inproc"):
        panels.append(lambda ax: _bars(ax, inproc, "what the services cost: gRPC vs in-process",
                                       [_fmt("sd services/in-process", _r(by, "sd", "sd-inproc")),
                                        _fmt("psd services/in-process", _r(by, "psd", "psd-inproc"))]))
    b1 = pick("sd-b1", "hf-assisted", "hf-target")
    if b1:
        panels.append(lambda ax: _bars(ax, b1, f"ours vs transformers, batch 1 ({cfg['hf_requests']} prompts)",
                                       [_fmt("ours/HF assisted", _r(by, "sd-b1", "hf-assisted")),
                                        _fmt("HF assisted/HF target", _r(by, "hf-assisted", "hf-target"))]))
    lat = pick("ar", "sd", "psd", "sd-inproc", "psd-inproc")
    if lat:
        panels.append(lambda ax: _cdf(ax, lat, f"latency, {n} at once (dashed: in-process)",
                                      [_fmt("psd/sd mean", _r(by, "psd", "sd", "latency_mean_s")),
                                       _fmt("sd/ar mean", _r(by, "sd", "ar", "latency_mean_s"))]))
    if paper:
        panels.append(lambda ax: _cdf(ax, paper, "latency, the paper's protocol (queueing included)",
                                      [_fmt("psd/sd mean", _r(by, "psd-paper", "sd-paper", "latency_mean_s"))]))
    if b1:
        panels.append(lambda ax: _cdf(ax, b1, "latency, batch 1",
                                      [_fmt("ours/HF mean", _r(by, "sd-b1", "hf-assisted", "latency_mean_s"))]))
    bd = [r for r in runs if r.get("step_breakdown", {}).get("fractions") and r["kind"] in ("service", "inproc")
          and r["mode"] != "sd-b1"]
    if bd:
        panels.append(lambda ax: _breakdown(ax, bd))
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.6 * rows + 0.9), squeeze=False)
    for ax, draw in zip(axes.flat, panels):
        draw(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [Patch(color=c, label=k) for k, c in KIND_COLORS.items()]
    fig.legend(handles=handles, loc="upper right", ncol=4, fontsize=9, frameon=False, bbox_to_anchor=(0.995, 0.995))
    title = (f"minedraft bench: {cfg['num_requests']} requests ({cfg['arrivals']}), k={cfg['k']}, temperature "
             f"{cfg['temperature']}, {cfg['max_tokens']} tokens each, {cfg['rounds']} rounds; "
             f"{report['machine']['device']}, {report['machine']['cpu_model']}")
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_matrix_plot(m: dict, path: str) -> None:
    """Two heat maps over (load) x (regime, mode): auto / ar and auto / best fixed k of the same mode,
    the number written in every cell; without auto (refused by the installed code), best fixed k / ar
    and best / worst fixed k (what choosing k is worth), the best k written in the cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import Normalize

    cells = m["cells"]
    loads = list(dict.fromkeys(c["load"] for c in cells))
    cols = list(dict.fromkeys((c["regime"], c["mode"]) for c in cells))
    at = {(c["load"], c["regime"], c["mode"]): c for c in cells}
    if m.get("auto"):
        panels = [("auto_over_ar", "auto / ar", None),
                  ("auto_over_best_fixed", "auto / best fixed k of the same mode", "vs k=")]
    else:
        panels = [("best_fixed_over_ar", "best fixed k / ar (auto not run)", "best k="),
                  ("best_over_worst_fixed", "best / worst fixed k: what choosing k is worth", "best k=")]
    fig, axes = plt.subplots(1, 2, figsize=(3.0 + 1.5 * len(cols) * 2, 2.2 + 0.8 * len(loads)), squeeze=False,
                             layout="constrained")
    # colour by log2(ratio), symmetric about 1.0 (x2 as far as /2), saturating at 2x
    values = [abs(math.log2(c[key])) for key, _, _ in panels for c in cells if c[key]]
    span = min(1.0, max(values + [math.log2(1.1)]))
    norm = Normalize(vmin=-span, vmax=span)
    for ax, (key, title, note) in zip(axes[0], panels):
        grid = np.full((len(loads), len(cols)), np.nan)
        for i, load in enumerate(loads):
            for j, (regime, mode) in enumerate(cols):
                c = at.get((load, regime, mode))
                if c is None or c[key] is None:
                    ax.text(j, i, "-", ha="center", va="center", fontsize=10)
                    continue
                grid[i, j] = math.log2(c[key]) if c[key] > 0 else -span
                text = f"{c[key]:.2f}"
                if note and c.get("best_fixed_k") is not None:
                    text += f"\n{note}{c['best_fixed_k']}"
                ax.text(j, i, text, ha="center", va="center", fontsize=10, fontweight="bold")
        im = ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto")
        ax.set_xticks(range(len(cols)), [f"{r}\n{mo}" for r, mo in cols], fontsize=9)
        ax.set_yticks(range(len(loads)), loads, fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(np.arange(-0.5, len(cols)), minor=True)
        ax.set_yticks(np.arange(-0.5, len(loads)), minor=True)
        ax.grid(which="minor", color="white", linewidth=2)
        ax.tick_params(which="minor", length=0)
    ticks = [t for t in (0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0) if abs(math.log2(t)) <= span + 1e-9]
    bar = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9, label="speed-up (> 1: faster)")
    bar.set_ticks([math.log2(t) for t in ticks], labels=[f"{t:g}" for t in ticks])
    ks = ", ".join(str(k) for k in m["ks"])
    title = (f"serving matrix ({m['backend']}): ar, sd and psd at k in {{{ks}}}, {m['max_tokens']} tokens per "
             f"request, {m['rounds']} round(s); closed-loop rows compare throughput, the Poisson row mean latency")
    if "auto" in m.get("ks_requested", []) and not m.get("auto"):
        title += "\nk=auto not run: the installed code refuses num_speculative_tokens='auto'"
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
