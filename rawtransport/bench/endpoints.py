"""``python -m rawtransport bench endpoints``: the cost of an endpoint's life, raw path vs kernel path.

Programs such as dnspython open one datagram endpoint per query. This bench runs that pattern in
two fresh namespaces (:mod:`rawtransport.bench.topology`): a kernel UDP echo in namespace B, and in
namespace A a client that, per query, opens an endpoint connected to the echo, sends one datagram,
waits for the answer and closes the endpoint. For each path (the loop's kernel endpoint and the raw
endpoint, on the stdlib asyncio loop or, with ``--loop uvloop``, on uvloop) it reports:

- per-query latency (open + first round trip + close): p50 and p99, over ``--queries`` queries one
  after the other;
- endpoints per second: those ``--queries`` sequential queries divided by the time they took (each
  an endpoint's whole life: open, first datagram's round trip, close);
- the longest stall of the event loop meanwhile: a ticker task sleeps 1 ms at a time and records how
  late it wakes (what every other task on the loop suffers);
- the time for ``--queries`` queries run ``--concurrency`` at a time.

Medians over ``--repeat`` runs. Not a timed test: a command, for a person to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["main"]

_PORT = 40053
_ECHO = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    "s.bind((sys.argv[1],int(sys.argv[2])))\n"
    "print('ready',flush=True)\n"
    "while True:\n"
    "    d,a=s.recvfrom(2048)\n"
    "    s.sendto(d,a)\n"
)


class _Query(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def _query(path: str, server: tuple[str, int]) -> float:
    """One query on a fresh endpoint; seconds from before the open to after the close."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    t: asyncio.DatagramTransport
    if path == "raw":
        import rawtransport

        t, p = await rawtransport.create_raw_datagram_endpoint(_Query, remote_addr=server)
    else:
        t, p = await loop.create_datagram_endpoint(_Query, remote_addr=server)
    try:
        t.sendto(b"query")
        await asyncio.wait_for(p.answer, 5)
    finally:
        t.close()
    return time.perf_counter() - t0


async def _with_ticker(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """Run ``work`` while a 1 ms ticker measures the longest loop stall (seconds)."""
    worst = 0.0
    stop = False

    async def tick() -> None:
        nonlocal worst
        while not stop:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        result = await work()
    finally:
        stop = True
        await ticker
    return result, worst


async def _client(
    path: str, server: tuple[str, int], queries: int, concurrency: int
) -> dict[str, Any]:
    for _ in range(3):  # warm-up: neighbour caches, imports, first-use allocations
        await _query(path, server)

    async def sequential() -> tuple[list[float], float]:
        t0 = time.perf_counter()
        # Wall time of the whole series, not the sum of the latencies: what passes between one
        # query's close and the next one's open (the loop's own work) counts against the rate.
        latencies = [await _query(path, server) for _ in range(queries)]
        return latencies, time.perf_counter() - t0

    (latencies, elapsed), stall = await _with_ticker(sequential)
    sem = asyncio.Semaphore(concurrency)

    async def one() -> float:
        async with sem:
            return await _query(path, server)

    async def concurrent() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(queries)))
        return time.perf_counter() - t0

    total, stall_concurrent = await _with_ticker(concurrent)
    latencies.sort()
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6,
        "endpoints_per_s": queries / elapsed,
        "max_stall_ms": stall * 1e3,
        "concurrent_total_ms": total * 1e3,
        "concurrent_max_stall_ms": stall_concurrent * 1e3,
    }


def _client_main(argv: list[str]) -> int:
    path, host, port, queries, concurrency, loop = argv
    coro = _client(path, (host, int(port)), int(queries), int(concurrency))
    if loop == "uvloop":
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the endpoint-lifecycle bench and print a table; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        return _client_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m rawtransport bench endpoints",
        description="One endpoint per query (the dnspython pattern): raw path vs kernel path.",
    )
    parser.add_argument("--queries", type=int, default=200, help="queries per run (default 200)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="concurrent queries (default 50)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per path (default 3)")
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop (default asyncio)",
    )
    args = parser.parse_args(argv)
    if args.queries < 1 or args.concurrency < 1 or args.repeat < 1:
        parser.error("--queries, --concurrency and --repeat must be positive")
    from rawtransport.bench.paths import LOOP_LABELS
    from rawtransport.bench.topology import topology
    from rawtransport.datapath import DATAPATH

    results: dict[str, list[dict[str, Any]]] = {"kernel": [], "raw": []}
    with topology() as topo:
        echo = subprocess.Popen(
            [*topo.exec_prefix("b"), sys.executable, "-c", _ECHO, topo.ip4_b, str(_PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert echo.stdout is not None
            if echo.stdout.readline().strip() != "ready":
                raise RuntimeError("the echo server did not start")
            for _ in range(args.repeat):
                for path, runs in results.items():
                    out = subprocess.run(
                        [*topo.exec_prefix("a"), sys.executable, "-m", "rawtransport.bench.endpoints",
                         "--client", path, topo.ip4_b, str(_PORT), str(args.queries),
                         str(args.concurrency), args.loop],
                        capture_output=True, text=True, timeout=600, check=True,
                    ).stdout  # fmt: skip
                    runs.append(json.loads(out.splitlines()[-1]))
        finally:
            echo.kill()
            echo.wait(timeout=10)
    print(
        f"One endpoint per query over veth, IPv4, {LOOP_LABELS[args.loop]}; "
        f"raw datapath {DATAPATH}; {args.queries} queries per run, medians of {args.repeat} runs\n"
    )
    keys = [
        ("p50_us", "query p50 µs"),
        ("p99_us", "query p99 µs"),
        ("endpoints_per_s", "endpoints per second"),
        ("max_stall_ms", "worst loop stall ms"),
        ("concurrent_total_ms", f"{args.queries} queries, {args.concurrency} at a time, ms"),
        ("concurrent_max_stall_ms", "worst stall then, ms"),
    ]
    width = max(len(label) for _, label in keys)
    print(f"{'':{width}}  {'kernel':>10}  {'raw':>10}  {'raw ÷ kernel':>12}")
    for key, label in keys:
        k = statistics.median(r[key] for r in results["kernel"])
        r = statistics.median(x[key] for x in results["raw"])
        ratio = f"{r / k:.2f}×" if k else "–"
        print(f"{label:{width}}  {k:10.2f}  {r:10.2f}  {ratio:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
