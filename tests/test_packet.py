"""The packet codec: (value, wire bytes) tables checked both ways, and every drop reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from rawtransport.errors import MalformedPacketError
from rawtransport.packet import (
    ARP,
    BROADCAST_MAC,
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
    UdpDatagram,
    VlanTag,
    build_arp_request,
    build_frame,
    build_ipv4_fragments,
    build_ipv6_fragments,
    build_neighbor_solicitation,
    build_udp,
    multicast_mac,
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
A6 = bytes.fromhex("20010db8000000000000000000000003")
SNM_D6 = bytes.fromhex("ff0200000000000000000001ff000002")
PAD6 = b"\x01\x04\x00\x00\x00\x00"  # a PadN option filling a 2-byte-header extension to 8

# Wire bytes produced once by scapy 2.8 (an independent implementation) and pasted here.
TABLE: list[tuple[str, Frame, str]] = [
    (
        "udp4",
        Frame(
            Ethernet(M2, M1, ETH_P_IP),
            IPv4(S4, D4, 17, ident=0x1234, total_length=33, checksum=0x9C70),
            UDP(1234, 5678, 13, 0x14DA),
            b"hello",
        ),
        "0200000000020200000000010800450000211234400040119c70c6120001c612000204d2162e000d14da"
        "68656c6c6f",
    ),
    (
        "udp4_qinq",
        Frame(
            Ethernet(
                M2,
                M1,
                ETH_P_IP,
                (VlanTag(ETH_P_8021AD, 5, False, 100), VlanTag(ETH_P_8021Q, 0, True, 7)),
            ),
            IPv4(S4, D4, 17, 1, 0xB8, 1, False, total_length=31, checksum=0x2CEE),
            UDP(53, 53, 11, 0xAEE3),
            b"abc",
        ),
        "02000000000202000000000188a8a06481001007080045b8001f0001000001112ceec6120001c6120002"
        "00350035000baee3616263",
    ),
    (
        "udp4_router_alert",
        Frame(
            Ethernet(M2, M1, ETH_P_IP),
            IPv4(
                S4,
                D4,
                17,
                64,
                0,
                1,
                False,
                options=b"\x94\x04\x00\x00",
                total_length=32,
                checksum=0x59A0,
            ),
            UDP(1, 2, 8, 0x73B3),
            b"",
        ),
        "02000000000202000000000108004600002000010000401159a0c6120001c61200029404000000010002"
        "000873b3",
    ),
    (
        "ipv4_fragment",
        Frame(
            Ethernet(M2, M1, ETH_P_IP),
            IPv4(S4, D4, 17, 64, 0, 7, False, True, 185, total_length=28, checksum=0xCDE9),
            None,
            b"\x00" * 8,
        ),
        "02000000000202000000000108004500001c000720b94011cde9c6120001c61200020000000000000000",
    ),
    (
        "udp6",
        Frame(
            Ethernet(M2, M1, ETH_P_IPV6),
            IPv6(S6, D6, 17, 64, 0x12, 0xABCDE, payload_length=13),
            UDP(1234, 5678, 13, 0x458D),
            b"hello",
        ),
        "02000000000202000000000186dd612abcde000d114020010db8000000000000000000000001"
        "20010db800000000000000000000000204d2162e000d458d68656c6c6f",
    ),
    (
        "udp6_extensions",
        Frame(
            Ethernet(M2, M1, ETH_P_IPV6),
            IPv6(
                S6,
                D6,
                17,
                payload_length=49,
                extensions=(
                    IPv6Extension(0, PAD6),
                    IPv6Extension(60, PAD6),
                    IPv6Extension(43, b"\x00" * 6 + A6),
                ),
            ),
            UDP(1, 2, 9, 0x2C64),
            b"x",
        ),
        "02000000000202000000000186dd600000000031004020010db8000000000000000000000001"
        "20010db80000000000000000000000023c000104000000002b000104000000001102000000000000"
        "20010db80000000000000000000000030001000200092c6478",
    ),
    (
        "arp_request",
        Frame(Ethernet(BROADCAST_MAC, M1, ETH_P_ARP), ARP(1, M1, S4, b"\x00" * 6, D4), None, b""),
        "ffffffffffff02000000000108060001080006040001020000000001c6120001000000000000c6120002",
    ),
    (
        "neighbor_solicitation",
        Frame(
            Ethernet(bytes.fromhex("3333ff000002"), M1, ETH_P_IPV6),
            IPv6(S6, SNM_D6, IPPROTO_ICMPV6, 255, payload_length=32),
            NeighborSolicitation(D6, M1),
            b"",
        ),
        "3333ff00000202000000000186dd6000000000203aff20010db8000000000000000000000001"
        "ff0200000000000000000001ff00000287001c270000000020010db8000000000000000000000002"
        "0101020000000001",
    ),
    (
        "neighbor_advertisement",
        Frame(
            Ethernet(M1, M2, ETH_P_IPV6),
            IPv6(D6, S6, IPPROTO_ICMPV6, 255, payload_length=32),
            NeighborAdvertisement(D6, M2, router=False, solicited=True, override=True),
            b"",
        ),
        "02000000000102000000000286dd6000000000203aff20010db8000000000000000000000002"
        "20010db800000000000000000000000188008a716000000020010db8000000000000000000000002"
        "0201020000000002",
    ),
    (
        "other_ethertype",
        Frame(Ethernet(M2, M1, 0x88CC), None, None, b"lldp-ish"),
        "02000000000202000000000188cc6c6c64702d697368",
    ),
]


def computed(frame: Frame) -> Frame:
    """The same frame with every computable field left to the builder."""
    net = frame.net
    if isinstance(net, IPv4):
        net = dataclasses.replace(net, total_length=None, checksum=None)
    elif isinstance(net, IPv6):
        net = dataclasses.replace(net, payload_length=None)
    transport = frame.transport
    if isinstance(transport, UDP):
        transport = dataclasses.replace(transport, length=None, checksum=None)
    return dataclasses.replace(frame, net=net, transport=transport)


@pytest.mark.parametrize(("name", "value", "wire"), TABLE, ids=[t[0] for t in TABLE])
def test_table_both_ways(name: str, value: Frame, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert parse_frame(data) == value
    assert build_frame(value) == data
    assert build_frame(computed(value)) == data
    # Ethernet padding to 60 bytes is trimmed by the length fields (RAWPATH trap 7).
    if len(data) < 60 and value.net is not None:
        assert parse_frame(data + b"\xee" * (60 - len(data))) == value


def test_parse_frame_accepts_memoryview_and_bytearray() -> None:
    data = bytes.fromhex(TABLE[0][2])
    assert parse_frame(memoryview(data)) == parse_frame(bytearray(data)) == TABLE[0][1]


# -------------------------------------------------------------------------------------------
# Fast paths


def test_build_udp_matches_table() -> None:
    assert build_udp(M2, M1, S4, D4, 1234, 5678, b"hello", ident=0x1234) == bytes.fromhex(
        TABLE[0][2]
    )
    udp6 = build_udp(M2, M1, S6, D6, 1234, 5678, b"hello", traffic_class=0x12, flow_label=0xABCDE)
    assert udp6 == bytes.fromhex(TABLE[4][2])


def test_parse_udp_values() -> None:
    data = bytes.fromhex(TABLE[0][2])
    expected = UdpDatagram(M2, M1, None, 4, S4, D4, 1234, 5678, b"hello", 64)
    assert parse_udp(data) == expected
    assert parse_udp(data + b"\x00" * 13) == expected  # padded to 60
    assert parse_udp(memoryview(data)) == expected
    qinq = parse_udp(bytes.fromhex(TABLE[1][2]))
    assert qinq == UdpDatagram(M2, M1, 100, 4, S4, D4, 53, 53, b"abc", 1)
    ra = parse_udp(bytes.fromhex(TABLE[2][2]))
    assert (ra.payload, ra.src_port, ra.dst_port) == (b"", 1, 2)
    v6 = parse_udp(bytes.fromhex(TABLE[4][2]))
    assert v6 == UdpDatagram(M2, M1, None, 6, S6, D6, 1234, 5678, b"hello", 64)
    ext = parse_udp(bytes.fromhex(TABLE[5][2]))
    assert (ext.payload, ext.family, ext.ttl) == (b"x", 6, 64)


@pytest.mark.parametrize(("src", "dst"), [(S4, D4), (S6, D6)])
@pytest.mark.parametrize("vlan_id", [None, 0, 7, 4094])
@pytest.mark.parametrize("size", [0, 1, 64, 1400])
def test_build_udp_parse_udp_round_trip(
    src: bytes, dst: bytes, vlan_id: int | None, size: int
) -> None:
    payload = bytes(range(256)) * 6
    payload = payload[:size]
    frame = build_udp(M1, M2, src, dst, 40000, 53, payload, vlan_id=vlan_id, ttl=9, hop_limit=9)
    got = parse_udp(frame)
    assert got == UdpDatagram(
        M1, M2, vlan_id, 4 if len(src) == 4 else 6, src, dst, 40000, 53, payload, 9
    )


def test_build_udp_without_udp_checksum() -> None:
    frame = build_udp(M2, M1, S4, D4, 1, 2, b"data", udp_checksum=False)
    assert frame[40:42] == b"\x00\x00"
    assert parse_udp(frame).payload == b"data"
    # IPv6 always carries the checksum (RFC 8200 8.1), whatever the flag says.
    frame6 = build_udp(M2, M1, S6, D6, 1, 2, b"data", udp_checksum=False)
    assert frame6[60:62] != b"\x00\x00"


def test_build_udp_zero_checksum_goes_out_as_ffff() -> None:
    # Find a 2-byte payload whose checksum computes to 0 (sum all ones): the frame carries 0xFFFF.
    base = build_udp(M2, M1, S4, D4, 1, 2, b"\x00\x00")
    ck = int.from_bytes(base[40:42], "big")
    word = ck  # adding the checksum value to the sum makes it all ones
    frame = build_udp(M2, M1, S4, D4, 1, 2, word.to_bytes(2, "big"))
    assert frame[40:42] == b"\xff\xff"
    assert parse_udp(frame).payload == word.to_bytes(2, "big")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eth_dst": b"\x00" * 5},
        {"src": S4, "dst": D6},
        {"src": b"\x00" * 5, "dst": b"\x00" * 5},
        {"src_port": 65536},
        {"dst_port": -1},
        {"ttl": 256},
        {"tos": 256},
        {"ident": 0x10000},
        {"vlan_id": 4095},
        {"payload": b"\x00" * 65508},
        {"src": S6, "dst": D6, "payload": b"\x00" * 65528},
        {"src": S6, "dst": D6, "flow_label": 1 << 20},
        {"src": S6, "dst": D6, "traffic_class": 256},
        {"src": S6, "dst": D6, "hop_limit": 256},
    ],
)
def test_build_udp_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "eth_dst": M2, "eth_src": M1, "src": S4, "dst": D4, "src_port": 1, "dst_port": 2,
        "payload": b"x",
    }  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError):
        build_udp(**args)  # type: ignore[arg-type]


def test_build_udp_max_sizes_are_accepted() -> None:
    assert len(build_udp(M2, M1, S4, D4, 1, 2, b"\x00" * 65507)) == 14 + 65535
    assert len(build_udp(M2, M1, S6, D6, 1, 2, b"\x00" * 65527)) == 14 + 40 + 65535


def _reassemble_v4(frames: list[bytes]) -> tuple[bytes, list[tuple[int, bool, int]]]:
    pieces = []
    info = []
    for f in frames:
        fr = parse_frame(f)
        assert isinstance(fr.net, IPv4)
        assert fr.transport is None
        pieces.append((fr.net.frag_offset * 8, fr.payload))
        info.append((fr.net.ident, fr.net.dont_fragment, len(f) - 14))
    data = b"".join(p for _, p in sorted(pieces))
    return data, info


@pytest.mark.parametrize("mtu", [68, 576, 1500])
@pytest.mark.parametrize("size", [1, 1472, 1473, 3000, 1104 + 548, 1104 + 547, 65507])
def test_ipv4_fragments_reassemble(mtu: int, size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frames = build_ipv4_fragments(M2, M1, S4, D4, 1000, 2000, payload, mtu=mtu, ident=0xBEEF)
    if size + 28 <= mtu:
        assert frames == [build_udp(M2, M1, S4, D4, 1000, 2000, payload, ident=0xBEEF)]
        return
    step = (mtu - 20) & ~7
    last = (size + 8) % step or step
    full = (size + 8 - last) // step
    if last + step <= mtu - 20:  # ip_do_fragment(): the last piece need not be rounded to 8
        full, last = full - 1, last + step
    assert len(frames) == full + 1
    assert len(frames[-1]) - 34 == last
    segment, info = _reassemble_v4(frames)
    assert all(ident == 0xBEEF and not df and ip_len <= mtu for ident, df, ip_len in info)
    whole = build_udp(M2, M1, S4, D4, 1000, 2000, payload)
    assert segment == whole[34:]  # same UDP header (and checksum over the whole datagram)
    offsets = [parse_frame(f).net.frag_offset * 8 for f in frames]  # type: ignore[union-attr]
    assert offsets == list(range(0, full * step + 1, step))
    flags = [parse_frame(f).net.more_fragments for f in frames]  # type: ignore[union-attr]
    assert flags == [True] * (len(frames) - 1) + [False]
    with pytest.raises(MalformedPacketError) as err:
        parse_udp(frames[0])
    assert err.value.reason == "ipv4_fragment"


def test_fragment_builders_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="68"):
        build_ipv4_fragments(M2, M1, S4, D4, 1, 2, b"x" * 100, mtu=67)
    with pytest.raises(ValueError, match="IPv4"):
        build_ipv4_fragments(M2, M1, S6, D6, 1, 2, b"x", mtu=1500)
    with pytest.raises(ValueError, match="65507"):
        build_ipv4_fragments(M2, M1, S4, D4, 1, 2, b"x" * 65508, mtu=1500)
    with pytest.raises(ValueError, match="1280"):
        build_ipv6_fragments(M2, M1, S6, D6, 1, 2, b"x", mtu=1279)
    with pytest.raises(ValueError, match="IPv6"):
        build_ipv6_fragments(M2, M1, S4, D4, 1, 2, b"x", mtu=1500)
    with pytest.raises(ValueError, match="32 bits"):
        build_ipv6_fragments(M2, M1, S6, D6, 1, 2, b"x", mtu=1500, ident=1 << 32)
    big = b"x" * 2000
    with pytest.raises(ValueError, match="6 bytes"):
        build_ipv4_fragments(M2[:5], M1, S4, D4, 1, 2, big, mtu=1500)
    with pytest.raises(ValueError, match="out of range"):
        build_ipv4_fragments(M2, M1, S4, D4, 1, 65536, big, mtu=1500)
    with pytest.raises(ValueError, match="out of range"):
        build_ipv4_fragments(M2, M1, S4, D4, 1, 2, big, mtu=1500, ttl=256)


def test_ipv4_fragments_with_vlan_tag() -> None:
    frames = build_ipv4_fragments(M2, M1, S4, D4, 1, 2, b"z" * 2000, mtu=1500, vlan_id=42)
    assert len(frames) == 2
    for f in frames:
        fr = parse_frame(f)
        assert fr.eth.vlans == (VlanTag(ETH_P_8021Q, 0, False, 42),)
        assert len(f) - 18 <= 1500


@pytest.mark.parametrize("vlan_id", [None, 5])
def test_ipv6_fragments(vlan_id: int | None) -> None:
    payload = bytes(i % 253 for i in range(4000))
    frames = build_ipv6_fragments(
        M2, M1, S6, D6, 7, 8, payload, mtu=1280, ident=0xDEADBEEF, vlan_id=vlan_id
    )
    assert build_ipv6_fragments(M2, M1, S6, D6, 7, 8, b"x", mtu=1280) == [
        build_udp(M2, M1, S6, D6, 7, 8, b"x")
    ]
    step = (1280 - 48) & ~7
    # ip6_fragment(): the last piece may use the whole room (here 1236) without rounding to 8.
    odd = build_ipv6_fragments(M2, M1, S6, D6, 7, 8, bytes(2 * step + 1 - 8), mtu=1284)
    assert [len(f) - 62 for f in odd] == [step, step + 1]
    assert len(build_ipv6_fragments(M2, M1, S6, D6, 7, 8, bytes(2 * step + 1 - 8), mtu=1280)) == 3
    pieces = []
    for i, f in enumerate(frames):
        fr = parse_frame(f)
        assert isinstance(fr.net, IPv6)
        assert fr.eth.vlans == (() if vlan_id is None else (VlanTag(ETH_P_8021Q, 0, False, 5),))
        assert len(f) - (14 if vlan_id is None else 18) <= 1280
        (frag,) = fr.net.extensions
        assert frag.header_type == 44
        offset_flags = int.from_bytes(frag.data[0:2], "big")
        assert offset_flags & ~7 == i * step
        assert offset_flags & 1 == (i < len(frames) - 1)
        assert frag.data[2:6] == b"\xde\xad\xbe\xef"
        assert fr.net.next_header == IPPROTO_UDP
        pieces.append(fr.payload)
        with pytest.raises(MalformedPacketError) as err:
            parse_udp(f)
        assert err.value.reason == "ipv6_fragment"
    whole = build_udp(M2, M1, S6, D6, 7, 8, payload)
    assert b"".join(pieces) == whole[54:]


def test_arp_request_and_solicitation_builders() -> None:
    arp = build_arp_request(M1, S4, D4)
    assert len(arp) == 60
    assert arp == bytes.fromhex(TABLE[6][2]) + b"\x00" * 18
    assert parse_frame(arp) == TABLE[6][1]
    ns = build_neighbor_solicitation(M1, S6, D6)
    assert ns == bytes.fromhex(TABLE[7][2])
    dad = parse_frame(build_neighbor_solicitation(M1, b"\x00" * 16, D6))
    assert dad.transport == NeighborSolicitation(D6, None)  # RFC 4861 7.2.2: no SLLA from ::
    with pytest.raises(ValueError, match="multicast"):
        build_neighbor_solicitation(M1, S6, SNM_D6)
    with pytest.raises(ValueError, match="6-byte"):
        build_neighbor_solicitation(M1[:5], S6, D6)
    with pytest.raises(ValueError, match="6-byte"):
        build_arp_request(M1, S6, D4)


@pytest.mark.parametrize(
    ("ip", "mac"),
    [
        (bytes([224, 0, 0, 1]), "01005e000001"),
        (bytes([239, 255, 255, 250]), "01005e7ffffa"),
        (bytes([224, 128, 1, 2]), "01005e000102"),  # the 24th bit is dropped (RFC 1112 6.4)
        (bytes.fromhex("ff020000000000000000000000000001"), "333300000001"),
        (SNM_D6, "3333ff000002"),
    ],
)
def test_multicast_mac(ip: bytes, mac: str) -> None:
    assert multicast_mac(ip) == bytes.fromhex(mac)


@pytest.mark.parametrize("ip", [S4, S6, b"\xe0\x00\x00"])
def test_multicast_mac_rejects_non_multicast(ip: bytes) -> None:
    with pytest.raises(ValueError, match="address"):
        multicast_mac(ip)


def test_solicited_node_address() -> None:
    ip = bytes.fromhex("20010db800000000021122fffe334455")
    assert solicited_node_address(ip) == bytes.fromhex("ff0200000000000000000001ff334455")
    with pytest.raises(ValueError, match="16 bytes"):
        solicited_node_address(S4)


# -------------------------------------------------------------------------------------------
# Drop reasons. Frames are built with build_frame (which fixes checksums over whatever fields
# it is given) and patched where the dataclasses cannot express the fault.

UDP4 = Frame(Ethernet(M2, M1, ETH_P_IP), IPv4(S4, D4, IPPROTO_UDP), UDP(1, 2), b"payload!")
UDP6 = Frame(Ethernet(M2, M1, ETH_P_IPV6), IPv6(S6, D6, IPPROTO_UDP), UDP(1, 2), b"payload!")


def v4(**kw: Any) -> bytes:
    """UDP4 with IPv4 header fields replaced (checksums still computed)."""
    return build_frame(dataclasses.replace(UDP4, net=IPv4(S4, D4, IPPROTO_UDP, **kw)))


def v6(**kw: Any) -> bytes:
    """UDP6 with IPv6 header fields replaced."""
    return build_frame(dataclasses.replace(UDP6, net=IPv6(S6, D6, IPPROTO_UDP, **kw)))


def udp(base: Frame, **kw: Any) -> bytes:
    """``base`` with UDP header fields replaced."""
    return build_frame(dataclasses.replace(base, transport=UDP(1, 2, **kw)))


def patch_ipv4(frame: bytes, offset: int, value: bytes) -> bytes:
    """Overwrite header bytes at ``offset`` (from the IP header) and fix the header checksum."""
    data = bytearray(frame)
    data[14 + offset : 14 + offset + len(value)] = value
    ihl = (data[14] & 0x0F) * 4 or 20
    data[24:26] = b"\x00\x00"
    ck = (-int.from_bytes(data[14 : 14 + max(ihl, 20)], "big")) % 0xFFFF
    data[24:26] = ck.to_bytes(2, "big")
    return bytes(data)


def flip(frame: bytes, index: int, mask: int = 0x01) -> bytes:
    data = bytearray(frame)
    data[index] ^= mask
    return bytes(data)


def ext(kind: int, body: bytes) -> IPv6Extension:
    return IPv6Extension(kind, body)


RR = b"\x07\x07\x04" + b"\x00" * 4 + b"\x01"  # record route with room for one address, NOP
REASONS: list[tuple[str, Callable[[], bytes]]] = [
    ("eth_short", lambda: b"\x00" * 13),
    ("eth_short", lambda: M2 + M1 + b"\x81\x00\x00"),
    ("not_ip", lambda: bytes.fromhex(TABLE[6][2])),
    ("not_ip", lambda: v4()[:12] + b"\x08\x42" + v4()[14:]),
    (
        "vlan_too_deep",
        lambda: M2 + M1 + b"\x88\xa8\x00\x01\x81\x00\x00\x02\x81\x00\x00\x03" + v4()[12:],
    ),
    ("ipv4_short", lambda: v4()[:33]),
    ("ipv4_version", lambda: patch_ipv4(v4(), 0, b"\x55")),
    ("ipv4_ihl", lambda: patch_ipv4(v4(), 0, b"\x44")),
    ("ipv4_short", lambda: patch_ipv4(v4(), 0, b"\x4f")),
    ("ipv4_bad_checksum", lambda: flip(v4(), 24)),
    ("ipv4_bad_checksum", lambda: flip(v4(), 14 + 12)),
    ("ipv4_total_length", lambda: v4(total_length=20 + 8 + 8 + 1)),
    ("ipv4_total_length", lambda: v4(total_length=19)),
    ("ipv4_options", lambda: v4(options=b"\x44\x00\x00\x00")),  # length 0: the loop trap
    ("ipv4_options", lambda: v4(options=b"\x07\x09\x04\x00")),  # runs past the header
    ("ipv4_options", lambda: v4(options=b"\x01\x01\x01\x07")),  # no length byte
    ("ipv4_options", lambda: v4(options=RR + RR)),  # repeated record route
    ("ipv4_options", lambda: v4(options=b"\x07\x03\x03\x00")),  # pointer < 4
    ("ipv4_options", lambda: v4(options=b"\x44\x04\x04\x00")),  # timestamp pointer < 5
    ("ipv4_options", lambda: v4(options=b"\x44\x08\x06" + b"\x00" * 5)),  # ptr <= len, no room
    ("ipv4_options", lambda: v4(options=b"\x44\x04\x09\xf0")),  # full, overflow counter 15
    ("ipv4_options", lambda: v4(options=b"\x94\x03\x00\x00")),  # router alert too short
    ("ipv4_options", lambda: v4(options=b"\x86\x04\x00\x00")),  # CIPSO
    ("ipv4_options", lambda: v4(options=(b"\x83\x07\x04" + D4 + b"\x01") * 2)),  # two SRRs
    ("ipv4_options", lambda: v4(options=b"\x44\x04\x05\x00" * 2)),  # two timestamps
    ("ipv4_source_route", lambda: v4(options=b"\x83\x07\x04" + D4 + b"\x00")),
    ("ipv4_fragment", lambda: v4(more_fragments=True)),
    ("ipv4_fragment", lambda: v4(frag_offset=1)),
    (
        "not_udp",
        lambda: build_frame(dataclasses.replace(UDP4, net=IPv4(S4, D4, 6), transport=None)),
    ),
    ("udp_short", lambda: v4(total_length=27)),
    ("udp_length", lambda: udp(UDP4, length=7)),
    ("udp_length", lambda: udp(UDP4, length=17)),
    ("udp_bad_checksum", lambda: flip(v4(), 45)),
    ("udp_bad_checksum", lambda: udp(UDP4, checksum=1)),
    ("ipv6_short", lambda: v6()[:53]),
    ("ipv6_version", lambda: flip(v6(), 14, 0x20)),
    # (Payload length 0 before a hop-by-hop header without a Jumbo option is delivered, as
    # ip6_rcv_core() does: tests/test_receive_checks.py, case ipv6_plen_0_hbh.)
    ("udp_short", lambda: v6(payload_length=0)),  # an empty payload, not a jumbogram
    ("ipv6_jumbogram", lambda: v6(extensions=(ext(0, b"\xc2\x04\x00\x01\x00\x00"),))),
    ("ipv6_payload_length", lambda: v6(payload_length=17)),
    ("ipv6_hbh_not_first", lambda: v6(extensions=(ext(60, PAD6), ext(0, PAD6)))),
    ("ipv6_ext_header", lambda: v6(extensions=(ext(60, PAD6),), payload_length=7)),
    ("ipv6_ext_header", lambda: flip(v6(extensions=(ext(60, PAD6),)), 55, 0x03)),  # 32 > 24
    ("ipv6_ext_header", lambda: v6(extensions=(ext(60, b"\x01\x0c" + b"\x00" * 12),))),  # 14 pad
    ("ipv6_ext_header", lambda: v6(extensions=(ext(60, b"\x00" * 14),))),  # 14 x Pad1
    ("ipv6_ext_header", lambda: v6(extensions=(ext(60, b"\x01\x04\x00\x00\x01\x00"),))),
    ("ipv6_ext_header", lambda: v6(extensions=(ext(60, b"\x01\x05\x00\x00\x00\x00"),))),
    ("ipv6_ext_header", lambda: v6(extensions=(ext(60, b"\x00" * 5 + b"\x1e"),))),
    ("ipv6_ext_header", lambda: v6(extensions=(ext(60, b"\x1e\x00" * 9 + b"\x00" * 4),))),
    ("ipv6_option", lambda: v6(extensions=(ext(60, b"\x5e\x00\x01\x02\x00\x00"),))),
    ("ipv6_option", lambda: v6(extensions=(ext(0, b"\x05\x04\x00\x00\x00\x00"),))),
    ("ipv6_option", lambda: v6(extensions=(ext(0, b"\x07\x04\x00\x00\x00\x00"),))),
    ("ipv6_routing_header", lambda: v6(extensions=(ext(43, b"\x00\x01" + b"\x00" * 4 + A6),))),
    ("ipv6_routing_header", lambda: v6(extensions=(ext(43, b"\x04\x00" + b"\x00" * 4 + A6),))),
    ("ipv6_fragment", lambda: v6(extensions=(ext(44, b"\x00\x01\x00\x00\x00\x01"),))),
    ("ipv6_fragment", lambda: v6(extensions=(ext(44, b"\x00\x08\x00\x00\x00\x01"),))),
    ("not_udp", lambda: build_frame(Frame(UDP6.eth, IPv6(S6, D6, 59), None, b"rest"))),
    ("not_udp", lambda: bytes.fromhex(TABLE[7][2])),
    ("udp_short", lambda: v6(payload_length=7)),
    ("udp_length", lambda: udp(UDP6, length=7)),
    ("udp_length", lambda: udp(UDP6, length=17)),
    ("udp6_zero_checksum", lambda: udp(UDP6, checksum=0)),
    ("udp_bad_checksum", lambda: flip(v6(), 60)),
    ("udp_bad_checksum", lambda: flip(v6(), len(v6()) - 1)),
]


@pytest.mark.parametrize(("reason", "make"), REASONS, ids=[r for r, _ in REASONS])
def test_parse_udp_drop_reasons(reason: str, make: Callable[[], bytes]) -> None:
    data = make()
    with pytest.raises(MalformedPacketError) as err:
        parse_udp(data)
    assert err.value.reason == reason, err.value


def test_parse_udp_accepts_what_the_kernel_accepts() -> None:
    ok4 = parse_udp(v4(options=RR + b"\x00" * 0))  # record route is fine
    assert ok4.payload == b"payload!"
    assert parse_udp(v4(options=b"\x01\x01\x01\x00")).payload == b"payload!"  # NOPs, EOL
    assert parse_udp(v4(options=b"\x00\x07\x00\x00")).payload == b"payload!"  # junk after EOL
    # A checksum the kernel vouched for is not verified...
    assert parse_udp(udp(UDP4, checksum=1), verify_udp_checksum=False).payload == b"payload!"
    # ... and IPv4 "no checksum" is fine.
    assert parse_udp(udp(UDP4, checksum=0)).payload == b"payload!"
    # A computed 0 sent as 0x0000 over IPv4 means "none"; 0xFFFF and 0x0000 are the same sum.
    # IPv6: UDP length 0 means "the rest of the payload" (__udp6_lib_rcv, RFC 2675).
    assert parse_udp(udp(UDP6, length=0)).payload == b"payload!"
    # Twenty destination options headers are delivered (seen on Linux 6.18).
    many = tuple(ext(60, PAD6) for _ in range(20))
    assert parse_udp(v6(extensions=many)).payload == b"payload!"
    # A type-0 routing header with no segments left, and an atomic fragment (RFC 6946).
    assert parse_udp(v6(extensions=(ext(43, b"\x00\x00" + b"\x00" * 4 + A6),))).src_port == 1
    assert parse_udp(v6(extensions=(ext(44, b"\x00\x00\x00\x00\x00\x01"),))).src_port == 1
    # Hop-by-hop with a valid router alert; unknown skippable options (type 00xxxxxx).
    assert parse_udp(v6(extensions=(ext(0, b"\x05\x02\x00\x00\x01\x00"),))).dst_port == 2
    assert parse_udp(v6(extensions=(ext(60, b"\x1e\x04\x00\x00\x00\x00"),))).dst_port == 2
    # Eight options is the limit, not an error.
    eight = ext(60, b"\x1e\x00" * 8 + b"\x01\x00" + b"\x00" * 0 + b"\x01\x02\x00\x00")
    assert parse_udp(v6(extensions=(eight,))).dst_port == 2


def test_ipv4_checksum_ffff_and_0000_are_equivalent() -> None:
    """One's complement has two zeros: a header whose checksum field could hold 0x0000 or
    0xFFFF verifies either way, as ip_fast_csum() accepts both."""
    base = v4()
    for ident in range(0x10000):
        data = patch_ipv4(base, 4, ident.to_bytes(2, "big"))
        if data[24:26] == b"\x00\x00":
            break
    else:  # pragma: no cover
        pytest.fail("no ident gives a zero header checksum")
    assert parse_udp(data).payload == b"payload!"
    alt = data[:24] + b"\xff\xff" + data[26:]
    assert parse_udp(alt).payload == b"payload!"


ND_REASONS: list[tuple[str, Callable[[], bytes]]] = []


def nd_frame(
    transport: NeighborSolicitation | NeighborAdvertisement,
    *,
    src: bytes = S6,
    dst: bytes = SNM_D6,
    hop_limit: int = 255,
) -> bytes:
    return build_frame(
        Frame(
            Ethernet(multicast_mac(dst) if dst[0] == 0xFF else M2, M1, ETH_P_IPV6),
            IPv6(src, dst, IPPROTO_ICMPV6, hop_limit),
            transport,
            b"",
        )
    )


def with_icmp_checksum(frame: bytes) -> bytes:
    """Fix the IPv6 payload length and ICMPv6 checksum of a frame whose message was patched."""
    msg = bytearray(frame[54:])
    if len(msg) < 4:
        return frame[:18] + len(msg).to_bytes(2, "big") + frame[20:]
    msg[2:4] = b"\x00\x00"
    src, dst = frame[22:38], frame[38:54]
    total = int.from_bytes(src + dst, "big") + 58 + len(msg)
    total += int.from_bytes(msg + b"\x00" * (len(msg) % 2), "big")
    msg[2:4] = ((-total) % 0xFFFF).to_bytes(2, "big")
    return frame[:18] + len(msg).to_bytes(2, "big") + frame[20:54] + bytes(msg)


NS = NeighborSolicitation(D6, M1)
NA = NeighborAdvertisement(D6, M1, router=True, solicited=False, override=True)
ND_REASONS = [
    ("nd_hop_limit", lambda: nd_frame(NS, hop_limit=254)),
    ("icmpv6_bad_checksum", lambda: flip(nd_frame(NS), 60)),
    ("icmpv6_short", lambda: with_icmp_checksum(nd_frame(NS)[:57])),
    ("nd_code", lambda: with_icmp_checksum(flip(nd_frame(NS), 55))),
    ("nd_short", lambda: with_icmp_checksum(nd_frame(NeighborSolicitation(D6, None))[:-1])),
    ("nd_target_multicast", lambda: nd_frame(NeighborSolicitation(SNM_D6, M1))),
    ("nd_option_length", lambda: with_icmp_checksum(nd_frame(NS)[:-8] + b"\x01\x00" + M1)),
    ("nd_option_length", lambda: with_icmp_checksum(nd_frame(NS)[:-8] + b"\x01\x02" + M1)),
    ("nd_option_length", lambda: with_icmp_checksum(nd_frame(NS) + b"\x05")),
    (
        "nd_option_length",
        lambda: with_icmp_checksum(nd_frame(NS)[:-8] + b"\x01\x02" + M1 * 2 + b"\0\0"),
    ),
    ("nd_sllao_unspecified", lambda: nd_frame(NS, src=b"\x00" * 16)),
    (
        "nd_dad_destination",
        lambda: nd_frame(NeighborSolicitation(D6, None), src=b"\x00" * 16, dst=D6),
    ),
    ("nd_solicited_multicast", lambda: nd_frame(dataclasses.replace(NA, solicited=True))),
    ("arp_short", lambda: bytes.fromhex(TABLE[6][2])[:41]),
    ("arp_format", lambda: flip(bytes.fromhex(TABLE[6][2]), 15)),
    ("arp_format", lambda: flip(bytes.fromhex(TABLE[6][2]), 18)),
    ("arp_op", lambda: flip(bytes.fromhex(TABLE[6][2]), 21, 0x02)),
    ("udp6_zero_checksum", lambda: udp(UDP6, checksum=0)),
    ("udp_length", lambda: udp(UDP4, length=7)),
    ("udp_length", lambda: udp(UDP6, length=17)),
    ("udp_short", lambda: v4(total_length=27)),
    ("vlan_too_deep", lambda: M2 + M1 + b"\x81\x00\x00\x01" * 3 + v4()[12:]),
    ("ipv4_options", lambda: v4(options=b"\x44\x00\x00\x00")),
]


@pytest.mark.parametrize(("reason", "make"), ND_REASONS, ids=[r for r, _ in ND_REASONS])
def test_parse_frame_drop_reasons(reason: str, make: Callable[[], bytes]) -> None:
    with pytest.raises(MalformedPacketError) as err:
        parse_frame(make())
    assert err.value.reason == reason, err.value


def test_parse_frame_nd_details() -> None:
    # Valid forms: NA to a unicast address with the solicited flag; unknown options skipped.
    na = dataclasses.replace(NA, solicited=True)
    assert parse_frame(nd_frame(na, dst=D6)).transport == na
    extra = with_icmp_checksum(nd_frame(NS) + b"\x0e\x01" + b"\x00" * 6)  # nonce option
    assert parse_frame(extra).transport == NS
    dad = nd_frame(NeighborSolicitation(D6, None), src=b"\x00" * 16)
    assert parse_frame(dad).transport == NeighborSolicitation(D6, None)
    # Other ICMPv6 messages: checksum verified, message returned as payload.
    echo = Frame(Ethernet(M2, M1, ETH_P_IPV6), IPv6(S6, D6, IPPROTO_ICMPV6), None, b"")
    raw = build_frame(dataclasses.replace(echo, payload=b"\x80\x00\x00\x00\x00\x01\x00\x01"))
    fixed = with_icmp_checksum(raw)
    assert parse_frame(fixed).payload == fixed[54:]
    with pytest.raises(MalformedPacketError, match="icmpv6_bad_checksum"):
        parse_frame(raw)
    assert parse_frame(raw, verify_checksums=False).payload == raw[54:]


def test_parse_frame_keeps_source_routes_and_fragments() -> None:
    lsrr = b"\x83\x07\x04" + D4 + b"\x00"
    fr = parse_frame(v4(options=lsrr))
    assert isinstance(fr.net, IPv4)
    assert fr.net.options == lsrr
    assert fr.transport == UDP(1, 2, 16, fr.transport.checksum)  # type: ignore[union-attr]
    frag6 = parse_frame(v6(extensions=(ext(44, b"\x00\x09\x00\x00\x00\x01"),)))
    assert frag6.transport is None
    assert isinstance(frag6.net, IPv6)
    assert frag6.net.extensions == (ext(44, b"\x00\x09\x00\x00\x00\x01"),)


def test_parse_frame_without_checksum_verification() -> None:
    bad = flip(v4(), 45)
    fr = parse_frame(bad, verify_checksums=False)
    assert fr.payload == b"paymoad!"
    with pytest.raises(MalformedPacketError, match="udp_bad_checksum"):
        parse_frame(bad)
    with pytest.raises(MalformedPacketError, match="ipv4_bad_checksum"):
        parse_frame(flip(v4(), 24))
    assert parse_frame(flip(v4(), 24), verify_checksums=False).payload == b"payload!"


@pytest.mark.parametrize(
    "frame",
    [
        Frame(Ethernet(M2[:5], M1, ETH_P_IP), None, None, b""),
        Frame(Ethernet(M2, M1, ETH_P_IPV6), IPv4(S4, D4, 17), None, b""),
        Frame(Ethernet(M2, M1, ETH_P_IP), IPv4(S4, D4, 6), UDP(1, 2), b""),
        Frame(Ethernet(M2, M1, ETH_P_IP), IPv4(S4, D6, 17), None, b""),
        Frame(Ethernet(M2, M1, ETH_P_IP), IPv4(S4, D4, 17, options=b"\x01"), None, b""),
        Frame(Ethernet(M2, M1, ETH_P_IP), IPv4(S4, D4, 17, frag_offset=0x2000), None, b""),
        Frame(Ethernet(M2, M1, ETH_P_IP), IPv4(S4, D4, 17, ttl=256), None, b""),
        Frame(Ethernet(M2, M1, ETH_P_IP), IPv4(S4, D4, 58), NS, b""),
        Frame(Ethernet(M2, M1, ETH_P_IPV6), IPv6(S6, D6, 17), NS, b""),
        Frame(Ethernet(M2, M1, ETH_P_IPV6), IPv6(S6, D6, 6), UDP(1, 2), b""),
        Frame(Ethernet(M2, M1, ETH_P_IPV6), IPv6(S6, D6, 17, flow_label=1 << 20), None, b""),
        Frame(Ethernet(M2, M1, ETH_P_IPV6), IPv6(S4, D4, 17), None, b""),
        Frame(
            Ethernet(M2, M1, ETH_P_IPV6), IPv6(S6, D6, 17, extensions=(ext(60, b"x"),)), None, b""
        ),
        Frame(
            Ethernet(M2, M1, ETH_P_IPV6), IPv6(S6, D6, 17, extensions=(ext(44, b"x"),)), None, b""
        ),
        Frame(Ethernet(M2, M1, ETH_P_IPV6), IPv6(S6, D6, 58), NeighborSolicitation(D4, None), b""),
        Frame(
            Ethernet(M2, M1, ETH_P_IPV6), IPv6(S6, D6, 58), NeighborSolicitation(D6, M1[:4]), b""
        ),
        Frame(Ethernet(M2, M1, ETH_P_ARP), ARP(1, M1, S6, M2, D4), None, b""),
        Frame(Ethernet(M2, M1, ETH_P_ARP), ARP(1, M1[:3], S4, M2, D4), None, b""),
        Frame(Ethernet(M2, M1, ETH_P_ARP), None, UDP(1, 2), b""),
        Frame(Ethernet(M2, M1, ETH_P_IP, (VlanTag(ETH_P_8021Q, 8, False, 1),)), None, None, b""),
        Frame(
            Ethernet(M2, M1, ETH_P_IP, (VlanTag(ETH_P_8021Q, 0, False, 1),) * 3), None, None, b""
        ),
    ],
)
def test_build_frame_rejects_inconsistent_values(frame: Frame) -> None:
    with pytest.raises(ValueError):
        build_frame(frame)


def test_build_frame_writes_given_wrong_values() -> None:
    data = build_frame(
        Frame(
            Ethernet(M2, M1, ETH_P_IP),
            IPv4(S4, D4, 17, total_length=99, checksum=0x1234),
            UDP(1, 2, length=3, checksum=0xABCD),
            b"",
        )
    )
    assert data[16:18] == (99).to_bytes(2, "big")
    assert data[24:26] == b"\x12\x34"
    assert data[38:42] == b"\x00\x03\xab\xcd"
