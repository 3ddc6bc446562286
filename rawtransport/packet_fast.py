"""The per-datagram fast paths of the codec: :func:`parse_udp` and :func:`build_udp`, plus the
fragment, ARP and Neighbor Solicitation builders.

Private to :mod:`rawtransport.packet` (which documents the drop reasons). Pure: no I/O.

Speed idioms (measured by ``python -m rawtransport bench codec``): one precompiled ``struct.Struct`` per header layout, ``unpack_from`` on
the frame, checksums as ``int.from_bytes(...) % 0xFFFF`` and header checksums computed from the
field values arithmetically (so each frame is packed once), no dataclass on these paths. The
common case (Ethernet II, no tag, IPv4 without options or IPv6 without extension headers) is
tried first; anything it does not accept goes through the general path, which makes every check
and raises the right reason.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from rawtransport.datapath import ACCEL
from rawtransport.errors import MalformedPacketError
from rawtransport.packet_types import (
    BROADCAST_MAC,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    UdpDatagram,
    check_ipv4_options,
    walk_ipv6_extensions,
)

__all__ = [
    "build_arp_request",
    "build_ipv4_fragments",
    "build_ipv6_fragments",
    "build_neighbor_solicitation",
    "build_udp",
    "build_udp_fast",
    "build_udp_fast_py",
    "multicast_mac",
    "parse_udp",
    "parse_udp_fast",
    "parse_udp_py",
    "solicited_node_address",
]

Buffer = bytes | bytearray | memoryview

# Receive layouts, unpacked from the frame at an offset.
_IP4_FIXED = struct.Struct("!BBHHHBBH4s4s")  # version/IHL .. destination (20 bytes)
_IP6_FIXED = struct.Struct("!IHBB16s16s")  # version/class/flow .. destination (40 bytes)
_UDP_HDR = struct.Struct("!HHHH")
# Fast-path receive views of Ethernet + IPv4 (no options) + UDP, from byte 16 (total length)...
_FAST4 = struct.Struct("!H2xHBB2x4s4sHHHH")
# ... and of Ethernet + IPv6 + UDP from byte 18 (payload length).
_FAST6 = struct.Struct("!HBB16s16sHHHH")

# Send layouts: whole Ethernet + IP + UDP headers in one pack.
_TX4 = struct.Struct("!6s6sHBBHHHBBH4s4sHHHH")
_TX4_VLAN = struct.Struct("!6s6sHHHBBHHHBBH4s4sHHHH")
_TX6 = struct.Struct("!6s6sHIHBB16s16sHHHH")
_TX6_VLAN = struct.Struct("!6s6sHHHIHBB16s16sHHHH")
_IP4_HDR = struct.Struct("!BBHHHBBH4s4s")
_ETH = struct.Struct("!6s6sH")
_ETH_VLAN = struct.Struct("!6s6sHHH")
_ETH_IP6 = struct.Struct("!6s6sHIHBB16s16s")
_FRAG6 = struct.Struct("!BBHI")
_ARP = struct.Struct("!6s6sHHHBBH6s4s6s4s")

_tuple_new = tuple.__new__
_from_bytes = int.from_bytes
_UDP4_MAX_PAYLOAD = 65535 - 20 - 8
_UDP6_MAX_PAYLOAD = 65535 - 8


def _raw(data: Buffer) -> int:
    """The words of ``data`` as one integer, congruent to their sum modulo 0xFFFF (odd length:
    the last byte is the high byte of a zero-padded word, RFC 1071 4.1)."""
    n = _from_bytes(data, "big")
    return n << 8 if len(data) & 1 else n


# --------------------------------------------------------------------------------------------
# Receive


def parse_udp_py(data: Buffer, verify_udp_checksum: bool = True) -> UdpDatagram:
    """Parse and check one Ethernet frame carrying a UDP datagram: the receive fast path.

    This is the pure-Python reference; :func:`parse_udp` is the same function, accelerated by
    the compiled datapath when it is built (:mod:`rawtransport.datapath`).

    Makes every receive check the kernel's IP and UDP input would make from the bytes alone and
    raises :class:`MalformedPacketError` with the reason listed in :mod:`rawtransport.packet`.
    The IPv4 header checksum is always verified; the UDP checksum only if
    ``verify_udp_checksum`` (pass ``False`` when the kernel vouched for it, e.g.
    ``TP_STATUS_CSUMNOTREADY`` / ``TP_STATUS_CSUM_VALID``). The IPv6 rule that a zero UDP
    checksum is an error is applied either way, as ``__udp6_lib_rcv`` does.
    """
    if type(data) is not bytes:
        data = bytes(data)
    n = len(data)
    if n >= 42 and data[12] == 0x08 and data[13] == 0x00 and data[14] == 0x45:
        tot, frag, ttl, proto, src, dst, sport, dport, ulen, csum = _FAST4.unpack_from(data, 16)
        if (
            proto == IPPROTO_UDP
            and not frag & 0x3FFF
            and 28 <= tot <= n - 14
            and 8 <= ulen <= tot - 20
            and _from_bytes(data[14:34], "big") % 0xFFFF == 0
        ):
            end = 34 + ulen
            # Pseudo-header (addresses at 26..34, contiguous with the UDP segment), protocol and
            # length, then the segment: one integer, one reduction.
            if (
                not csum
                or not verify_udp_checksum
                or (_raw(data[26:end]) + IPPROTO_UDP + ulen) % 0xFFFF == 0
            ):
                return _tuple_new(
                    UdpDatagram,
                    (data[0:6], data[6:12], None, 4, src, dst, sport, dport, data[42:end], ttl),
                )
    elif n >= 62 and data[12] == 0x86 and data[13] == 0xDD and data[14] >> 4 == 6:
        plen, nh, hops, src, dst, sport, dport, ulen, csum = _FAST6.unpack_from(data, 18)
        if nh == IPPROTO_UDP and 8 <= ulen <= plen <= n - 54 and csum:
            end = 54 + ulen
            if not verify_udp_checksum or (_raw(data[22:end]) + IPPROTO_UDP + ulen) % 0xFFFF == 0:
                return _tuple_new(
                    UdpDatagram,
                    (data[0:6], data[6:12], None, 6, src, dst, sport, dport, data[62:end], hops),
                )
    return _parse_udp_general(data, verify_udp_checksum)


#: The receive hot path's first try, ``(frame, verify_udp_checksum) -> UdpDatagram | None``: the
#: compiled fast path, which returns None where it declines (then :func:`parse_udp` names the drop
#: reason or takes the frame on its general path); on the pure path :func:`parse_udp_py` itself.
parse_udp_fast: Callable[[Buffer, bool], UdpDatagram | None]
if ACCEL is None:
    parse_udp_fast = parse_udp_py
    _payload_sum = _raw
else:
    parse_udp_fast = ACCEL.parse_udp_fast
    # Congruent to _raw() modulo 0xFFFF, which is all build_udp() needs (tests/test_datapath.py).
    _payload_sum = ACCEL.inet_sum


def parse_udp(data: Buffer, *, verify_udp_checksum: bool = True) -> UdpDatagram:
    """Parse and check one Ethernet frame carrying a UDP datagram: :func:`parse_udp_py`, its
    common case in C when the compiled datapath runs; the same result for every input."""
    d = parse_udp_fast(data, verify_udp_checksum)
    if d is not None:
        return d
    return _parse_udp_general(data if type(data) is bytes else bytes(data), verify_udp_checksum)


def _parse_udp_general(data: bytes, verify: bool) -> UdpDatagram:
    """Every case the fast path declined: VLAN tags, IPv4 options, IPv6 extension headers, and
    all the malformed frames, each rejected with its reason."""
    n = len(data)
    if n < 14:
        raise MalformedPacketError("eth_short", f"{n} bytes")
    ethertype = (data[12] << 8) | data[13]
    off = 14
    vlan_id: int | None = None
    tags = 0
    while ethertype in (ETH_P_8021Q, ETH_P_8021AD):
        if tags == 2:
            raise MalformedPacketError("vlan_too_deep", "more than two VLAN tags")
        if n - off < 4:
            raise MalformedPacketError("eth_short", "truncated VLAN tag")
        if vlan_id is None:
            vlan_id = ((data[off] << 8) | data[off + 1]) & 0x0FFF
        ethertype = (data[off + 2] << 8) | data[off + 3]
        off += 4
        tags += 1
    if ethertype == ETH_P_IP:
        return _parse_ipv4_udp(data, off, vlan_id, verify)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6_udp(data, off, vlan_id, verify)
    raise MalformedPacketError("not_ip", f"ethertype {ethertype:#06x}")


def check_ipv4_header(data: bytes, off: int, verify_checksum: bool) -> tuple[int, int]:
    """The checks of ``ip_rcv_core()`` up to the options; returns ``(IHL in bytes, tot_len)``."""
    avail = len(data) - off
    if avail < 20:
        raise MalformedPacketError("ipv4_short", f"{avail} bytes for the IPv4 header")
    vihl = data[off]
    if vihl >> 4 != 4:
        raise MalformedPacketError("ipv4_version", f"version {vihl >> 4}")
    ihl = (vihl & 0x0F) << 2
    if ihl < 20:
        raise MalformedPacketError("ipv4_ihl", f"IHL {ihl >> 2}")
    if avail < ihl:
        raise MalformedPacketError("ipv4_short", f"IHL {ihl >> 2} but {avail} bytes captured")
    # The version nibble makes the header sum non-zero, so 0 mod 0xFFFF means "all ones".
    if verify_checksum and _from_bytes(data[off : off + ihl], "big") % 0xFFFF:
        raise MalformedPacketError("ipv4_bad_checksum")
    tot = (data[off + 2] << 8) | data[off + 3]
    if tot > avail:
        raise MalformedPacketError("ipv4_total_length", f"total length {tot} > {avail} captured")
    if tot < ihl:
        raise MalformedPacketError("ipv4_total_length", f"total length {tot} < header {ihl}")
    return ihl, tot


def _parse_ipv4_udp(data: bytes, off: int, vlan_id: int | None, verify: bool) -> UdpDatagram:
    ihl, tot = check_ipv4_header(data, off, True)
    _, _, _, _, frag, ttl, proto, _, src, dst = _IP4_FIXED.unpack_from(data, off)
    # ip_rcv_finish() -> ip_rcv_options(): source-routed datagrams are dropped while
    # net.ipv4.conf.*.accept_source_route is 0, its default.
    if ihl > 20 and check_ipv4_options(data[off + 20 : off + ihl]):
        raise MalformedPacketError("ipv4_source_route", "source route option")
    if frag & 0x3FFF:  # ip_is_fragment(): MF set or a non-zero offset.
        raise MalformedPacketError("ipv4_fragment")
    if proto != IPPROTO_UDP:
        raise MalformedPacketError("not_udp", f"protocol {proto}")
    u = off + ihl
    avail = tot - ihl
    if avail < 8:
        raise MalformedPacketError("udp_short", f"{avail} bytes for the UDP header")
    sport, dport, ulen, csum = _UDP_HDR.unpack_from(data, u)
    if ulen < 8 or ulen > avail:
        raise MalformedPacketError("udp_length", f"UDP length {ulen}, {avail} available")
    end = u + ulen
    if verify and csum and (_raw(src + dst + data[u:end]) + IPPROTO_UDP + ulen) % 0xFFFF:
        raise MalformedPacketError("udp_bad_checksum")
    return _tuple_new(
        UdpDatagram,
        (data[0:6], data[6:12], vlan_id, 4, src, dst, sport, dport, data[u + 8 : end], ttl),
    )


def check_ipv6_header(data: bytes, off: int) -> int:
    """The checks of ``ip6_rcv_core()`` on the fixed header; returns the payload length the
    kernel goes on with (all the bytes captured after the header for payload length 0 before a
    hop-by-hop header, see below)."""
    avail = len(data) - off
    if avail < 40:
        raise MalformedPacketError("ipv6_short", f"{avail} bytes for the IPv6 header")
    if data[off] >> 4 != 6:
        raise MalformedPacketError("ipv6_version", f"version {data[off] >> 4}")
    plen = (data[off + 4] << 8) | data[off + 5]
    if plen == 0 and data[off + 6] == 0:
        # RFC 2675: payload length 0 before a hop-by-hop header announces a jumbogram whose
        # length is in a Jumbo Payload option. ip6_rcv_core() then leaves the packet untrimmed,
        # and only the option itself (which cannot be valid below 65536 bytes, so never over
        # Ethernet) is refused (ipv6_hop_jumbo(): ``ipv6_jumbogram``). Without one the kernel
        # delivers the packet with everything captured as its payload (seen on Linux 6.18, in
        # tests/net/test_differential.py): so do we.
        return avail - 40
    if plen > avail - 40:
        raise MalformedPacketError("ipv6_payload_length", f"{plen} > {avail - 40} captured")
    return plen


def _parse_ipv6_udp(data: bytes, off: int, vlan_id: int | None, verify: bool) -> UdpDatagram:
    plen = check_ipv6_header(data, off)
    _, _, nh, hops, src, dst = _IP6_FIXED.unpack_from(data, off)
    end = off + 40 + plen
    nh, u, _ = walk_ipv6_extensions(data, off + 40, end, nh, collect=None, fragments_ok=False)
    if nh != IPPROTO_UDP:
        raise MalformedPacketError("not_udp", f"next header {nh}")
    avail = end - u
    if avail < 8:
        raise MalformedPacketError("udp_short", f"{avail} bytes for the UDP header")
    sport, dport, ulen, csum = _UDP_HDR.unpack_from(data, u)
    # __udp6_lib_rcv(): a length above the payload is short; 0 means "the rest of the payload"
    # (RFC 2675 5, which the kernel applies to any packet), below 8 is short.
    if ulen > avail:
        raise MalformedPacketError("udp_length", f"UDP length {ulen}, {avail} available")
    if ulen == 0:
        ulen = avail
    if ulen < 8:
        raise MalformedPacketError("udp_length", f"UDP length {ulen}")
    if not csum:
        raise MalformedPacketError("udp6_zero_checksum", "RFC 8200 8.1: checksum is mandatory")
    seg_end = u + ulen
    if verify and (_raw(src + dst + data[u:seg_end]) + IPPROTO_UDP + ulen) % 0xFFFF:
        raise MalformedPacketError("udp_bad_checksum")
    return _tuple_new(
        UdpDatagram,
        (data[0:6], data[6:12], vlan_id, 6, src, dst, sport, dport, data[u + 8 : seg_end], hops),
    )


# --------------------------------------------------------------------------------------------
# Send


def _check_macs(eth_dst: bytes, eth_src: bytes) -> None:
    if len(eth_dst) != 6 or len(eth_src) != 6:
        raise ValueError("MAC addresses must be 6 bytes")


def _check_vlan(vlan_id: int) -> None:
    if not 0 <= vlan_id <= 4094:  # VID 0xFFF is reserved (IEEE 802.1Q 9.6).
        raise ValueError(f"VLAN id {vlan_id} out of range 0..4094")


def build_udp(
    eth_dst: bytes,
    eth_src: bytes,
    src: bytes,
    dst: bytes,
    src_port: int,
    dst_port: int,
    payload: Buffer,
    *,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    dont_fragment: bool = True,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
    vlan_id: int | None = None,
    udp_checksum: bool = True,
) -> bytes:
    """Build an Ethernet frame carrying one UDP datagram: the send fast path.

    The family follows from ``len(src)`` (4 or 16); ``ttl``/``tos``/``ident``/``dont_fragment``
    apply to IPv4, ``hop_limit``/``traffic_class``/``flow_label`` to IPv6. The IPv4 header
    checksum is always computed; the UDP checksum too unless ``udp_checksum`` is false over IPv4
    (IPv6 always has it, RFC 8200 8.1); a computed 0 is sent as 0xFFFF (RFC 768). The frame is
    not padded to 60 bytes (drivers do that). Raises ``ValueError`` for bad lengths or fields.
    """
    if len(eth_dst) != 6 or len(eth_src) != 6:
        raise ValueError("MAC addresses must be 6 bytes")
    plen = len(payload)
    alen = len(src)
    if alen != len(dst):
        raise ValueError("source and destination addresses of different families")
    try:
        if alen == 4:
            if plen > _UDP4_MAX_PAYLOAD:
                raise ValueError(f"UDP payload of {plen} bytes exceeds 65507 over IPv4")
            ulen = plen + 8
            tot = ulen + 20
            flags = 0x4000 if dont_fragment else 0
            addr_sum = _from_bytes(src, "big") + _from_bytes(dst, "big")
            hck = -(0x4500 + tos + tot + ident + flags + (ttl << 8) + IPPROTO_UDP + addr_sum)
            if udp_checksum:
                usum = (
                    addr_sum
                    + IPPROTO_UDP
                    + ulen
                    + src_port
                    + dst_port
                    + ulen
                    + _payload_sum(payload)
                )
                uck = (-usum) % 0xFFFF or 0xFFFF
            else:
                uck = 0
            if vlan_id is None:
                hdr = _TX4.pack(
                    eth_dst, eth_src, ETH_P_IP, 0x45, tos, tot, ident, flags, ttl,
                    IPPROTO_UDP, hck % 0xFFFF, src, dst, src_port, dst_port, ulen, uck,
                )  # fmt: skip
            else:
                _check_vlan(vlan_id)
                hdr = _TX4_VLAN.pack(
                    eth_dst, eth_src, ETH_P_8021Q, vlan_id, ETH_P_IP, 0x45, tos, tot, ident,
                    flags, ttl, IPPROTO_UDP, hck % 0xFFFF, src, dst, src_port, dst_port, ulen, uck,
                )  # fmt: skip
            return hdr + payload
        if alen == 16:
            if plen > _UDP6_MAX_PAYLOAD:
                raise ValueError(f"UDP payload of {plen} bytes exceeds 65527 over IPv6")
            if not 0 <= traffic_class <= 0xFF or not 0 <= flow_label <= 0xFFFFF:
                raise ValueError("traffic class must fit in 8 bits and flow label in 20")
            ulen = plen + 8
            usum = (
                _from_bytes(src, "big") + _from_bytes(dst, "big") + IPPROTO_UDP + ulen
                + src_port + dst_port + ulen + _payload_sum(payload)
            )  # fmt: skip
            uck = (-usum) % 0xFFFF or 0xFFFF
            vtf = 0x60000000 | (traffic_class << 20) | flow_label
            if vlan_id is None:
                hdr = _TX6.pack(
                    eth_dst, eth_src, ETH_P_IPV6, vtf, ulen, IPPROTO_UDP, hop_limit, src, dst,
                    src_port, dst_port, ulen, uck,
                )  # fmt: skip
            else:
                _check_vlan(vlan_id)
                hdr = _TX6_VLAN.pack(
                    eth_dst, eth_src, ETH_P_8021Q, vlan_id, ETH_P_IPV6, vtf, ulen, IPPROTO_UDP,
                    hop_limit, src, dst, src_port, dst_port, ulen, uck,
                )  # fmt: skip
            return hdr + payload
    except struct.error as exc:
        raise ValueError(f"header field out of range: {exc}") from None
    raise ValueError(f"IP addresses must be 4 or 16 bytes, got {alen}")


def build_udp_fast_py(
    eth_dst: bytes,
    eth_src: bytes,
    src: bytes,
    dst: bytes,
    src_port: int,
    dst_port: int,
    payload: Buffer,
    ttl: int,
) -> bytes:
    """:func:`build_udp` with its defaults, ``ttl`` being the hop limit over IPv6: the frame of
    the send fast path (a unicast next hop, no VLAN tag). The pure-Python reference of
    :func:`build_udp_fast`, which the compiled datapath accelerates."""
    if len(src) == 16:
        return build_udp(eth_dst, eth_src, src, dst, src_port, dst_port, payload, hop_limit=ttl)
    return build_udp(eth_dst, eth_src, src, dst, src_port, dst_port, payload, ttl=ttl)


build_udp_fast = build_udp_fast_py if ACCEL is None else ACCEL.build_udp_fast


def _eth_header(eth_dst: bytes, eth_src: bytes, ethertype: int, vlan_id: int | None) -> bytes:
    _check_macs(eth_dst, eth_src)
    if vlan_id is None:
        return _ETH.pack(eth_dst, eth_src, ethertype)
    _check_vlan(vlan_id)
    return _ETH_VLAN.pack(eth_dst, eth_src, ETH_P_8021Q, vlan_id, ethertype)


def _ipv4_header(
    src: bytes, dst: bytes, tos: int, tot: int, ident: int, flags: int, ttl: int, proto: int
) -> bytes:
    hck = -(0x4500 + tos + tot + ident + flags + (ttl << 8) + proto)
    hck -= _from_bytes(src, "big") + _from_bytes(dst, "big")
    return _IP4_HDR.pack(0x45, tos, tot, ident, flags, ttl, proto, hck % 0xFFFF, src, dst)


def _pieces(total: int, room: int) -> list[tuple[int, int]]:
    """Split ``total`` bytes into fragment data ranges as ``ip_do_fragment()`` and
    ``ip6_fragment()`` do: each piece takes all the ``room`` left, rounded down to a multiple of
    8 unless it is the last piece (which may be any length that fits)."""
    pieces = []
    start = 0
    while start < total:
        size = total - start
        if size > room:
            size = room & ~7
        pieces.append((start, start + size))
        start += size
    return pieces


def build_ipv4_fragments(
    eth_dst: bytes,
    eth_src: bytes,
    src: bytes,
    dst: bytes,
    src_port: int,
    dst_port: int,
    payload: Buffer,
    *,
    mtu: int,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    dont_fragment: bool = True,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
    vlan_id: int | None = None,
    udp_checksum: bool = True,
) -> list[bytes]:
    """Build one UDP datagram over IPv4 as frames of at most ``mtu`` bytes of IP packet.

    If the datagram fits it is one ordinary frame (``dont_fragment`` as given). Otherwise it is
    fragmented as ``ip_fragment()``/``ip_do_fragment()`` does (RFC 791): the UDP header and
    checksum cover the whole datagram and travel in the first fragment; each fragment but the
    last carries a multiple of 8 bytes, as many as fit, and the last whatever is left (up to the
    room of a fragment, not rounded); all share ``ident``; MF is set on all but
    the last; DF is clear (a DF datagram over the MTU is never fragmented, so the kernel only
    fragments with DF off). ``hop_limit``/``traffic_class``/``flow_label`` are accepted for
    signature symmetry with :func:`build_udp` and ignored. ``mtu`` must be at least 68
    (RFC 791: every IPv4 module must forward 68 bytes without fragmenting).
    """
    if len(src) != 4 or len(dst) != 4:
        raise ValueError("build_ipv4_fragments needs 4-byte IPv4 addresses")
    if mtu < 68:
        raise ValueError(f"IPv4 MTU {mtu} below the minimum of 68")
    plen = len(payload)
    if plen + 28 <= mtu:
        return [
            build_udp(
                eth_dst, eth_src, src, dst, src_port, dst_port, payload, ttl=ttl, tos=tos,
                ident=ident, dont_fragment=dont_fragment, vlan_id=vlan_id,
                udp_checksum=udp_checksum,
            )
        ]  # fmt: skip
    if plen > _UDP4_MAX_PAYLOAD:
        raise ValueError(f"UDP payload of {plen} bytes exceeds 65507 over IPv4")
    eth = _eth_header(eth_dst, eth_src, ETH_P_IP, vlan_id)
    ulen = plen + 8
    uck = 0
    try:
        if udp_checksum:
            usum = _from_bytes(src, "big") + _from_bytes(dst, "big") + IPPROTO_UDP + ulen
            usum += src_port + dst_port + ulen + _raw(bytes(payload))
            uck = (-usum) % 0xFFFF or 0xFFFF
        segment = _UDP_HDR.pack(src_port, dst_port, ulen, uck) + payload
        frames = []
        for start, end in _pieces(ulen, mtu - 20):
            more = 0x2000 if end < ulen else 0
            hdr = _ipv4_header(
                src, dst, tos, 20 + end - start, ident, more | (start >> 3), ttl, IPPROTO_UDP
            )
            frames.append(eth + hdr + segment[start:end])
    except struct.error as exc:
        raise ValueError(f"header field out of range: {exc}") from None
    return frames


def build_ipv6_fragments(
    eth_dst: bytes,
    eth_src: bytes,
    src: bytes,
    dst: bytes,
    src_port: int,
    dst_port: int,
    payload: Buffer,
    *,
    mtu: int,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    dont_fragment: bool = True,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
    vlan_id: int | None = None,
    udp_checksum: bool = True,
) -> list[bytes]:
    """Build one UDP datagram over IPv6 as frames of at most ``mtu`` bytes of IP packet.

    If it fits it is one ordinary frame. Otherwise each frame is the IPv6 header, a Fragment
    header (RFC 8200 4.5) with the 32-bit ``ident`` and the next piece of the UDP datagram
    (whose checksum covers the whole datagram), a multiple of 8 bytes in all but the last.
    ``ttl``/``tos``/``dont_fragment``/``udp_checksum`` are accepted for signature symmetry and
    ignored (IPv6 always has the UDP checksum). ``mtu`` must be at least 1280 (RFC 8200 5).
    """
    if len(src) != 16 or len(dst) != 16:
        raise ValueError("build_ipv6_fragments needs 16-byte IPv6 addresses")
    if mtu < 1280:
        raise ValueError(f"IPv6 MTU {mtu} below the minimum of 1280")
    if not 0 <= ident <= 0xFFFFFFFF:
        raise ValueError("ident must fit in 32 bits")
    plen = len(payload)
    single = build_udp(
        eth_dst, eth_src, src, dst, src_port, dst_port, payload, hop_limit=hop_limit,
        traffic_class=traffic_class, flow_label=flow_label, vlan_id=vlan_id,
    )  # fmt: skip
    if plen + 48 <= mtu:
        return [single]
    eth_len = 14 if vlan_id is None else 18
    eth = single[:eth_len]
    fixed = bytearray(single[eth_len : eth_len + 40])
    fixed[6] = 44  # next header: Fragment
    segment = single[eth_len + 40 :]  # UDP header (with the whole datagram's checksum) + data
    ulen = len(segment)
    frames = []
    for start, end in _pieces(ulen, mtu - 48):
        chunk = segment[start:end]
        more = 1 if end < ulen else 0
        fixed[4:6] = (8 + len(chunk)).to_bytes(2, "big")
        frames.append(eth + bytes(fixed) + _FRAG6.pack(IPPROTO_UDP, 0, start | more, ident) + chunk)
    return frames


def build_arp_request(sender_mac: bytes, sender_ip: bytes, target_ip: bytes) -> bytes:
    """A broadcast ARP request for ``target_ip`` (RFC 826), target MAC zero, padded to the
    60-byte Ethernet minimum (without FCS) as ``arp_create()`` output leaves the NIC."""
    if len(sender_mac) != 6 or len(sender_ip) != 4 or len(target_ip) != 4:
        raise ValueError("ARP needs a 6-byte MAC and 4-byte IPv4 addresses")
    frame = _ARP.pack(
        BROADCAST_MAC, sender_mac, ETH_P_ARP, 1, ETH_P_IP, 6, 4, 1,
        sender_mac, sender_ip, b"\x00" * 6, target_ip,
    )  # fmt: skip
    return frame + b"\x00" * (60 - len(frame))


def solicited_node_address(ip: bytes) -> bytes:
    """The solicited-node multicast address ff02::1:ffXX:XXXX of an IPv6 address
    (RFC 4291 2.7.1): the prefix and the address's low 24 bits."""
    if len(ip) != 16:
        raise ValueError("an IPv6 address is 16 bytes")
    return b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + ip[13:16]


def multicast_mac(ip: bytes) -> bytes:
    """The Ethernet group address of an IP multicast address: 01:00:5e + the low 23 bits for
    IPv4 (RFC 1112 6.4), 33:33 + the low 32 bits for IPv6 (RFC 2464 7)."""
    if len(ip) == 4:
        if ip[0] >> 4 != 0xE:
            raise ValueError("not an IPv4 multicast address (224.0.0.0/4)")
        return b"\x01\x00\x5e" + bytes((ip[1] & 0x7F,)) + ip[2:4]
    if len(ip) == 16:
        if ip[0] != 0xFF:
            raise ValueError("not an IPv6 multicast address (ff00::/8)")
        return b"\x33\x33" + ip[12:16]
    raise ValueError("an IP address is 4 or 16 bytes")


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """The ICMPv6 checksum of ``message`` over the IPv6 pseudo-header (RFC 4443 2.3, RFC 8200
    8.1): the value to send if its checksum field is zero, and 0 if the field it holds is right."""
    total = _from_bytes(src, "big") + _from_bytes(dst, "big") + IPPROTO_ICMPV6 + len(message)
    return (-(total + _raw(message))) % 0xFFFF


def build_neighbor_solicitation(src_mac: bytes, src_ip: bytes, target_ip: bytes) -> bytes:
    """A multicast Neighbor Solicitation for ``target_ip`` (RFC 4861 7.2.2): sent to the
    target's solicited-node address and its 33:33 MAC, hop limit 255, with a source link-layer
    address option unless ``src_ip`` is the unspecified address (DAD, RFC 4861 4.3)."""
    if len(src_mac) != 6 or len(src_ip) != 16 or len(target_ip) != 16:
        raise ValueError("NS needs a 6-byte MAC and 16-byte IPv6 addresses")
    if target_ip[0] == 0xFF:
        raise ValueError("the target of a Neighbor Solicitation cannot be multicast")
    dst_ip = solicited_node_address(target_ip)
    message = b"\x87\x00\x00\x00\x00\x00\x00\x00" + target_ip
    if any(src_ip):
        message += b"\x01\x01" + src_mac
    ck = icmpv6_checksum(src_ip, dst_ip, message)
    message = message[:2] + ck.to_bytes(2, "big") + message[4:]
    header = _ETH_IP6.pack(
        multicast_mac(dst_ip), src_mac, ETH_P_IPV6, 0x60000000, len(message), IPPROTO_ICMPV6,
        255, src_ip, dst_ip,
    )  # fmt: skip
    return header + message
