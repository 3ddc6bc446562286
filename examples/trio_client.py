"""A plain trio program on the raw path: sends each word to a UDP echo server, prints each answer.

Run as root (or with CAP_NET_RAW):  python examples/trio_client.py HOST PORT WORD...
"""

from __future__ import annotations

import sys

import trio

from rawtransport.anyio_socket import create_raw_connected_udp_socket


async def main(host: str, port: int, words: list[str]) -> None:
    # anyio notices it is running under trio: no backend to choose, nothing else to change.
    async with await create_raw_connected_udp_socket(host, port) as sock:
        for word in words:
            await sock.send(word.encode())
            with trio.fail_after(5):
                print((await sock.receive()).decode(), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3:])
