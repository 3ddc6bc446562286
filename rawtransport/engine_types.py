"""The values a :class:`~rawtransport.engine.UdpEngine` takes and gives, and the address facts its
receive checks rest on. Pure: no socket, clock or loop.

Split from ``engine.py`` so the boundary modules (ring walker, link) can import the frame metadata
type without the engine, and so the engine module holds only the protocol logic.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

# if_arp.h link types (FrameMeta.hatype), defined with the links they describe.
from rawtransport.route import ARPHRD_ETHER, ARPHRD_LOOPBACK

__all__ = [
    "ALWAYS_JOINED",
    "ARPHRD_ETHER",
    "ARPHRD_LOOPBACK",
    "CSUM_VOUCHED",
    "LBCAST4",
    "MAX_UDP4_PAYLOAD",
    "MAX_UDP6_PAYLOAD",
    "PACKET_BROADCAST",
    "PACKET_HOST",
    "PACKET_MULTICAST",
    "PACKET_OTHERHOST",
    "PACKET_OUTGOING",
    "TP_STATUS_CSUMNOTREADY",
    "TP_STATUS_CSUM_VALID",
    "TP_STATUS_VLAN_VALID",
    "VLAN_VID_MASK",
    "V4MAPPED_PREFIX",
    "V6_LOOPBACK",
    "ZERO4",
    "DatagramReceived",
    "EndpointConfig",
    "ErrorReceived",
    "Event",
    "FrameMeta",
    "OutgoingFrame",
    "ipv6_text",
    "v4_loopback",
    "untag_priority",
    "v4_martian_source",
]

# Link-layer facts from PACKET_AUXDATA / the ring's tpacket header (linux/if_packet.h).
PACKET_HOST = 0
PACKET_BROADCAST = 1
PACKET_MULTICAST = 2
PACKET_OTHERHOST = 3
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 0x08
TP_STATUS_VLAN_VALID = 0x10
#: The VLAN id bits of a tag's TCI (the others are the priority and DEI).
VLAN_VID_MASK = 0x0FFF
TP_STATUS_CSUM_VALID = 0x80
# The kernel vouches for the L4 checksum: either it was never computed because the frame is local and
# offloaded (CHECKSUM_PARTIAL: tpacket_rcv() sets TP_STATUS_CSUMNOTREADY), or the device already verified it.
CSUM_VOUCHED = TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID

# Largest UDP payloads: 65535 - 20 (IPv4 header) - 8; IPv6's payload-length field bounds it to 65535 - 8.
MAX_UDP4_PAYLOAD = 65507
MAX_UDP6_PAYLOAD = 65527


def untag_priority(status: int, tci: int) -> int:
    """``status`` (``tp_status``) of a frame whose tag's TCI is ``tci``, with
    ``TP_STATUS_VLAN_VALID`` cleared for a priority tag (VLAN id 0): __netif_receive_skb_core()
    clears such a tag and delivers the frame as untagged (IEEE 802.1Q priority tagging); only a
    tag with a VLAN id reads as tagged."""
    if status & TP_STATUS_VLAN_VALID and not tci & VLAN_VID_MASK:
        return status & ~TP_STATUS_VLAN_VALID
    return status


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """What the link layer says about a received frame (``PACKET_AUXDATA`` or the ring header)."""

    ifindex: int
    pkttype: int = PACKET_HOST
    status: int = 0
    hatype: int = ARPHRD_ETHER
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """The endpoint's identity: what the kernel socket would have been bound and connected to.

    ``family`` is 4 or 6. ``local_ip`` ``None`` means bound to the wildcard address. ``dual_stack``: an
    IPv6 wildcard socket without ``IPV6_V6ONLY`` also receives IPv4, as v4-mapped addresses.
    ``reassemble``: put fragmented datagrams back together (else drop and count their fragments).
    """

    family: int
    local_port: int
    local_ip: bytes | None = None
    remote_ip: bytes | None = None
    remote_port: int | None = None
    allow_broadcast: bool = False
    dual_stack: bool = False
    ttl: int = 64
    multicast_ttl: int = 1
    # Reassemble IPv4/IPv6 fragments as ip_defrag()/ipv6_frag_rcv() do (see reassembly.py); when
    # false, fragments are dropped and counted as ``ipv4_fragment``/``ipv6_fragment``.
    reassemble: bool = True
    # The device the socket is bound to (SO_BINDTODEVICE, ``interface=``); 0: any.
    ifindex: int = 0
    # SO_REUSEPORT: frames reach it through its own PACKET_FANOUT receiver (host.py, stack.py).
    reuse_port: bool = False


class DatagramReceived(NamedTuple):
    """A datagram for the protocol, with the address tuple a kernel UDP socket would have given.

    A NamedTuple rather than a frozen dataclass: one is made per datagram, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) costs several times more.
    """

    data: bytes
    addr: tuple[str, int] | tuple[str, int, int, int]


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """An error the kernel would have reported on the socket (e.g. EHOSTUNREACH on a connected one)."""

    exc: OSError


class OutgoingFrame(NamedTuple):
    """A frame to write to ``ifindex``; ``size`` is the payload size it carries, for buffer accounting.

    A NamedTuple for the same reason as :class:`DatagramReceived`: one per frame sent.
    """

    frame: bytes
    ifindex: int
    size: int


Event = DatagramReceived | ErrorReceived


def v4_martian_source(src: bytes) -> bool:
    # ip_route_input_slow(): multicast (224/4), the limited broadcast and 0.0.0.0 are martian
    # sources. Since Linux 5.14 ipv4_is_zeronet() is "addr == 0" only, and class E (240/4) is not
    # refused: both were seen delivered on 6.18 (tests/net/test_differential.py).
    return 224 <= src[0] < 240 or src in (ZERO4, LBCAST4)


def v4_loopback(addr: bytes) -> bool:
    return addr[0] == 127


V6_LOOPBACK = bytes(15) + b"\x01"
ZERO4 = bytes(4)
LBCAST4 = b"\xff\xff\xff\xff"
# Groups every multicast-capable interface has joined (RFC 1112 all-hosts, RFC 4291 all-nodes): a
# wildcard socket receives them (IP_MULTICAST_ALL / IPV6_MULTICAST_ALL default to 1).
ALWAYS_JOINED = frozenset(
    {bytes([224, 0, 0, 1]), bytes.fromhex("ff020000000000000000000000000001")}
)


def ipv6_text(addr: bytes) -> str:
    """IPv6 text as glibc's inet_ntop() writes it (what recvfrom() gives a kernel socket's user):
    ``::ffff:198.18.0.2`` for v4-mapped and ``::198.18.0.2`` for IPv4-compatible addresses, where
    ``ipaddress`` (before Python 3.13) writes hex words."""
    if addr[:12] == V4MAPPED_PREFIX:
        return "::ffff:" + ".".join(str(b) for b in addr[12:])
    if addr[:12] == bytes(12) and addr[12:14] != b"\0\0":
        return "::" + ".".join(str(b) for b in addr[12:])
    return str(ipaddress.IPv6Address(addr))


# The codec's reasons for a frame that is a fragment (ip_is_fragment(), an IPv6 Fragment header).
V4MAPPED_PREFIX = bytes(10) + b"\xff\xff"
