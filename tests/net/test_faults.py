"""Faults, each reproduced with iproute2/tc in the test namespaces (docs/kernel-checks.md).

The endpoint under test is a raw endpoint in namespace A; the peer is a kernel UDP socket in B.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import re
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import rawtransport
from rawtransport import stack_loop
from rawtransport.datapath import DATAPATH
from rawtransport.packet import (
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    Ethernet,
    Frame,
    IPv6,
    NeighborAdvertisement,
    build_frame,
)
from tests.net.conformance import (
    Peer,
    Recorder,
    a_ip,
    b_ip,
    wait_stacks_closed,
)
from tests.netns import VethPair, setns, tcpdump_b

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


def in_a(veth: VethPair, main: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``main`` on a fresh asyncio loop with every socket it opens in namespace A."""
    with setns(veth.ns_a):
        return asyncio.run(asyncio.wait_for(main(), 60))


async def endpoint(
    veth: VethPair, family: int, **kwargs: Any
) -> tuple[asyncio.DatagramTransport, Recorder]:
    if "remote_addr" not in kwargs:
        kwargs.setdefault("local_addr", (a_ip(veth, family), 0))
    t, p = await rawtransport.create_raw_datagram_endpoint(Recorder, **kwargs)
    return t, p


async def echo_once(t: asyncio.DatagramTransport, peer: Peer, payload: bytes, dest: Any) -> bytes:
    t.sendto(payload, dest)
    data, _ = await peer.recv()
    return data


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Await a condition, yielding to the loop between looks (a condition wait, not a sleep)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)
    del what


@pytest.mark.parametrize("family", [4, 6])
def test_link_down_then_up_resumes_without_reopening(veth: VethPair, family: int) -> None:
    if family == 6:
        # Without it the kernel flushes global IPv6 addresses on link down (addrconf_ifdown()), and
        # a kernel socket would be as stuck as ours.
        veth.run_a("sysctl", "-qw", f"net.ipv6.conf.{veth.if_a}.keep_addr_on_down=1")

    async def main() -> list[Any]:
        t, p = await endpoint(veth, family)
        peer = Peer.create(veth, family)
        dest = (b_ip(veth, family), peer.port)
        assert await echo_once(t, peer, b"before", dest) == b"before"
        veth.run_a("ip", "link", "set", "dev", veth.if_a, "down")
        t.sendto(b"while down", dest)
        exc = await asyncio.wait_for(p.errors.get(), TIMEOUT)
        down_error = exc.errno
        veth.run_a("ip", "link", "set", "dev", veth.if_a, "up")
        # Traffic resumes on the same transport once the link (and, for IPv6, its routes) are back.
        got = b""
        async with asyncio.timeout(TIMEOUT):
            while got != b"after":
                t.sendto(b"after", dest)
                try:
                    got, _ = await asyncio.wait_for(peer.recv(), 0.5)
                except TimeoutError:
                    continue
        closing = t.is_closing()
        t.close()
        await p.lost
        peer.close()
        return [down_error, closing]

    down_error, closing = in_a(veth, main)
    assert down_error in (errno.ENETDOWN, errno.ENETUNREACH)
    assert closing is False


def test_interface_deleted_ends_the_transport_promptly(
    veth: VethPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack_loop, "LINGER", 0.05)

    async def main() -> Any:
        t, p = await endpoint(veth, 4)
        fd = t.get_extra_info("packet_socket").fileno()
        # Deleting B's namespace deletes the veth pair: our end vanishes with it.
        subprocess.run(["ip", "netns", "delete", veth.ns_b], check=True, timeout=10)
        exc = await asyncio.wait_for(p.lost, TIMEOUT)
        # The loop's stack, idle now, closes after its linger (no leak).
        await wait_stacks_closed()
        return exc, fd, t.is_closing()

    exc, fd, closing = in_a(veth, main)
    assert isinstance(exc, OSError)
    assert exc.errno == errno.ENETDOWN
    assert closing
    with pytest.raises(OSError):
        os.fstat(fd)  # the descriptor was closed


@pytest.mark.parametrize("family", [4, 6])
def test_mtu_lowered_mid_run_fragments_at_the_new_mtu(veth: VethPair, family: int) -> None:
    capture = tcpdump_b(veth, "udp or (ip6 and ip6[6] == 44) or (ip[6:2] & 0x3fff != 0)")

    async def main() -> bytes:
        t, _p = await endpoint(veth, family)
        peer = Peer.create(veth, family)
        dest = (b_ip(veth, family), peer.port)
        assert await echo_once(t, peer, b"x" * 1400, dest) == b"x" * 1400
        veth.run_a("ip", "link", "set", "dev", veth.if_a, "mtu", "1280")
        veth.run_b("ip", "link", "set", "dev", veth.if_b, "mtu", "1280")
        data = await echo_once(t, peer, b"y" * 1400, dest)
        t.close()
        peer.close()
        return data

    assert in_a(veth, main) == b"y" * 1400
    frame_len = re.compile(r"ethertype IPv[46] \(0x[0-9a-f]+\), length (\d+)")

    def lengths(lines: list[str]) -> list[int]:
        return [int(m.group(1)) for ln in lines if (m := frame_len.search(ln))]

    # The first datagram left whole (1400 B fits 1500); the second in fragments of <= 1280 + 14.
    capture.wait_for_lines(lambda lines: len(lengths(lines)) >= 3)
    seen = lengths(capture.stop())
    assert seen[0] == 1400 + (42 if family == 4 else 62)
    assert len(seen) >= 3
    assert max(seen[1:]) <= 1294, seen


def test_qdisc_overflow_is_flow_control_not_loss(veth: VethPair) -> None:
    probe = veth.run_a(
        "tc",
        "qdisc",
        "replace",
        "dev",
        veth.if_a,
        "root",
        "tbf",
        "rate",
        "1mbit",
        "burst",
        "1600",
        "limit",
        "1600",
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"tbf qdisc not available: {probe.stderr.strip()}")
    n = 200

    async def main() -> tuple[dict[str, Any], list[tuple[Any, ...]], int, int]:
        t, p = await endpoint(veth, 4)
        peer = Peer.create(veth, 4)
        # Room for the whole burst at the peer (SO_RCVBUFFORCE, root): the test is about our side.
        peer.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
        dest = (veth.ip4_b, peer.port)
        assert await echo_once(t, peer, b"warm", dest) == b"warm"  # neighbour resolved first
        for i in range(n):
            t.sendto(b"%04d" % i + b"z" * 996, dest)
        assert isinstance(t, rawtransport.RawDatagramTransport)
        await wait_until(lambda: t.get_write_buffer_size() == 0, "buffer drained", 30)
        got = 0
        peer.sock.settimeout(5)
        while got < n:
            peer.sock.recvfrom(2000)
            got += 1
        stats = t.get_extra_info("stats")
        closing = t.is_closing()
        t.close()
        await p.lost
        peer.close()
        return stats, p.calls, got, int(closing)

    stats, calls, got, closing = in_a(veth, main)
    kinds = [c[0] for c in calls]
    assert got == n  # nothing accepted was lost
    assert stats["tx_enobufs"] > 0
    assert kinds.count("pause") == kinds.count("resume") >= 1
    assert closing == 0
    assert "error" not in kinds


def test_silent_neighbour_gives_ehostunreach_on_a_connected_endpoint(veth: VethPair) -> None:
    veth.run_b("sysctl", "-qw", f"net.ipv4.conf.{veth.if_b}.arp_ignore=8")
    veth.run_b("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=8")

    async def main() -> tuple[Any, dict[str, Any]]:
        t, p = await endpoint(veth, 4, remote_addr=(veth.ip4_b, 9))
        t.sendto(b"anyone there?")
        exc = await asyncio.wait_for(p.errors.get(), TIMEOUT)
        stats = t.get_extra_info("stats")
        t.close()
        await p.lost
        return exc, stats

    exc, stats = in_a(veth, main)
    assert exc.errno == errno.EHOSTUNREACH
    assert stats["dropped"]["neighbour_failed"] == 1
    assert stats["neighbour"]["requests_sent"] == 3


@pytest.mark.parametrize("family", [4, 6])
def test_local_address_removed_is_enetunreach_and_nothing_leaves(
    veth: VethPair, family: int
) -> None:
    capture = tcpdump_b(veth, "udp")

    async def main() -> Any:
        t, p = await endpoint(veth, family)
        peer = Peer.create(veth, family)
        dest = (b_ip(veth, family), peer.port)
        assert await echo_once(t, peer, b"before", dest) == b"before"
        # Twice more: the next hop is known now, so the compiled path keeps a template for dest
        # and sends the third with it; the stale one must not leave by it.
        for _ in range(2):
            assert await echo_once(t, peer, b"before", dest) == b"before"
        if DATAPATH == "compiled":
            assert t.get_extra_info("stats")["compiled_sent"] == 1
        prefix = 24 if family == 4 else 64
        veth.run_a("ip", "addr", "del", f"{a_ip(veth, family)}/{prefix}", "dev", veth.if_a)
        t.sendto(b"stale", dest)
        exc = await asyncio.wait_for(p.errors.get(), TIMEOUT)
        t.close()
        await p.lost
        peer.close()
        return exc

    exc = in_a(veth, main)
    assert exc.errno in (errno.ENETUNREACH, errno.EADDRNOTAVAIL)
    capture.wait_for_lines(lambda lines: any("before" in ln or "UDP" in ln for ln in lines))
    lines = capture.stop()
    assert len([ln for ln in lines if "UDP" in ln]) == 3, lines  # only the "before"s


@pytest.mark.parametrize("family", [4, 6])
def test_bound_endpoint_takes_nothing_once_its_address_is_removed(
    veth: VethPair, family: int
) -> None:
    # A kernel socket bound to an address gets nothing once the address is removed: the frames
    # still come (the peer's neighbour entry is fresh) but are no longer RTN_LOCAL.
    n = 100

    async def main() -> tuple[dict[str, Any], list[bytes]]:
        t, p = await endpoint(veth, family)
        port = t.get_extra_info("sockname")[1]
        peer = Peer.create(veth, family)
        try:
            me = (a_ip(veth, family), port)
            dest = (b_ip(veth, family), peer.port)
            # Both directions once (the compiled paths in use from here: a template for dest).
            for _ in range(3):
                peer.sock.sendto(b"before", me)
                data, _ = await asyncio.wait_for(p.data.get(), TIMEOUT)
                assert data == b"before"
                assert await echo_once(t, peer, b"echo", dest) == b"echo"
            prefix = 24 if family == 4 else 64
            veth.run_a("ip", "addr", "del", f"{me[0]}/{prefix}", "dev", veth.if_a)
            # The stack has seen the change once a send fails for it.
            t.sendto(b"probe", dest)
            exc = await asyncio.wait_for(p.errors.get(), TIMEOUT)
            assert exc.errno in (errno.ENETUNREACH, errno.EADDRNOTAVAIL)
            for i in range(n):
                peer.sock.sendto(b"after %d" % i, me)

            def counted() -> int:
                stats: dict[str, Any] = t.get_extra_info("stats")
                return int(stats["dropped"].get("not_local", 0))

            await wait_until(lambda: counted() >= n, "the datagrams counted not_local")
            stats = t.get_extra_info("stats")
            late = []
            while not p.data.empty():
                late.append(p.data.get_nowait()[0])
        finally:
            t.close()
            await p.lost
            peer.close()
        return stats, late

    stats, late = in_a(veth, main)
    assert late == []
    assert stats["dropped"]["not_local"] == n
    assert stats["delivered"] == 3


def test_receive_overflow_is_counted_and_accumulated(veth: VethPair) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any], int]:
        t, p = await endpoint(veth, 4, rx_mode="recv", rcvbuf=4096)
        port = t.get_extra_info("sockname")[1]
        peer = Peer.create(veth, 4)
        n = 2000
        # The loop is busy in this coroutine while the kernel queues (and drops) the flood.
        for i in range(n):
            peer.sock.sendto(b"%d" % i, (veth.ip4_a, port))
        first = t.get_extra_info("stats")
        await wait_until(lambda: p.data.qsize() > 0, "some datagrams")
        while True:  # drain until quiet: the last datagram may have been dropped
            try:
                await asyncio.wait_for(p.data.get(), 0.3)
            except TimeoutError:
                break
        second = t.get_extra_info("stats")
        t.close()
        await p.lost
        peer.close()
        return first, second, n

    first, second, n = in_a(veth, main)
    assert first["kernel_drops"] > 0
    # PACKET_STATISTICS is clear-on-read: the transport accumulates it.
    assert second["kernel_drops"] >= first["kernel_drops"]
    assert second["kernel_packets"] >= first["kernel_packets"]
    # Accounting invariant: every frame the stack handed the endpoint was delivered or counted
    # (ARP and ND frames, B's request for A's MAC among them, are the stack's, not the endpoint's).
    received = second["received"]
    assert received == second["delivered"] + second["dropped_total"]
    assert second["delivered"] + second["kernel_drops"] >= n


def _arp_flood_frame(target_ip: bytes, target_mac: bytes) -> bytes:
    mac = bytes([0x02]) + random.randbytes(5)
    # From 198.18.0.0/15 but never from the link's own /24: our address as sender would be
    # refused as arp_from_self, and the peer's is in the table (neither is "unsolicited").
    while True:
        sender_ip = bytes([198, random.choice((18, 19)), random.randrange(256),
                           random.randrange(1, 255)])  # fmt: skip
        if sender_ip[:3] != target_ip[:3]:
            break
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, sender_ip, target_mac, target_ip)
    return target_mac + mac + b"\x08\x06" + arp


def _nd_flood_frame(target_ip: bytes, target_mac: bytes) -> bytes:
    # A solicited-looking neighbour advertisement (valid: hop limit 255, checksum right) for an
    # address we never asked about, from a random MAC.
    mac = bytes([0x02]) + random.randbytes(5)
    sender = bytes.fromhex("20010db8ffff0000") + random.randbytes(8)
    na = NeighborAdvertisement(sender, mac, router=False, solicited=True, override=True)
    ip6 = IPv6(sender, target_ip, IPPROTO_ICMPV6, hop_limit=255)
    return build_frame(Frame(Ethernet(target_mac, mac, ETH_P_IPV6), ip6, na, b""))


@pytest.mark.parametrize("family", [4, 6])
def test_arp_nd_flood_leaves_the_neighbour_cache_unchanged(veth: VethPair, family: int) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        t, p = await endpoint(veth, family)
        peer = Peer.create(veth, family)
        dest = (b_ip(veth, family), peer.port)
        assert await echo_once(t, peer, b"warm", dest) == b"warm"
        before = t.get_extra_info("stats")
        with setns(veth.ns_b):
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        raw.bind((veth.if_b, 0))
        target_mac = bytes.fromhex(veth.mac_a.replace(":", ""))
        target_ip = socket.inet_pton(
            socket.AF_INET if family == 4 else socket.AF_INET6, a_ip(veth, family)
        )
        make = _arp_flood_frame if family == 4 else _nd_flood_frame
        for _ in range(500):
            raw.send(make(target_ip, target_mac))
        raw.close()
        await wait_until(
            lambda: t.get_extra_info("stats")["neighbour"]["unsolicited"] >= 500, "flood seen"
        )
        after = t.get_extra_info("stats")
        assert await echo_once(t, peer, b"still", dest) == b"still"
        t.close()
        await p.lost
        peer.close()
        return before, after

    before, after = in_a(veth, main)
    assert after["neighbour"]["replies_accepted"] == before["neighbour"]["replies_accepted"]
    assert after["neighbour"]["evicted"] == 0
    assert after["neighbour"]["unsolicited"] - before["neighbour"]["unsolicited"] == 500


def test_foreign_flood_while_opening_reaches_no_user_space(veth: VethPair) -> None:
    # A kernel socket in B floods A's address on another port during the whole open.
    flood = veth.popen_b(
        sys.executable,
        "-c",
        textwrap.dedent(f"""
            import socket, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            end = time.monotonic() + 3
            while time.monotonic() < end:
                s.sendto(b"foreign", ("{veth.ip4_a}", 9999))
        """),
    )
    try:

        async def main() -> dict[str, Any]:
            stats: dict[str, Any] = {}
            for _ in range(20):
                t, p = await endpoint(veth, 4)
                await asyncio.sleep(0.01)  # let the reader run while the flood goes on
                s = t.get_extra_info("stats")
                for key in ("received", "dropped_total"):
                    stats[key] = stats.get(key, 0) + s[key]
                t.close()
                await p.lost
            return stats

        stats = in_a(veth, main)
    finally:
        flood.kill()
        flood.wait(timeout=10)
    assert stats == {"received": 0, "dropped_total": 0}


def test_dropping_cap_net_raw_after_open_keeps_working(veth: VethPair) -> None:
    """CAP_NET_RAW is checked when a packet socket is created: after that the process may drop
    it, and endpoints opened later on the same loop's stack work as well."""
    code = textwrap.dedent(f"""
        import asyncio, ctypes, socket, sys
        sys.path.insert(0, {str(ROOT)!r})
        import rawtransport

        def drop_cap_net_raw():
            libc = ctypes.CDLL(None, use_errno=True)
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)
            data = (ctypes.c_uint32 * 6)()
            assert libc.capget(header, data) == 0
            for i in (0, 1):  # effective, permitted (low word: CAP_NET_RAW is bit 13)
                data[i * 3 + 0] &= ~(1 << 13)
                data[i * 3 + 1] &= ~(1 << 13)
            assert libc.capset(header, data) == 0, ctypes.get_errno()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, t): self.t = t
            def datagram_received(self, d, a): self.t.sendto(d, a)

        async def main():
            t, _ = await rawtransport.create_raw_datagram_endpoint(Echo, local_addr=({veth.ip4_a!r}, 0))
            drop_cap_net_raw()
            # A second endpoint registers on the loop's stack, opened before the drop: no new
            # packet socket is needed, so it works too (as a kernel UDP socket needs no caps).
            t2, _ = await rawtransport.create_raw_datagram_endpoint(Echo, local_addr=({veth.ip4_a!r}, 0))
            print("port", t.get_extra_info("sockname")[1], t2.get_extra_info("sockname")[1],
                  flush=True)
            await asyncio.sleep(30)

        asyncio.run(main())
    """)
    proc = veth.popen_a(sys.executable, "-c", code, stdout=subprocess.PIPE, cwd=str(ROOT))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "port", line
        peer = Peer.create(veth, 4)

        async def talk(port: int) -> bytes:
            peer.sock.sendto(b"no caps", (veth.ip4_a, port))
            data, _ = await peer.recv()
            return data

        assert asyncio.run(talk(int(line[1]))) == b"no caps"
        assert asyncio.run(talk(int(line[2]))) == b"no caps"
        peer.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)
