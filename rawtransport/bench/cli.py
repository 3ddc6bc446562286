"""``python -m rawtransport bench``: the whole comparison, its report, JSON and chart.

``main(argv)`` parses the options, builds the namespaces (or uses ``--interface/--peer``), runs every
(repetition, size, path, workload) with a ``rich`` progress display, counts syscalls, and writes
``bench.md``, ``bench.json`` and ``bench.png`` to ``--out``. The namespaces and every process are
gone when it returns, also after Ctrl-C, SIGTERM or a crash.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rawtransport.bench import machine as machine_mod
from rawtransport.bench.paths import (
    BASELINE_STOCK,
    BASELINE_UVLOOP,
    DEFAULT_PATHS,
    PATHS,
    unavailable_reason,
)
from rawtransport.bench.report import render_markdown
from rawtransport.bench.runner import BenchConfig, Runner, WorkerError
from rawtransport.bench.topology import NicSite, Topology, topology

__all__ = ["build_parser", "config_from_args", "main"]

_WORKLOADS = ("rtt", "rx", "tx")


def _csv(kind: type[Any]) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``bench`` options."""
    p = argparse.ArgumentParser(
        prog="python -m rawtransport bench",
        description=(
            "Compare the raw AF_PACKET path with the kernel UDP path (asyncio, asyncio with a "
            "fixed max_size, uvloop, anyio/trio) in fresh namespaces joined by a veth pair: "
            "RTT, receive throughput, send rate, syscalls and copies per datagram."
        ),
        epilog="Also: `bench codec`, `bench endpoints` (one endpoint per query) and `bench idle` "
        "(one busy endpoint beside N idle ones); each has its own --help.",
    )
    p.add_argument("--paths", type=_csv(str), default=list(DEFAULT_PATHS),
                   help=f"comma-separated (default: all): {', '.join(PATHS)}")  # fmt: skip
    p.add_argument("--sizes", type=_csv(int), default=[64, 1400], help="payload sizes in bytes")
    p.add_argument("--reps", type=int, default=3, help="repetitions per figure (median, min–max)")
    p.add_argument("--duration", type=float, default=0.75, help="seconds per throughput run")
    p.add_argument("--rtt-count", type=int, default=3000, help="timed round trips per run")
    p.add_argument("--rtt-warmup", type=int, default=300, help="untimed round trips first")
    p.add_argument("--workloads", type=_csv(str), default=list(_WORKLOADS),
                   help="comma-separated subset of rtt,rx,tx")  # fmt: skip
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("--ipv6", action="store_const", dest="families", const=[6],
                     help="IPv6 instead of IPv4")  # fmt: skip
    fam.add_argument("--both-families", action="store_const", dest="families", const=[4, 6],
                     help="IPv4 and IPv6")  # fmt: skip
    p.set_defaults(families=[4])
    p.add_argument("--rps", action=argparse.BooleanOptionalAction, default=False,
                   help="steer each veth end's receive softirq to its own side's CPU")  # fmt: skip
    p.add_argument("--strace", action=argparse.BooleanOptionalAction, default=True,
                   help="count syscalls per datagram with strace (default on)")  # fmt: skip
    p.add_argument("--generator", choices=["trafgen", "python"], default="trafgen",
                   help="receive-throughput load generator (python: a tight sendto loop)")  # fmt: skip
    p.add_argument("--interface", help="measure over this real interface instead of a veth pair")
    p.add_argument("--peer", help="HOST:PORT of a UDP echo reachable via --interface (the only "
                   "address the bench then talks to)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: 1 repetition, 64 B, tiny counts")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.add_argument("--list-paths", action="store_true", help="list the paths and exit")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Validate the options into a :class:`BenchConfig` (``ValueError`` with a message)."""
    unknown = [p for p in args.paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(PATHS)}")
    bad = [w for w in args.workloads if w not in _WORKLOADS]
    if bad:
        raise ValueError(f"unknown workload(s) {', '.join(bad)}; known: {', '.join(_WORKLOADS)}")
    if any(not 8 <= s <= 1472 for s in args.sizes):
        raise ValueError("payload sizes must be within 8..1472 bytes (one 1500-byte frame)")
    if args.reps < 1 or args.duration <= 0 or args.rtt_count < 1 or args.rtt_warmup < 0:
        raise ValueError("--reps and --rtt-count must be >= 1, --duration > 0")
    if bool(args.interface) != bool(args.peer):
        raise ValueError("--interface and --peer go together")
    cfg = BenchConfig(
        paths=list(dict.fromkeys(args.paths)),
        sizes=list(dict.fromkeys(args.sizes)),
        reps=args.reps,
        duration=args.duration,
        rtt_count=args.rtt_count,
        rtt_warmup=args.rtt_warmup,
        families=args.families,
        rps=args.rps,
        workloads=list(dict.fromkeys(args.workloads)),
        strace=args.strace and shutil.which("strace") is not None,
        generator=args.generator if shutil.which("trafgen") else "python",
        quick=args.quick,
    )
    if args.quick:
        cfg.reps, cfg.duration, cfg.rtt_count, cfg.rtt_warmup = 1, 0.25, 300, 50
        if args.sizes == [64, 1400]:  # the default: the smoke run keeps to one size
            cfg.sizes = [64]
        cfg.strace_count = 200
    if args.interface:
        cfg.workloads = [w for w in cfg.workloads if w != "rx"]  # needs a generator at the peer
        cfg.strace = False
    cpus = sorted(os.sched_getaffinity(0))
    cfg.client_cpu = cpus[0]
    cfg.server_cpu = cpus[1] if len(cpus) > 1 else cpus[0]
    return cfg


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )


def _site_setup(site: Topology | NicSite, cfg: BenchConfig) -> dict[str, Any]:
    if isinstance(site, NicSite):
        return {
            "description": f"real interface {site.interface} to peer {site.peer}:{site.peer_port}",
            "offloads": machine_mod.offloads([], site.interface),
            "rps": machine_mod.rps_masks([], site.interface),
        }
    if cfg.rps:
        site.set_rps("b", {cfg.server_cpu} if cfg.server_cpu is not None else None)
        site.set_rps("a", {cfg.client_cpu} if cfg.client_cpu is not None else None)
    rps = {
        f"{site.ifname(side)}": ",".join(
            f"{q}={m}"
            for q, m in machine_mod.rps_masks(site.exec_prefix(side), site.ifname(side)).items()
        )
        for side in ("a", "b")
    }
    return {
        "description": (
            f"namespaces {site.ns_a} ({site.ip4_a}, {site.ip6_a}) and {site.ns_b} "
            f"({site.ip4_b}, {site.ip6_b}) joined by veth {site.if_a}/{site.if_b}"
        ),
        "offloads": machine_mod.offloads(site.exec_prefix("b"), site.if_b),
        "rps": rps,
        "commands": list(site.commands),
    }


def run_bench(cfg: BenchConfig, site: Topology | NicSite, progress: bool) -> dict[str, Any]:
    """Run every selected measurement on ``site``; return the results document."""
    skipped = []
    paths = []
    for name in cfg.paths:
        reason = unavailable_reason(PATHS[name])
        if reason:
            skipped.append({"path": name, "reason": reason})
        else:
            paths.append(name)
    cfg.paths = paths
    results: dict[str, Any] = {
        "schema": 1,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": cfg.as_dict(),
        "machine": machine_mod.describe(),
        "topology": _site_setup(site, cfg),
        "generator": cfg.generator,
        "baselines": {"uvloop": BASELINE_UVLOOP, "stock": BASELINE_STOCK},
        "paths": {
            n: {
                "label": PATHS[n].label,
                "loop": PATHS[n].loop,
                "api": PATHS[n].api,
                "copies": PATHS[n].copies,
                "copies_note": PATHS[n].copies_note,
            }
            for n in paths
        },
        "skipped": skipped,
        "runs": [],
        "syscalls": [],
    }
    runner = Runner(site, cfg)
    cells = [
        (rep, fam, size, path, w)
        for rep in range(cfg.reps)
        for fam in cfg.families
        for size in cfg.sizes
        for path in paths
        for w in cfg.workloads
    ]
    traced = [(p, role) for p in paths for role in ("echo", "sink")] if cfg.strace else []
    t0 = time.monotonic()
    try:
        with _progress(progress) as bar:
            task = bar.add_task("bench", total=len(cells) + len(traced))
            for rep, fam, size, path, workload in cells:
                bar.update(task, description=f"rep {rep + 1} IPv{fam} {size} B {path} {workload}")
                entry: dict[str, Any] = {"workload": workload, "path": path, "size": size,
                                         "family": fam, "rep": rep}  # fmt: skip
                try:
                    figures, commands = getattr(runner, workload)(path, size, fam)
                    entry.update(ok=True, figures=figures, commands=commands)
                except (WorkerError, RuntimeError, OSError, ValueError, KeyError) as exc:
                    entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
                results["runs"].append(entry)
                bar.advance(task)
            for path, role in traced:
                bar.update(task, description=f"strace {path} {role}")
                try:
                    results["syscalls"].append(runner.syscalls(path, role, cfg.families[0]))
                except (WorkerError, RuntimeError, OSError, ValueError, KeyError) as exc:
                    results["syscalls"].append(
                        {"path": path, "role": role, "error": f"{type(exc).__name__}: {exc}"}
                    )
                bar.advance(task)
    finally:
        runner.close()
    results["elapsed_s"] = time.monotonic() - t0
    return results


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.png`` (when matplotlib is there) and ``bench.md``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "bench.json", "md": out / "bench.md"}
    files["json"].write_text(json.dumps(results, indent=1) + "\n")
    chart: str | None = None
    try:
        from rawtransport.bench.chart import write_chart

        files["png"] = write_chart(results, out / "bench.png")
        chart = "bench.png"
    except ImportError as exc:
        results.setdefault("skipped", []).append({"path": "chart", "reason": str(exc)})
    files["md"].write_text(render_markdown(results, chart=chart))
    return files


def main(argv: list[str]) -> int:
    """Entry point of ``python -m rawtransport bench`` (not ``bench codec``): 0 on success.

    ``bench idle …`` is handed to :mod:`rawtransport.bench.idle`.
    """
    if argv[:1] == ["idle"]:
        # Dispatched here rather than in rawtransport/__main__.py, which sends every `bench`
        # command line it does not know to this function.
        from rawtransport.bench.idle import main as idle_main

        return idle_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_paths:
        for name, spec in PATHS.items():
            reason = unavailable_reason(spec)
            print(f"{name:18} {spec.label}" + (f"  [unavailable: {reason}]" if reason else ""))
        return 0
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if os.geteuid() != 0:
        print(
            "bench: needs root (CAP_NET_ADMIN for namespaces, CAP_NET_RAW for the raw path); "
            "run `python -m rawtransport doctor` for what is missing",
            file=sys.stderr,
        )
        return 2
    command = "python -m rawtransport bench " + shlex.join(argv)
    try:
        if args.interface:
            host, _, port = args.peer.rpartition(":")
            site: Topology | NicSite = NicSite.probe(args.interface, host.strip("[]"), int(port))
            results = run_bench(cfg, site, not args.no_progress)
        else:
            with topology() as topo:
                results = run_bench(cfg, topo, not args.no_progress)
    except KeyboardInterrupt:
        print("bench: interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    results["command"] = command.strip()
    files = write_outputs(results, args.out)
    failed = sum(1 for r in results["runs"] if not r.get("ok"))
    print(f"report: {files['md']}\ndata:   {files['json']}" +
          (f"\nchart:  {files['png']}" if "png" in files else ""))  # fmt: skip
    if failed:
        print(f"bench: {failed} of {len(results['runs'])} runs failed (see the report)",
              file=sys.stderr)  # fmt: skip
    return 1 if failed == len(results["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
