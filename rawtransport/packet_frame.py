"""The general codec: :func:`parse_frame` and :func:`build_frame` over the header dataclasses.

Private to :mod:`rawtransport.packet`, which documents the drop reasons. Pure: no I/O. Used for
ARP and Neighbor Discovery on the receive path, and by tools and tests; per-datagram UDP goes
through the fast paths in :mod:`rawtransport.packet_fast`.
"""

from __future__ import annotations

import struct

from rawtransport.checksum import udp_checksum, verify_udp_checksum
from rawtransport.errors import MalformedPacketError
from rawtransport.packet_fast import check_ipv4_header, check_ipv6_header, icmpv6_checksum
from rawtransport.packet_types import (
    ARP,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    NEXTHDR_FRAGMENT,
    UDP,
    Ethernet,
    Frame,
    IPv4,
    IPv6,
    IPv6Extension,
    NeighborAdvertisement,
    NeighborSolicitation,
    VlanTag,
    check_ipv4_options,
    walk_ipv6_extensions,
)

__all__ = ["build_frame", "parse_frame"]

Buffer = bytes | bytearray | memoryview

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_TAG = struct.Struct("!HH")

ND_NEIGHBOR_SOLICITATION = 135
ND_NEIGHBOR_ADVERTISEMENT = 136
_ND_SOURCE_LLADDR = 1
_ND_TARGET_LLADDR = 2


# --------------------------------------------------------------------------------------------
# Parse


def parse_frame(data: Buffer, *, verify_checksums: bool = True) -> Frame:
    """Parse an Ethernet II frame into header values, checking it as the kernel's input paths do.

    Up to two VLAN tags; IPv4 (``ip_rcv_core`` checks and the option walk, source routes kept),
    IPv6 with its extension-header walk (fragments stop the walk: ``transport`` is ``None`` and
    ``payload`` the fragment's data), UDP, ARP and ICMPv6 Neighbor Solicitation/Advertisement
    (RFC 4861 7.1.1/7.1.2 validity checks). Other ethertypes give ``net=None`` with the rest of
    the frame as payload; other protocols ``transport=None`` with the IP payload. Lengths trim
    Ethernet padding. ``verify_checksums`` covers the IPv4 header, UDP and ICMPv6 checksums.
    Raises :class:`MalformedPacketError` (reasons in :mod:`rawtransport.packet`).
    """
    if type(data) is not bytes:
        data = bytes(data)
    n = len(data)
    if n < 14:
        raise MalformedPacketError("eth_short", f"{n} bytes")
    ethertype = (data[12] << 8) | data[13]
    off = 14
    vlans: list[VlanTag] = []
    while ethertype in (ETH_P_8021Q, ETH_P_8021AD):
        if len(vlans) == 2:
            raise MalformedPacketError("vlan_too_deep", "more than two VLAN tags")
        if n - off < 4:
            raise MalformedPacketError("eth_short", "truncated VLAN tag")
        tci, inner = _TAG.unpack_from(data, off)
        vlans.append(VlanTag(ethertype, tci >> 13, bool(tci & 0x1000), tci & 0x0FFF))
        ethertype = inner
        off += 4
    eth = Ethernet(data[0:6], data[6:12], ethertype, tuple(vlans))
    if ethertype == ETH_P_IP:
        return _parse_ipv4(eth, data, off, verify_checksums)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(eth, data, off, verify_checksums)
    if ethertype == ETH_P_ARP:
        return Frame(eth, _parse_arp(data, off), None, b"")
    return Frame(eth, None, None, data[off:])


def _parse_ipv4(eth: Ethernet, data: bytes, off: int, verify: bool) -> Frame:
    ihl, tot = check_ipv4_header(data, off, verify)
    _, tos, _, ident, frag, ttl, proto, csum, src, dst = _IP4.unpack_from(data, off)
    options = data[off + 20 : off + ihl]
    check_ipv4_options(options)
    ip = IPv4(
        src, dst, proto, ttl, tos, ident, bool(frag & 0x4000), bool(frag & 0x2000),
        frag & 0x1FFF, options, tot, csum,
    )  # fmt: skip
    u = off + ihl
    end = off + tot
    if proto != IPPROTO_UDP or frag & 0x3FFF:
        return Frame(eth, ip, None, data[u:end])
    udp, payload = _parse_udp(data, u, end, src, dst, verify=verify)
    return Frame(eth, ip, udp, payload)


def _parse_udp(
    data: bytes, u: int, end: int, src: bytes, dst: bytes, *, verify: bool
) -> tuple[UDP, bytes]:
    """UDP input checks of ``__udp4_lib_rcv``/``__udp6_lib_rcv`` (see parse_udp)."""
    avail = end - u
    if avail < 8:
        raise MalformedPacketError("udp_short", f"{avail} bytes for the UDP header")
    sport, dport, ulen, csum = _UDP.unpack_from(data, u)
    v6 = len(src) == 16
    if ulen > avail:
        raise MalformedPacketError("udp_length", f"UDP length {ulen}, {avail} available")
    length = avail if v6 and ulen == 0 else ulen
    if length < 8:
        raise MalformedPacketError("udp_length", f"UDP length {ulen}")
    segment = data[u : u + length]
    if verify:
        if v6 and not csum:
            raise MalformedPacketError("udp6_zero_checksum", "RFC 8200 8.1")
        if csum and not verify_udp_checksum(src, dst, segment):
            raise MalformedPacketError("udp_bad_checksum")
    return UDP(sport, dport, ulen, csum), segment[8:]


def _parse_ipv6(eth: Ethernet, data: bytes, off: int, verify: bool) -> Frame:
    plen = check_ipv6_header(data, off)
    vtf, _, first_nh, hops, src, dst = _IP6.unpack_from(data, off)
    end = off + 40 + plen
    exts: list[IPv6Extension] = []
    nh, u, fragmented = walk_ipv6_extensions(
        data, off + 40, end, first_nh, collect=exts, fragments_ok=True
    )
    ip = IPv6(src, dst, nh, hops, (vtf >> 20) & 0xFF, vtf & 0xFFFFF, plen, tuple(exts))
    if fragmented:
        return Frame(eth, ip, None, data[u:end])
    if nh == IPPROTO_UDP:
        udp, payload = _parse_udp(data, u, end, src, dst, verify=verify)
        return Frame(eth, ip, udp, payload)
    if nh == IPPROTO_ICMPV6:
        message = data[u:end]
        if len(message) < 4:
            raise MalformedPacketError("icmpv6_short", f"{len(message)} bytes")
        # icmpv6_rcv() verifies every ICMPv6 checksum (RFC 4443 2.3); zero field included.
        if verify and icmpv6_checksum(src, dst, message) != 0:
            raise MalformedPacketError("icmpv6_bad_checksum")
        if message[0] in (ND_NEIGHBOR_SOLICITATION, ND_NEIGHBOR_ADVERTISEMENT):
            return Frame(eth, ip, _parse_nd(message, hops, src, dst), b"")
        return Frame(eth, ip, None, message)
    return Frame(eth, ip, None, data[u:end])


def _parse_nd(
    message: bytes, hops: int, src: bytes, dst: bytes
) -> NeighborSolicitation | NeighborAdvertisement:
    """Validity checks of RFC 4861 7.1.1 (NS) and 7.1.2 (NA), as ``ndisc_recv_ns/na`` and
    ``ndisc_parse_options`` make them."""
    if hops != 255:
        raise MalformedPacketError("nd_hop_limit", f"hop limit {hops}, not 255")
    if message[1] != 0:
        raise MalformedPacketError("nd_code", f"code {message[1]}")
    if len(message) < 24:
        raise MalformedPacketError("nd_short", f"{len(message)} bytes")
    target = message[8:24]
    if target[0] == 0xFF:
        raise MalformedPacketError("nd_target_multicast", "target is a multicast address")
    kind = message[0]
    wanted = _ND_SOURCE_LLADDR if kind == ND_NEIGHBOR_SOLICITATION else _ND_TARGET_LLADDR
    lladdr: bytes | None = None
    i = 24
    end = len(message)
    while i < end:  # every option is >= 8 bytes, so this ends within len/8 steps
        if end - i < 2:
            raise MalformedPacketError("nd_option_length", "truncated option")
        olen = message[i + 1] << 3
        if olen == 0 or olen > end - i:
            raise MalformedPacketError("nd_option_length", f"option length {olen} at {i}")
        if message[i] == wanted and lladdr is None:
            # ndisc_opt_addr_data(): the option must be exactly the size of an Ethernet address
            # padded to 8 bytes, otherwise the message is dropped.
            if olen != 8:
                raise MalformedPacketError("nd_option_length", "link-layer address option size")
            lladdr = message[i + 2 : i + 8]
        i += olen
    if kind == ND_NEIGHBOR_SOLICITATION:
        if not any(src):
            if lladdr is not None:
                raise MalformedPacketError("nd_sllao_unspecified", "SLLA option from ::")
            if dst[:13] != b"\xff\x02" + b"\x00" * 9 + b"\x01\xff":
                raise MalformedPacketError("nd_dad_destination", "DAD NS not to solicited-node")
        return NeighborSolicitation(target, lladdr)
    flags = message[4]
    solicited = bool(flags & 0x40)
    if solicited and dst[0] == 0xFF:
        raise MalformedPacketError("nd_solicited_multicast", "solicited NA to multicast")
    return NeighborAdvertisement(target, lladdr, bool(flags & 0x80), solicited, bool(flags & 0x20))


def _parse_arp(data: bytes, off: int) -> ARP:
    """``arp_rcv()``/``arp_process()`` format checks for Ethernet/IPv4 ARP (RFC 826)."""
    if len(data) - off < 28:
        raise MalformedPacketError("arp_short", f"{len(data) - off} bytes")
    htype, ptype, hlen, plen, op, smac, sip, tmac, tip = _ARP.unpack_from(data, off)
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        raise MalformedPacketError("arp_format", f"htype {htype} ptype {ptype:#x} {hlen}/{plen}")
    if op not in (1, 2):
        raise MalformedPacketError("arp_op", f"op {op}")
    return ARP(op, smac, sip, tmac, tip)


# --------------------------------------------------------------------------------------------
# Build


def build_frame(frame: Frame) -> bytes:
    """Build the wire bytes of ``frame``: the inverse of :func:`parse_frame`.

    ``None`` fields are computed (IPv4 total length and header checksum, IPv6 payload length,
    UDP length and checksum with the 0 -> 0xFFFF rule, always the ICMPv6 checksum); given
    values are written as they are, so deliberately wrong frames can be built. The IPv6
    extension headers are chained in order, the last pointing at ``next_header``. Frames are not
    padded to 60 bytes. Raises ``ValueError`` for inconsistent values or fields out of range.
    """
    try:
        return _build(frame)
    except struct.error as exc:
        raise ValueError(f"header field out of range: {exc}") from None


def _build(frame: Frame) -> bytes:
    eth = frame.eth
    if len(eth.dst) != 6 or len(eth.src) != 6:
        raise ValueError("MAC addresses must be 6 bytes")
    if len(eth.vlans) > 2:
        raise ValueError("at most two VLAN tags")
    head = eth.dst + eth.src
    for tag in eth.vlans:
        if not 0 <= tag.pcp <= 7 or not 0 <= tag.vid <= 0xFFF:
            raise ValueError("VLAN PCP must be 0..7 and VID 0..4095")
        head += _TAG.pack(tag.tpid, (tag.pcp << 13) | (int(tag.dei) << 12) | tag.vid)
    head += eth.ethertype.to_bytes(2, "big")
    net = frame.net
    expected = {IPv4: ETH_P_IP, IPv6: ETH_P_IPV6, ARP: ETH_P_ARP}
    if net is not None and expected[type(net)] != eth.ethertype:
        raise ValueError(f"ethertype {eth.ethertype:#06x} does not match {type(net).__name__}")
    if isinstance(net, IPv4):
        return head + _build_ipv4(net, frame.transport, frame.payload)
    if isinstance(net, IPv6):
        return head + _build_ipv6(net, frame.transport, frame.payload)
    if frame.transport is not None:
        raise ValueError("a transport header needs an IP header")
    if isinstance(net, ARP):
        if not (len(net.sender_mac) == len(net.target_mac) == 6):
            raise ValueError("ARP MAC addresses must be 6 bytes")
        if not (len(net.sender_ip) == len(net.target_ip) == 4):
            raise ValueError("ARP IP addresses must be 4 bytes")
        return head + _ARP.pack(
            1, ETH_P_IP, 6, 4, net.op, net.sender_mac, net.sender_ip, net.target_mac,
            net.target_ip,
        ) + frame.payload  # fmt: skip
    return head + frame.payload


def _udp_segment(udp: UDP, src: bytes, dst: bytes, payload: bytes) -> bytes:
    length = 8 + len(payload) if udp.length is None else udp.length
    segment = _UDP.pack(udp.src_port, udp.dst_port, length, 0) + payload
    csum = udp_checksum(src, dst, segment) if udp.checksum is None else udp.checksum
    return segment[:6] + csum.to_bytes(2, "big") + segment[8:]


def _build_ipv4(
    ip: IPv4, transport: UDP | NeighborSolicitation | NeighborAdvertisement | None, payload: bytes
) -> bytes:
    if len(ip.src) != 4 or len(ip.dst) != 4:
        raise ValueError("IPv4 addresses must be 4 bytes")
    if len(ip.options) % 4 or len(ip.options) > 40:
        raise ValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
    if not 0 <= ip.frag_offset <= 0x1FFF:
        raise ValueError("fragment offset must fit in 13 bits")
    if isinstance(transport, UDP):
        if ip.proto != IPPROTO_UDP:
            raise ValueError("a UDP header needs IPv4 proto 17")
        body = _udp_segment(transport, ip.src, ip.dst, payload)
    elif transport is None:
        body = payload
    else:
        raise ValueError("Neighbor Discovery needs IPv6")
    ihl = 20 + len(ip.options)
    tot = ihl + len(body) if ip.total_length is None else ip.total_length
    flags = (int(ip.dont_fragment) << 14) | (int(ip.more_fragments) << 13) | ip.frag_offset
    header = _IP4.pack(
        0x40 | (ihl >> 2), ip.tos, tot, ip.ident, flags, ip.ttl, ip.proto, 0, ip.src, ip.dst
    ) + ip.options  # fmt: skip
    csum = (-int.from_bytes(header, "big")) % 0xFFFF if ip.checksum is None else ip.checksum
    return header[:10] + csum.to_bytes(2, "big") + header[12:] + body


def _build_ipv6(
    ip: IPv6, transport: UDP | NeighborSolicitation | NeighborAdvertisement | None, payload: bytes
) -> bytes:
    if len(ip.src) != 16 or len(ip.dst) != 16:
        raise ValueError("IPv6 addresses must be 16 bytes")
    if not 0 <= ip.traffic_class <= 0xFF or not 0 <= ip.flow_label <= 0xFFFFF:
        raise ValueError("traffic class must fit in 8 bits and flow label in 20")
    chain = b""
    types = [ext.header_type for ext in ip.extensions] + [ip.next_header]
    for ext, following in zip(ip.extensions, types[1:], strict=True):
        size = 2 + len(ext.data)
        if ext.header_type == NEXTHDR_FRAGMENT:
            if size != 8:
                raise ValueError("a fragment header's data is 6 bytes")
            chain += bytes((following, 0)) + ext.data
        else:
            if size % 8 or size > 2048:
                raise ValueError("extension header size must be a multiple of 8, at most 2048")
            chain += bytes((following, size // 8 - 1)) + ext.data
    if isinstance(transport, UDP):
        if ip.next_header != IPPROTO_UDP:
            raise ValueError("a UDP header needs next header 17")
        body = _udp_segment(transport, ip.src, ip.dst, payload)
    elif transport is None:
        body = payload
    else:
        if ip.next_header != IPPROTO_ICMPV6:
            raise ValueError("Neighbor Discovery needs next header 58")
        body = _nd_message(transport, ip.src, ip.dst)
    plen = len(chain) + len(body) if ip.payload_length is None else ip.payload_length
    vtf = 0x60000000 | (ip.traffic_class << 20) | ip.flow_label
    return _IP6.pack(vtf, plen, types[0], ip.hop_limit, ip.src, ip.dst) + chain + body


def _nd_message(nd: NeighborSolicitation | NeighborAdvertisement, src: bytes, dst: bytes) -> bytes:
    if len(nd.target) != 16:
        raise ValueError("ND target must be 16 bytes")
    if isinstance(nd, NeighborSolicitation):
        head = bytes((ND_NEIGHBOR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0))
        option, lladdr = _ND_SOURCE_LLADDR, nd.source_lladdr
    else:
        flags = (nd.router << 7) | (nd.solicited << 6) | (nd.override << 5)
        head = bytes((ND_NEIGHBOR_ADVERTISEMENT, 0, 0, 0, flags, 0, 0, 0))
        option, lladdr = _ND_TARGET_LLADDR, nd.target_lladdr
    message = head + nd.target
    if lladdr is not None:
        if len(lladdr) != 6:
            raise ValueError("link-layer address must be 6 bytes")
        message += bytes((option, 1)) + lladdr
    csum = icmpv6_checksum(src, dst, message)
    return message[:2] + csum.to_bytes(2, "big") + message[4:]
