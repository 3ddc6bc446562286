"""From a run's JSON to the figures and the Markdown report (pure: no I/O, no clock).

The JSON (``bench.json``) is the record: every run's raw figures and exact commands. This module
only reads it, so a report can be re-rendered, and tested, from a stored file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rawtransport.bench.paths import KERNEL_PATH_OF_LOOP
from rawtransport.bench.stats import Spread, ratio, spread

__all__ = [
    "METRICS",
    "aggregate",
    "fmt_spread",
    "kernel_ordering",
    "ratio_rows",
    "render_markdown",
    "same_loop_kernel",
]

#: The figures summarised over repetitions, per workload, with their labels.
METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "rtt": (("p50_us", "RTT p50 µs"), ("p99_us", "p99 µs"), ("p999_us", "p99.9 µs")),
    "rx": (
        ("kpps", "received kpps"),
        ("offered_kpps", "offered kpps"),
        ("drop_fraction", "dropped"),
        ("cpu_sink", "sink CPU"),
        ("cpu_generator", "generator CPU"),
        ("sink_cpu_us", "sink CPU µs/datagram"),
        ("capacity_kpps", "capacity kpps/core"),
    ),
    "tx": (("send_kpps", "send kpps"), ("cpu_sender", "sender CPU")),
}

#: Which way is better for the headline figure of each workload (and for each metric).
_LOWER_IS_BETTER = {"rtt": True, "rx": False, "tx": False, "p50_us": True}
_HEADLINE = {"rtt": "p50_us", "rx": "kpps", "tx": "send_kpps"}
#: The figures each raw path's verdict compares: the headlines, and the receive capacity (datagrams
#: per second of the sink's own CPU), which the load generator's rate does not cap.
_VERDICT_FIGURES = (
    ("rtt", "p50_us", "RTT p50"),
    ("rx", "kpps", "receive kpps"),
    ("rx", "capacity_kpps", "receive capacity"),
    ("tx", "send_kpps", "send kpps"),
)

Aggregate = dict[str, dict[int, dict[int, dict[str, dict[str, Spread]]]]]


def aggregate(runs: Iterable[Mapping[str, Any]]) -> Aggregate:
    """Medians with min–max over repetitions: ``agg[workload][family][size][path][metric]``.

    Failed runs (``ok`` false) are left out; a metric no run produced is absent.
    """
    values: dict[tuple[str, int, int, str, str], list[float | None]] = {}
    for run in runs:
        if not run.get("ok"):
            continue
        workload = str(run["workload"])
        figures = run.get("figures") or {}
        for metric, _label in METRICS.get(workload, ()):
            value = figures.get(metric)
            key = (workload, int(run["family"]), int(run["size"]), str(run["path"]), metric)
            values.setdefault(key, []).append(
                float(value) if isinstance(value, int | float) else None
            )
    agg: Aggregate = {}
    for (workload, family, size, path, metric), vals in values.items():
        s = spread(vals)
        if s is not None:
            agg.setdefault(workload, {}).setdefault(family, {}).setdefault(size, {}).setdefault(
                path, {}
            )[metric] = s
    return agg


def fmt_spread(s: Spread | None, *, percent: bool = False, digits: int = 1) -> str:
    """``"51.5 (48.2–55.0)"``; one figure when there was one run; ``"–"`` when there is none."""
    if s is None:
        return "–"
    scale, suffix = (100.0, " %") if percent else (1.0, "")
    med = f"{s.median * scale:.{digits}f}{suffix}"
    if s.n == 1 or s.low == s.high:
        return med
    return f"{med} ({s.low * scale:.{digits}f}–{s.high * scale:.{digits}f})"


def _fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"


def _headline(agg: Aggregate, workload: str, family: int, size: int, path: str) -> Spread | None:
    return _figure(agg, workload, family, size, path, _HEADLINE[workload])


def _figure(
    agg: Aggregate, workload: str, family: int, size: int, path: str, metric: str
) -> Spread | None:
    return agg.get(workload, {}).get(family, {}).get(size, {}).get(path, {}).get(metric)


def same_loop_kernel(path_info: Mapping[str, Mapping[str, Any]], path: str) -> str | None:
    """The kernel path on ``path``'s event loop, for a raw path (``None`` for a kernel path)."""
    info = path_info.get(path, {})
    if not str(info.get("api", "")).startswith("raw"):
        return None
    return KERNEL_PATH_OF_LOOP.get(str(info.get("loop")))


def ratio_rows(
    agg: Aggregate,
    paths: list[str],
    family: int,
    size: int,
    baselines: tuple[str, str],
    own: Mapping[str, str | None] | None = None,
) -> list[dict[str, Any]]:
    """Per path, each workload's headline median and its ratio to each baseline's median, and
    (``workload/own``) to the median of ``own[path]``, the kernel path on its loop.

    A ratio is ``path / baseline``: below 1 is better for RTT, above 1 is better for kpps.
    """
    rows = []
    for path in paths:
        row: dict[str, Any] = {"path": path}
        own_base = (own or {}).get(path)
        for workload in ("rtt", "rx", "tx"):
            mine = _headline(agg, workload, family, size, path)
            row[workload] = mine
            for key, base in [*((b, b) for b in baselines), ("own", own_base)]:
                theirs = _headline(agg, workload, family, size, base) if base else None
                row[f"{workload}/{key}"] = ratio(
                    mine.median if mine else None, theirs.median if theirs else None
                )
        rows.append(row)
    return rows


def kernel_ordering(agg: Aggregate, family: int, size: int) -> list[str]:
    """Sentences saying whether the kernel paths rank as they did on the reference machine
    (uvloop, then asyncio with a fixed ``max_size``, then stock asyncio)."""
    expected = ["uvloop", "asyncio-maxsize", "asyncio"]
    notes = []
    for workload in ("rtt", "rx"):
        figures = {p: _headline(agg, workload, family, size, p) for p in expected}
        if any(v is None for v in figures.values()):
            continue
        lower = _LOWER_IS_BETTER[workload]
        ranked = sorted(
            expected,
            key=lambda p: figures[p].median if lower else -figures[p].median,  # type: ignore[union-attr]
        )
        what = "RTT p50" if workload == "rtt" else "receive kpps"
        order = " > ".join(ranked)
        if ranked == expected:
            notes.append(f"{what}: {order} (best first) — as on the reference machine.")
        else:
            notes.append(
                f"{what}: {order} (best first) — differs from the reference machine's "
                f"{' > '.join(expected)}; see the min–max spreads before reading much into it."
            )
    return notes


def _verdicts(
    agg: Aggregate,
    paths: list[str],
    family: int,
    size: int,
    uv: str,
    stock: str,
    own: Mapping[str, str | None],
) -> list[str]:
    out = []
    for path in paths:
        if not path.startswith("raw"):
            continue
        parts = []
        bases = list(dict.fromkeys(b for b in (own.get(path), uv, stock) if b))
        for workload, metric, noun in _VERDICT_FIGURES:
            mine = _figure(agg, workload, family, size, path, metric)
            for base in bases:
                theirs = _figure(agg, workload, family, size, base, metric)
                r = ratio(mine.median if mine else None, theirs.median if theirs else None)
                if r is None:
                    continue
                better = (r < 1) if _LOWER_IS_BETTER.get(metric, False) else (r > 1)
                parts.append(f"{noun} {r:.2f}× {base}'s ({'better' if better else 'worse'})")
        if parts:
            out.append(f"- **{path}**: " + "; ".join(parts) + ".")
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def render_markdown(results: Mapping[str, Any], chart: str | None = "bench.png") -> str:
    """The report: machine, ratio table, per-workload details, syscalls, copies, notes."""
    cfg = results.get("config", {})
    machine = results.get("machine", {})
    path_info: Mapping[str, Mapping[str, Any]] = results.get("paths", {})
    paths = [p for p in cfg.get("paths", []) if p in path_info] or list(path_info)
    baselines = (
        results.get("baselines", {}).get("uvloop", "uvloop"),
        results.get("baselines", {}).get("stock", "asyncio"),
    )
    agg = aggregate(results.get("runs", []))
    own = {p: same_loop_kernel(path_info, p) for p in paths}
    out: list[str] = ["# rawtransport bench: the raw path against the kernel UDP path", ""]
    out.append(
        f"Run {results.get('started', '?')} ({results.get('elapsed_s', 0):.0f} s), "
        f"`{results.get('command', 'python -m rawtransport bench')}`. "
        f"{cfg.get('reps', '?')} repetition(s); figures are medians with (min–max) over them."
    )
    out.append("")
    topo = results.get("topology", {})
    out.append(
        f"Topology: {topo.get('description', 'two namespaces joined by a veth pair')}. "
        f"Client/sender on CPU {cfg.get('client_cpu')}, echo/sink on CPU {cfg.get('server_cpu')}; "
        f"RPS {'on (receive softirq on the receiving CPU)' if cfg.get('rps') else 'off (veth charges the receiver’s softirq to the sender’s CPU)'}."
    )
    if chart:
        out += ["", f"![RTT and throughput per path]({chart})"]
    out += ["", "## Machine", ""]
    versions = machine.get("versions", {})
    rows = [
        ["CPU", f"{machine.get('cpu_model', '?')} — {machine.get('cpus_online', '?')} CPUs"
         + (f", virtualised ({machine['hypervisor']})" if machine.get("hypervisor") else "")],
        ["kernel", f"{machine.get('kernel', '?')} ({machine.get('arch', '?')})"],
        ["Python", str(machine.get("python", "?"))],
        ["raw datapath", str(machine.get("datapath", "unknown"))],
        ["versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)],
        ["offloads (veth)", ", ".join(f"{k} {v}" for k, v in topo.get("offloads", {}).items())
         or "unknown"],
        ["RPS", ", ".join(f"{k} {v}" for k, v in topo.get("rps", {}).items()) or "unknown"],
        ["load generator", str(results.get("generator", cfg.get("generator", "?")))],
    ]  # fmt: skip
    out += _table(["", ""], rows)
    for family in cfg.get("families", [4]):
        for size in cfg.get("sizes", []):
            out += ["", f"## IPv{family}, {size} B payload", ""]
            out.append(
                "Ratios are path ÷ baseline: for RTT lower is better, for kpps higher is better. "
                "*÷ same loop*: a raw path against the kernel path on its own event loop (raw on "
                "trio against anyio's UDP socket on trio), what changing the method name alone does."
            )
            out.append("")
            u, s = baselines
            header = ["path"]
            for figure in ("RTT p50 µs", "receive kpps", "send kpps"):
                header += [figure, f"÷ {u}", f"÷ {s}", "÷ same loop"]
            table = []
            for row in ratio_rows(agg, paths, family, size, baselines, own):
                cells = [str(path_info.get(row["path"], {}).get("label", row["path"]))]
                for workload in ("rtt", "rx", "tx"):
                    cells.append(fmt_spread(row[workload]))
                    cells += [_fmt_ratio(row[f"{workload}/{b}"]) for b in (*baselines, "own")]
                table.append(cells)
            out += _table(header, table)
            notes = kernel_ordering(agg, family, size) + _verdicts(
                agg, paths, family, size, u, s, own
            )
            if notes:
                out += ["", *[n if n.startswith("-") else f"- {n}" for n in notes]]
            for workload, title in (
                ("rtt", "Round trips"),
                ("rx", "Receive throughput"),
                ("tx", "Send rate"),
            ):
                per_path = agg.get(workload, {}).get(family, {}).get(size, {})
                if not per_path:
                    continue
                metrics = METRICS[workload]
                out += ["", f"### {title}", ""]
                detail = []
                for path in paths:
                    if path not in per_path:
                        continue
                    cells = [path]
                    for metric, _label in metrics:
                        pct = metric.startswith(("cpu", "drop"))
                        digits = 2 if metric == "sink_cpu_us" else 1
                        cells.append(
                            fmt_spread(per_path[path].get(metric), percent=pct, digits=digits)
                        )
                    detail.append(cells)
                out += _table(["path", *[label for _m, label in metrics]], detail)
    out += _syscalls_section(results, paths, path_info)
    out += _notes_section(results)
    return "\n".join(out) + "\n"


def _syscalls_section(
    results: Mapping[str, Any], paths: list[str], path_info: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    out = ["", "## Syscalls and copies per datagram", ""]
    sc = results.get("syscalls", [])
    if sc:
        out.append(
            "Counted with `strace -c -f` attached to the receiving process (tracing slows it, so "
            "these runs are not timed). *echo*: per datagram received and sent back; *sink*: per "
            "datagram received while a paced generator offers 20 kpps."
        )
        out.append("")
        rows = []
        for entry in sc:
            top = ", ".join(
                f"{k} {v:.2f}" for k, v in (entry.get("top") or {}).items() if v is not None
            )
            per = entry.get("per_datagram")
            rows.append([
                str(entry.get("path")), str(entry.get("role")), str(entry.get("datagrams")),
                "–" if per is None else f"{per:.2f}", top,
            ])  # fmt: skip
        out += _table(["path", "side", "datagrams", "syscalls/datagram", "main calls"], rows)
        out.append("")
    out.append("Where a received datagram's bytes are copied (kernel to user space counts):")
    out.append("")
    rows = [
        [p, str(path_info[p].get("copies", "?")), str(path_info[p].get("copies_note", ""))]
        for p in paths
        if p in path_info
    ]
    out += _table(["path", "copies", "where"], rows)
    return out


def _notes_section(results: Mapping[str, Any]) -> list[str]:
    out = ["", "## Notes", ""]
    out.append(
        "- RTT: ping-pong of one datagram at a time, both sides on the same path, after warm-up; "
        "receive kpps = datagrams received ÷ first-to-last arrival time; offered kpps = the "
        "veth's tx_packets ÷ generator run time; dropped = (offered − received) ÷ offered; "
        "send kpps = the veth's tx_packets ÷ send time; CPU from /proc/stat of each pinned core; "
        "sink CPU µs/datagram = the sink process's user + system time while receiving ÷ datagrams "
        "received, and capacity = its inverse (datagrams per second of the sink's own CPU: the "
        "generator's core also runs the veth's receive softirq, so it can cap the received rate "
        "below what the sink could take)."
    )
    out.append(
        "- These machines are noisy: compare paths within this run (ratios), not microseconds "
        "across runs."
    )
    for skipped in results.get("skipped", []):
        out.append(f"- skipped {skipped.get('path')}: {skipped.get('reason')}")
    failed = [r for r in results.get("runs", []) if not r.get("ok")]
    for run in failed[:20]:
        out.append(
            f"- failed: {run.get('workload')} {run.get('path')} {run.get('size')} B "
            f"rep {run.get('rep')}: {run.get('error')}"
        )
    if len(failed) > 20:
        out.append(f"- … {len(failed) - 20} more failed runs (see the JSON)")
    out.append(
        "- Every run's raw figures and exact commands are in the JSON file beside this report."
    )
    return out
