"""``python -m rawtransport bench idle``: does a busy endpoint slow down beside many idle ones?

On the raw path all endpoints of an event loop share one stack: one receiving packet socket, one
ring and one kernel filter that accepts the union of their ports. Every endpoint added makes that
filter longer (a binary search over the ports) and the demultiplexing table larger, so the receive
rate of a busy endpoint could fall as idle ones are opened beside it. This bench measures it.

In fresh namespaces (:mod:`rawtransport.bench.topology`) a sink endpoint in namespace B counts
datagrams while the main bench's load generator (trafgen when installed, else the worker's
``blast`` role) floods its port from namespace A, exactly as the main bench's receive workload
(:meth:`rawtransport.bench.runner.Runner.rx`) does. Each run is made with no idle endpoints and
with ``--idle`` of them, opened before the measurement on the sink's loop, bound to the sink's
address on distinct ports and never sent to. The raw path is measured, and the kernel path on the
same loop (the same number of kernel UDP endpoints) for reference: on asyncio both the stock
transport and ``asyncio-maxsize`` (see :data:`_PATHS` for why). For each it prints the medians over
``--repeat`` runs of the sink's receive rate (first to last arrival) and of its CPU time per
datagram (which other load on a shared machine moves less than the rate), the ratios idle ÷ none
of those medians, and every run's rate (the fastest run of each case is a second estimate: other
load only ever slows a run down).

Not a timed test: a command, for a person to read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rawtransport.bench.runner import BenchConfig

__all__ = ["main"]

#: The paths measured for each ``--loop`` (:data:`rawtransport.bench.paths.PATHS`): the raw one
#: first, then the kernel ones. On asyncio the stock kernel transport receives every datagram into
#: a fresh 256 KiB buffer, and whether glibc serves that from the heap or with mmap (then every
#: datagram also costs mmap + mremap + munmap) depends on the heap, which 999 more endpoints change:
#: its figure moves for reasons that have nothing to do with socket lookup. asyncio-maxsize (a
#: 64 KiB buffer, always in the heap) is the kernel reference without that.
_PATHS: dict[str, tuple[str, ...]] = {
    "asyncio": ("raw-asyncio", "asyncio", "asyncio-maxsize"),
    "uvloop": ("raw-uvloop", "uvloop"),
}
# Below this fraction of offered datagrams dropped, the sink kept up with the generator, so the
# rate measured is the generator's rather than the sink's and says little about idle endpoints.
_SATURATED_DROPS = 0.05
_TARGET = 0.90  # the rate with idle endpoints should stay within 10 % of the rate without
# Repeated runs whose rates differ more than this were disturbed (other load on the machine).
_SPREAD = 1.5

#: Every run's receive figures (:meth:`rawtransport.bench.runner.Runner.rx`) by (path, idle count).
Runs = dict[tuple[str, int], list[dict[str, Any]]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rawtransport bench idle",
        description="Receive rate of one busy endpoint with N idle endpoints beside it on the same "
        "loop, against none: raw path, and the kernel path for reference.",
    )
    parser.add_argument(
        "--idle", type=int, default=999, help="idle endpoints beside the busy one (default 999)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.75,
        help="seconds of offered load per run (default 0.75)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (default 64)")
    parser.add_argument(
        "--loop", choices=sorted(_PATHS), default="asyncio", help="event loop (default asyncio)"
    )
    return parser


def _config(args: argparse.Namespace, paths: tuple[str, ...]) -> BenchConfig:
    """The main bench's configuration for its receive workload on ``paths``."""
    from rawtransport.bench.cli import build_parser, config_from_args

    # The main bench's own option handling picks the generator (trafgen if present) and the CPUs
    # (generator and sink each on their own), so both benches measure receive the same way.
    return config_from_args(
        build_parser().parse_args(
            ["--paths", ",".join(paths), "--sizes", str(args.size), "--workloads", "rx",
             "--duration", str(args.duration), "--reps", str(args.repeat), "--no-strace"]
        )
    )  # fmt: skip


def _measure(args: argparse.Namespace, cfg: BenchConfig, paths: tuple[str, ...]) -> Runs:
    """Every run's receive figures, keyed by (path, idle count)."""
    from rawtransport.bench.runner import Runner
    from rawtransport.bench.topology import topology

    runs: Runs = {(p, n): [] for p in paths for n in (0, args.idle)}
    with topology() as topo:
        runner = Runner(topo, cfg)
        try:
            for rep in range(args.repeat):
                # Alternate which case goes first, so a warming (or tiring) machine favours neither.
                counts = (0, args.idle) if rep % 2 == 0 else (args.idle, 0)
                for path in paths:
                    for idle in counts:
                        figures, _ = runner.rx(path, args.size, 4, idle=idle)
                        runs[(path, idle)].append(figures)
        finally:
            runner.close()
    return runs


def _rate(figures: dict[str, Any]) -> float | None:
    """The sink's receive rate, kpps (first to last arrival)."""
    kpps = figures.get("kpps")
    return None if kpps is None else float(kpps)


def _cpu(figures: dict[str, Any]) -> float | None:
    """The sink's CPU time per datagram received, µs (user + system, from ready to stop)."""
    ru, received = figures.get("sink_receive_rusage"), int(figures.get("received") or 0)
    if not ru or received < 1:
        return None
    return (float(ru["user_s"]) + float(ru["system_s"])) / received * 1e6


def _median(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else float("nan")


def _report(args: argparse.Namespace, cfg: BenchConfig, paths: tuple[str, ...], runs: Runs) -> None:
    from rawtransport.bench.paths import LOOP_LABELS
    from rawtransport.datapath import DATAPATH

    n = args.idle
    print(
        f"1 busy endpoint with {n} idle ones beside it (same loop, same address, distinct ports) "
        f"vs none: receiving over veth, IPv4, {args.size} B payloads, {LOOP_LABELS[args.loop]}; "
        f"raw datapath {DATAPATH}; generator {cfg.generator}; medians of {args.repeat} runs of "
        f"{args.duration:g} s\n"
    )
    metrics: tuple[tuple[str, Callable[[dict[str, Any]], float | None], str], ...] = (
        ("kpps", _rate, ".1f"),
        ("CPU µs/datagram", _cpu, ".2f"),
    )
    rows: list[tuple[str, tuple[str, str, str]]] = []
    ratio: dict[tuple[str, str], float] = {}
    for i, path in enumerate(paths):
        for name, metric, fmt in metrics:
            without, beside = (_median([metric(f) for f in runs[(path, k)]]) for k in (0, n))
            ratio[(path, name)] = beside / without if without > 0 else float("nan")
            cells = (format(without, fmt), format(beside, fmt), f"{ratio[(path, name)]:.3f}")
            rows.append((f"{'raw' if i == 0 else 'kernel'} ({path}) {name}", cells))
    head = ("no idle", f"{n} idle", "idle ÷ none")
    width = max(len(label) for label, _ in rows)
    widths = [max(10, len(h)) for h in head]  # each column as wide as its heading, at least 10
    for label, cells in [("", head), *rows]:
        print(
            f"{label:{width}}  "
            + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    rate, cpu = ratio[(paths[0], "kpps")], ratio[(paths[0], "CPU µs/datagram")]
    # Other load only ever slows a run down, so the fastest run of each case is the nearest to
    # what the machine can do undisturbed: a second estimate beside the median.
    best0, best1 = (
        max((r for r in map(_rate, runs[(paths[0], k)]) if r is not None), default=float("nan"))
        for k in (0, n)
    )
    print(
        f"\nraw: {n} idle endpoints change the busy endpoint's receive rate by "
        f"{(rate - 1) * 100:+.1f} % ({'meets' if rate >= _TARGET else 'MISSES'} the target: at most "
        f"10 % slower) and its "
        f"CPU per datagram by {(cpu - 1) * 100:+.1f} %; fastest runs {best0:.1f} and "
        f"{best1:.1f} kpps ({(best1 / best0 - 1) * 100:+.1f} %)"
    )
    _details(args, paths, runs)


def _details(args: argparse.Namespace, paths: tuple[str, ...], runs: Runs) -> None:
    """Every run's figures, and what a reader should know before trusting the medians."""
    notes: list[str] = []
    for path in paths:
        for idle in (0, args.idle):
            figures = runs[(path, idle)]
            rates = [r for r in (_rate(f) for f in figures) if r is not None]
            offered = [float(f.get("offered_kpps") or 0) for f in figures]
            print(
                f"runs: {path}, {idle} idle: "
                + ", ".join(f"{r:.1f}" for r in rates)
                + " kpps received; offered "
                + ", ".join(f"{o:.0f}" for o in offered)
            )
            if rates and min(rates) > 0 and max(rates) / min(rates) > _SPREAD:
                notes.append(
                    f"{path}, {idle} idle: repeated runs' rates differ up to "
                    f"{max(rates) / min(rates):.1f}× (other load on this machine?); the CPU "
                    "µs/datagram rows usually move less; more --repeat steadies the medians"
                )
            if _median([f.get("drop_fraction") for f in figures]) < _SATURATED_DROPS:
                notes.append(
                    f"{path}, {idle} idle: the sink kept up with the generator (under 5 % "
                    "dropped), so the rate is the generator's, not the sink's"
                )
            strays = sum(int(f.get("idle_received") or 0) for f in figures)
            if strays:
                notes.append(f"{path}: idle endpoints received {strays} datagrams (expected none)")
    if "asyncio" in paths:
        notes.append(
            "asyncio (stock) receives each datagram into a fresh 256 KiB buffer; when glibc serves "
            "it with mmap (the idle endpoints' allocations can tip the heap that way) every "
            "datagram also costs mmap + mremap + munmap; asyncio-maxsize (64 KiB, from the heap) "
            "is the kernel path without that"
        )
    for note in notes:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    """Run the idle-endpoints bench and print its table; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    if args.idle < 1 or args.repeat < 1 or args.duration <= 0:
        parser.error("--idle and --repeat must be positive, --duration > 0")
    if not 8 <= args.size <= 1472:
        parser.error("--size must be within 8..1472 bytes (one 1500-byte frame)")
    from rawtransport.bench.paths import PATHS, unavailable_reason

    paths = _PATHS[args.loop]
    for name in paths:
        reason = unavailable_reason(PATHS[name])
        if reason:
            print(f"bench idle: path {name} cannot run here: {reason}", file=sys.stderr)
            return 2
    if os.geteuid() != 0:
        print("bench idle: needs root (namespaces and CAP_NET_RAW)", file=sys.stderr)
        return 2
    cfg = _config(args, paths)
    try:
        runs = _measure(args, cfg, paths)
    except KeyboardInterrupt:
        print("bench idle: interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as exc:  # a runner's WorkerError is a RuntimeError
        print(f"bench idle: {exc}", file=sys.stderr)
        return 1
    _report(args, cfg, paths, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
