"""The same client on the raw path: sends each argument, prints each answer.

python examples/udp_client_raw.py HOST PORT WORD...
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

import rawtransport  # noqa: F401  (kept so the raw twin differs by the method name only)


class ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.DatagramTransport, transport)
        for word in self.words:
            transport.sendto(word.encode())

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.answers.put_nowait(data)


async def main(host: str, port: int, words: list[str]) -> None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_raw_datagram_endpoint(
        lambda: ClientProtocol(words), remote_addr=(host, port)
    )
    try:
        for _ in words:
            print((await asyncio.wait_for(protocol.answers.get(), 5)).decode())
    finally:
        transport.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
