"""`minedraft bench --plot`: throughput per mode, latency CDFs and the step-time breakdown in one figure."""

from __future__ import annotations

import textwrap

__all__ = ["write_plot"]


def write_plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    ax = axes[0]
    modes = [r["mode"] for r in runs]
    colors = {"service": "tab:blue", "inproc": "tab:green", "hf": "tab:orange", "paper": "tab:purple"}
    ax.bar(modes, [r["throughput_tok_s"] for r in runs], yerr=[r["throughput_tok_s_std"] for r in runs],
           color=[colors[r["kind"]] for r in runs], capsize=3)
    ax.set_ylabel("generated tokens / s")
    ax.set_title("throughput per mode (mean ± std over rounds)")
    ax.tick_params(axis="x", rotation=45)
    ax = axes[1]
    for r in runs:
        xs = sorted(r["latencies_s"])
        ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=r["mode"])
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("latency CDF per mode")
    ax.legend(fontsize=8)
    ax = axes[2]
    bd = [r for r in runs if r.get("step_breakdown", {}).get("fractions")]
    parts = [("compute", "tab:blue"), ("control plane", "tab:red"), ("idle", "lightgray")]
    x = 0.0
    ticks, labels = [], []
    for r in bd:
        f = r["step_breakdown"]["fractions"]
        for side, values in (("target", (f["verify_compute"], f["target_control_plane"], f["target_idle"])),
                             ("draft", (f["draft_compute"], f["draft_control_plane"], f["draft_idle"]))):
            bottom = 0.0
            for (name, color), v in zip(parts, values):
                ax.bar(x, v, bottom=bottom, color=color, width=0.8, label=name if x == 0 else None)
                bottom += v
            ticks.append(x)
            labels.append(f"{r['mode']}\n{side}")
            x += 1.0
        x += 0.6
    ax.set_xticks(ticks, labels, fontsize=7, rotation=45)
    ax.set_ylabel("fraction of step wall time")
    ax.set_title("step-time breakdown (target and draft side)")
    ax.legend(fontsize=8)
    cfg = report["config"]
    title = (f"minedraft bench: {cfg['num_requests']} requests ({cfg['arrivals']}), k={cfg['k']}, "
             f"max_tokens {cfg['max_tokens']}, {report['machine']['device']}. {report['machine']['placement']}")
    fig.suptitle("\n".join(textwrap.wrap(title, 170)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
