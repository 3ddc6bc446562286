"""A neighbour's claims (issue 14, item 3), against the kernel in namespace B.

A neighbour's own ARP request or neighbour solicitation to us says where it is now. The kernel
takes it at once for an entry it holds (``arp_process()``, ``ndisc_recv_ns()``), which is also how a
forger redirects its traffic; the raw path re-probes the old MAC first
(``rawtransport.neighbour``, "Claims"). Here B's interface really changes its MAC and B's kernel
resolves A again: the raw path learns the new MAC once the old one has not answered. Then a forged
claim while B is up: B's kernel answers the probe of its MAC, and nothing is redirected.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rawtransport.packet import (
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    Ethernet,
    Frame,
    IPv6,
    NeighborSolicitation,
    build_frame,
)
from tests.net.conformance import Peer, Recorder, a_ip, b_ip, open_endpoint
from tests.netns import VethPair, setns

TIMEOUT = 10.0


def _run(veth: VethPair, main: Callable[[], Any]) -> Any:
    with setns(veth.ns_a):
        return asyncio.run(asyncio.wait_for(main(), 60))


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition the stack's counters show."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not predicate():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _forged_claim(veth: VethPair, family: int, mac: bytes) -> bytes:
    """B's address claimed for ``mac``: an ARP request / a solicitation for A's address from it."""
    a = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, a_ip(veth, family))
    b = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, b_ip(veth, family))
    if family == 4:
        arp = b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + b + bytes(6) + a
        return b"\xff" * 6 + mac + b"\x08\x06" + arp
    group = bytes.fromhex("ff0200000000000000000001ff") + a[13:]  # solicited-node (RFC 4291)
    ns = NeighborSolicitation(a, mac)
    ip6 = IPv6(b, group, IPPROTO_ICMPV6, hop_limit=255)
    return build_frame(Frame(Ethernet(b"\x33\x33" + group[12:], mac, ETH_P_IPV6), ip6, ns, b""))


@contextlib.asynccontextmanager
async def _resolved(veth: VethPair, family: int) -> AsyncIterator[tuple[Any, Recorder, Peer]]:
    """A raw endpoint in A that has resolved B (one datagram to a kernel socket there)."""
    t, p = await open_endpoint("raw", Recorder, local_addr=(a_ip(veth, family), 0))
    peer = Peer.create(veth, family)
    try:
        t.sendto(b"before", (b_ip(veth, family), peer.port))
        assert (await asyncio.wait_for(peer.recv(), TIMEOUT))[0] == b"before"
        yield t, p, peer
    finally:
        peer.close()
        t.close()
        await asyncio.wait_for(p.lost, TIMEOUT)


async def _verdict(t: Any, peer: Peer, family: int, veth: VethPair, counter: str) -> dict[str, int]:
    """Wait for the claim's verdict (``counter`` at 1); the next datagram must reach B."""

    def neighbour() -> dict[str, int]:
        return dict(t.get_extra_info("stats")["neighbour"])

    await _until(lambda: neighbour()[counter] == 1, counter)
    t.sendto(b"after", (b_ip(veth, family), peer.port))
    assert (await asyncio.wait_for(peer.recv(), TIMEOUT))[0] == b"after"
    return neighbour()


@pytest.mark.parametrize("family", [4, 6])
def test_a_neighbours_new_mac_is_learnt_from_its_own_request(veth: VethPair, family: int) -> None:
    """B's MAC changes (a failover, a replaced NIC) and B's kernel, its entry for A flushed,
    resolves A to send to the endpoint: its ARP request or solicitation, from the new MAC, makes
    the raw path re-probe the old MAC, which no longer answers; the new one is taken
    (``claims_learned``) and the endpoint's next datagram reaches B. Without claims the old MAC
    was used until the entry went stale, 20 to 34 s later."""

    async def main() -> dict[str, int]:
        async with _resolved(veth, family) as (t, p, peer):
            ip_b = ["ip", "-n", veth.ns_b]
            new_mac = f"02:72:74:ee:ee:{family:02x}"
            subprocess.run([*ip_b, "link", "set", "dev", veth.if_b, "address", new_mac], check=True)
            subprocess.run([*ip_b, "neigh", "flush", "dev", veth.if_b], check=True)
            port = t.get_extra_info("sockname")[1]
            peer.sock.sendto(b"from b", (a_ip(veth, family), port))
            assert (await asyncio.wait_for(p.data.get(), TIMEOUT))[0] == b"from b"
            return await _verdict(t, peer, family, veth, "claims_learned")

    neighbour = _run(veth, main)
    assert neighbour["claims_verified"] == 1
    assert neighbour["claims_refuted"] == 0


@pytest.mark.parametrize("family", [4, 6])
def test_a_forged_claim_is_refuted_by_the_live_neighbour(veth: VethPair, family: int) -> None:
    """A forged ARP request / solicitation claims B's address for another MAC while B is up:
    B's kernel answers the unicast probe of its own MAC, the claim is refuted, and the endpoint's
    datagrams still go to B (the kernel's own neighbour entry would have taken the forged MAC)."""
    forger = _mac("02:66:6f:72:67:65")

    async def main() -> dict[str, int]:
        async with _resolved(veth, family) as (t, _p, peer):
            with setns(veth.ns_b):
                raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            with raw:
                raw.bind((veth.if_b, 0))
                raw.send(_forged_claim(veth, family, forger))
            return await _verdict(t, peer, family, veth, "claims_refuted")

    neighbour = _run(veth, main)
    assert neighbour["claims_verified"] == 1
    assert neighbour["claims_learned"] == 0
