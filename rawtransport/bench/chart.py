"""The PNG chart: RTT p50 and receive/send kpps per path, medians with min–max error bars."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rawtransport.bench.report import aggregate

__all__ = ["write_chart"]

_PANELS = (
    ("rtt", "p50_us", "RTT p50 (µs, lower is better)"),
    ("rx", "kpps", "receive kpps (higher is better)"),
    ("tx", "send_kpps", "send kpps (higher is better)"),
)


def write_chart(results: Mapping[str, Any], out: Path) -> Path:
    """Draw one horizontal bar panel per workload, one bar per (path, size); return ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the chart is a file
    import matplotlib.pyplot as plt

    cfg = results.get("config", {})
    labels = {k: v.get("label", k) for k, v in results.get("paths", {}).items()}
    paths = [p for p in cfg.get("paths", []) if p in labels] or list(labels)
    family = (cfg.get("families") or [4])[0]
    sizes = cfg.get("sizes", [64])
    agg = aggregate(results.get("runs", []))
    panels = [p for p in _PANELS if agg.get(p[0])]
    fig, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 1.2 + 0.55 * len(paths))
    )
    axes_list = list(axes) if len(panels) > 1 else [axes]
    height = 0.8 / max(1, len(sizes))
    for ax, (workload, metric, title) in zip(axes_list, panels, strict=False):
        per_size = agg.get(workload, {}).get(family, {})
        widest = [0.0, 0.0]  # smallest and largest median drawn, to choose the scale
        for i, size in enumerate(sizes):
            ys, meds, lo, hi = [], [], [], []
            for j, path in enumerate(paths):
                s = per_size.get(size, {}).get(path, {}).get(metric)
                if s is None:
                    continue
                ys.append(j + i * height - 0.4 + height / 2)
                meds.append(s.median)
                lo.append(s.median - s.low)
                hi.append(s.high - s.median)
            ax.barh(ys, meds, height=height, xerr=[lo, hi], capsize=3, label=f"{size} B")
            if meds:
                low = min(meds) if not widest[0] else min(widest[0], *meds)
                widest = [low, max(widest[1], *meds)]
        if workload == "rtt" and widest[0] > 0 and widest[1] / widest[0] > 8:
            # A block-timer mode (~1 ms) beside ~50 µs paths: a log axis keeps both readable.
            ax.set_xscale("log")
            title += ", log scale"
        ax.set_yticks(range(len(paths)))
        ax.set_yticklabels([labels[p] for p in paths])
        ax.invert_yaxis()
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    machine = results.get("machine", {})
    fig.suptitle(
        f"rawtransport bench, IPv{family} over veth — {machine.get('cpu_model', '?')}, "
        f"{machine.get('cpus_online', '?')} CPUs, Linux {machine.get('kernel', '?')}, "
        f"Python {machine.get('python', '?')} (medians, min–max bars)",
        fontsize="medium",
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
