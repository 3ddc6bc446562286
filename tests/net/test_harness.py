"""The namespace harness: namespaces appear and vanish, the link carries traffic, cleanup holds."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.netns import (
    VethPair,
    create_veth_pair,
    destroy,
    setns,
    tcpdump_b,
    udp_echo_peer_b,
    veth_pair,
    wait_for,
)


def _netns_exists(name: str) -> bool:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    return Path("/run/netns", name).exists() or name in names


def _my_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def _udp_in(ns: str, family: socket.AddressFamily, addr: str) -> socket.socket:
    with setns(ns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.bind((addr, 0))
    return sock


def test_namespaces_exist_during_and_are_gone_after() -> None:
    with veth_pair("life") as pair:
        assert _netns_exists(pair.ns_a)
        assert _netns_exists(pair.ns_b)
        assert pair.ns_a != pair.ns_b
        assert len(pair.if_a) <= 15
        assert len(pair.if_b) <= 15
        links = pair.run_a("ip", "-o", "link", "show", "dev", pair.if_a).stdout
        assert pair.mac_a in links
        assert "state UP" in links
        assert pair.run_a("cat", f"/sys/class/net/{pair.if_a}/ifindex").stdout.strip() == str(
            pair.ifindex_a
        )
        addrs_b = pair.run_b("ip", "-o", "addr", "show", "dev", pair.if_b).stdout
        assert f"{pair.ip4_b}/24" in addrs_b
        assert f"{pair.ip6_b}/64" in addrs_b
        assert "tentative" not in addrs_b
        assert ipaddress.ip_address(pair.ip4_a) in ipaddress.ip_network(pair.prefix4)
        assert ipaddress.ip_address(pair.ip6_b) in ipaddress.ip_network(pair.prefix6)
        assert ipaddress.IPv4Network(pair.prefix4).subnet_of(ipaddress.IPv4Network("198.18.0.0/15"))
        assert ipaddress.IPv6Network(pair.prefix6).subnet_of(ipaddress.IPv6Network("2001:db8::/32"))
        # The veth end in A is not visible from the host namespace.
        host = subprocess.run(
            ["ip", "link", "show", "dev", pair.if_a], capture_output=True, check=False
        )
        assert host.returncode != 0
    assert not _netns_exists(pair.ns_a)
    assert not _netns_exists(pair.ns_b)


def test_neighbour_caches_start_cold(veth: VethPair) -> None:
    for run in (veth.run_a, veth.run_b):
        assert run("ip", "-4", "neigh", "show").stdout.strip() == ""
        assert "2001:db8" not in run("ip", "-6", "neigh", "show").stdout


def test_names_are_unique() -> None:
    with veth_pair() as one, veth_pair() as two:
        assert {one.ns_a, one.ns_b}.isdisjoint({two.ns_a, two.ns_b})


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_kernel_udp_sockets_exchange_across_the_link(
    veth: VethPair, family: socket.AddressFamily
) -> None:
    v4 = family == socket.AF_INET
    a_ip, b_ip = (veth.ip4_a, veth.ip4_b) if v4 else (veth.ip6_a, veth.ip6_b)
    before = _my_netns()
    with _udp_in(veth.ns_a, family, a_ip) as a, _udp_in(veth.ns_b, family, b_ip) as b:
        assert _my_netns() == before
        a.sendto(b"ping", b.getsockname()[:2])
        data, src = b.recvfrom(100)
        assert data == b"ping"
        assert src[:2] == a.getsockname()[:2]
        b.sendto(b"pong", src[:2])
        assert a.recvfrom(100)[0] == b"pong"
    # The addresses exist only inside the namespaces, not in the host's.
    with (
        socket.socket(family, socket.SOCK_DGRAM) as host,
        pytest.raises(OSError, match="assign") as info,
    ):
        host.bind((a_ip, 0))
    assert info.value.errno == errno.EADDRNOTAVAIL


def test_setns_restores_the_namespace_when_the_block_raises(veth: VethPair) -> None:
    before = _my_netns()
    inside: list[str] = []

    def body() -> None:
        with setns(veth.ns_b):
            inside.append(_my_netns())
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        body()
    assert inside
    assert inside[0] != before
    assert _my_netns() == before
    with pytest.raises(FileNotFoundError), setns("rt-no-such-namespace"):
        pass
    assert _my_netns() == before


def test_cleanup_happens_when_the_body_raises() -> None:
    names: list[str] = []
    procs: list[subprocess.Popen[str]] = []

    def body() -> None:
        with veth_pair("boom") as pair:
            names.extend([pair.ns_a, pair.ns_b])
            procs.append(pair.popen_b("sleep", "60"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        body()
    assert names
    assert procs[0].poll() is not None
    assert not any(_netns_exists(n) for n in names)


def test_destroy_stops_tracked_processes_and_is_idempotent() -> None:
    pair = create_veth_pair("procs")
    try:
        proc = pair.popen_b("sleep", "60")
        assert proc.poll() is None
    finally:
        destroy(pair)
    assert proc.poll() is not None
    destroy(pair)  # a second call is harmless
    assert not _netns_exists(pair.ns_a)


@pytest.mark.parametrize("family", [4, 6])
def test_echo_peer_and_capture(veth: VethPair, family: int) -> None:
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    a_ip, b_ip = (veth.ip4_a, veth.ip4_b) if family == 4 else (veth.ip6_a, veth.ip6_b)
    capture = tcpdump_b(veth, "udp port 7777")
    echo = udp_echo_peer_b(veth, family, 7777)
    with _udp_in(veth.ns_a, fam, a_ip) as a:
        a.sendto(b"hello", (b_ip, 7777))
        data, src = a.recvfrom(100)
    assert data == b"hello"
    assert src[0] == b_ip
    capture.wait_for_lines(lambda lines: len(lines) >= 2)
    lines = capture.stop()
    assert any(f"{a_ip}." in line and f"{b_ip}.7777" in line for line in lines)
    assert any(veth.mac_a in line for line in lines)
    echo.terminate()
    echo.wait(timeout=5)


def test_wait_for_times_out_with_its_message() -> None:
    with pytest.raises(TimeoutError, match="never true"):
        wait_for(lambda: False, timeout=0.05, what="never true")
    calls: list[int] = []

    def third_time_lucky() -> bool:
        calls.append(1)
        return len(calls) >= 3

    wait_for(third_time_lucky, timeout=5, interval=0.001)
    assert len(calls) == 3
