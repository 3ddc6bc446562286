"""A UDP echo server on the raw path, behind ``python -m rawtransport echo HOST PORT``."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, cast

from rawtransport.loop import create_raw_datagram_endpoint

__all__ = ["EchoProtocol", "serve"]


class EchoProtocol(asyncio.DatagramProtocol):
    """Sends every datagram back to where it came from."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The stdlib's own datagram transport is not an asyncio.DatagramTransport subclass on 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


async def _serve(host: str, port: int) -> None:
    transport, _ = await create_raw_datagram_endpoint(EchoProtocol, local_addr=(host, port))
    print(f"echoing on {transport.get_extra_info('sockname')} (Ctrl-C to stop)", flush=True)
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set_result, None)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    try:
        await stop
    finally:
        print(transport.get_extra_info("stats"), flush=True)
        transport.close()


def serve(host: str, port: int, *, use_uvloop: bool = False) -> int:
    """Run the echo server until SIGINT/SIGTERM."""
    if use_uvloop:
        import uvloop

        uvloop.run(_serve(host, port))
    else:
        asyncio.run(_serve(host, port))
    return 0
