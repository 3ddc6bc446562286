"""An unmodified asyncio DatagramProtocol echo server, served over the raw path.

Run as root (or with CAP_NET_RAW):  python examples/echo_server.py 198.18.0.1 9000
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

import rawtransport


class EchoServerProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The stdlib's own datagram transport is not an asyncio.DatagramTransport subclass on 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_raw_datagram_endpoint(  # type: ignore[attr-defined]
        EchoServerProtocol, local_addr=(host, port)
    )
    print("serving on", transport.get_extra_info("sockname"), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        transport.close()


if __name__ == "__main__":
    rawtransport.install()
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
