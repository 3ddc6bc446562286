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
    bench = sub.add_parser(
        "bench",
        help="measure the raw path against the kernel UDP path",
        description="Benchmarks. `bench codec`: the pure-Python packet codec's cost per frame.",
    )
    bench.add_argument("mode", nargs="?", default="codec", choices=["codec"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
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
    args = parser.parse_args(argv)
    if args.command == "bench":
        from rawtransport.bench.codec import main as codec_main

        return codec_main(args.rest)
    if args.command == "echo":
        from rawtransport.echo import serve

        return serve(args.host, args.port, use_uvloop=args.uvloop)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
