"""A UDP echo server written against anyio, on the raw path; runs on asyncio or trio.

Run as root (or with CAP_NET_RAW):  python examples/anyio_echo.py 198.18.0.1 9000 [--backend trio]
"""

from __future__ import annotations

import argparse

import anyio
from anyio.abc import SocketAttribute

from rawtransport.anyio_socket import create_raw_udp_socket


async def serve(host: str, port: int) -> None:
    async with await create_raw_udp_socket(local_host=host, local_port=port) as sock:
        print("serving on", sock.extra(SocketAttribute.local_address), flush=True)
        async for data, addr in sock:
            await sock.send((data, addr))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    anyio.run(serve, args.host, args.port, backend=args.backend)


if __name__ == "__main__":
    main()
