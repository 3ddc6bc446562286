"""scapy as an independent oracle: our bytes equal scapy's, and scapy's frames parse right.

scapy (GPL) is used only as a test oracle; none of its code is in rawtransport.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, fragment
from scapy.layers.inet import UDP as ScapyUDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    RouterAlert,
    fragment6,
)
from scapy.layers.inet6 import IPv6 as ScapyIPv6
from scapy.layers.l2 import ARP as ScapyARP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from rawtransport.packet import (
    ETH_P_8021Q,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    UDP,
    Ethernet,
    Frame,
    IPv4,
    IPv6,
    NeighborAdvertisement,
    NeighborSolicitation,
    VlanTag,
    build_arp_request,
    build_frame,
    build_ipv4_fragments,
    build_ipv6_fragments,
    build_neighbor_solicitation,
    build_udp,
    parse_frame,
    parse_udp,
    solicited_node_address,
)

macs = st.binary(min_size=6, max_size=6)
ip4 = st.binary(min_size=4, max_size=4)
ip6 = st.binary(min_size=16, max_size=16)
unicast6 = st.binary(min_size=15, max_size=15).map(lambda b: b"\x20" + b)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
payloads = st.binary(max_size=300)
vlans = st.none() | st.integers(0, 4094)


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def ip_str(ip: bytes) -> str:
    return str(ipaddress.ip_address(ip))


def ether(dst: bytes, src: bytes, vlan_id: int | None) -> Packet:
    eth = Ether(dst=mac_str(dst), src=mac_str(src))
    return eth if vlan_id is None else eth / Dot1Q(vlan=vlan_id)


@given(macs, macs, ip4, ip4, u16, u16, payloads, u8, u8, u16, st.booleans(), vlans, st.booleans())
def test_build_udp_v4_equals_scapy(
    dmac: bytes,
    smac: bytes,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes,
    ttl: int,
    tos: int,
    ident: int,
    df: bool,
    vlan_id: int | None,
    checksum: bool,
) -> None:
    ours = build_udp(
        dmac, smac, src, dst, sport, dport, payload, ttl=ttl, tos=tos, ident=ident,
        dont_fragment=df, vlan_id=vlan_id, udp_checksum=checksum,
    )  # fmt: skip
    udp = (
        ScapyUDP(sport=sport, dport=dport)
        if checksum
        else ScapyUDP(sport=sport, dport=dport, chksum=0)
    )
    theirs = ether(dmac, smac, vlan_id) / IP(
        src=ip_str(src), dst=ip_str(dst), ttl=ttl, tos=tos, id=ident, flags="DF" if df else 0
    ) / udp / Raw(payload)  # fmt: skip
    assert ours == bytes(theirs)


@given(macs, macs, ip6, ip6, u16, u16, payloads, u8, u8, st.integers(0, 0xFFFFF), vlans)
def test_build_udp_v6_equals_scapy(
    dmac: bytes,
    smac: bytes,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes,
    hlim: int,
    tc: int,
    fl: int,
    vlan_id: int | None,
) -> None:
    ours = build_udp(
        dmac, smac, src, dst, sport, dport, payload, hop_limit=hlim, traffic_class=tc,
        flow_label=fl, vlan_id=vlan_id,
    )  # fmt: skip
    theirs = ether(dmac, smac, vlan_id) / ScapyIPv6(
        src=ip_str(src), dst=ip_str(dst), hlim=hlim, tc=tc, fl=fl
    ) / ScapyUDP(sport=sport, dport=dport) / Raw(payload)  # fmt: skip
    assert ours == bytes(theirs)


IPV4_OPTIONS = [b"", b"\x94\x04\x00\x00", b"\x07\x07\x04\x00\x00\x00\x00\x01", b"\x01" * 8]


@given(ip4, ip4, u16, u16, payloads, st.sampled_from(IPV4_OPTIONS), u16, st.integers(0, 7))
def test_build_frame_ipv4_equals_scapy(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes,
    options: bytes,
    ident: int,
    pcp: int,
) -> None:
    m1, m2 = b"\x02" + bytes(5), b"\x02" + bytes(4) + b"\x01"
    frame = Frame(
        Ethernet(m1, m2, 0x0800, (VlanTag(ETH_P_8021Q, pcp, False, 5),)),
        IPv4(src, dst, 17, ident=ident, options=options),
        UDP(sport, dport),
        payload,
    )
    ip = IP(
        src=ip_str(src),
        dst=ip_str(dst),
        id=ident,
        flags="DF",
        options=Raw(options) if options else [],
    )
    theirs = (
        Ether(dst=mac_str(m1), src=mac_str(m2))
        / Dot1Q(prio=pcp, vlan=5)
        / ip
        / ScapyUDP(sport=sport, dport=dport)
        / Raw(payload)
    )
    assert build_frame(frame) == bytes(theirs)
    assert parse_frame(bytes(theirs)) == parse_frame(build_frame(frame))


@given(unicast6, ip6, u16, u16, payloads, st.sampled_from(["none", "hbh", "dest", "rt", "frag"]))
def test_scapy_ipv6_frames_parse(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ext: str
) -> None:
    extensions: dict[str, Packet] = {
        "hbh": IPv6ExtHdrHopByHop(options=[RouterAlert()]),
        "dest": IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")]),
        "rt": IPv6ExtHdrRouting(segleft=0, addresses=[ip_str(dst)]),
        "frag": IPv6ExtHdrFragment(id=5, offset=0, m=0),  # an atomic fragment
    }
    ip = ScapyIPv6(src=ip_str(src), dst=ip_str(dst), hlim=7)
    layers = ip / extensions[ext] if ext != "none" else ip
    pkt = Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / Dot1AD(vlan=3) / Dot1Q(
        vlan=9
    ) / layers / ScapyUDP(sport=sport, dport=dport) / Raw(payload)  # fmt: skip
    wire = bytes(pkt)
    got = parse_udp(wire)
    assert (got.family, got.src, got.dst, got.src_port, got.dst_port) == (6, src, dst, sport, dport)
    assert (got.payload, got.ttl, got.vlan_id) == (payload, 7, 3)
    frame = parse_frame(wire)
    assert isinstance(frame.net, IPv6)
    assert len(frame.net.extensions) == (0 if ext == "none" else 1)
    assert frame.payload == payload
    assert build_frame(frame) == wire


@given(ip4, ip4, u16, u16, payloads, u8, st.sampled_from(IPV4_OPTIONS), st.booleans())
def test_scapy_ipv4_frames_parse(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes,
    ttl: int,
    options: bytes,
    pad: bool,
) -> None:
    pkt = Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP(
        src=ip_str(src), dst=ip_str(dst), ttl=ttl, options=Raw(options) if options else []
    ) / ScapyUDP(sport=sport, dport=dport) / Raw(payload)  # fmt: skip
    wire = bytes(pkt)
    if pad and len(wire) < 60:
        wire += b"\x00" * (60 - len(wire))
    got = parse_udp(wire)
    assert (got.family, got.src, got.dst, got.src_port, got.dst_port) == (4, src, dst, sport, dport)
    assert (got.payload, got.ttl, got.vlan_id) == (payload, ttl, None)
    frame = parse_frame(wire)
    assert isinstance(frame.net, IPv4)
    assert (frame.net.options, frame.net.ttl, frame.payload) == (options, ttl, payload)
    assert frame.transport == UDP(sport, dport, len(payload) + 8, Ether(wire)[ScapyUDP].chksum)


@given(macs, ip4, ip4)
def test_arp_request_equals_scapy(mac: bytes, src: bytes, dst: bytes) -> None:
    theirs = bytes(
        Ether(dst="ff:ff:ff:ff:ff:ff", src=mac_str(mac))
        / ScapyARP(
            op=1, hwsrc=mac_str(mac), psrc=ip_str(src), pdst=ip_str(dst), hwdst="00:00:00:00:00:00"
        )
    )
    ours = build_arp_request(mac, src, dst)
    assert ours == theirs + bytes(60 - len(theirs))


@given(macs, unicast6, unicast6)
def test_neighbor_solicitation_equals_scapy(mac: bytes, src: bytes, target: bytes) -> None:
    snm = solicited_node_address(target)
    theirs = (
        Ether(dst=mac_str(b"\x33\x33" + snm[12:]), src=mac_str(mac))
        / ScapyIPv6(src=ip_str(src), dst=ip_str(snm), hlim=255)
        / ICMPv6ND_NS(tgt=ip_str(target))
        / ICMPv6NDOptSrcLLAddr(lladdr=mac_str(mac))
    )
    assert build_neighbor_solicitation(mac, src, target) == bytes(theirs)
    parsed = parse_frame(bytes(theirs))
    assert parsed.transport == NeighborSolicitation(target, mac)


@given(
    macs, unicast6, unicast6, unicast6, st.booleans(), st.booleans(), st.booleans(), st.booleans()
)
def test_neighbor_advertisement_equals_scapy(
    mac: bytes,
    src: bytes,
    dst: bytes,
    target: bytes,
    router: bool,
    solicited: bool,
    override: bool,
    with_lladdr: bool,
) -> None:
    na = NeighborAdvertisement(target, mac if with_lladdr else None, router, solicited, override)
    frame = Frame(Ethernet(mac, mac, ETH_P_IPV6), IPv6(src, dst, IPPROTO_ICMPV6, 255), na, b"")
    theirs = (
        Ether(dst=mac_str(mac), src=mac_str(mac))
        / ScapyIPv6(src=ip_str(src), dst=ip_str(dst), hlim=255)
        / ICMPv6ND_NA(tgt=ip_str(target), R=int(router), S=int(solicited), O=int(override))
    )
    if with_lladdr:
        theirs = theirs / ICMPv6NDOptDstLLAddr(lladdr=mac_str(mac))
    assert build_frame(frame) == bytes(theirs)
    assert parse_frame(bytes(theirs)).transport == na


# MTUs whose fragment room (mtu - 20) is a multiple of 8: scapy's fragment() cuts fixed-size
# pieces, while ip_do_fragment() lets the last piece use an unrounded remainder of the room.
@given(ip4, ip4, st.binary(min_size=1, max_size=4000), st.sampled_from([68, 1004, 1500]), u16)
def test_ipv4_fragments_equal_scapy(
    src: bytes, dst: bytes, payload: bytes, mtu: int, ident: int
) -> None:
    ours = build_ipv4_fragments(bytes(6), bytes(6), src, dst, 1, 2, payload, mtu=mtu, ident=ident)
    if len(payload) + 28 <= mtu:
        assert len(ours) == 1
        return
    # Fragments carry DF clear, as ip_fragment() only fragments datagrams without DF.
    whole = IP(src=ip_str(src), dst=ip_str(dst), id=ident, flags=0) / ScapyUDP(sport=1, dport=2)
    theirs = fragment(whole / Raw(payload), fragsize=(mtu - 20) & ~7)  # type: ignore[no-untyped-call]
    assert [f[14:] for f in ours] == [bytes(f) for f in theirs]


@given(unicast6, ip6, st.binary(min_size=1300, max_size=5000), st.sampled_from([1280, 1500]))
def test_ipv6_fragments_equal_scapy(src: bytes, dst: bytes, payload: bytes, mtu: int) -> None:
    ours = build_ipv6_fragments(
        bytes(6), bytes(6), src, dst, 1, 2, payload, mtu=mtu, ident=0xDEADBEEF
    )
    if len(payload) + 48 <= mtu:
        assert len(ours) == 1
        return
    whole = ScapyIPv6(src=ip_str(src), dst=ip_str(dst)) / IPv6ExtHdrFragment(id=0xDEADBEEF)
    theirs = fragment6(whole / ScapyUDP(sport=1, dport=2) / Raw(payload), mtu)  # type: ignore[no-untyped-call]
    assert [f[14:] for f in ours] == [bytes(f) for f in theirs]
