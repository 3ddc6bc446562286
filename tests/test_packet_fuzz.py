"""Property tests of the codec: round trips, garbage in, single-bit flips, seeded regressions.

The garbage tests assert h11's invariant exactly: a parser returns a value or raises
MalformedPacketError; any other exception propagates and fails the test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from rawtransport.errors import MalformedPacketError
from rawtransport.packet import (
    ARP,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    UDP,
    Ethernet,
    Frame,
    IPv4,
    IPv6,
    IPv6Extension,
    NeighborAdvertisement,
    NeighborSolicitation,
    VlanTag,
    build_frame,
    build_udp,
    parse_frame,
    parse_udp,
    solicited_node_address,
)

M1 = bytes.fromhex("020000000001")
M2 = bytes.fromhex("020000000002")
S4 = bytes([198, 18, 0, 1])
D4 = bytes([198, 18, 0, 2])
S6 = bytes.fromhex("20010db8000000000000000000000001")
D6 = bytes.fromhex("20010db8000000000000000000000002")
PAD6 = b"\x01\x04\x00\x00\x00\x00"

macs = st.binary(min_size=6, max_size=6)
ip4 = st.binary(min_size=4, max_size=4)
unicast6 = st.binary(min_size=15, max_size=15).map(lambda b: b"\x20" + b)
ip6 = st.binary(min_size=16, max_size=16)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)

# IPv4 options the kernel accepts (RFC 791 / RFC 2113), padded to a multiple of 4.
VALID_IPV4_OPTIONS = [
    b"",
    b"\x01\x01\x01\x01",
    b"\x94\x04\x00\x00",  # router alert
    b"\x07\x07\x04\x00\x00\x00\x00\x01",  # record route, one slot, then NOP
    b"\x44\x0c\x05\x00" + b"\x00" * 8,  # timestamp, two slots
    b"\x00\x00\x00\x00",  # EOL
]
# IPv6 extension headers the kernel accepts (hop-by-hop is only ever put first).
VALID_EXTENSIONS = [
    IPv6Extension(60, PAD6),
    IPv6Extension(60, b"\x1e\x04\x00\x00\x00\x00"),  # unknown option, "skip" action
    IPv6Extension(43, b"\x00\x00" + b"\x00" * 4 + D6),  # type 0, no segments left
    IPv6Extension(44, b"\x00\x00\x12\x34\x56\x78"),  # atomic fragment
]
HBH = [IPv6Extension(0, PAD6), IPv6Extension(0, b"\x05\x02\x00\x00\x01\x00")]
EXTENSION_TYPES = {0, 43, 44, 50, 51, 60}


@st.composite
def ethernets(draw: st.DrawFn, ethertype: int) -> Ethernet:
    tags = draw(
        st.lists(
            st.builds(
                VlanTag,
                st.sampled_from([ETH_P_8021Q, ETH_P_8021AD]),
                st.integers(0, 7),
                st.booleans(),
                st.integers(0, 4095),
            ),
            max_size=2,
        )
    )
    return Ethernet(draw(macs), draw(macs), ethertype, tuple(tags))


@st.composite
def ipv4_frames(draw: st.DrawFn) -> Frame:
    eth = draw(ethernets(ETH_P_IP))
    fields = {
        "ttl": draw(u8),
        "tos": draw(u8),
        "ident": draw(u16),
        "dont_fragment": draw(st.booleans()),
        "options": draw(st.sampled_from(VALID_IPV4_OPTIONS)),
    }
    payload = draw(st.binary(max_size=100))
    if draw(st.booleans()):
        ip = IPv4(draw(ip4), draw(ip4), IPPROTO_UDP, **fields)  # type: ignore[arg-type]
        return Frame(eth, ip, UDP(draw(u16), draw(u16)), payload)
    mf = draw(st.booleans())
    offset = draw(st.integers(0, 0x1FFF))
    proto = draw(u8) if mf or offset else draw(u8.filter(lambda p: p != IPPROTO_UDP))
    ip = IPv4(draw(ip4), draw(ip4), proto, more_fragments=mf, frag_offset=offset, **fields)  # type: ignore[arg-type]
    return Frame(eth, ip, None, payload)


@st.composite
def ipv6_frames(draw: st.DrawFn) -> Frame:
    eth = draw(ethernets(ETH_P_IPV6))
    exts = draw(st.lists(st.sampled_from(VALID_EXTENSIONS), max_size=4))
    if draw(st.booleans()):
        exts.insert(0, draw(st.sampled_from(HBH)))
    src = draw(unicast6)
    common = {
        "traffic_class": draw(u8),
        "flow_label": draw(st.integers(0, 0xFFFFF)),
        "extensions": tuple(exts),
    }
    kind = draw(st.sampled_from(["udp", "ns", "na", "other", "fragment"]))
    if kind == "udp":
        ip = IPv6(src, draw(ip6), IPPROTO_UDP, draw(u8), **common)  # type: ignore[arg-type]
        return Frame(eth, ip, UDP(draw(u16), draw(u16)), draw(st.binary(max_size=100)))
    if kind == "fragment":
        frag = IPv6Extension(44, draw(st.binary(min_size=6, max_size=6)))
        assume(int.from_bytes(frag.data[:2], "big") & 0xFFF9)
        common["extensions"] = (*exts, frag)
        ip = IPv6(src, draw(ip6), draw(u8), draw(u8), **common)  # type: ignore[arg-type]
        return Frame(eth, ip, None, draw(st.binary(max_size=100)))
    if kind == "other":
        nh = draw(u8.filter(lambda n: n not in EXTENSION_TYPES | {IPPROTO_UDP, IPPROTO_ICMPV6}))
        ip = IPv6(src, draw(ip6), nh, draw(u8), **common)  # type: ignore[arg-type]
        return Frame(eth, ip, None, draw(st.binary(max_size=100)))
    target = draw(unicast6)
    lladdr = draw(st.none() | macs)
    if kind == "ns":
        dst = draw(st.sampled_from([solicited_node_address(target), target]))
        nd: NeighborSolicitation | NeighborAdvertisement = NeighborSolicitation(target, lladdr)
    else:
        dst = draw(st.sampled_from([b"\xff\x02" + b"\x00" * 13 + b"\x01", src]))
        solicited = draw(st.booleans()) and dst[0] != 0xFF
        nd = NeighborAdvertisement(
            target, lladdr, draw(st.booleans()), solicited, draw(st.booleans())
        )
    return Frame(eth, IPv6(src, dst, IPPROTO_ICMPV6, 255, **common), nd, b"")  # type: ignore[arg-type]


@st.composite
def other_frames(draw: st.DrawFn) -> Frame:
    if draw(st.booleans()):
        arp = ARP(draw(st.sampled_from([1, 2])), draw(macs), draw(ip4), draw(macs), draw(ip4))
        return Frame(draw(ethernets(ETH_P_ARP)), arp, None, b"")
    ethertype = draw(
        u16.filter(lambda t: t not in (ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_8021Q, ETH_P_8021AD))
    )
    return Frame(draw(ethernets(ethertype)), None, None, draw(st.binary(max_size=60)))


frames = st.one_of(ipv4_frames(), ipv6_frames(), other_frames())


def computed(frame: Frame) -> Frame:
    net = frame.net
    if isinstance(net, IPv4):
        net = dataclasses.replace(net, total_length=None, checksum=None)
    elif isinstance(net, IPv6):
        net = dataclasses.replace(net, payload_length=None)
    transport = frame.transport
    if isinstance(transport, UDP):
        transport = dataclasses.replace(transport, length=None, checksum=None)
    return dataclasses.replace(frame, net=net, transport=transport)


@given(frames)
def test_build_parse_round_trip(frame: Frame) -> None:
    wire = build_frame(frame)
    parsed = parse_frame(wire)
    assert computed(parsed) == frame
    assert build_frame(parsed) == wire
    if isinstance(frame.transport, UDP):
        got = parse_udp(wire)
        assert got.payload == frame.payload
        assert (got.src_port, got.dst_port) == (frame.transport.src_port, frame.transport.dst_port)
        assert got.vlan_id == (frame.eth.vlans[0].vid if frame.eth.vlans else None)


@given(
    macs,
    macs,
    st.sampled_from([(S4, D4), (S6, D6)]),
    u16,
    u16,
    st.binary(max_size=1500),
    u8,
    st.none() | st.integers(0, 4094),
)
def test_build_udp_parse_udp_round_trip(
    dst_mac: bytes,
    src_mac: bytes,
    addrs: tuple[bytes, bytes],
    sport: int,
    dport: int,
    payload: bytes,
    ttl: int,
    vlan_id: int | None,
) -> None:
    src, dst = addrs
    wire = build_udp(
        dst_mac, src_mac, src, dst, sport, dport, payload, ttl=ttl, hop_limit=ttl, vlan_id=vlan_id
    )
    got = parse_udp(wire)
    assert got == (dst_mac, src_mac, vlan_id, 4 if len(src) == 4 else 6, src, dst, sport, dport,
                   payload, ttl)  # fmt: skip
    assert parse_udp(wire + b"\x00" * 30) == got  # Ethernet padding is trimmed
    parsed = parse_frame(wire)
    assert parsed.payload == payload


# -------------------------------------------------------------------------------------------
# Garbage in: a value or MalformedPacketError, nothing else.


def parse_both(data: bytes) -> None:
    """Every parser, with and without checksum verification (which reaches deeper checks)."""
    for verify in (True, False):
        try:  # noqa: SIM105 (the invariant, spelled out)
            parse_frame(data, verify_checksums=verify)
        except MalformedPacketError:
            pass
        try:  # noqa: SIM105
            parse_udp(data, verify_udp_checksum=verify)
        except MalformedPacketError:
            pass


def rfc1071(data: bytes) -> int:
    """Word-by-word end-around-carry sum: the reference the flips are judged by."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def v4_with_options(options: bytes) -> bytes:
    ip = IPv4(S4, D4, IPPROTO_UDP, options=options)
    return build_frame(Frame(Ethernet(M2, M1, ETH_P_IP), ip, UDP(1, 2), b"data"))


def v6_with(exts: tuple[IPv6Extension, ...], payload_length: int | None = None) -> bytes:
    ip = IPv6(S6, D6, IPPROTO_UDP, extensions=exts, payload_length=payload_length)
    return build_frame(Frame(Ethernet(M2, M1, ETH_P_IPV6), ip, UDP(1, 2), b"data"))


def ns_with_option(option: bytes) -> bytes:
    """A Neighbor Solicitation carrying ``option`` verbatim, lengths and checksum fixed."""
    dst = solicited_node_address(D6)
    message = b"\x87\x00\x00\x00\x00\x00\x00\x00" + D6 + option
    pseudo = S6 + dst + len(message).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    csum = ~rfc1071(pseudo + message) & 0xFFFF
    message = message[:2] + csum.to_bytes(2, "big") + message[4:]
    ip = IPv6(S6, dst, IPPROTO_ICMPV6, 255, payload_length=len(message))
    return build_frame(Frame(Ethernet(M2, M1, ETH_P_IPV6), ip, None, message))


def with_ihl(frame: bytes, ihl: int) -> bytes:
    return frame[:14] + bytes([0x40 | ihl]) + frame[15:]


REGRESSIONS = [
    v4_with_options(b"\x44\x00\x00\x00"),  # zero-length IPv4 option: must not loop
    v4_with_options(b"\x07\x00\x00\x00"),
    ns_with_option(b"\x01\x00" + M1),  # zero-length ND option
    v6_with((IPv6Extension(60, PAD6),) * 3)[:80],  # extension chain longer than the capture
    v6_with((IPv6Extension(60, PAD6),), payload_length=7),  # chain longer than the payload
    v6_with((IPv6Extension(60, PAD6),) * 20),  # 20 destination options headers: valid
    build_udp(M2, M1, S4, D4, 1, 2, b"x" * 20)[:40],  # claimed length > captured
    build_udp(M2, M1, S6, D6, 1, 2, b"x" * 20)[:70],
    with_ihl(build_udp(M2, M1, S4, D4, 1, 2, b"x"), 4),  # IHL < 5
    with_ihl(build_udp(M2, M1, S4, D4, 1, 2, b"x"), 0),
    v6_with((IPv6Extension(0, PAD6),), payload_length=0),  # jumbogram: payload length 0
    v6_with((), payload_length=0),  # payload length 0 without hop-by-hop: an empty payload
    build_frame(  # a bare option type as the very last byte of the frame
        Frame(
            Ethernet(M2, M1, ETH_P_IPV6),
            IPv6(S6, D6, 59, extensions=(IPv6Extension(60, b"\x01\x02\x00\x00\x00\x1e"),)),
            None,
            b"",
        )
    ),
    b"",
]


def _examples(test: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """Seed a one-argument test with every regression input."""
    for data in REGRESSIONS:
        test = example(data)(test)
    return test


@given(st.binary(max_size=300))
@_examples
def test_any_bytes(data: bytes) -> None:
    parse_both(data)


@given(frames, st.data())
def test_valid_prefix_then_garbage(frame: Frame, data: st.DataObject) -> None:
    wire = build_frame(frame)
    cut = data.draw(st.integers(0, len(wire)))
    tail = data.draw(st.binary(max_size=80))
    parse_both(wire[:cut] + tail)


@given(frames, st.data())
def test_mutated_frames(frame: Frame, data: st.DataObject) -> None:
    wire = bytearray(build_frame(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(u8)
    parse_both(bytes(wire))


def icmpv6_fixed(src: bytes, dst: bytes, message: bytes) -> bytes:
    """``message`` with a correct ICMPv6 checksum, so that the bytes behind it get parsed."""
    if len(message) < 4:
        return message
    message = message[:2] + b"\x00\x00" + message[4:]
    pseudo = src + dst + len(message).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    csum = ~rfc1071(pseudo + message) & 0xFFFF
    return message[:2] + csum.to_bytes(2, "big") + message[4:]


interesting_ethertypes = st.sampled_from(
    [ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_8021Q, ETH_P_8021AD, 0x0842]
)


@given(interesting_ethertypes, st.binary(max_size=200))
def test_ethernet_header_then_any_bytes(ethertype: int, rest: bytes) -> None:
    parse_both(M2 + M1 + ethertype.to_bytes(2, "big") + rest)


# Option-shaped pieces: walkers are exercised by inputs that are *almost* well formed.
ipv4_option_pieces = st.one_of(
    st.sampled_from([b"\x00", b"\x01"]),
    st.builds(
        lambda kind, length, body: bytes([kind, length]) + body,
        st.sampled_from([7, 68, 131, 137, 148, 134, 0x1E]),
        st.integers(0, 12),
        st.binary(max_size=10),
    ),
    st.binary(min_size=1, max_size=2),
)


@given(
    st.lists(ipv4_option_pieces, max_size=8),
    st.sampled_from([0, 1, 7, 68, 131]),
    u8,
    st.booleans(),
    st.binary(max_size=80),
)
def test_ipv4_header_with_any_options_then_any_bytes(
    pieces: list[bytes], pad: int, proto: int, mf: bool, rest: bytes
) -> None:
    """Arbitrary option bytes behind a correct header checksum reach the option walker."""
    options = b"".join(pieces)[:40]
    options += bytes([pad]) * (-len(options) % 4)
    ip = IPv4(S4, D4, proto, options=options, more_fragments=mf)
    parse_both(build_frame(Frame(Ethernet(M2, M1, ETH_P_IP), ip, None, rest)))
    udp = IPv4(S4, D4, IPPROTO_UDP, options=options)
    parse_both(build_frame(Frame(Ethernet(M2, M1, ETH_P_IP), udp, UDP(1, 2), rest)))


@given(st.binary(max_size=120), st.booleans())
def test_ip_header_then_any_udp_bytes(rest: bytes, trim: bool) -> None:
    """Valid IPv4/IPv6 headers for protocol UDP over arbitrary bytes (UDP header included)."""
    ip = IPv4(S4, D4, IPPROTO_UDP, total_length=20 + len(rest) if trim else None)
    wire = build_frame(Frame(Ethernet(M2, M1, ETH_P_IP), ip, None, rest))
    parse_both(wire)
    ip6 = IPv6(S6, D6, IPPROTO_UDP)
    parse_both(build_frame(Frame(Ethernet(M2, M1, ETH_P_IPV6), ip6, None, rest)))


@given(u8, st.binary(max_size=300), st.booleans())
def test_ipv6_header_then_any_bytes(next_header: int, rest: bytes, exact: bool) -> None:
    """A valid IPv6 header (nothing checksums it) over arbitrary extension-chain bytes."""
    ip = IPv6(S6, D6, next_header, payload_length=None if exact else len(rest) // 2)
    parse_both(build_frame(Frame(Ethernet(M2, M1, ETH_P_IPV6), ip, None, rest)))


tlv_pieces = st.one_of(
    st.sampled_from([b"\x00", b"\x01\x00", b"\x01\x02\x00\x00"]),
    st.builds(
        lambda kind, length, body: bytes([kind, length]) + (body + bytes(8))[:length],
        st.sampled_from([0x01, 0x05, 0x07, 0x1E, 0x5E, 0x9E, 0xC2, 0xDE]),
        st.integers(0, 8),
        st.binary(max_size=8),
    ),
    st.binary(min_size=1, max_size=1),
)


@given(
    st.lists(
        st.tuples(st.sampled_from([0, 43, 44, 60]), st.lists(tlv_pieces, max_size=5)),
        max_size=4,
    ),
    st.sampled_from([IPPROTO_UDP, IPPROTO_ICMPV6, 59]),
    st.sampled_from([0x00, 0x01, 0x1E]),
    st.binary(max_size=60),
)
def test_ipv6_any_extension_contents(
    chain: list[tuple[int, list[bytes]]], next_header: int, pad: int, rest: bytes
) -> None:
    """Well-framed extension headers (lengths right) with option-shaped arbitrary contents."""
    exts = []
    for kind, pieces in chain:
        body = b"".join(pieces)
        size = 6 if kind == 44 else len(body) + (-(len(body) + 2) % 8)
        exts.append(IPv6Extension(kind, (body + bytes([pad]) * 8)[:size]))
    ip = IPv6(S6, D6, next_header, extensions=tuple(exts))
    parse_both(build_frame(Frame(Ethernet(M2, M1, ETH_P_IPV6), ip, None, rest)))


nd_options = st.builds(
    lambda kind, units, body: bytes([kind, units]) + (body + bytes(2048))[: max(units * 8 - 2, 0)],
    st.sampled_from([1, 2, 14]),
    st.integers(0, 3),
    st.binary(max_size=22),
)


@given(
    st.sampled_from([135, 136, 128, 0]),
    st.integers(0, 1),
    st.binary(min_size=6, max_size=6),
    unicast6 | ip6,
    st.lists(nd_options, max_size=4),
    st.binary(max_size=9),
    st.booleans(),
)
def test_icmpv6_any_message_with_right_checksum(
    kind: int,
    code: int,
    head: bytes,
    target: bytes,
    options: list[bytes],
    tail: bytes,
    multicast: bool,
) -> None:
    """ND-shaped messages (target, options, trailing bytes) with a correct checksum."""
    dst = solicited_node_address(D6) if multicast else D6
    body = head + target + b"".join(options) + tail
    message = icmpv6_fixed(S6, dst, bytes([kind, code]) + body)
    for src in (S6, bytes(16)):
        ip = IPv6(src, dst, IPPROTO_ICMPV6, 255)
        parse_both(build_frame(Frame(Ethernet(M2, M1, ETH_P_IPV6), ip, None, message)))


# -------------------------------------------------------------------------------------------
# Single-bit flips


def udp_still_valid(frame: bytes, ip_off: int, v6: bool) -> bool:
    """Independent judgement of a flipped frame's UDP checksum, over the (possibly new) length."""
    if v6:
        src, dst, u = frame[ip_off + 8 : ip_off + 24], frame[ip_off + 24 : ip_off + 40], ip_off + 40
    else:
        src, dst, u = (
            frame[ip_off + 12 : ip_off + 16],
            frame[ip_off + 16 : ip_off + 20],
            ip_off + 20,
        )
    ulen = int.from_bytes(frame[u + 4 : u + 6], "big")
    segment = frame[u : u + ulen]
    pseudo = src + dst + b"\x00\x11" + ulen.to_bytes(2, "big")
    return rfc1071(pseudo + segment) == 0xFFFF


@given(
    st.sampled_from([(S4, D4), (S6, D6)]),
    st.binary(max_size=200),
    u16,
    u16,
    st.none() | st.integers(0, 4094),
    st.data(),
)
def test_single_bit_flip_in_ip_or_udp_is_detected(
    addrs: tuple[bytes, bytes],
    payload: bytes,
    sport: int,
    dport: int,
    vlan_id: int | None,
    data: st.DataObject,
) -> None:
    src, dst = addrs
    v6 = len(src) == 16
    wire = build_udp(M2, M1, src, dst, sport, dport, payload, vlan_id=vlan_id, ident=sport)
    ip_off = 14 if vlan_id is None else 18
    # IPv4: the whole header and the UDP segment. IPv6: the pseudo-header addresses and the UDP
    # segment (version, class, flow label and hop limit are not checksummed).
    first = ip_off + 8 if v6 else ip_off
    bit = data.draw(st.integers(first * 8, len(wire) * 8 - 1))
    flipped = bytearray(wire)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    u = ip_off + (40 if v6 else 20)
    try:
        got = parse_udp(bytes(flipped))
    except MalformedPacketError:
        return
    # Accepted: legitimate only if the flip zeroed the IPv4 UDP checksum field ("no checksum",
    # RFC 768; one flip cannot turn 0xFFFF into 0x0000), or shortened the UDP length and the
    # shorter datagram happens to verify by the independent reference sum.
    in_checksum = u + 6 <= bit // 8 < u + 8
    in_length = u + 4 <= bit // 8 < u + 6
    assert (not v6 and in_checksum and flipped[u + 6 : u + 8] == b"\x00\x00") or (
        in_length and udp_still_valid(bytes(flipped), ip_off, v6)
    ), (bit, got)


@given(unicast6, unicast6, st.none() | macs, st.booleans(), st.data())
def test_single_bit_flip_in_icmpv6_is_detected(
    src: bytes, target: bytes, lladdr: bytes | None, advert: bool, data: st.DataObject
) -> None:
    nd: NeighborSolicitation | NeighborAdvertisement
    if advert:
        nd = NeighborAdvertisement(target, lladdr, router=True, solicited=True, override=False)
        dst = D6
    else:
        nd = NeighborSolicitation(target, lladdr)
        dst = solicited_node_address(target)
    wire = build_frame(Frame(Ethernet(M2, M1, ETH_P_IPV6), IPv6(src, dst, 58, 255), nd, b""))
    assert parse_frame(wire).transport == nd
    # Source and destination (pseudo-header) and the whole ICMPv6 message.
    bit = data.draw(st.integers(22 * 8, len(wire) * 8 - 1))
    flipped = bytearray(wire)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    try:
        parse_frame(bytes(flipped))
    except MalformedPacketError:
        return
    raise AssertionError(f"bit {bit} flipped and still accepted")


# -------------------------------------------------------------------------------------------
# Seeded regressions with their expected outcome, and inputs far past any recursion limit.


def test_regressions_have_the_right_outcome() -> None:
    reasons = []
    for data in REGRESSIONS:
        try:
            parse_udp(data)
            reasons.append("ok")
        except MalformedPacketError as exc:
            reasons.append(exc.reason)
    assert reasons == [
        "ipv4_options",
        "ipv4_options",
        "not_udp",
        "ipv6_payload_length",
        "ipv6_ext_header",
        "ok",
        "ipv4_total_length",
        "ipv6_payload_length",
        "ipv4_ihl",
        "ipv4_ihl",
        "ok",  # payload length 0 before hop-by-hop, no Jumbo option: delivered (ip6_rcv_core)
        "udp_short",
        "ipv6_ext_header",
        "eth_short",
    ]
    with pytest.raises(MalformedPacketError, match="nd_option_length"):
        parse_frame(REGRESSIONS[2])


def test_long_chains_are_walked_iteratively() -> None:
    # 8000 destination options headers: valid for the kernel, and 8x Python's recursion limit.
    many = (IPv6Extension(60, PAD6),) * 8000
    assert parse_udp(v6_with(many)).payload == b"data"
    assert len(parse_frame(v6_with(many)).net.extensions) == 8000  # type: ignore[union-attr]
    # 8000 unknown ND options (type 14, 8 bytes each) are skipped one by one.
    big = ns_with_option((b"\x0e\x01" + b"\x00" * 6) * 8000)
    assert parse_frame(big).transport == NeighborSolicitation(D6, None)
