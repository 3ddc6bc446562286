"""The endpoint filter in the real kernel: a packet socket in namespace A sees exactly its frames.

Each test opens the packet socket the right way (protocol 0, filter attached, then bound to
``ETH_P_ALL``; as psock_*.c in the kernel selftests), holds a kernel UDP socket on the port so the host sends no ICMP
port-unreachable (trap 3), and has namespace B send a mix of traffic: kernel UDP datagrams for us
and for others, fragments, ARP and ND, and frames crafted on a packet socket in B. Every UDP payload
and crafted frame carries ``case:<name>;``; a last "marker" datagram tells the test that everything
sent before it has been through the filter, so nothing waits on a clock.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ipaddress
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from rawtransport.bpf import (
    Program,
    assemble,
    jeq,
    label,
    ldb,
    ldh,
    ret,
)
from rawtransport.bpf_filter import drop_all, endpoint_filter
from tests.netns import VethPair, readable, setns
from tests.test_bpf import arp, eth, icmpv6, ip, ipv4, ipv6, neighbour_advert, udp

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
TP_STATUS_VLAN_VALID = 0x10
IP_MTU_DISCOVER = 10  # linux/in.h; the socket module has it only from Python 3.12
IP_PMTUDISC_DONT = 0
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_AUX_SPACE = socket.CMSG_SPACE(_AUXDATA.size)


# --------------------------------------------------------------------------- the packet socket
def attach_filter(sock: socket.socket, program: Program) -> None:
    """``SO_ATTACH_FILTER`` with a ``struct sock_fprog`` {u16 len; struct sock_filter *filter}."""
    code = program.pack()
    buf = ctypes.create_string_buffer(code, len(code))  # alive for the call; the kernel copies it
    fprog = struct.pack("HP", program.sock_fprog_len, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_filtered(
    pair: VethPair, program: Program, *, ignore_outgoing: bool = True
) -> socket.socket:
    """A packet socket on ``if_a`` in namespace A: opened with protocol 0, filtered, then bound."""
    with setns(pair.ns_a):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        attach_filter(sock, program)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        if ignore_outgoing:
            with contextlib.suppress(OSError):  # before Linux 4.20 the pkttype clause does it alone
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.bind((pair.if_a, ETH_P_ALL))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class Seen:
    """A frame the packet socket received."""

    data: bytes
    vlan_in_aux: bool

    @property
    def label(self) -> str:
        return label_of(self.data)


def label_of(frame: bytes) -> str:
    """``case:<name>;`` when the frame carries one, otherwise a description of what it is."""
    at = frame.find(b"case:")
    if at >= 0:
        return frame[at + 5 : frame.index(b";", at)].decode()
    off = 12
    ethertype = int.from_bytes(frame[off : off + 2], "big")
    while ethertype in (0x8100, 0x88A8):
        off += 4
        ethertype = int.from_bytes(frame[off : off + 2], "big")
    l3 = frame[off + 2 :]
    if ethertype == 0x0806:
        return f"arp-op{l3[7]}-{ipaddress.IPv4Address(l3[24:28])}"
    if ethertype == 0x0800:
        if int.from_bytes(l3[6:8], "big") & 0x1FFF:
            return "ipv4-fragment"
        return f"ipv4-proto{l3[9]}-{ipaddress.IPv4Address(l3[16:20])}"
    if ethertype == 0x86DD:
        dst = ipaddress.IPv6Address(l3[24:40])
        return f"icmp6-{l3[40]}-{dst}" if l3[6] == 58 else f"ipv6-nh{l3[6]}-{dst}"
    return f"ethertype-{ethertype:#x}"


def _recv(sock: socket.socket, flags: int = 0) -> Seen:
    data, anc, _flags, _addr = sock.recvmsg(65535, _AUX_SPACE, flags)
    vlan = any(
        level == SOL_PACKET
        and kind == PACKET_AUXDATA
        and bool(_AUXDATA.unpack_from(raw)[0] & TP_STATUS_VLAN_VALID)
        for level, kind, raw in anc
    )
    return Seen(data, vlan)


def collect(sock: socket.socket, until: set[str], timeout: float = 5.0) -> list[Seen]:
    """Receive until every label in ``until`` has been seen, then drain what is already queued."""
    seen: list[Seen] = []
    deadline = time.monotonic() + timeout
    while not until <= {s.label for s in seen}:
        left = deadline - time.monotonic()
        if left <= 0:
            missing = until - {s.label for s in seen}
            raise AssertionError(f"never saw {missing}; saw {[s.label for s in seen]}")
        if readable(sock, left):
            seen.append(_recv(sock))
    while True:
        try:
            seen.append(_recv(sock, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return seen


def labels(seen: list[Seen]) -> collections.Counter[str]:
    """How many times each label was seen."""
    return collections.Counter(s.label for s in seen)


# ------------------------------------------------------------------------------ namespace B
def mac(text: str) -> bytes:
    """``02:72:…`` to bytes."""
    return bytes.fromhex(text.replace(":", ""))


def case(name: str, size: int = 0) -> bytes:
    """A payload carrying its case label, padded with ``x`` to ``size`` bytes."""
    return f"case:{name};".encode().ljust(size, b"x")


class PeerB:
    """Traffic sources in namespace B: kernel UDP sockets and a send-only packet socket."""

    def __init__(self, pair: VethPair) -> None:
        self.pair = pair
        with setns(pair.ns_b):
            self.udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            self.raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.udp4.bind((pair.ip4_b, 0))
            self.udp6.bind((pair.ip6_b, 0))
            # DF off, so an oversized datagram leaves as IPv4 fragments rather than EMSGSIZE.
            self.udp4.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
            self.raw.bind((pair.if_b, 0))  # protocol 0: this socket only sends
        except BaseException:
            self.close()
            raise

    def send(self, name: str, dst: str, port: int, size: int = 0) -> None:
        sock = self.udp6 if ":" in dst else self.udp4
        sock.sendto(case(name, size), (dst, port))

    def frame(self, data: bytes) -> None:
        self.raw.send(data)

    def eth(self, ethertype: int, payload: bytes, **kw: object) -> bytes:
        kw.setdefault("dst", mac(self.pair.mac_a))
        kw.setdefault("src", mac(self.pair.mac_b))
        return eth(ethertype, payload, **kw)  # type: ignore[arg-type]

    def close(self) -> None:
        for sock in (self.udp4, self.udp6, self.raw):
            sock.close()


@pytest.fixture
def peer(veth: VethPair) -> Iterator[PeerB]:
    """Namespace B's traffic sources."""
    p = PeerB(veth)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def guard4(veth: VethPair) -> Iterator[socket.socket]:
    """A kernel UDP socket on ``ip4_a`` holding the endpoint's port (no ICMP port-unreachable)."""
    with setns(veth.ns_a):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((veth.ip4_a, 0))
        yield sock


@pytest.fixture
def guard6(veth: VethPair) -> Iterator[socket.socket]:
    """The IPv6 guard socket on ``ip6_a``."""
    with setns(veth.ns_a):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with sock:
        sock.bind((veth.ip6_a, 0))
        yield sock


def host(prefix: str, n: int) -> str:
    """Address number ``n`` of ``prefix``."""
    return str(ipaddress.ip_network(prefix)[n])


# ------------------------------------------------------------------------------------- IPv4
def test_ipv4_filter_sees_exactly_its_datagrams(
    veth: VethPair, peer: PeerB, guard4: socket.socket
) -> None:
    port = guard4.getsockname()[1]
    second, not_ours = host(veth.prefix4, 3), host(veth.prefix4, 77)
    veth.run_a("ip", "addr", "add", f"{second}/24", "dev", veth.if_a)
    # B sends to an address that is nobody's, on A's MAC, as a misconfigured host would.
    veth.run_b("ip", "neigh", "add", not_ours, "lladdr", veth.mac_a, "dev", veth.if_b)
    a4, b4 = ip(veth.ip4_a), ip(veth.ip4_b)
    sock = open_filtered(veth, endpoint_filter(family=4, local_ip=a4, local_port=port))
    with sock:
        peer.send("ours-1", veth.ip4_a, port)
        peer.send("ours-2", veth.ip4_a, port, size=1000)
        peer.send("other-port", veth.ip4_a, port + 1)
        peer.send("second-address", second, port)
        peer.send("not-ours", not_ours, port)
        peer.send("fragmented", veth.ip4_a, port, size=3000)  # MTU 1500, DF off: 3 fragments

        def crafted(name: str, **kw: object) -> bytes:
            tags = kw.pop("tags", ())
            dst = kw.pop("l2dst", mac(veth.mac_a))
            dport = kw.pop("dport", port)
            packet = ipv4(b4, a4, udp(4242, dport, case(name)), **kw)  # type: ignore[arg-type]
            return peer.eth(0x0800, packet, tags=tags, dst=dst)

        peer.frame(crafted("l2-broadcast", l2dst=b"\xff" * 6))
        peer.frame(crafted("otherhost", l2dst=bytes.fromhex("02deadbeef99")))
        peer.frame(crafted("options", options=b"\x01\x01\x01\x00"))
        # The option bytes mimic our port where a filter ignoring IHL would look for it.
        peer.frame(
            crafted(
                "options-other-port", options=b"\x01\x01" + port.to_bytes(2, "big"), dport=port + 1
            )
        )
        peer.frame(crafted("not-udp", proto=1))
        peer.frame(crafted("vlan", tags=((0x8100, 7),)))
        peer.frame(crafted("qinq", tags=((0x88A8, 7), (0x8100, 8))))
        peer.frame(crafted("vlan-other-port", tags=((0x8100, 7),), dport=port + 1))
        peer.send("marker", veth.ip4_a, port)
        seen = collect(sock, {"marker"})

    assert labels(seen) == collections.Counter(
        ["ours-1", "ours-2", "l2-broadcast", "options", "vlan", "qinq", "marker"]
    )
    by_label = {s.label: s for s in seen}
    # Whole frames (ret #snaplen), untruncated: Ethernet + IPv4 + UDP + payload.
    assert len(by_label["ours-2"].data) == 14 + 20 + 8 + 1000
    # The kernel strips the outer tag into aux data before packet taps (skb_vlan_untag) …
    assert by_label["vlan"].vlan_in_aux
    assert int.from_bytes(by_label["vlan"].data[12:14], "big") == 0x0800
    # … so a QinQ frame reaches the filter with its inner tag still in the bytes.
    assert by_label["qinq"].vlan_in_aux
    assert int.from_bytes(by_label["qinq"].data[12:14], "big") == 0x8100


def test_tagged_frames_rejected_unless_accepted(
    veth: VethPair, peer: PeerB, guard4: socket.socket
) -> None:
    port = guard4.getsockname()[1]
    a4, b4 = ip(veth.ip4_a), ip(veth.ip4_b)
    program = endpoint_filter(family=4, local_ip=a4, local_port=port, accept_vlan=False)
    with open_filtered(veth, program) as sock:
        peer.send("plain", veth.ip4_a, port)
        for name, tags in [("vlan", ((0x8100, 7),)), ("qinq", ((0x88A8, 7), (0x8100, 8)))]:
            peer.frame(peer.eth(0x0800, ipv4(b4, a4, udp(1, port, case(name))), tags=tags))
        peer.send("marker", veth.ip4_a, port)
        seen = collect(sock, {"marker"})
    assert labels(seen) == collections.Counter(["plain", "marker"])


def test_ipv4_fragments_when_allowed(veth: VethPair, peer: PeerB, guard4: socket.socket) -> None:
    port = guard4.getsockname()[1]
    program = endpoint_filter(
        family=4, local_ip=ip(veth.ip4_a), local_port=port, allow_fragments=True
    )
    with open_filtered(veth, program) as sock:
        peer.send("fragmented", veth.ip4_a, port, size=3000)
        peer.send("fragmented-other-port", veth.ip4_a, port + 1, size=3000)
        peer.send("marker", veth.ip4_a, port)
        seen = collect(sock, {"marker"})
    # 3008 bytes of UDP in 1480-byte fragments: a first fragment and two more per datagram. Later
    # fragments carry no port, so both datagrams' tails pass; the other port's head does not.
    assert labels(seen) == collections.Counter({"fragmented": 1, "ipv4-fragment": 4, "marker": 1})


def test_connected_filter_matches_the_remote(
    veth: VethPair, peer: PeerB, guard4: socket.socket
) -> None:
    port = guard4.getsockname()[1]
    remote_port = peer.udp4.getsockname()[1]
    program = endpoint_filter(
        family=4,
        local_ip=ip(veth.ip4_a),
        local_port=port,
        remote_ip=ip(veth.ip4_b),
        remote_port=remote_port,
    )
    with setns(veth.ns_b):
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with other, open_filtered(veth, program) as sock:
        other.bind((veth.ip4_b, 0))
        peer.send("from-remote", veth.ip4_a, port)
        other.sendto(case("from-other-port"), (veth.ip4_a, port))
        spoofed = ipv4(
            ip(host(veth.prefix4, 9)),
            ip(veth.ip4_a),
            udp(remote_port, port, case("from-other-address")),
        )
        peer.frame(peer.eth(0x0800, spoofed))
        peer.send("marker", veth.ip4_a, port)
        seen = collect(sock, {"marker"})
    assert labels(seen) == collections.Counter(["from-remote", "marker"])


def test_outgoing_frames_never_pass(veth: VethPair, peer: PeerB, guard4: socket.socket) -> None:
    port = guard4.getsockname()[1]
    wildcard = endpoint_filter(family=4, local_ip=None, local_port=None)
    # A control with no pkttype clause proves the outgoing frame really crosses the tap.
    naive = assemble(
        [
            ldh(12),
            jeq(0x0800, None, "no"),
            ldb(23),
            jeq(17, None, "no"),
            ret(262144),
            label("no"),
            ret(0),
        ]
    )
    with (
        open_filtered(veth, wildcard, ignore_outgoing=False) as sock,
        open_filtered(veth, naive, ignore_outgoing=False) as control,
    ):
        guard4.sendto(case("outgoing"), (veth.ip4_b, 9))
        peer.send("marker", veth.ip4_a, port)
        seen = collect(sock, {"marker"})
        assert "outgoing" in labels(collect(control, {"outgoing", "marker"}))
    assert labels(seen) == collections.Counter(["marker"])


def test_snaplen_truncates(veth: VethPair, peer: PeerB, guard4: socket.socket) -> None:
    port = guard4.getsockname()[1]
    program = endpoint_filter(family=4, local_ip=ip(veth.ip4_a), local_port=port, snaplen=60)
    with open_filtered(veth, program) as sock:
        peer.send("marker", veth.ip4_a, port, size=500)
        seen = collect(sock, {"marker"})
    assert [len(s.data) for s in seen] == [60]


# ------------------------------------------------------------------------------------- IPv6
def test_ipv6_filter_sees_exactly_its_datagrams(
    veth: VethPair, peer: PeerB, guard6: socket.socket
) -> None:
    port = guard6.getsockname()[1]
    second, not_ours = host(veth.prefix6, 3), host(veth.prefix6, 0x77)
    veth.run_a("ip", "addr", "add", f"{second}/64", "dev", veth.if_a, "nodad")
    veth.run_b("ip", "neigh", "add", not_ours, "lladdr", veth.mac_a, "dev", veth.if_b)
    a6, b6 = ip(veth.ip6_a), ip(veth.ip6_b)
    sock = open_filtered(veth, endpoint_filter(family=6, local_ip=a6, local_port=port))
    with sock:
        peer.send("ours", veth.ip6_a, port)
        peer.send("other-port", veth.ip6_a, port + 1)
        peer.send("second-address", second, port)
        peer.send("not-ours", not_ours, port)
        peer.send("fragmented", veth.ip6_a, port, size=3000)  # IPv6 fragment headers
        dest_opts = bytes([17, 0, 1, 4, 0, 0, 0, 0])  # next header UDP, PadN
        peer.frame(peer.eth(0x86DD, ipv6(b6, a6, dest_opts + udp(1, port, case("dstopts")), nh=60)))
        peer.frame(
            peer.eth(
                0x86DD,
                ipv6(
                    b6, ip(second), dest_opts + udp(1, port, case("dstopts-second-address")), nh=60
                ),
            )
        )
        peer.frame(peer.eth(0x86DD, ipv6(b6, a6, icmpv6(128, case("echo")), nh=58)))
        peer.frame(peer.eth(0x86DD, ipv6(b6, a6, udp(1, port, case("vlan"))), tags=((0x8100, 3),)))
        peer.send("marker", veth.ip6_a, port)
        seen = collect(sock, {"marker"})
    # Extension headers are passed to user space by design (see endpoint_filter).
    assert labels(seen) == collections.Counter(["ours", "dstopts", "vlan", "marker"])


# ------------------------------------------------------------------------------ ARP and ND
def test_arp_replies_for_our_address(veth: VethPair, peer: PeerB, guard4: socket.socket) -> None:
    port = guard4.getsockname()[1]
    a4, b4 = ip(veth.ip4_a), ip(veth.ip4_b)
    other = ip(host(veth.prefix4, 3))
    ma, mb = mac(veth.mac_a), mac(veth.mac_b)
    program = endpoint_filter(family=4, local_ip=a4, local_port=port, arp_for=a4)
    natural = f"arp-op2-{veth.ip4_a}"
    with open_filtered(veth, program) as sock:
        # A's kernel resolves B: its ARP request is outgoing; B's reply targets ip4_a.
        guard4.sendto(b"to-b", (veth.ip4_b, 9))
        peer.frame(peer.eth(0x0806, arp(2, mb, b4, ma, a4) + case("reply-ours")))
        peer.frame(peer.eth(0x0806, arp(2, mb, b4, ma, other) + case("reply-other-target")))
        # Claims: a request to us, a gratuitous ARP (sender = target) of anyone's.
        peer.frame(peer.eth(0x0806, arp(1, mb, b4, bytes(6), a4) + case("request")))
        peer.frame(peer.eth(0x0806, arp(1, mb, b4, bytes(6), other) + case("request-other")))
        peer.frame(peer.eth(0x0806, arp(1, mb, other, bytes(6), other) + case("gratuitous")))
        peer.send("marker", veth.ip4_a, port)
        seen = collect(sock, {"marker", natural})
    # B's ICMP port-unreachable for "to-b" is rejected too (not UDP).
    expected = [natural, "reply-ours", "request", "gratuitous", "marker"]
    assert labels(seen) == collections.Counter(expected)


def test_neighbour_advertisements_for_our_address(
    veth: VethPair, peer: PeerB, guard6: socket.socket
) -> None:
    port = guard6.getsockname()[1]
    a6, b6 = ip(veth.ip6_a), ip(veth.ip6_b)
    other = ip(host(veth.prefix6, 3))
    program = endpoint_filter(family=6, local_ip=a6, local_port=port, nd_for=a6)
    natural = f"icmp6-136-{veth.ip6_a}"

    def advert(name: str, dst: bytes, hlim: int = 255) -> bytes:
        return peer.eth(0x86DD, ipv6(b6, dst, neighbour_advert(b6) + case(name), nh=58, hlim=hlim))

    with open_filtered(veth, program) as sock:
        # A's kernel resolves B: its solicitation comes from ip6_a, so B's advertisement goes there.
        guard6.sendto(b"to-b", (veth.ip6_b, 9))
        peer.frame(advert("advert-ours", a6))
        peer.frame(advert("advert-hop-limit-254", a6, hlim=254))
        peer.frame(advert("advert-other-target", other))
        # Claims: a solicitation for our address, an unsolicited advertisement to all-nodes.
        solicit = icmpv6(135, bytes(4) + a6) + case("solicitation")
        peer.frame(peer.eth(0x86DD, ipv6(b6, a6, solicit, nh=58, hlim=255)))
        solicit_other = icmpv6(135, bytes(4) + other) + case("solicitation-other")
        peer.frame(peer.eth(0x86DD, ipv6(b6, a6, solicit_other, nh=58, hlim=255)))
        peer.frame(advert("advert-all-nodes", ip("ff02::1")))
        peer.send("marker", veth.ip6_a, port)
        seen = collect(sock, {"marker", natural})
    expected = [natural, "advert-ours", "solicitation", "advert-all-nodes", "marker"]
    assert labels(seen) == collections.Counter(expected)


# -------------------------------------------------------------------------------- drop_all
def test_drop_all_sees_nothing(veth: VethPair, peer: PeerB, guard4: socket.socket) -> None:
    port = guard4.getsockname()[1]
    a4 = ip(veth.ip4_a)
    with (
        open_filtered(veth, drop_all()) as dropped,
        open_filtered(veth, endpoint_filter(family=4, local_ip=a4, local_port=port)) as control,
    ):
        peer.send("ours", veth.ip4_a, port)
        peer.send("v6", veth.ip6_a, port)
        peer.frame(peer.eth(0x0806, arp(2, mac(veth.mac_b), ip(veth.ip4_b), mac(veth.mac_a), a4)))
        peer.send("marker", veth.ip4_a, port)
        assert "ours" in labels(collect(control, {"marker"}))
        with pytest.raises(BlockingIOError):
            dropped.recv(65535, socket.MSG_DONTWAIT)
        packets, drops = struct.unpack("=II", dropped.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    assert (packets, drops) == (0, 0)
