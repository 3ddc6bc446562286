"""The bench's report, chart, path registry and option handling, from a fixed results document."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rawtransport.bench import cli, paths, report
from rawtransport.bench.stats import Spread

PATHS = ["asyncio", "asyncio-maxsize", "uvloop", "raw-uvloop"]

# RTT p50 per path and repetition (µs), receive kpps, send kpps: chosen so medians and ratios are
# exact. uvloop: RTT 40, rx 200, tx 150; stock asyncio: RTT 100, rx 25, tx 150.
_RTT = {
    "asyncio": [100, 90, 120],
    "asyncio-maxsize": [50, 55, 45],
    "uvloop": [40, 38, 44],
    "raw-uvloop": [60, 20, 80],
}
_RX = {
    "asyncio": [25, 30, 20],
    "asyncio-maxsize": [100, 110, 90],
    "uvloop": [200, 190, 210],
    "raw-uvloop": [300, 250, 350],
}
_TX = {
    "asyncio": [150, 140, 160],
    "asyncio-maxsize": [150, 150, 150],
    "uvloop": [150, 149, 151],
    "raw-uvloop": [75, 70, 80],
}


def _runs() -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for path in PATHS:
        for rep in range(3):
            base = {
                "path": path,
                "size": 64,
                "family": 4,
                "rep": rep,
                "ok": True,
                "commands": [f"cmd {path} {rep}"],
            }
            runs.append(
                {
                    **base,
                    "workload": "rtt",
                    "figures": {
                        "p50_us": _RTT[path][rep],
                        "p99_us": _RTT[path][rep] * 2,
                        "p999_us": _RTT[path][rep] * 3,
                    },
                }
            )
            runs.append(
                {
                    **base,
                    "workload": "rx",
                    "figures": {
                        "kpps": _RX[path][rep],
                        "offered_kpps": 1000,
                        "drop_fraction": 0.5,
                        "cpu_sink": 0.9,
                        "cpu_generator": 1.0,
                    },
                }
            )
            runs.append(
                {
                    **base,
                    "workload": "tx",
                    "figures": {"send_kpps": _TX[path][rep], "cpu_sender": 1.0},
                }
            )
    runs.append(
        {
            "path": "uvloop",
            "size": 64,
            "family": 4,
            "rep": 3,
            "ok": False,
            "workload": "rtt",
            "error": "WorkerError: boom",
        }
    )
    return runs


RESULTS: dict[str, Any] = {
    "schema": 1,
    "started": "2025-01-01T00:00:00+00:00",
    "elapsed_s": 42.0,
    "command": "python -m rawtransport bench --reps 3",
    "config": {
        "paths": PATHS,
        "sizes": [64],
        "reps": 3,
        "families": [4],
        "rps": False,
        "client_cpu": 0,
        "server_cpu": 1,
        "generator": "trafgen",
    },
    "machine": {
        "cpu_model": "Test CPU 9000",
        "cpus_online": 2,
        "kernel": "6.18.0",
        "arch": "x86_64",
        "python": "3.11.7",
        "versions": {"uvloop": "0.23.0"},
        "hypervisor": "KVM",
    },
    "topology": {
        "description": "two test namespaces",
        "offloads": {"rx-checksumming": "on"},
        "rps": {"veth0": "rx-0=0"},
    },
    "paths": {
        p: {
            "label": paths.PATHS[p].label,
            "loop": paths.PATHS[p].loop,
            "api": paths.PATHS[p].api,
            "copies": paths.PATHS[p].copies,
            "copies_note": paths.PATHS[p].copies_note,
        }
        for p in PATHS
    },
    "baselines": {"uvloop": "uvloop", "stock": "asyncio"},
    "skipped": [
        {"path": "raw-bulk-uvloop", "reason": "this rawtransport has no rx_mode option yet"}
    ],
    "runs": _runs(),
    "syscalls": [
        {
            "path": "asyncio",
            "role": "sink",
            "datagrams": 200,
            "syscalls": 1028,
            "per_datagram": 5.14,
            "top": {"recvfrom": 1.0, "mmap": 1.0, "mremap": 1.0},
        },
        {
            "path": "raw-uvloop",
            "role": "sink",
            "datagrams": 200,
            "syscalls": 96,
            "per_datagram": 0.48,
            "top": {"epoll_pwait": 0.08},
        },
    ],
}


def test_aggregate_medians_and_extremes() -> None:
    agg = report.aggregate(RESULTS["runs"])
    rtt = agg["rtt"][4][64]
    assert rtt["asyncio"]["p50_us"] == Spread(100.0, 90.0, 120.0, 3)
    assert rtt["raw-uvloop"]["p999_us"] == Spread(180.0, 60.0, 240.0, 3)
    # The failed uvloop run is left out: three repetitions, not four.
    assert rtt["uvloop"]["p50_us"] == Spread(40.0, 38.0, 44.0, 3)
    assert agg["rx"][4][64]["uvloop"]["kpps"] == Spread(200.0, 190.0, 210.0, 3)
    assert agg["tx"][4][64]["raw-uvloop"]["send_kpps"].median == 75.0


def test_ratio_rows_against_both_baselines() -> None:
    agg = report.aggregate(RESULTS["runs"])
    rows = {r["path"]: r for r in report.ratio_rows(agg, PATHS, 4, 64, ("uvloop", "asyncio"))}
    raw = rows["raw-uvloop"]
    assert raw["rtt/uvloop"] == pytest.approx(60 / 40)
    assert raw["rtt/asyncio"] == pytest.approx(60 / 100)
    assert raw["rx/uvloop"] == pytest.approx(300 / 200)
    assert raw["rx/asyncio"] == pytest.approx(300 / 25)
    assert raw["tx/uvloop"] == pytest.approx(75 / 150)
    assert rows["uvloop"]["rtt/uvloop"] == pytest.approx(1.0)


def test_same_loop_kernel_path() -> None:
    info = {p: {"loop": s.loop, "api": s.api} for p, s in paths.PATHS.items()}
    assert report.same_loop_kernel(info, "raw-anyio-trio") == "anyio-trio"
    assert report.same_loop_kernel(info, "raw-asyncio") == "asyncio"
    assert report.same_loop_kernel(info, "raw-bulk-uvloop") == "uvloop"
    assert report.same_loop_kernel(info, "anyio-trio") is None
    agg = report.aggregate(RESULTS["runs"])
    own = {"raw-uvloop": "asyncio"}
    rows = {r["path"]: r for r in report.ratio_rows(agg, PATHS, 4, 64, ("uvloop", "asyncio"), own)}
    assert rows["raw-uvloop"]["rtt/own"] == pytest.approx(60 / 100)
    assert rows["uvloop"]["rtt/own"] is None


def test_ratio_rows_with_missing_baseline_are_none() -> None:
    agg = report.aggregate([r for r in RESULTS["runs"] if r["path"] != "uvloop"])
    rows = report.ratio_rows(agg, PATHS, 4, 64, ("uvloop", "asyncio"))
    assert all(r["rtt/uvloop"] is None for r in rows)
    assert rows[0]["rtt/asyncio"] == pytest.approx(1.0)


def test_kernel_ordering_agrees_and_disagrees() -> None:
    agg = report.aggregate(RESULTS["runs"])
    notes = report.kernel_ordering(agg, 4, 64)
    assert len(notes) == 2
    assert all("as on the reference machine" in n for n in notes)
    flipped = copy.deepcopy(RESULTS["runs"])
    for run in flipped:
        if run["path"] == "asyncio" and run["workload"] == "rtt":
            run["figures"]["p50_us"] = 10
    notes = report.kernel_ordering(report.aggregate(flipped), 4, 64)
    assert "asyncio > uvloop > asyncio-maxsize" in notes[0]
    assert "differs from the reference machine" in notes[0]


def test_fmt_spread() -> None:
    assert report.fmt_spread(None) == "–"
    assert report.fmt_spread(Spread(51.5, 48.25, 55.0, 3)) == "51.5 (48.2–55.0)"
    assert report.fmt_spread(Spread(51.5, 51.5, 51.5, 1)) == "51.5"
    assert report.fmt_spread(Spread(0.5, 0.25, 0.75, 3), percent=True) == "50.0 % (25.0–75.0)"


def test_render_markdown_from_fixed_json() -> None:
    md = report.render_markdown(json.loads(json.dumps(RESULTS)), chart="bench.png")
    assert md.startswith("# rawtransport bench")
    assert "![RTT and throughput per path](bench.png)" in md
    assert "Test CPU 9000 — 2 CPUs, virtualised (KVM)" in md
    assert "6.18.0" in md
    assert "uvloop 0.23.0" in md
    for path in PATHS:
        assert paths.PATHS[path].label in md
        assert paths.PATHS[path].copies_note in md
    # The ratio table row of the raw path: RTT 60 (20–80), 1.50× uvloop, 0.60× asyncio; rx 300.
    row = next(
        line for line in md.splitlines() if line.startswith("| raw ring (TPACKET_V2), uvloop")
    )
    # Each figure: ÷ uvloop, ÷ asyncio, ÷ the kernel path on its own loop (uvloop again).
    assert "60.0 (20.0–80.0) | 1.50× | 0.60× | 1.50× | 300.0 (250.0–350.0) | 1.50× | 12.00×" in row
    assert "75.0 (70.0–80.0) | 0.50× | 0.50× | 0.50×" in row
    # A kernel path has no same-loop ratio.
    row = next(line for line in md.splitlines() if line.startswith("| asyncio UDP (stock)"))
    assert row.endswith("| – |")
    assert "RTT p50: uvloop > asyncio-maxsize > asyncio (best first) — as on the reference" in md
    assert "**raw-uvloop**: RTT p50 1.50× uvloop's (worse); RTT p50 0.60× asyncio's (better)" in md
    assert "| asyncio | sink | 200 | 5.14 | recvfrom 1.00, mmap 1.00, mremap 1.00 |" in md
    assert "skipped raw-bulk-uvloop: this rawtransport has no rx_mode option yet" in md
    assert "failed: rtt uvloop 64 B rep 3: WorkerError: boom" in md
    assert "RPS off" in md


def test_render_markdown_without_chart_or_runs() -> None:
    md = report.render_markdown({"config": {"paths": []}, "runs": []}, chart=None)
    assert "![" not in md
    assert "## Notes" in md


def test_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from rawtransport.bench.chart import write_chart

    out = write_chart(RESULTS, tmp_path / "sub" / "bench.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000


def test_write_outputs(tmp_path: Path) -> None:
    files = cli.write_outputs(copy.deepcopy(RESULTS), tmp_path)
    assert json.loads(files["json"].read_text())["runs"] == RESULTS["runs"]
    assert "raw ring (TPACKET_V2), uvloop" in files["md"].read_text()
    assert files["png"].exists()


# ------------------------------------------------------------------------------ registry, options
def test_registry_baselines_and_order() -> None:
    assert paths.DEFAULT_PATHS[:3] == ("asyncio", "asyncio-maxsize", "uvloop")
    assert paths.BASELINE_UVLOOP in paths.PATHS
    assert paths.BASELINE_STOCK in paths.PATHS
    assert paths.PATHS["asyncio-maxsize"].max_size == 64 * 1024
    with pytest.raises(ValueError, match="known: asyncio"):
        paths.get_path("nope")


def test_unavailable_reason_names_a_missing_raw_option() -> None:
    spec = paths.PathSpec("raw-x", "x", "asyncio", "raw", 2, "", raw_options={"warp_drive": 1})
    reason = paths.unavailable_reason(spec)
    assert reason is not None
    assert "warp_drive" in reason
    assert paths.unavailable_reason(paths.PATHS["asyncio"]) is None
    odd = paths.PathSpec("odd", "odd", "asyncio", "kernel", 1, "", requires=("flux",))
    assert paths.unavailable_reason(odd) == "unknown requirement 'flux'"


def _args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_config_defaults_and_quick() -> None:
    cfg = cli.config_from_args(_args())
    assert cfg.reps == 3
    assert cfg.sizes == [64, 1400]
    assert cfg.paths == list(paths.DEFAULT_PATHS)
    assert cfg.families == [4]
    quick = cli.config_from_args(_args("--quick", "--paths", "asyncio,uvloop,asyncio"))
    assert (quick.reps, quick.sizes, quick.paths) == (1, [64], ["asyncio", "uvloop"])
    assert quick.rtt_count < 1000
    both = cli.config_from_args(_args("--both-families", "--sizes", "100", "--no-rps"))
    assert (both.families, both.sizes, both.rps) == ([4, 6], [100], False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--paths", "warp"], "unknown path"),
        (["--workloads", "rtt,zz"], "unknown workload"),
        (["--sizes", "4"], "8..1472"),
        (["--reps", "0"], "--reps"),
        (["--interface", "eth0"], "go together"),
    ],
)
def test_config_rejects(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cli.config_from_args(_args(*argv))


def test_main_lists_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--list-paths"]) == 0
    out = capsys.readouterr().out
    for name in paths.PATHS:
        assert name in out


def test_main_reports_bad_options_as_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--paths", "warp"])
    assert exc.value.code == 2
    assert "unknown path" in capsys.readouterr().err
