"""rtnetlink client and monitor against a real kernel, inside fresh namespaces (``netns``).

Oracles: ``ip -j`` (iproute2) and pyroute2's ``IPRoute``, both independent of our codec, and for
errors the errno a kernel UDP socket's ``sendto()`` gets in the same namespace. Only 198.18.0.0/15
and 2001:db8::/32 are used; nothing outside the namespaces the ``veth`` fixture creates is touched.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from rawtransport.netlink import Rtnl, RtnlMonitor
from rawtransport.route import LocalAddresses, RouteKind
from tests.netns import VethPair, readable, setns, udp_echo_peer_b, wait_for


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ip_json(pair: VethPair, *args: str) -> list[dict[str, Any]]:
    out = pair.run_a("ip", "-j", *args).stdout
    data = json.loads(out) if out.strip() else []
    assert isinstance(data, list)
    return data


def host_in(pair: VethPair, last: int, family: int = 4) -> str:
    """Address ``last`` in the pair's own subnet (``.last`` or ``::last``)."""
    net = ipaddress.ip_network(pair.prefix4 if family == 4 else pair.prefix6)
    return str(net.network_address + last)


def spare_prefix(pair: VethPair, n: int) -> str:
    """A /24 of 198.19.240.0/20 that is not the pair's own subnet (the harness uses 198.18/15)."""
    prefix = f"198.19.{240 + n}.0/24"
    if prefix == pair.prefix4:
        prefix = f"198.19.{224 + n}.0/24"
    return prefix


@pytest.fixture
def rtnl(veth: VethPair) -> Iterator[Rtnl]:
    with setns(veth.ns_a):
        client = Rtnl()
    with client:
        yield client


@pytest.fixture
def monitor(veth: VethPair) -> Iterator[RtnlMonitor]:
    with setns(veth.ns_a):
        mon = RtnlMonitor()
    with mon:
        yield mon


@pytest.fixture
def pyroute(veth: VethPair) -> Iterator[Any]:
    ipr = IPRoute(netns=veth.ns_a)
    try:
        yield ipr
    finally:
        ipr.close()


def wait_changed(mon: RtnlMonitor, timeout: float = 5.0) -> None:
    """Wait (on the descriptor, not a sleep) until the monitor reports a change."""

    def changed() -> bool:
        return readable(mon.fileno(), 0.1) and mon.drain()

    wait_for(changed, timeout=timeout, what="rtnetlink change notification")


def errno_of(call: Callable[..., object], *args: Any, **kwargs: Any) -> int:
    """The errno of the OSError ``call(*args, **kwargs)`` raises (the test fails if none)."""
    try:
        call(*args, **kwargs)
    except OSError as exc:
        return -1 if exc.errno is None else exc.errno
    pytest.fail(f"{call.__name__} raised no OSError")


def kernel_send_errno(pair: VethPair, dst: str, bind: str | None = None) -> int:
    """The errno of a kernel UDP ``sendto(dst)`` in namespace A (0 if it was sent)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with setns(pair.ns_a):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        if bind is not None:
            sock.bind((bind, 0))
        try:
            sock.sendto(b"x", (dst, 9))
        except OSError as exc:
            return exc.errno or -1
    return 0


# ------------------------------------------------------------------------------------ links
def test_links_match_ip_and_pyroute2(veth: VethPair, rtnl: Rtnl, pyroute: Any) -> None:
    links = rtnl.links()
    assert [(lk.ifindex, lk.name) for lk in links] == [
        (int(j["ifindex"]), j["ifname"]) for j in ip_json(veth, "link", "show")
    ]
    oracle = {m["index"]: m for m in pyroute.get_links()}
    for link in links:
        m = oracle[link.ifindex]
        assert link.name == m.get_attr("IFLA_IFNAME")
        assert link.mtu == m.get_attr("IFLA_MTU")
        assert link.flags == m["flags"]
        assert link.arphrd == m["ifi_type"]
        assert link.mac == mac(m.get_attr("IFLA_ADDRESS") or "")
    lo, veth_a = links
    assert (lo.name, lo.is_loopback, lo.noarp, lo.up) == ("lo", True, True, True)
    assert (veth_a.ifindex, veth_a.name) == (veth.ifindex_a, veth.if_a)
    assert (veth_a.mac, veth_a.mtu, veth_a.up, veth_a.noarp) == (mac(veth.mac_a), 1500, True, False)
    assert rtnl.link(veth.ifindex_a) == veth_a
    assert rtnl.link_by_name(veth.if_a) == veth_a


def test_link_errors(veth: VethPair, rtnl: Rtnl) -> None:
    assert errno_of(rtnl.link_by_name, "rt-no-such-if") == errno.ENODEV
    assert veth.run_a("ip", "link", "show", "dev", "rt-no-such-if", check=False).returncode != 0
    assert errno_of(rtnl.link, 0x7FFF0000) == errno.ENODEV
    with pytest.raises(ValueError, match="interface name"):
        rtnl.link_by_name("x" * 16)
    with pytest.raises(ValueError, match="positive"):
        rtnl.link(0)


def ip_batch(pair: VethPair, tmp_path: Path, lines: Iterable[str]) -> None:
    """Run many iproute2 commands in namespace A with one ``ip -batch``."""
    path = tmp_path / "ip.batch"
    path.write_text("".join(f"{line}\n" for line in lines))
    pair.run_a("ip", "-batch", str(path))


def test_multipart_link_dump(veth: VethPair, rtnl: Rtnl, tmp_path: Path) -> None:
    """Enough links that the dump spans several datagrams (netlink_dump() sends <= 32 KiB each)."""
    ip_batch(veth, tmp_path, (f"link add rtx{n}a type veth peer name rtx{n}b" for n in range(60)))
    reads = 0
    real = rtnl._sock

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def recvmsg_into(self, *args: Any) -> Any:
            nonlocal reads
            reads += 1
            return real.recvmsg_into(*args)

    rtnl._sock = Counting()  # type: ignore[assignment]
    try:
        links = rtnl.links()
    finally:
        rtnl._sock = real
    assert reads > 1
    names = [lk.name for lk in links]
    assert len(names) == 122
    assert names == [j["ifname"] for j in ip_json(veth, "link", "show")]


def test_link_down_is_reported(veth: VethPair, rtnl: Rtnl, monitor: RtnlMonitor) -> None:
    assert not monitor.drain()
    veth.run_a("ip", "link", "set", "dev", veth.if_a, "down")
    wait_changed(monitor)
    assert not rtnl.link(veth.ifindex_a).up
    # The connected route went with the link.
    assert (
        errno_of(rtnl.route_get, ip(veth.ip4_b))
        == errno.ENETUNREACH
        == kernel_send_errno(veth, veth.ip4_b)
    )


# -------------------------------------------------------------------------------- addresses
def test_addresses_match_ip_and_pyroute2(veth: VethPair, rtnl: Rtnl, pyroute: Any) -> None:
    ours = rtnl.addresses()
    expected = {
        (int(link["ifindex"]), 4 if a["family"] == "inet" else 6, ip(a["local"]), a["prefixlen"])
        for link in ip_json(veth, "addr", "show")
        for a in link["addr_info"]
    }
    assert {(a.ifindex, a.family, a.address, a.prefixlen) for a in ours} == expected
    assert len(ours) == len(expected) == 5  # lo: 127.0.0.1, ::1; veth: v4, v6, link-local
    oracle = {(m["index"], ip(m.get_attr("IFA_ADDRESS"))): m for m in pyroute.get_addr()}
    for a in ours:
        m = oracle[(a.ifindex, a.address)]
        assert (a.scope, a.flags) == (m["scope"], m.get_attr("IFA_FLAGS") or m["flags"])
        assert not a.tentative
    assert {a.family for a in rtnl.addresses(4)} == {4}
    assert {a.family for a in rtnl.addresses(socket.AF_INET6)} == {6}
    assert len(rtnl.addresses(4)) + len(rtnl.addresses(6)) == len(ours)
    local = LocalAddresses(ours)
    assert local.is_local(ip(veth.ip4_a))
    assert local.is_local(ip(veth.ip6_a))
    assert not local.is_local(ip(veth.ip4_b))
    assert local.is_broadcast(ip(host_in(veth, 255)))
    with pytest.raises(ValueError, match="family"):
        rtnl.addresses(5)


# ----------------------------------------------------------------------------------- routes
@pytest.mark.parametrize("family", [4, 6])
def test_route_on_link(veth: VethPair, rtnl: Rtnl, pyroute: Any, family: int) -> None:
    dst = veth.ip4_b if family == 4 else veth.ip6_b
    route = rtnl.route_get(ip(dst))
    (j,) = ip_json(veth, "route", "get", dst)
    assert (route.ifname, route.source) == (j["dev"], ip(j["prefsrc"]))
    assert "gateway" not in j
    assert route.next_hop == route.destination == ip(dst)
    assert route.ifindex == veth.ifindex_a
    assert (route.kind, route.noarp, route.mtu) == (RouteKind.UNICAST, False, 1500)
    assert route.src_mac == mac(veth.mac_a)
    (m,) = pyroute.route("get", dst=dst)
    assert (route.ifindex, route.source) == (m.get_attr("RTA_OIF"), ip(m.get_attr("RTA_PREFSRC")))


@pytest.mark.parametrize("family", [4, 6])
def test_route_via_gateway(veth: VethPair, rtnl: Rtnl, family: int) -> None:
    if family == 4:
        prefix, gateway, dst = spare_prefix(veth, 1), veth.ip4_b, ""
        dst = str(ipaddress.ip_network(prefix).network_address + 7)
        veth.run_a("ip", "route", "add", prefix, "via", gateway, "mtu", "1280")
    else:
        gateway, dst = veth.ip6_b, "2001:db8:ffff::7"
        veth.run_a("ip", "-6", "route", "add", "2001:db8:ffff::/64", "via", gateway)
    route = rtnl.route_get(ip(dst))
    (j,) = ip_json(veth, "route", "get", dst)
    assert route.next_hop == ip(j["gateway"]) == ip(gateway)
    assert route.source == ip(j["prefsrc"])
    assert (route.ifindex, route.kind) == (veth.ifindex_a, RouteKind.UNICAST)
    # The route's MTU metric wins over the link's (IPv4 case); ip shows the same metric.
    assert route.mtu == (1280 if family == 4 else 1500)
    if family == 4:
        assert j["metrics"] == [{"mtu": 1280}]


@pytest.mark.parametrize("family", [4, 6])
def test_route_to_own_address_is_local(veth: VethPair, rtnl: Rtnl, family: int) -> None:
    dst = veth.ip4_a if family == 4 else veth.ip6_a
    route = rtnl.route_get(ip(dst))
    (j,) = ip_json(veth, "route", "get", dst)
    assert j["type"] == "local"
    assert (route.kind, route.ifname, route.ifindex, route.noarp) == (
        RouteKind.LOCAL,
        "lo",
        1,
        True,
    )
    assert route.source == ip(dst)
    assert route.mtu == 65536


def test_route_broadcast(veth: VethPair, rtnl: Rtnl) -> None:
    subnet = host_in(veth, 255)
    route = rtnl.route_get(ip(subnet))
    assert ip_json(veth, "route", "get", subnet)[0]["type"] == "broadcast"
    assert (route.kind, route.ifindex, route.next_hop) == (
        RouteKind.BROADCAST,
        veth.ifindex_a,
        ip(subnet),
    )
    limited = ip("255.255.255.255")
    by_oif = rtnl.route_get(limited, oif=veth.ifindex_a)
    by_source = rtnl.route_get(limited, source=ip(veth.ip4_a))
    for route in (by_oif, by_source):
        assert (route.kind, route.ifindex, route.source) == (
            RouteKind.BROADCAST,
            veth.ifindex_a,
            ip(veth.ip4_a),
        )
    # No interface, no source and no default route: the kernel has no answer either.
    assert errno_of(rtnl.route_get, limited) == errno.ENETUNREACH
    assert veth.run_a("ip", "route", "get", "255.255.255.255", check=False).returncode != 0


@pytest.mark.parametrize(
    ("dst", "oif"), [("224.0.0.251", True), ("ff02::1", True), ("ff0e::1", False)]
)
def test_route_multicast(veth: VethPair, rtnl: Rtnl, dst: str, oif: bool) -> None:
    route = rtnl.route_get(ip(dst), oif=veth.ifindex_a if oif else None)
    args = ["route", "get", dst] + (["oif", veth.if_a] if oif else [])
    (j,) = ip_json(veth, *args)
    assert j["type"] == "multicast"
    assert (route.kind, route.ifindex, route.next_hop) == (
        RouteKind.MULTICAST,
        veth.ifindex_a,
        ip(dst),
    )
    assert route.source == ip(j["prefsrc"])


def test_route_unreachable_matches_kernel_udp(veth: VethPair, rtnl: Rtnl) -> None:
    def first(prefix: str) -> str:
        return str(ipaddress.ip_network(prefix).network_address + 1)

    cases = [first(spare_prefix(veth, 2)), "2001:db8:fffa::1"]  # no route at all
    for n, kind in enumerate(["blackhole", "unreachable", "prohibit"]):
        prefix4, prefix6 = spare_prefix(veth, 3 + n), f"2001:db8:fff{n}::/48"
        veth.run_a("ip", "route", "add", kind, prefix4)
        veth.run_a("ip", "-6", "route", "add", kind, prefix6)
        cases += [first(prefix4), first(prefix6)]
    seen = set()
    for dst in cases:
        code = errno_of(rtnl.route_get, ip(dst))
        assert code == kernel_send_errno(veth, dst), dst
        seen.add(code)
    assert seen == {errno.ENETUNREACH, errno.EINVAL, errno.EHOSTUNREACH, errno.EACCES}


def test_route_ipv6_link_local_with_and_without_oif(veth: VethPair, rtnl: Rtnl) -> None:
    shown = json.loads(veth.run_b("ip", "-j", "addr", "show", "dev", veth.if_b).stdout)
    (peer_ll,) = [
        a["local"]
        for link in shown
        for a in link.get("addr_info", [])
        if a.get("family") == "inet6" and a.get("scope") == "link"
    ]
    route = rtnl.route_get(ip(peer_ll), oif=veth.ifindex_a)
    (j,) = ip_json(veth, "route", "get", peer_ll, "oif", veth.if_a)
    assert (route.ifindex, route.next_hop, route.kind) == (
        veth.ifindex_a,
        ip(peer_ll),
        RouteKind.UNICAST,
    )
    assert route.source == ip(j["prefsrc"])
    # Without an interface the kernel picks the route, as udpv6_sendmsg() does for a
    # destination without a scope id (here the only link with fe80::/64).
    (bare,) = ip_json(veth, "route", "get", peer_ll)
    unscoped = rtnl.route_get(ip(peer_ll))
    assert unscoped.ifindex == veth.ifindex_a
    assert unscoped.source == ip(bare["prefsrc"])
    # Our own link-local address is a valid (local) source on that link.
    (own_ll,) = [a.address for a in rtnl.addresses(6) if a.address[:2] == b"\xfe\x80"]
    with_source = rtnl.route_get(ip(peer_ll), source=own_ll, oif=veth.ifindex_a)
    assert (with_source.source, with_source.ifindex) == (own_ll, veth.ifindex_a)


def test_route_get_argument_errors(rtnl: Rtnl) -> None:
    with pytest.raises(TypeError):
        rtnl.route_get("198.18.0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="4 or 16"):
        rtnl.route_get(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="same address family"):
        rtnl.route_get(ip("198.18.0.1"), source=ip("2001:db8::1"))
    with pytest.raises(TypeError):
        rtnl.route_get(ip("198.18.0.1"), oif=True)


# ------------------------------------------------------------------------------- neighbours
def test_neighbours(veth: VethPair, rtnl: Rtnl, pyroute: Any) -> None:
    assert rtnl.neighbours() == []  # cold caches
    permanent, failed, noarp = host_in(veth, 79), host_in(veth, 80), host_in(veth, 81)
    for addr, nud in ((permanent, "permanent"), (failed, "failed"), (noarp, "noarp")):
        veth.run_a(
            "ip", "neigh", "add", addr, "lladdr", "02:00:00:00:00:79", "dev", veth.if_a,
            "nud", nud,
        )  # fmt: skip
    # A real resolution: the kernel ARPs for B when a UDP datagram goes there and comes back.
    echo = udp_echo_peer_b(veth, 4, 7790)
    with setns(veth.ns_a):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(5)
        sock.sendto(b"ping", (veth.ip4_b, 7790))
        assert sock.recv(16) == b"ping"
    echo.terminate()
    echo.wait(5)
    entries = {(i, a): (m, s) for i, a, m, s in rtnl.neighbours()}
    assert set(entries) == {(veth.ifindex_a, ip(permanent)), (veth.ifindex_a, ip(veth.ip4_b))}
    assert entries[(veth.ifindex_a, ip(permanent))] == (mac("02:00:00:00:00:79"), 0x80)
    peer_mac, state = entries[(veth.ifindex_a, ip(veth.ip4_b))]
    assert peer_mac == mac(veth.mac_b)
    assert state & 0x1E  # REACHABLE, STALE, DELAY or PROBE
    oracle = {
        (m["ifindex"], ip(m.get_attr("NDA_DST"))): (mac(m.get_attr("NDA_LLADDR")), m["state"])
        for m in pyroute.get_neighbours()
        if m.get_attr("NDA_LLADDR") and m["state"] & 0x9E
    }
    assert oracle == entries
    by_ip = {j["dst"]: j for j in ip_json(veth, "neigh", "show")}
    assert by_ip[permanent]["state"] == ["PERMANENT"]
    assert by_ip[failed]["state"] == ["FAILED"]
    assert rtnl.neighbours(ifindex=veth.ifindex_a) == rtnl.neighbours()
    assert rtnl.neighbours(ifindex=1) == []


# ---------------------------------------------------------------------------------- monitor
def test_mtu_change_seen_by_monitor(veth: VethPair, rtnl: Rtnl, monitor: RtnlMonitor) -> None:
    assert not monitor.drain()  # nothing happened yet: a drain that always says True is useless
    assert rtnl.route_get(ip(veth.ip4_b)).mtu == 1500
    veth.run_a("ip", "link", "set", "dev", veth.if_a, "mtu", "1400")
    wait_changed(monitor)
    assert not monitor.drain()  # everything was consumed
    assert rtnl.link(veth.ifindex_a).mtu == 1400
    assert rtnl.route_get(ip(veth.ip4_b)).mtu == 1400
    assert rtnl.route_get(ip(veth.ip6_b)).mtu == 1400


def test_monitor_overflow_means_resync(veth: VethPair, tmp_path: Path) -> None:
    """A queue overflow (ENOBUFS: notifications lost) counts as a change; then drain recovers."""
    with setns(veth.ns_a):
        mon = RtnlMonitor(rcvbuf=1)  # the kernel rounds it up to its minimum (a few KiB)
    errors: list[int] = []
    real = mon._sock

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def recvfrom_into(self, *args: Any) -> Any:
            try:
                return real.recvfrom_into(*args)
            except OSError as exc:
                errors.append(exc.errno or -1)
                raise

    mon._sock = Recording()  # type: ignore[assignment]
    with mon:
        ip_batch(
            veth,
            tmp_path,
            (f"route add {host_in(veth, 100 + n)}/32 via {veth.ip4_b}" for n in range(120)),
        )
        assert mon.drain()
        assert errno.ENOBUFS in errors
        assert not mon.drain()  # nothing left: no endless resync loop


def test_monitor_ignores_neighbour_changes(veth: VethPair, monitor: RtnlMonitor) -> None:
    # RTMGRP_NEIGH is not subscribed: a neighbour entry is no reason to flush routes.
    veth.run_a("ip", "neigh", "add", host_in(veth, 90), "lladdr", "02:00:00:00:00:90",
               "dev", veth.if_a, "nud", "permanent")  # fmt: skip
    assert not monitor.drain()
    veth.run_a("ip", "route", "add", spare_prefix(veth, 9), "via", veth.ip4_b)
    wait_changed(monitor)


def test_removed_source_address(veth: VethPair, rtnl: Rtnl, monitor: RtnlMonitor) -> None:
    """A source that is no longer local: ENETUNREACH for both families.

    IPv4: the kernel itself refuses (``__ip_route_output_key_hash_rcu()``: ``__ip_dev_find()``
    fails), ``ip route get X from <gone>`` says ENETUNREACH and a kernel UDP socket bound to the
    address gets ENETUNREACH from ``sendto()``. IPv6: the kernel's route lookup does not check
    the source (on Linux 6.18 ``ip -6 route get X from <gone>`` succeeds, and a UDP socket bound to
    the removed address even sends with it); ``Rtnl.route_get`` checks it and answers ENETUNREACH
    like IPv4, so no frame leaves with a stale source (docs/kernel-checks.md).
    """
    extra4, extra6 = host_in(veth, 3), host_in(veth, 3, 6)
    veth.run_a("ip", "addr", "add", f"{extra4}/24", "dev", veth.if_a)  # secondary to .1
    veth.run_a("ip", "addr", "add", f"{extra6}/64", "dev", veth.if_a, "nodad")
    for dst, src in ((veth.ip4_b, extra4), (veth.ip6_b, extra6)):
        assert rtnl.route_get(ip(dst), source=ip(src)).source == ip(src)
    wait_changed(monitor)
    with setns(veth.ns_a):
        bound4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with bound4:
        bound4.bind((extra4, 0))
        veth.run_a("ip", "addr", "del", f"{extra4}/24", "dev", veth.if_a)
        veth.run_a("ip", "addr", "del", f"{extra6}/64", "dev", veth.if_a)
        wait_changed(monitor)
        assert errno_of(bound4.sendto, b"x", (veth.ip4_b, 9)) == errno.ENETUNREACH
    for dst, src in ((veth.ip4_b, extra4), (veth.ip6_b, extra6)):
        assert errno_of(rtnl.route_get, ip(dst), source=ip(src)) == errno.ENETUNREACH
        assert rtnl.route_get(ip(dst)).source != ip(src)  # the primary address still works
    assert veth.run_a("ip", "route", "get", veth.ip4_b, "from", extra4, check=False).returncode


def test_tentative_source_is_not_local(veth: VethPair, rtnl: Rtnl) -> None:
    """An IPv6 address still in DAD cannot be a source (bind() gives EADDRNOTAVAIL)."""
    veth.run_a("sysctl", "-qw", f"net.ipv6.conf.{veth.if_a}.accept_dad=1")
    veth.run_a("sysctl", "-qw", f"net.ipv6.conf.{veth.if_a}.dad_transmits=50")
    extra = host_in(veth, 4, 6)
    veth.run_a("ip", "addr", "add", f"{extra}/64", "dev", veth.if_a)
    (info,) = [a for a in rtnl.addresses(6) if a.address == ip(extra)]
    assert info.tentative
    assert not LocalAddresses(rtnl.addresses()).is_local(ip(extra))
    assert errno_of(rtnl.route_get, ip(veth.ip6_b), source=ip(extra)) == errno.ENETUNREACH
