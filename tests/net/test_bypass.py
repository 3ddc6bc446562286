"""``kernel_bypass`` (nftables netdev-ingress drop) and ``busy_poll``/``spin_us``, in namespaces.

What must hold on this kernel: the ingress drop runs after the packet taps, so the raw endpoint still
gets every datagram while namespace A's IP and UDP layers see none of them (their /proc/net/snmp
counters stand still, where without bypass the guard's filter drop shows up as ``Udp InErrors``);
the table disappears on close and when the owning process is SIGKILLed; traffic that is not the
endpoint's is untouched; a missing ``nft`` is a clear error. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

import rawtransport
from rawtransport.nft import NftError
from tests.net.conformance import Peer, Recorder
from tests.netns import VethPair, setns, wait_for

N = 40
TIMEOUT = 5.0


# ------------------------------------------------------------------------------------ helpers
def run(loop_kind: str, coro: Coroutine[Any, Any, Any]) -> Any:
    return uvloop.run(coro) if loop_kind == "uvloop" else asyncio.run(coro)


def snmp_a(veth: VethPair) -> dict[str, int]:
    """Namespace A's IP/UDP counters: ``Ip.InReceives``, ``Udp.InErrors``, ``Ip6InReceives`` …"""
    out: dict[str, int] = {}
    lines = [ln.split() for ln in veth.run_a("cat", "/proc/net/snmp").stdout.splitlines()]
    lines += [ln.split() for ln in veth.run_a("cat", "/proc/net/netstat").stdout.splitlines()]
    for header, values in itertools.pairwise(lines):
        if header[0] == values[0] and header[0] in ("Ip:", "Icmp:", "Udp:", "IpExt:"):
            table = header[0][:-1]
            out.update(
                {f"{table}.{k}": int(v) for k, v in zip(header[1:], values[1:], strict=True)}
            )
    for line in veth.run_a("cat", "/proc/net/snmp6").stdout.splitlines():
        key, value = line.split()
        out[key] = int(value)
    return out


def delta(before: dict[str, int], after: dict[str, int], *keys: str) -> dict[str, int]:
    return {k: after[k] - before[k] for k in keys}


def our_delta(before: dict[str, int], after: dict[str, int], family: int) -> dict[str, int]:
    """What our datagrams moved: the UDP counters, and the IP layer's receives less the ICMP
    messages it took and the multicast packets (the kernel's own neighbour discovery and MLD,
    which come when they come: an MLD report to ff02::16, which namespace A has not joined, is
    received and dropped before ICMP counts it). Our datagrams are unicast."""
    moved = delta(before, after, *kernel_seen(family))
    others: tuple[str, ...]
    if family == 4:
        ip, others = "Ip.InReceives", ("Icmp.InMsgs", "IpExt.InMcastPkts", "IpExt.InBcastPkts")
    else:
        ip, others = "Ip6InReceives", ("Icmp6InMsgs", "Ip6InMcastPkts")
    for other in others:
        moved[ip] -= after[other] - before[other]
    # An ICMP message to a multicast group is in two of those: the IP figure is a floor at 0.
    # The UDP counters, which each of our datagrams the kernel took would move, stay exact.
    moved[ip] = max(0, moved[ip])
    return moved


def our_tables(veth: VethPair) -> list[str]:
    """The rawtransport tables in namespace A (``nft list tables``)."""
    out = veth.run_a("nft", "list", "tables").stdout
    return [ln.split()[-1] for ln in out.splitlines() if "rawtransport_" in ln]


def kernel_seen(family: int) -> tuple[str, ...]:
    """Counters that move when namespace A's kernel processes one of our datagrams."""
    if family == 4:
        return ("Ip.InReceives", "Udp.InDatagrams", "Udp.InErrors", "Udp.NoPorts")
    return ("Ip6InReceives", "Udp6InDatagrams", "Udp6InErrors", "Udp6NoPorts")


async def echo_exchange(peer: Peer, dst: tuple[str, int], n: int) -> None:
    for i in range(n):
        payload = b"%d" % i * 3
        peer.sock.sendto(payload, dst)
        data, addr = await asyncio.wait_for(peer.recv(), TIMEOUT)
        assert data == payload
        assert addr[:2] == dst


def ip_a(veth: VethPair, family: int) -> str:
    return veth.ip4_a if family == 4 else veth.ip6_a


# ---------------------------------------------------------------------------- the kernel path
@pytest.mark.parametrize(
    ("family", "bind", "bypass", "loop_kind"),
    [
        (4, "addr", True, "uvloop"),
        (4, "addr", False, "uvloop"),
        (6, "addr", True, "asyncio"),
        (6, "addr", False, "asyncio"),
        (4, "0.0.0.0", True, "asyncio"),
        (6, "::", True, "uvloop"),
        (4, "::", True, "uvloop"),  # IPv4 to a dual-stack wildcard socket
    ],
)
def test_bypass_keeps_our_datagrams_from_the_kernel(
    veth: VethPair, family: int, bind: str, bypass: bool, loop_kind: str
) -> None:
    seen = kernel_seen(family)

    async def main() -> tuple[dict[str, int], dict[str, Any], list[str]]:
        host = ip_a(veth, family) if bind == "addr" else bind
        t, p = await rawtransport.create_raw_datagram_endpoint(
            lambda: Recorder(echo=True), local_addr=(host, 0), kernel_bypass=bypass
        )
        dst = (ip_a(veth, family), t.get_extra_info("sockname")[1])
        tables = our_tables(veth)
        peer = Peer.create(veth, family)
        # Warm up: both neighbour caches filled, so only our datagrams cross the link below.
        await echo_exchange(peer, dst, 1)
        before = snmp_a(veth)
        await echo_exchange(peer, dst, N)
        after = snmp_a(veth)
        stats: dict[str, Any] = t.get_extra_info("stats")
        t.close()
        await asyncio.wait_for(p.lost, TIMEOUT)
        peer.close()
        return our_delta(before, after, family), stats, tables

    with setns(veth.ns_a):
        moved, stats, tables = run(loop_kind, main())
    assert stats["delivered"] == N + 1
    udp_errors = "Udp.InErrors" if family == 4 else "Udp6InErrors"
    if bypass:
        # Every frame was seen by the packet socket (the tap runs first) and dropped at ingress.
        assert stats["kernel_bypass"]["active"] is True
        assert stats["kernel_bypass"]["dropped"] >= N + 1
        assert veth.if_a in stats["kernel_bypass"]["interfaces"]
        assert len(tables) == 1
        assert all(v == 0 for v in moved.values()), moved
    else:
        assert "kernel_bypass" not in stats
        assert tables == []
        # The kernel ran its whole input path, and the guard's drop-all filter discarded each one.
        assert moved[udp_errors] == N, moved
        assert moved[seen[0]] >= N, moved
    assert our_tables(veth) == []


# ----------------------------------------------------------------------------- never left behind
def test_rules_are_removed_on_close(veth: VethPair) -> None:
    async def main() -> None:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(veth.ip4_a, 0), kernel_bypass=True
        )
        assert len(our_tables(veth)) == 1
        stats = t.get_extra_info("stats")
        assert stats["kernel_bypass"]["active"]
        t.close()
        # The sockets and the table go right after connection_lost(), in the same callback.
        await asyncio.wait_for(p.lost, TIMEOUT)
        assert our_tables(veth) == []

    with setns(veth.ns_a):
        asyncio.run(main())


_OWNER = """
import asyncio, sys
import rawtransport

async def main():
    t, p = await rawtransport.create_raw_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=(sys.argv[1], int(sys.argv[2])), kernel_bypass=True
    )
    print("ready", t.get_extra_info("stats")["kernel_bypass"]["active"], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_rules_vanish_when_the_owner_is_killed(veth: VethPair) -> None:
    port = 40111
    proc = veth.popen_a(
        sys.executable,
        "-c",
        _OWNER,
        veth.ip4_a,
        str(port),
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.split() == ["ready", "True"], line
    assert len(our_tables(veth)) == 1
    # Without the rule, a kernel socket in A would now get the peer's datagram; with it, not.
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(TIMEOUT)
    wait_for(lambda: our_tables(veth) == [], TIMEOUT, what="the owned table to go with its owner")
    with setns(veth.ns_a):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(TIMEOUT)
        sock.bind((veth.ip4_a, port))  # the port is free: the dead owner's guard is gone too
        peer = Peer.create(veth, 4)
        peer.sock.sendto(b"after", (veth.ip4_a, port))
        assert sock.recvfrom(100)[0] == b"after"  # nothing is left dropping it
        peer.close()


# ------------------------------------------------------------------------------- scoping
def test_foreign_traffic_is_untouched(veth: VethPair) -> None:
    async def main() -> dict[str, Any]:
        peer = Peer.create(veth, 4)
        stranger = Peer.create(veth, 4)
        t, p = await rawtransport.create_raw_datagram_endpoint(
            lambda: Recorder(echo=True),
            local_addr=(veth.ip4_a, 0),
            remote_addr=(veth.ip4_b, peer.port),
            kernel_bypass=True,
        )
        port = t.get_extra_info("sockname")[1]
        with setns(veth.ns_a):
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind((veth.ip4_a, 0))
        other.settimeout(TIMEOUT)
        await echo_exchange(peer, (veth.ip4_a, port), 1)
        dropped = t.get_extra_info("stats")["kernel_bypass"]["dropped"]
        before = snmp_a(veth)
        # Another port on the same address: the kernel delivers it as always.
        stranger.sock.sendto(b"other port", other.getsockname())
        data, _ = await asyncio.get_running_loop().run_in_executor(None, other.recvfrom, 100)
        assert data == b"other port"
        # Our port, but not from the connected peer: the kernel handles it (no socket: NoPorts).
        stranger.sock.sendto(b"not the peer", (veth.ip4_a, port))
        await echo_exchange(peer, (veth.ip4_a, port), 1)  # in order behind it on the link
        after = snmp_a(veth)
        stats: dict[str, Any] = t.get_extra_info("stats")
        t.close()
        await asyncio.wait_for(p.lost, TIMEOUT)
        for s in (peer, stranger):
            s.close()
        other.close()
        return {
            "moved": delta(before, after, "Udp.InDatagrams", "Udp.NoPorts"),
            "dropped_more": stats["kernel_bypass"]["dropped"] - dropped,
            "delivered": stats["delivered"],
        }

    with setns(veth.ns_a):
        got = run("asyncio", main())
    assert got["moved"] == {"Udp.InDatagrams": 1, "Udp.NoPorts": 1}
    assert got["dropped_more"] == 1  # only the peer's second datagram
    assert got["delivered"] == 2


def test_new_interfaces_get_a_chain(veth: VethPair) -> None:
    async def main() -> list[str]:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=("0.0.0.0", 0), kernel_bypass=True
        )
        covered = t.get_extra_info("stats")["kernel_bypass"]["interfaces"]
        assert "rtbypass0" not in covered
        assert {"lo", veth.if_a} <= set(covered)
        # No dummy driver here: a veth pair inside A gives two new interfaces.
        veth.run_a("ip", "link", "add", "rtbypass0", "type", "veth", "peer", "name", "rtbypass1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while "rtbypass0" not in t.get_extra_info("stats")["kernel_bypass"]["interfaces"]:
            assert loop.time() < deadline, "no chain for the new interface"
            await asyncio.sleep(0.01)
        listing = veth.run_a("nft", "list", "ruleset").stdout
        t.close()
        await asyncio.wait_for(p.lost, TIMEOUT)
        return [ln.strip() for ln in listing.splitlines() if "device" in ln]

    with setns(veth.ns_a):
        devices = asyncio.run(main())
    assert any('device "rtbypass0"' in ln for ln in devices), devices
    assert any('device "rtbypass1"' in ln for ln in devices), devices


def test_missing_nft_is_a_clear_error(veth: VethPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent/rawtransport-test")
    port = 40112

    async def main() -> None:
        with pytest.raises(NftError, match="install nftables"):
            await rawtransport.create_raw_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(veth.ip4_a, port), kernel_bypass=True
            )

    with setns(veth.ns_a):
        asyncio.run(main())
        # Nothing leaked: the guard released the port.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((veth.ip4_a, port))


# ------------------------------------------------------------------------- busy poll and spin
_PINGPONG = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
dst = (sys.argv[1], int(sys.argv[2]))
ok = 0
for i in range(int(sys.argv[3])):
    s.sendto(b"%d" % i, dst)
    data, addr = s.recvfrom(100)
    ok += data == b"%d" % i and addr == dst
print("ok", ok, flush=True)
"""


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_busy_poll_and_spin(veth: VethPair, loop_kind: str) -> None:
    n = 200

    async def main() -> tuple[str, int, dict[str, Any]]:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            lambda: Recorder(echo=True),
            local_addr=(veth.ip4_a, 0),
            busy_poll=50,
            spin_us=2000,
            kernel_bypass=True,
        )
        sock = t.get_extra_info("packet_socket")
        busy = sock.getsockopt(socket.SOL_SOCKET, 46)  # SO_BUSY_POLL
        # A kernel client in B, in its own process: it must run while this one spins.
        port = t.get_extra_info("sockname")[1]
        client = veth.popen_b(
            sys.executable, "-c", _PINGPONG, veth.ip4_a, str(port), str(n), stdout=subprocess.PIPE
        )
        out = await asyncio.get_running_loop().run_in_executor(None, client.communicate, None, 30)
        stats: dict[str, Any] = t.get_extra_info("stats")
        t.close()
        await asyncio.wait_for(p.lost, TIMEOUT)
        return out[0], busy, stats

    with setns(veth.ns_a):
        out, busy, stats = run(loop_kind, main())
    assert out.split() == ["ok", str(n)]
    assert busy == 50
    assert stats["delivered"] == n
    # The spin read some of the requests itself (it polled between two of them), and polled
    # between requests without finding one too (the client's think time).
    stack = stats["stack"]
    assert stack["spin_hits"] > 0, stack
    assert stack["spin_polls"] > stack["spin_hits"], stack


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"spin_us": -1}, ValueError),
        ({"spin_us": 10_001}, ValueError),
        ({"spin_us": 1.5}, TypeError),
        ({"busy_poll": -1}, ValueError),
        ({"busy_poll": "50"}, TypeError),
    ],
)
def test_bad_knobs_raise_and_leak_nothing(
    veth: VethPair, kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    port = 40113

    async def main() -> None:
        with pytest.raises(exc):
            await rawtransport.create_raw_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(veth.ip4_a, port), **kwargs
            )

    with setns(veth.ns_a):
        asyncio.run(main())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((veth.ip4_a, port))
