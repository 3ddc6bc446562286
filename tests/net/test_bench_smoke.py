"""A short real run of ``python -m rawtransport bench --quick`` in its own namespaces.

Checks the outputs (report, JSON, chart) cover every selected path and workload, and that the
namespaces and processes are gone afterwards — also when the run is stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.netns import wait_for

ROOT = Path(__file__).resolve().parents[2]
SELECTED = ["asyncio", "uvloop", "raw-uvloop"]


def _start(*args: str) -> subprocess.Popen[str]:
    """``python -m ARGS`` with this checkout first on the path, its output piped."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Its stdout and stderr once it exits; killed (by its PID) if it outlives ``timeout``."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _bench(out: Path, *extra: str) -> subprocess.Popen[str]:
    return _start(
        "rawtransport.bench.cli", "--quick", "--no-progress", "--paths", ",".join(SELECTED),
        "--out", str(out), *extra,
    )  # fmt: skip


def _namespaces_of(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if f"rtb-{pid}-" in line]


def _workers_of(pid: int) -> list[int]:
    """Bench workers running inside the namespaces of the bench process ``pid``."""
    out = subprocess.run(
        ["pgrep", "-f", "rawtransport.bench.worker"], check=False, capture_output=True, text=True
    )
    mine = []
    for worker in (int(p) for p in out.stdout.split()):
        ns = subprocess.run(
            ["ip", "netns", "identify", str(worker)], check=False, capture_output=True, text=True
        ).stdout.strip()
        if ns.startswith(f"rtb-{pid}-"):
            mine.append(worker)
    return mine


def _children_alive(pids: list[int]) -> list[int]:
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


def test_quick_bench_writes_report_json_and_chart(tmp_path: Path) -> None:
    proc = _bench(tmp_path)
    stdout, stderr = _finish(proc, 100)
    assert proc.returncode == 0, stderr[-3000:]
    assert "report:" in stdout
    data = json.loads((tmp_path / "bench.json").read_text())
    md = (tmp_path / "bench.md").read_text()
    png = (tmp_path / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["config"]["paths"] == SELECTED
    assert data["machine"]["kernel"]
    for path in SELECTED:
        label = data["paths"][path]["label"]
        assert label in md
        for workload in ("rtt", "rx", "tx"):
            runs = [r for r in data["runs"] if r["path"] == path and r["workload"] == workload]
            assert len(runs) == 1, (path, workload)
            assert runs[0]["ok"], runs[0].get("error")
            assert runs[0]["commands"], (path, workload)
        rtt = next(r for r in data["runs"] if r["path"] == path and r["workload"] == "rtt")
        assert 0 < rtt["figures"]["p50_us"] < 100_000
        assert rtt["figures"]["n"] == data["config"]["rtt_count"]
        rx = next(r for r in data["runs"] if r["path"] == path and r["workload"] == "rx")
        assert rx["figures"]["received"] > 0
        assert rx["figures"]["offered"] >= rx["figures"]["received"]
        tx = next(r for r in data["runs"] if r["path"] == path and r["workload"] == "tx")
        assert tx["figures"]["frames"] > 0
        calls = [s for s in data["syscalls"] if s["path"] == path]
        assert {s["role"] for s in calls} == {"echo", "sink"}
        assert all(s.get("per_datagram") for s in calls), calls
    assert _namespaces_of(proc.pid) == []


def test_sigterm_mid_run_removes_namespaces_and_workers(tmp_path: Path) -> None:
    proc = _bench(tmp_path, "--no-strace")
    try:
        wait_for(lambda: bool(_namespaces_of(proc.pid)), timeout=30, what="bench namespaces")

        # Wait until a worker runs inside them, so there is something to clean up.
        seen: list[int] = []

        def found_worker() -> bool:
            seen.extend(_workers_of(proc.pid))
            return bool(seen)

        wait_for(found_worker, timeout=30, what="a worker in the bench's namespaces")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert _namespaces_of(proc.pid) == []
    wait_for(lambda: not _children_alive(seen), timeout=10, what="workers gone")


def _bench_command(*args: str) -> tuple[str, int]:
    """Run ``python -m rawtransport bench ARGS`` to the end; its stdout and its PID."""
    proc = _start("rawtransport", "bench", *args)
    out, err = _finish(proc, 300)
    assert proc.returncode == 0, err
    return out, proc.pid


def _table(block: str) -> dict[str, list[str]]:
    """The rows of a printed table (heading line first): label -> cells."""
    cells = [re.split(r"\s{2,}", line.strip()) for line in block.splitlines()[1:] if line.strip()]
    return {c[0]: c[1:] for c in cells}


def test_bench_endpoints_reports_both_paths_and_cleans_up() -> None:
    """``bench endpoints`` with a few queries: every row has a kernel and a raw figure, and the
    namespaces it made are gone when it returns."""
    out, pid = _bench_command("endpoints", "--queries", "5", "--concurrency", "3", "--repeat", "1")
    title, table = out.split("\n\n")[:2]
    assert "stdlib asyncio loop" in title, out
    rows = _table(table)
    assert set(rows) == {
        "query p50 µs",
        "query p99 µs",
        "endpoints per second",
        "worst loop stall ms",
        "5 queries, 3 at a time, ms",
        "worst stall then, ms",
    }, out
    for label, (kernel, raw, _ratio) in rows.items():
        assert float(kernel) >= 0, (label, out)
        assert float(raw) > 0, (label, out)
    assert float(rows["endpoints per second"][0]) > 0, out
    assert _namespaces_of(pid) == []


def test_bench_idle_reports_both_paths_and_cleans_up() -> None:
    """``bench idle`` with 20 idle endpoints and one short run: both paths have a rate with and
    without them and a ratio, and the namespaces it made are gone when it returns."""
    out, pid = _bench_command("idle", "--idle", "20", "--duration", "0.3", "--repeat", "1")
    title, table, verdict = out.split("\n\n")[:3]
    assert "20 idle" in title, out
    assert "stdlib asyncio loop" in title, out
    rows = _table(table)
    assert set(rows) == {
        f"{kind} ({path}) {metric}"
        for kind, path in (
            ("raw", "raw-asyncio"),
            ("kernel", "asyncio"),
            ("kernel", "asyncio-maxsize"),
        )
        for metric in ("kpps", "CPU µs/datagram")
    }, out
    for label, cells in rows.items():
        assert len(cells) == 3, (label, out)  # no idle, 20 idle, idle ÷ none
        assert all(float(c) > 0 for c in cells), (label, out)
    assert verdict.startswith("raw: 20 idle endpoints"), out
    assert "expected none" not in verdict, out  # no datagram reached an idle endpoint
    assert _namespaces_of(pid) == []
