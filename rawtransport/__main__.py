"""Command line: ``python -m rawtransport {bench,echo} …``."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rawtransport",
        description="UDP over Linux AF_PACKET sockets for asyncio, anyio and trio.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "bench",
        help="measure the raw path against the kernel UDP path (needs root)",
        description="`bench [OPTIONS]`: the full comparison (run `bench --help` for its options); "
        "`bench codec`: the packet codec's cost per frame, compiled and pure; "
        "`bench endpoints`: one endpoint per query, raw vs kernel; "
        "`bench idle`: one busy endpoint beside N idle ones.",
        add_help=False,
    )
    sub.add_parser(
        "doctor",
        help="what this machine allows (CAP_NET_RAW, TPACKET, nftables, offloads …) and what to do",
        add_help=False,
    )
    echo = sub.add_parser(
        "echo",
        help="run a UDP echo server on the raw path (needs CAP_NET_RAW)",
        description="An asyncio DatagramProtocol echo server on create_raw_datagram_endpoint().",
    )
    echo.add_argument("host", help="local address to bind, e.g. 198.18.0.1 or ::")
    echo.add_argument("port", type=int)
    echo.add_argument("--uvloop", action="store_true", help="run on uvloop")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rawtransport`` and the ``rawtransport`` script."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    # bench and doctor parse their own options.
    if argv and argv[0] == "bench":
        if argv[1:2] == ["codec"]:
            from rawtransport.bench.codec import main as codec_main

            return codec_main(argv[2:])
        if argv[1:2] == ["endpoints"]:
            from rawtransport.bench.endpoints import main as endpoints_main

            return endpoints_main(argv[2:])
        from rawtransport.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "doctor":
        from rawtransport.doctor import main as doctor_main

        return doctor_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "echo":
        from rawtransport.echo import serve

        return serve(args.host, args.port, use_uvloop=args.uvloop)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
