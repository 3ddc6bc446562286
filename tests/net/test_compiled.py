"""The compiled datapath in use on a real link: an echo against a kernel UDP echo server in
namespace B, on asyncio, uvloop and anyio on trio, IPv4 and IPv6. With the compiled datapath
most datagrams are delivered straight from the ring and sent from a header template
(``compiled_delivered``/``compiled_sent``), every payload arrives intact and in order; on the
pure path (``RAWTRANSPORT_PURE=1``) those counters stay at 0 and the echo is the same."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import anyio
import pytest

import rawtransport
from rawtransport.anyio_socket import RawSocketAttribute, create_raw_udp_socket
from rawtransport.datapath import DATAPATH
from tests.net.conformance import Recorder, a_ip, b_ip
from tests.netns import VethPair, setns, udp_echo_peer_b

TIMEOUT = 5.0
ROUNDS = 50
PORT = 7007


def payload(i: int) -> bytes:
    return i.to_bytes(4, "big") + bytes(range(60))


def check(stats: dict[str, Any]) -> None:
    assert stats["delivered"] == ROUNDS
    assert stats["sent"] == ROUNDS
    if DATAPATH == "compiled":
        # The first datagram waits for the neighbour and the second makes the template: the
        # rest go through C both ways.
        assert stats["compiled_sent"] >= ROUNDS - 3
        assert stats["compiled_delivered"] >= ROUNDS - 3
    else:
        assert stats["compiled_sent"] == stats["compiled_delivered"] == 0


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_asyncio_echo_takes_the_compiled_paths(veth: VethPair, family: int, loop: str) -> None:
    echo = udp_echo_peer_b(veth, family, PORT)

    async def main() -> dict[str, Any]:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(a_ip(veth, family), 0)
        )
        dest = (b_ip(veth, family), PORT)
        for i in range(ROUNDS):
            t.sendto(payload(i), dest)
            data, _addr = await asyncio.wait_for(p.data.get(), TIMEOUT)
            assert data == payload(i)
        stats: dict[str, Any] = t.get_extra_info("stats")
        t.close()
        await p.lost
        return stats

    try:
        with setns(veth.ns_a):
            if loop == "uvloop":
                import uvloop

                stats = uvloop.run(main())
            else:
                stats = asyncio.run(main())
    finally:
        echo.kill()
        echo.wait()
    check(stats)


@pytest.mark.parametrize("family", [4, 6])
def test_anyio_echo_on_trio_takes_the_compiled_paths(veth: VethPair, family: int) -> None:
    echo = udp_echo_peer_b(veth, family, PORT)

    async def main() -> dict[str, Any]:
        if family == 4:
            sock = await create_raw_udp_socket(socket.AF_INET, local_host=a_ip(veth, family))
        else:
            sock = await create_raw_udp_socket(socket.AF_INET6, local_host=a_ip(veth, family))
        async with sock:
            dest = (b_ip(veth, family), PORT)
            for i in range(ROUNDS):
                await sock.send((payload(i), dest))
                with anyio.fail_after(TIMEOUT):
                    data, _addr = await sock.receive()
                assert data == payload(i)
            stats = dict(sock.extra(RawSocketAttribute.stats))
        return stats

    try:
        with setns(veth.ns_a):
            stats = anyio.run(main, backend="trio")
    finally:
        echo.kill()
        echo.wait()
    check(stats)
