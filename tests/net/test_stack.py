"""Many endpoints on one loop's raw stack: a thousand of them all work, and faults that hit the
stack (an address removed, an interface gone, the MTU lowered) reach each endpoint as they would
reach a kernel socket — the endpoints they concern, and no other."""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import subprocess
from typing import Any

import rawtransport
from tests.net.conformance import TIMEOUT, Peer, Recorder, a_ip, b_ip
from tests.netns import VethPair, setns

ENDPOINTS = 1000
DUMMY4 = "198.19.7.1"


def in_a(veth: VethPair, main: Any) -> Any:
    with setns(veth.ns_a):
        return asyncio.run(asyncio.wait_for(main(), 120))


def test_a_thousand_endpoints_on_one_stack_all_work(veth: VethPair) -> None:
    """1000 endpoints on distinct ports share one packet socket; a kernel peer sends to each and
    each echoes from its own port."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A guard socket per endpoint, as a kernel socket per endpoint: room for the descriptors.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))

    async def main() -> tuple[set[int], dict[int, bytes], int]:
        pairs = []
        for _ in range(0, ENDPOINTS, 100):
            pairs += await asyncio.gather(
                *(
                    rawtransport.create_raw_datagram_endpoint(
                        lambda: Recorder(echo=True), local_addr=(veth.ip4_a, 0)
                    )
                    for _ in range(100)
                )
            )
        packet_sockets = {t.get_extra_info("packet_socket").fileno() for t, _ in pairs}
        ports = [t.get_extra_info("sockname")[1] for t, _ in pairs]
        peer = Peer.create(veth, 4)
        answers: dict[int, bytes] = {}
        try:
            peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            # One round trip resolves the peer for every endpoint (the stack's neighbour table is
            # shared); without it the 1000 echoes would all wait on one resolution, more than a
            # neighbour's queue holds (the raw path does not learn from ARP requests yet).
            t0 = pairs[0][0]
            t0.sendto(b"hello", (veth.ip4_b, peer.port))
            assert (await peer.recv())[0] == b"hello"
            for port in ports:
                peer.sock.sendto(b"to %d" % port, (veth.ip4_a, port))
            while len(answers) < len(ports):
                data, addr = await peer.recv()
                assert addr[1] not in answers, f"port {addr[1]} answered twice"
                answers[addr[1]] = data
        finally:
            peer.close()
            for t, _ in pairs:
                t.close()
            for _, p in pairs:
                await asyncio.wait_for(p.lost, TIMEOUT)
        return packet_sockets, answers, len(set(ports))

    try:
        packet_sockets, answers, distinct = in_a(veth, main)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert distinct == ENDPOINTS
    assert len(packet_sockets) == 1, "one packet socket for the stack"
    assert answers == {port: b"to %d" % port for port in answers}
    assert len(answers) == ENDPOINTS


def test_faults_on_a_shared_stack_reach_the_endpoints_they_concern(veth: VethPair) -> None:
    """Endpoints bound to A's veth address (v4, v6), a wildcard one, and one bound to an address
    of a dummy interface, all on one stack. Removing the v4 address: the v4-bound endpoint's send
    fails with the kernel's errno, the others still work. Deleting that interface ends the
    endpoint bound to its address (ENETDOWN), and only that one. Lowering the MTU: every endpoint
    fragments at the new MTU."""
    veth.run_a("ip", "link", "add", "rtdum0", "type", "veth", "peer", "name", "rtdum1")
    veth.run_a("ip", "addr", "add", f"{DUMMY4}/24", "dev", "rtdum0")
    veth.run_a("ip", "link", "set", "rtdum0", "up")
    veth.run_a("ip", "link", "set", "rtdum1", "up")

    async def main() -> dict[str, Any]:
        eps = {
            "v4": await rawtransport.create_raw_datagram_endpoint(
                Recorder, local_addr=(veth.ip4_a, 0)
            ),
            "v6": await rawtransport.create_raw_datagram_endpoint(
                Recorder, local_addr=(veth.ip6_a, 0)
            ),
            "any": await rawtransport.create_raw_datagram_endpoint(
                Recorder, local_addr=("0.0.0.0", 0)
            ),
            "dummy": await rawtransport.create_raw_datagram_endpoint(
                Recorder, local_addr=(DUMMY4, 0)
            ),
        }
        assert len({t.get_extra_info("packet_socket") for t, _ in eps.values()}) == 1
        peer4, peer6 = Peer.create(veth, 4), Peer.create(veth, 6)
        out: dict[str, Any] = {}

        async def echo(name: str, payload: bytes) -> bytes:
            t, _ = eps[name]
            peer = peer6 if name == "v6" else peer4
            t.sendto(payload, (b_ip(veth, 6 if name == "v6" else 4), peer.port))
            data, _ = await peer.recv()
            return data

        try:
            for name in ("v4", "v6", "any"):
                assert await echo(name, b"hello " + name.encode()) == b"hello " + name.encode()
            # MTU lowered on both ends: large datagrams leave in fragments and arrive whole.
            veth.run_a("ip", "link", "set", "dev", veth.if_a, "mtu", "1280")
            veth.run_b("ip", "link", "set", "dev", veth.if_b, "mtu", "1280")
            for name in ("v4", "v6", "any"):
                assert await echo(name, name.encode() * 700) == name.encode() * 700
            # The second interface goes: only the endpoint bound to its address ends.
            veth.run_a("ip", "link", "del", "rtdum0")
            out["dummy_lost"] = await asyncio.wait_for(eps["dummy"][1].lost, TIMEOUT)
            assert await echo("any", b"still here") == b"still here"
            # A's IPv4 address goes: the v4-bound endpoint's send fails as a kernel socket's.
            veth.run_a("ip", "addr", "del", f"{a_ip(veth, 4)}/24", "dev", veth.if_a)
            t, p = eps["v4"]
            t.sendto(b"stale", (veth.ip4_b, peer4.port))
            out["v4_error"] = await asyncio.wait_for(p.errors.get(), TIMEOUT)
            assert await echo("v6", b"v6 still here") == b"v6 still here"
            out["closing"] = {name: t.is_closing() for name, (t, _) in eps.items()}
        finally:
            peer4.close()
            peer6.close()
            for t, _ in eps.values():
                t.close()
            for _, p in eps.values():
                await asyncio.wait_for(p.lost, TIMEOUT)
        return out

    out = in_a(veth, main)
    assert isinstance(out["dummy_lost"], OSError)
    assert out["dummy_lost"].errno == errno.ENETDOWN
    assert out["v4_error"].errno in (errno.ENETUNREACH, errno.EADDRNOTAVAIL)
    assert out["closing"] == {"v4": False, "v6": False, "any": False, "dummy": True}


def test_a_wildcard_endpoint_takes_only_local_destinations(veth: VethPair) -> None:
    """Issue 14, item 7: frames to A's MAC and a wildcard endpoint's port, but to an address A
    does not have (a router's transit traffic, a flood), stay in the kernel: the stack reads none
    of them (they all reached user space, then were dropped as ``not_local``). An address added
    later enters the filter once the stack has heard of it: a datagram to it is delivered."""
    from rawtransport import stack_loop

    prefix = veth.prefix4.rsplit(".", 1)[0]
    foreign, added = f"{prefix}.77", f"{prefix}.99"

    def frame(dst: str, port: int, payload: bytes) -> bytes:
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether

        eth = Ether(src=veth.mac_b, dst=veth.mac_a)
        return bytes(eth / IP(src=veth.ip4_b, dst=dst) / UDP(sport=40000, dport=port) / payload)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        t, p = await rawtransport.create_raw_datagram_endpoint(Recorder, local_addr=("0.0.0.0", 0))
        port = t.get_extra_info("sockname")[1]
        peer = Peer.create(veth, 4)
        try:
            with setns(veth.ns_b):
                raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            with raw:
                raw.bind((veth.if_b, 0))
                for i in range(200):
                    raw.send(frame(foreign, port, b"foreign %d" % i))
                raw.send(frame(veth.ip4_a, port, b"marker"))
            assert (await asyncio.wait_for(p.data.get(), TIMEOUT))[0] == b"marker"
            first = dict(t.get_extra_info("stats"))
            subprocess.run(
                ["ip", "-n", veth.ns_a, "addr", "add", f"{added}/32", "dev", veth.if_a], check=True
            )
            (stack,) = stack_loop._stacks[asyncio.get_running_loop()].values()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while not stack.stack.addresses.is_local(socket.inet_aton(added)) or (
                stack.stack._filter_dirty
            ):
                assert loop.time() < deadline, "the stack never heard of the address"
                await asyncio.sleep(0.01)
            peer.sock.sendto(b"to the new address", (added, port))
            data, _ = await asyncio.wait_for(p.data.get(), TIMEOUT)
            assert data == b"to the new address"
            return first, dict(t.get_extra_info("stats"))
        finally:
            peer.close()
            t.close()
            await asyncio.wait_for(p.lost, TIMEOUT)

    first, _second = in_a(veth, main)
    assert first["dropped"].get("not_local", 0) == 0, first["dropped"]
    assert first["stack"]["dropped"].get("no_socket", 0) == 0, first["stack"]["dropped"]
