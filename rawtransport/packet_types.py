"""Constants, header value types and the shared receive-check walkers of the packet codec.

Private to :mod:`rawtransport.packet`, which re-exports the public names. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from rawtransport.errors import MalformedPacketError

__all__ = [
    "ARP",
    "BROADCAST_MAC",
    "ETH_P_8021AD",
    "ETH_P_8021Q",
    "ETH_P_ARP",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "IPPROTO_ICMPV6",
    "IPPROTO_UDP",
    "IPv4",
    "IPv6",
    "IPv6Extension",
    "Ethernet",
    "Frame",
    "NeighborAdvertisement",
    "NeighborSolicitation",
    "UDP",
    "UdpDatagram",
    "VlanTag",
    "check_ipv4_options",
    "walk_ipv6_extensions",
]

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
BROADCAST_MAC = b"\xff" * 6

# IPv6 extension header numbers (RFC 8200 section 4, IANA "IPv6 Extension Header Types").
NEXTHDR_HOP = 0
NEXTHDR_ROUTING = 43
NEXTHDR_FRAGMENT = 44
NEXTHDR_AUTH = 51
NEXTHDR_NONE = 59
NEXTHDR_DEST = 60

# The kernel's defaults for net.ipv6.max_hbh_opts_number / max_dst_opts_number (IP6_DEFAULT_MAX_*):
# more non-padding options than this in one header and ip6_parse_tlv() drops the packet.
MAX_IPV6_TLV_OPTIONS = 8


@dataclass(frozen=True, slots=True)
class VlanTag:
    """One IEEE 802.1Q tag: TPID (0x8100, or 0x88A8 for an 802.1ad service tag) and TCI fields."""

    tpid: int
    pcp: int
    dei: bool
    vid: int


@dataclass(frozen=True, slots=True)
class Ethernet:
    """An Ethernet II header. ``ethertype`` is the one after the tags; ``vlans`` is outer first."""

    dst: bytes
    src: bytes
    ethertype: int
    vlans: tuple[VlanTag, ...] = ()


@dataclass(frozen=True, slots=True)
class IPv4:
    """An IPv4 header (RFC 791). ``None`` in ``total_length``/``checksum`` means "compute it".

    ``frag_offset`` is in units of 8 bytes, as on the wire. ``options`` is the raw option bytes
    (a multiple of 4, at most 40). The reserved flag bit is not represented (sent as zero).
    """

    src: bytes
    dst: bytes
    proto: int
    ttl: int = 64
    tos: int = 0
    ident: int = 0
    dont_fragment: bool = True
    more_fragments: bool = False
    frag_offset: int = 0
    options: bytes = b""
    total_length: int | None = None
    checksum: int | None = None


@dataclass(frozen=True, slots=True)
class IPv6Extension:
    """One IPv6 extension header (RFC 8200 section 4).

    ``header_type`` is this header's own number (0 hop-by-hop, 43 routing, 44 fragment,
    60 destination options). ``data`` is the header after its first two bytes (next header and
    length, or next header and reserved for a fragment header), so ``2 + len(data)`` is a multiple
    of 8 (exactly 8 for a fragment header). The next-header chaining is filled in by the builder.
    """

    header_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IPv6:
    """An IPv6 header (RFC 8200). ``next_header`` is the upper-layer protocol after the chain of
    ``extensions`` (the builder chains the headers); ``None`` ``payload_length`` means "compute"."""

    src: bytes
    dst: bytes
    next_header: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0
    payload_length: int | None = None
    extensions: tuple[IPv6Extension, ...] = ()


@dataclass(frozen=True, slots=True)
class UDP:
    """A UDP header (RFC 768). ``None`` means "compute": length from the payload, checksum with the
    0 -> 0xFFFF rule. A given value is written as is (to build deliberately bad frames)."""

    src_port: int
    dst_port: int
    length: int | None = None
    checksum: int | None = None


@dataclass(frozen=True, slots=True)
class ARP:
    """An ARP packet for Ethernet/IPv4 (RFC 826): htype 1, ptype 0x0800, hlen 6, plen 4."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


@dataclass(frozen=True, slots=True)
class NeighborSolicitation:
    """An ICMPv6 Neighbor Solicitation (RFC 4861 section 4.3) with its optional source
    link-layer address option."""

    target: bytes
    source_lladdr: bytes | None


@dataclass(frozen=True, slots=True)
class NeighborAdvertisement:
    """An ICMPv6 Neighbor Advertisement (RFC 4861 section 4.4) with its optional target
    link-layer address option."""

    target: bytes
    target_lladdr: bytes | None
    router: bool
    solicited: bool
    override: bool


@dataclass(frozen=True, slots=True)
class Frame:
    """A whole frame. ``payload`` is what follows the last parsed header: the UDP payload, the IP
    payload of a fragment or an unknown protocol, the Ethernet payload of an unknown ethertype;
    empty for ARP and ND (their padding and unknown ND options are not kept)."""

    eth: Ethernet
    net: IPv4 | IPv6 | ARP | None
    transport: UDP | NeighborSolicitation | NeighborAdvertisement | None
    payload: bytes


class UdpDatagram(NamedTuple):
    """What the fast receive path extracts from a valid UDP frame (:func:`parse_udp`).

    ``vlan_id`` is the outermost tag's VID, ``None`` when untagged. ``ttl`` is the IPv4 TTL or
    the IPv6 hop limit. Addresses are raw bytes (6 for MACs, 4 or 16 for IP).
    """

    eth_dst: bytes
    eth_src: bytes
    vlan_id: int | None
    family: int
    src: bytes
    dst: bytes
    src_port: int
    dst_port: int
    payload: bytes
    ttl: int


def _bad_option(detail: str) -> MalformedPacketError:
    return MalformedPacketError("ipv4_options", detail)


def check_ipv4_options(opts: bytes) -> bool:
    """Validate IPv4 options as the kernel's ``ip_options_compile()`` does on receive.

    Returns whether a source-route option (LSRR/SSRR) is present. Raises ``ipv4_options`` for:
    an option length < 2 or running past the header (RFC 791), a second SRR/RR/timestamp option,
    RR/SRR with length < 3 or pointer < 4, a timestamp with length < 4, pointer < 5, no room for
    the entry the pointer designates, or a full non-prespecified timestamp whose overflow counter
    is at 15 (RFC 791 p. 22), Router Alert shorter than 4 (RFC 2113), and CIPSO, which the kernel
    rejects unless a CIPSO DOI is configured (``cipso_v4_validate``). The walk moves forward by at
    least one byte per step, so it is linear and always ends.
    """
    i = 0
    n = len(opts)
    srr = rr = ts = False
    while i < n:
        kind = opts[i]
        if kind == 0:  # End of Option List: the rest is padding.
            break
        if kind == 1:  # No Operation.
            i += 1
            continue
        if n - i < 2:
            raise _bad_option("option type without a length byte")
        optlen = opts[i + 1]
        if optlen < 2 or optlen > n - i:
            raise _bad_option(f"option {kind} length {optlen} invalid at offset {i}")
        if kind in (131, 137):  # LSRR, SSRR
            if optlen < 3 or opts[i + 2] < 4 or srr:
                raise _bad_option("bad or repeated source route option")
            srr = True
        elif kind == 7:  # Record Route
            if rr or optlen < 3:
                raise _bad_option("bad or repeated record route option")
            ptr = opts[i + 2]
            if ptr < 4 or (ptr <= optlen and ptr + 3 > optlen):
                raise _bad_option("record route pointer out of range")
            rr = True
        elif kind == 68:  # Timestamp
            if ts or optlen < 4:
                raise _bad_option("bad or repeated timestamp option")
            ptr = opts[i + 2]
            flags = opts[i + 3] & 0x0F
            if ptr < 5:
                raise _bad_option("timestamp pointer below 5")
            if ptr <= optlen:
                if ptr + 3 > optlen or (flags in (1, 3) and ptr + 7 > optlen):
                    raise _bad_option("timestamp pointer leaves no room for an entry")
            elif flags != 3 and opts[i + 3] >> 4 == 15:
                raise _bad_option("timestamp overflow counter would wrap")
            ts = True
        elif kind == 148:  # Router Alert
            if optlen < 4:
                raise _bad_option("router alert option shorter than 4")
        elif kind == 134:  # CIPSO
            raise _bad_option("CIPSO option without a configured DOI")
        i += optlen
    return srr


def _check_tlv_options(data: bytes, off: int, end: int, hop_by_hop: bool) -> None:
    """Validate the TLV options of a hop-by-hop or destination options header (RFC 8200 4.2),
    following ``ip6_parse_tlv()``: at most 7 bytes of consecutive padding, PadN contents zero
    (RFC 4942 2.1.9.5), no option past the header, at most 8 non-padding options, an unknown option
    whose two high type bits are not 00 means discard; Router Alert must have length 2 (RFC 2711),
    Jumbo Payload is refused (we never accept jumbograms), CALIPSO needs a configured DOI."""
    padlen = 0
    count = 0
    while off < end:
        kind = data[off]
        if kind == 0:  # Pad1
            padlen += 1
            if padlen > 7:
                raise MalformedPacketError("ipv6_ext_header", "more than 7 bytes of padding")
            off += 1
            continue
        if end - off < 2:
            raise MalformedPacketError("ipv6_ext_header", "option type without a length byte")
        optlen = data[off + 1] + 2
        if optlen > end - off:
            raise MalformedPacketError("ipv6_ext_header", "option runs past its header")
        if kind == 1:  # PadN
            padlen += optlen
            if padlen > 7:
                raise MalformedPacketError("ipv6_ext_header", "more than 7 bytes of padding")
            if any(data[off + 2 : off + optlen]):
                raise MalformedPacketError("ipv6_ext_header", "PadN with non-zero contents")
        else:
            count += 1
            if count > MAX_IPV6_TLV_OPTIONS:
                raise MalformedPacketError("ipv6_ext_header", "too many options in one header")
            if hop_by_hop and kind == 0x05:
                if optlen != 4:
                    raise MalformedPacketError("ipv6_option", "router alert length is not 2")
            elif hop_by_hop and kind == 0xC2:
                raise MalformedPacketError("ipv6_jumbogram", "jumbo payload option")
            elif hop_by_hop and kind == 0x07:
                raise MalformedPacketError("ipv6_option", "CALIPSO option without a DOI")
            elif kind >> 6:
                raise MalformedPacketError("ipv6_option", f"unknown option {kind:#04x}: discard")
            padlen = 0
        off += optlen


def walk_ipv6_extensions(
    data: bytes,
    off: int,
    end: int,
    next_header: int,
    *,
    collect: list[IPv6Extension] | None,
    fragments_ok: bool,
) -> tuple[int, int, bool]:
    """Walk the extension headers of an IPv6 packet in ``data[off:end]``, starting with the header
    numbered ``next_header``. Returns ``(upper-layer protocol, its offset, fragmented)``.

    Bounded by the frame: every header is at least 8 bytes and the walk only moves forward, so any
    chain (20 destination options headers are delivered by Linux 6.18, tests/test_packet.py) ends within ``(end - off) / 8``
    steps, without recursion. Checks, after ``ip6_input.c``/``exthdrs.c``/``reassembly.c``:
    hop-by-hop only first (``ipv6_hbh_not_first``); a header running past the payload
    (``ipv6_ext_header``); options (see :func:`_check_tlv_options`); a routing header with segments
    left, or of type 3 (RPL) or 4 (SRv6), which the kernel only accepts when enabled by sysctl
    (``ipv6_routing_header``, RFC 8200 4.4, RFC 5095); a fragment header that is not an atomic
    fragment (RFC 8200 4.5, RFC 6946) raises ``ipv6_fragment`` unless ``fragments_ok``, in which
    case the walk stops there with ``fragmented`` true. Headers are appended to ``collect``.
    """
    nh = next_header
    first = True
    while True:
        if nh == NEXTHDR_HOP:
            if not first:
                raise MalformedPacketError("ipv6_hbh_not_first", "hop-by-hop header not first")
        elif nh not in (NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_DEST):
            return nh, off, False
        if end - off < 8:
            raise MalformedPacketError("ipv6_ext_header", f"header {nh} runs past the payload")
        if nh == NEXTHDR_FRAGMENT:
            hlen = 8
            if ((data[off + 2] << 8) | data[off + 3]) & 0xFFF9:
                if not fragments_ok:
                    raise MalformedPacketError("ipv6_fragment", "fragment header")
                if collect is not None:
                    collect.append(IPv6Extension(nh, data[off + 2 : off + 8]))
                return data[off], off + 8, True
        else:
            hlen = (data[off + 1] + 1) << 3
            if hlen > end - off:
                raise MalformedPacketError("ipv6_ext_header", f"header {nh} runs past the payload")
            if nh == NEXTHDR_ROUTING:
                if data[off + 2] in (3, 4):
                    raise MalformedPacketError("ipv6_routing_header", "RPL/SRv6 not enabled")
                if data[off + 3]:
                    raise MalformedPacketError("ipv6_routing_header", "segments left")
            else:
                _check_tlv_options(data, off + 2, off + hlen, nh == NEXTHDR_HOP)
        if collect is not None:
            collect.append(IPv6Extension(nh, data[off + 2 : off + hlen]))
        nh = data[off]
        off += hlen
        first = False
