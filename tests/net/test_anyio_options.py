"""The raw-path options reach the endpoint through the anyio API too (on trio, no asyncio code)."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest

from rawtransport import RawSocketAttribute, create_raw_udp_socket
from tests.netns import VethPair, setns


@pytest.mark.parametrize(("tx_mode", "kernel_bypass"), [("ring", False), ("direct", True)])
def test_tx_mode_and_kernel_bypass_on_trio(
    veth: VethPair, tx_mode: str, kernel_bypass: bool
) -> None:
    with setns(veth.ns_b):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((veth.ip4_b, 0))
    peer.settimeout(5)

    async def main() -> dict[str, Any]:
        with anyio.fail_after(10):
            sock = await create_raw_udp_socket(
                local_host=veth.ip4_a, tx_mode=tx_mode, kernel_bypass=kernel_bypass
            )
            async with sock:
                port = sock.extra(anyio.abc.SocketAttribute.local_port)
                peer.sendto(b"ping", (veth.ip4_a, port))
                data, (host, _) = await sock.receive()
                assert (data, host) == (b"ping", veth.ip4_b)
                await sock.sendto(b"pong", veth.ip4_b, peer.getsockname()[1])
                stats: dict[str, Any] = dict(sock.extra(RawSocketAttribute.stats))
        return stats

    with setns(veth.ns_a):
        stats = anyio.run(main, backend="trio")
    assert peer.recvfrom(100)[0] == b"pong"
    peer.close()
    assert ("tx_kicks" in stats and stats["tx_kicks"] >= 1) == (tx_mode == "ring")
    assert ("kernel_bypass" in stats) == kernel_bypass
