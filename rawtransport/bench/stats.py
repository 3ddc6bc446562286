"""The bench's arithmetic: percentiles, medians with min–max, ratios, and parsers for kernel text.

Pure: numbers and strings in, numbers out. Everything the report states is computed here, so it is
tested without namespaces, processes or clocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CpuTimes",
    "Spread",
    "busy_fractions",
    "median",
    "parse_proc_stat",
    "parse_snmp",
    "parse_strace_summary",
    "percentile",
    "ratio",
    "spread",
    "summarize_rtt",
]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 <= q <= 100) of already sorted values, linearly interpolated.

    This is the "linear" method (numpy's default, Hyndman & Fan type 7): rank ``q/100 * (n-1)``
    between the two nearest order statistics. Raises ``ValueError`` on an empty sequence.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile rank must be within [0, 100], got {q}")
    rank = q / 100.0 * (len(sorted_values) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = rank - lo
    return float(sorted_values[lo]) + (float(sorted_values[hi]) - float(sorted_values[lo])) * frac


def median(values: Iterable[float]) -> float:
    """The median (mean of the middle two for an even count). ``ValueError`` when empty."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of an empty sequence")
    return percentile(ordered, 50.0)


@dataclass(frozen=True)
class Spread:
    """A figure over repetitions: its median, minimum and maximum, and how many runs it covers."""

    median: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        """A JSON-friendly form."""
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median and min–max of the values that are not ``None`` (nor NaN); ``None`` if there are none."""
    kept = sorted(v for v in values if v is not None and not math.isnan(v))
    if not kept:
        return None
    return Spread(percentile(kept, 50.0), kept[0], kept[-1], len(kept))


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or ``None`` when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def summarize_rtt(samples_ns: Iterable[int]) -> dict[str, float]:
    """RTT figures in microseconds from round-trip samples in nanoseconds.

    Keys: ``n``, ``mean_us``, ``min_us``, ``p50_us``, ``p90_us``, ``p99_us``, ``p999_us``,
    ``max_us``. ``ValueError`` when there are no samples.
    """
    ordered = sorted(samples_ns)
    if not ordered:
        raise ValueError("no RTT samples")
    us = 1e-3
    return {
        "n": float(len(ordered)),
        "mean_us": sum(ordered) / len(ordered) * us,
        "min_us": ordered[0] * us,
        "p50_us": percentile(ordered, 50.0) * us,
        "p90_us": percentile(ordered, 90.0) * us,
        "p99_us": percentile(ordered, 99.0) * us,
        "p999_us": percentile(ordered, 99.9) * us,
        "max_us": ordered[-1] * us,
    }


# ------------------------------------------------------------------------------------ /proc/stat
@dataclass(frozen=True)
class CpuTimes:
    """One ``cpuN`` line of ``/proc/stat`` in clock ticks: the busy part and the total."""

    busy: int
    total: int


def parse_proc_stat(text: str) -> dict[str, CpuTimes]:
    """Per-CPU times from ``/proc/stat`` text, keyed ``"cpu"`` (all) and ``"cpu0"``, ``"cpu1"`` …

    Fields (proc(5)): user nice system idle iowait irq softirq steal guest guest_nice. Guest time is
    already inside user/nice, so it is not added twice; idle and iowait are not busy. Softirq is busy:
    on veth it is where the receive path's kernel work is charged.
    """
    cpus: dict[str, CpuTimes] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu"):
            continue
        fields = [int(x) for x in parts[1:11]] + [0] * (10 - len(parts[1:11]))
        user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
        busy = user + nice + system + irq + softirq + steal
        cpus[parts[0]] = CpuTimes(busy=busy, total=busy + idle + iowait)
    return cpus


def busy_fractions(
    before: Mapping[str, CpuTimes], after: Mapping[str, CpuTimes]
) -> dict[str, float]:
    """Busy share (0..1) of each CPU between two snapshots; CPUs with no elapsed ticks are left out."""
    out: dict[str, float] = {}
    for name, end in after.items():
        start = before.get(name)
        if start is None:
            continue
        total = end.total - start.total
        if total > 0:
            out[name] = max(0.0, min(1.0, (end.busy - start.busy) / total))
    return out


# ------------------------------------------------------------------------------- /proc/net/snmp
def parse_snmp(text: str) -> dict[str, int]:
    """Counters of ``/proc/net/snmp`` (pairs of header/value lines) and ``/proc/net/snmp6``.

    Keys are ``"Udp.RcvbufErrors"`` style for snmp and the bare name (``"Udp6RcvbufErrors"``) for
    snmp6, whose lines are ``name value``.
    """
    out: dict[str, int] = {}
    lines = text.splitlines()
    pending: dict[str, list[str]] = {}
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0].endswith(":"):
            proto = parts[0][:-1]
            if proto in pending:
                names = pending.pop(proto)
                for name, value in zip(names, parts[1:], strict=False):
                    try:
                        out[f"{proto}.{name}"] = int(value)
                    except ValueError:
                        continue
            else:
                pending[proto] = parts[1:]
        elif len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


# ---------------------------------------------------------------------------------- strace -c
def parse_strace_summary(text: str) -> dict[str, int]:
    """System call counts from ``strace -c`` output: ``{"recvfrom": 2000, …, "total": 4100}``.

    The table's columns are ``% time, seconds, usecs/call, calls, [errors], syscall``; the errors
    column may be blank, so the name is the last field and the count the fourth. Lines that are not
    table rows (headers, rules, strace's own messages) are skipped.
    """
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0].startswith(("%", "-")):
            continue
        try:
            float(parts[0])
            calls = int(parts[3])
        except ValueError:
            continue
        name = parts[-1]
        counts[name] = counts.get(name, 0) + calls
    if "total" not in counts:
        counts["total"] = sum(counts.values())
    return counts
