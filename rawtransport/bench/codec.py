"""``python -m rawtransport bench codec``: what the packet codec costs per datagram.

Times the receive fast path (:func:`~rawtransport.packet.parse_udp` with the IPv4 header and UDP
checksums verified, and without the UDP one, as when the kernel vouches for it) and the send fast
path (:func:`~rawtransport.packet.build_udp_fast`, both checksums), for 64-byte and 1400-byte
payloads over IPv4 and IPv6, on each datapath: ``compiled`` (:mod:`rawtransport._datapath`, when
built and not disabled by ``RAWTRANSPORT_PURE``) and ``pure`` (the Python reference). Each figure
is the median, with min and max, of ``--repeat`` timeit runs of ``--number`` calls (calibrated with
``Timer.autorange`` when not given). Targets for 64 B over IPv4 on the reference 2-core box: pure
parse + verify <= 2.1 us, build <= 2.4 us; compiled parse + verify <= 0.15 us (0.4 us at 1400 B),
build <= 0.2 us. Numbers from a noisy shared machine: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rawtransport.datapath import ACCEL, DATAPATH
from rawtransport.packet import build_udp
from rawtransport.packet_fast import build_udp_fast, build_udp_fast_py, parse_udp, parse_udp_py

__all__ = ["Result", "main", "measure"]

_MAC_A = bytes.fromhex("020000000001")
_MAC_B = bytes.fromhex("020000000002")
_ADDRS = {
    4: (bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])),
    6: (
        bytes.fromhex("20010db8000000000000000000000001"),
        bytes.fromhex("20010db8000000000000000000000002"),
    ),
}
#: The compiled receive path end to end, per frame: the V2 ring slot read, every check, the
#: endpoint found, the payload and address made, a protocol called (one that does nothing).
_WALK = "ring walk + checks + delivery"
_WALK_FRAMES = 256
# The targets (ns) of the reference 2-core machine, shown beside ours (docs/datapath.md).
_TARGETS = {
    ("pure", "parse+verify", 4, 64): 2100,
    ("pure", "build", 4, 64): 2400,
    ("pure", "parse+verify", 4, 1400): 7000,
    ("pure", "build", 4, 1400): 7400,
    ("compiled", "parse+verify", 4, 64): 150,
    ("compiled", "parse+verify", 4, 1400): 400,
    ("compiled", "build", 4, 64): 200,
    ("compiled", _WALK, 4, 64): 150,
    ("compiled", _WALK, 4, 1400): 400,
}
# The functions each datapath runs: (parse, build).
_Parse = Callable[..., object]
_PATHS: dict[str, tuple[_Parse, _Parse]] = {"pure": (parse_udp_py, build_udp_fast_py)}
if ACCEL is not None:
    _PATHS["compiled"] = (parse_udp, build_udp_fast)


@dataclass(frozen=True)
class Result:
    """One benchmark case: nanoseconds per call over the repeats, on one datapath."""

    path: str
    operation: str
    family: int
    size: int
    median_ns: float
    min_ns: float
    max_ns: float
    number: int


def measure(call: Callable[[], object], repeat: int, number: int | None) -> tuple[list[float], int]:
    """Nanoseconds per call for each of ``repeat`` runs of ``number`` calls (auto if None)."""
    timer = timeit.Timer(call)
    if number is None:
        number, _ = timer.autorange()
    call()  # warm-up: first-call costs (caches, allocations) are not the steady state
    return [t / number * 1e9 for t in timer.repeat(repeat=repeat, number=number)], number


def _cases(sizes: Sequence[int]) -> list[tuple[str, str, int, int, Callable[[], object]]]:
    cases: list[tuple[str, str, int, int, Callable[[], object]]] = []
    for path, (parse_fn, build_fn) in _PATHS.items():
        for family in (4, 6):
            src, dst = _ADDRS[family]
            for size in sizes:
                payload = bytes(i & 0xFF for i in range(size))
                frame = build_udp(_MAC_A, _MAC_B, src, dst, 40000, 53, payload)

                def parse(frame: bytes = frame, fn: _Parse = parse_fn) -> object:
                    return fn(frame)

                def parse_unverified(frame: bytes = frame, fn: _Parse = parse_fn) -> object:
                    return fn(frame, verify_udp_checksum=False)

                def build(
                    src: bytes = src,
                    dst: bytes = dst,
                    payload: bytes = payload,
                    fn: _Parse = build_fn,
                ) -> object:
                    return fn(_MAC_A, _MAC_B, src, dst, 40000, 53, payload, 64)

                cases.append((path, "parse+verify", family, size, parse))
                cases.append((path, "parse (UDP csum vouched)", family, size, parse_unverified))
                cases.append((path, "build", family, size, build))
                if path == "compiled":
                    cases.append((path, _WALK, family, size, _walk(family, frame)))
    return cases


def _walk(family: int, frame: bytes) -> Callable[[], object]:
    """A ring of :data:`_WALK_FRAMES` copies of ``frame`` for one compiled endpoint; the call
    walks it all (``_datapath.v2_deliver``), then hands every slot back to the "kernel" by
    copying the filled ring over it. The copy is timed apart and taken off (see :func:`main`)."""
    import struct

    from rawtransport.engine import EndpointConfig, UdpEngine
    from rawtransport.host import Host
    from rawtransport.ring import RingGeometry
    from rawtransport.route import AddressInfo, LocalAddresses

    assert ACCEL is not None
    src, dst = _ADDRS[family]
    host = Host(LocalAddresses([AddressInfo(2, family, src, 24 if family == 4 else 64, 0, 0x80)]))
    engine = UdpEngine(EndpointConfig(family=family, local_port=53, local_ip=src), host=host)

    class Sink:
        datagram_received = slice  # a C callable taking (data, addr): no Python frame per call

    engine.set_fast_protocol(Sink(), print)
    # The peer sends to us: swap the addresses of the frame built from us.
    frame = build_udp(_MAC_B, _MAC_A, dst, src, 40000, 53, frame[(42 if family == 4 else 62) :])
    frame_size = 2048
    while frame_size < 80 + len(frame):
        frame_size *= 2
    block = max(1 << 16, frame_size)
    per_block = block // frame_size
    g = RingGeometry(version=2, block_size=block, block_count=-(-_WALK_FRAMES // per_block),
                     frame_size=frame_size)  # fmt: skip
    filled = bytearray(g.size)
    for i in range(_WALK_FRAMES):
        base = g.frame_offset(i)
        struct.pack_into("=IIIHH", filled, base, 1, len(frame), len(frame), 80, 0)
        struct.pack_into("=iHB", filled, base + 36, 2, 1, 0)
        filled[base + 80 : base + 80 + len(frame)] = frame
    ring = bytearray(filled)
    walk = ACCEL.v2_deliver
    args = (ring, 0, _WALK_FRAMES, g.frame_count, g.frames_per_block, g.block_size,
            g.frame_size, host.fast)  # fmt: skip

    def call() -> object:
        taken = walk(*args)[0]
        ring[:] = filled
        return taken

    if call() != _WALK_FRAMES:
        raise RuntimeError("the compiled walk did not take the bench's frames")
    call.reset = lambda: ring.__setitem__(slice(None), filled)  # type: ignore[attr-defined]
    return call


def _table(results: Sequence[Result]) -> str:
    head = (
        "datapath",
        "operation",
        "IP",
        "payload B",
        "median ns",
        "min-max ns",
        "calls/run",
        "target",
    )
    rows = [head]
    for r in results:
        target = _TARGETS.get((r.path, r.operation, r.family, r.size))
        rows.append(
            (
                r.path,
                r.operation,
                f"v{r.family}",
                str(r.size),
                f"{r.median_ns:,.0f}",
                f"{r.min_ns:,.0f}-{r.max_ns:,.0f}",
                str(r.number),
                f"<= {target:,}" if target else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i in (0, 1, 2) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the codec benchmark and print a table; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m rawtransport bench codec",
        description="Time parse_udp/build_udp per frame (median of repeated timeit runs).",
    )
    parser.add_argument("--repeat", type=int, default=7, help="timeit runs per case (default 7)")
    parser.add_argument("--number", type=int, default=None, help="calls per run (default: auto)")
    parser.add_argument(
        "--sizes",
        default="64,1400",
        help="comma-separated UDP payload sizes in bytes (default 64,1400)",
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        parser.error("--sizes takes comma-separated integers")
    if args.repeat < 1 or (args.number is not None and args.number < 1) or not sizes:
        parser.error("--repeat and --number must be positive, --sizes non-empty")
    if any(not 0 <= s <= 65507 for s in sizes):
        parser.error("payload sizes must be 0..65507")
    print(
        f"rawtransport codec benchmark: Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.machine()}, {platform.platform()}"
    )
    print(f"datapath in use: {DATAPATH}")
    print(f"median of {args.repeat} runs per case; ns per frame (Ethernet + IP + UDP)\n")
    results = []
    for path, operation, family, size, call in _cases(sizes):
        times, number = measure(call, args.repeat, args.number)
        if operation == _WALK:
            # Per frame, less the ring refill the call also makes.
            refill, _ = measure(call.reset, args.repeat, number)  # type: ignore[attr-defined]
            times = [max(0.0, t - statistics.median(refill)) / _WALK_FRAMES for t in times]
        med = statistics.median(times)
        results.append(Result(path, operation, family, size, med, min(times), max(times), number))
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
