"""The sans-IO engine on synthetic frames: receive checks, send path, neighbour resolution, timers."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from rawtransport.engine import (
    ARPHRD_LOOPBACK,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    TP_STATUS_CSUMNOTREADY,
    TP_STATUS_VLAN_VALID,
    DatagramReceived,
    EndpointConfig,
    ErrorReceived,
    FrameMeta,
    UdpEngine,
)
from rawtransport.packet import (
    ARP,
    BROADCAST_MAC,
    Ethernet,
    Frame,
    IPv4,
    NeighborAdvertisement,
    NeighborSolicitation,
    build_frame,
    build_udp,
    parse_frame,
)
from rawtransport.route import AddressInfo, LocalAddresses, Route, RouteKind

ME4 = bytes([198, 18, 0, 1])
PEER4 = bytes([198, 18, 0, 2])
ME6 = bytes.fromhex("20010db8000000000000000000000001")
PEER6 = bytes.fromhex("20010db8000000000000000000000002")
MY_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000002")
IF = 2
PORT = 5000
META = FrameMeta(ifindex=IF)


def local_addresses() -> LocalAddresses:
    return LocalAddresses(
        [
            AddressInfo(IF, 4, ME4, 24, 0, 0x80),
            AddressInfo(IF, 6, ME6, 64, 0, 0x80),
            AddressInfo(1, 4, bytes([127, 0, 0, 1]), 8, 254, 0x80),
        ]
    )


def engine(family: int = 4, **kw: Any) -> UdpEngine:
    local = ME4 if family == 4 else ME6
    return UdpEngine(
        EndpointConfig(family=family, local_port=PORT, local_ip=local, **kw), local_addresses()
    )


def route(dst: bytes, kind: RouteKind = RouteKind.UNICAST, mtu: int = 1500) -> Route:
    src = ME4 if len(dst) == 4 else ME6
    return Route(dst, IF, "veth0", src, dst, mtu, MY_MAC, kind, False)


def frame_in(
    family: int = 4,
    payload: bytes = b"hello",
    *,
    src: bytes | None = None,
    dst: bytes | None = None,
    sport: int = 4000,
    dport: int = PORT,
    eth_dst: bytes = MY_MAC,
) -> bytes:
    if family == 4:
        return build_udp(eth_dst, PEER_MAC, src or PEER4, dst or ME4, sport, dport, payload)
    return build_udp(eth_dst, PEER_MAC, src or PEER6, dst or ME6, sport, dport, payload)


def dropped(e: UdpEngine) -> dict[str, int]:
    d = e.stats()["dropped"]
    assert isinstance(d, dict)
    return d


@pytest.mark.parametrize("family", [4, 6])
def test_delivers_a_valid_datagram(family: int) -> None:
    e = engine(family)
    e.receive_frame(frame_in(family), META, 1.0)
    (ev,) = e.events()
    assert isinstance(ev, DatagramReceived)
    assert ev.data == b"hello"
    if family == 4:
        assert ev.addr == ("198.18.0.2", 4000)
    else:
        assert ev.addr == ("2001:db8::2", 4000, 0, 0)
    assert e.stats()["delivered"] == 1


@pytest.mark.parametrize(
    ("kwargs", "meta", "reason"),
    [
        ({"dport": PORT + 1}, META, "wrong_port"),
        ({"dst": bytes([198, 18, 0, 9])}, META, "wrong_address"),
        ({"src": bytes([224, 0, 0, 1])}, META, "martian_source"),
        ({"src": bytes([0, 0, 0, 0])}, META, "martian_source"),
        ({"src": bytes([127, 0, 0, 1])}, META, "martian_source"),
        ({"src": ME4}, META, "martian_source"),
        ({}, FrameMeta(IF, pkttype=PACKET_OUTGOING), "outgoing"),
        ({}, FrameMeta(IF, pkttype=PACKET_OTHERHOST), "otherhost"),
        ({}, FrameMeta(IF, truncated=True), "truncated"),
        ({}, FrameMeta(IF, status=TP_STATUS_VLAN_VALID), "vlan_no_device"),
        ({}, FrameMeta(IF, hatype=0xFFFE), "unsupported_link"),
    ],
)
def test_receive_drops_are_counted_by_reason(
    kwargs: dict[str, Any], meta: FrameMeta, reason: str
) -> None:
    e = engine()
    e.receive_frame(frame_in(**kwargs), meta, 1.0)
    assert e.events() == []
    assert dropped(e) == {reason: 1}


def test_loopback_sources_are_fine_on_loopback() -> None:
    e = UdpEngine(
        EndpointConfig(family=4, local_port=PORT, local_ip=bytes([127, 0, 0, 1])), local_addresses()
    )
    f = build_udp(bytes(6), bytes(6), bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]), 1, PORT, b"x")
    e.receive_frame(f, FrameMeta(1, hatype=ARPHRD_LOOPBACK), 0.0)
    assert [type(x) for x in e.events()] == [DatagramReceived]


@pytest.mark.parametrize("family", [4, 6])
def test_bad_udp_checksum_dropped_unless_the_kernel_vouches(family: int) -> None:
    f = bytearray(frame_in(family))
    f[-1] ^= 0xFF  # corrupt the payload: the UDP checksum no longer verifies
    e = engine(family)
    e.receive_frame(bytes(f), META, 0.0)
    assert e.events() == []
    assert dropped(e) == {"udp_bad_checksum": 1}
    # CHECKSUM_PARTIAL from a local sender (TP_STATUS_CSUMNOTREADY): the kernel says it is not computed yet.
    e.receive_frame(bytes(f), FrameMeta(IF, status=TP_STATUS_CSUMNOTREADY), 0.0)
    assert len(e.events()) == 1


def test_wildcard_accepts_any_local_address_and_broadcast() -> None:
    e = UdpEngine(EndpointConfig(family=4, local_port=PORT), local_addresses())
    e.receive_frame(frame_in(), META, 0.0)
    e.receive_frame(frame_in(dst=bytes([198, 18, 0, 255]), eth_dst=BROADCAST_MAC), META, 0.0)
    e.receive_frame(frame_in(dst=bytes([198, 18, 0, 77])), META, 0.0)
    assert len(e.events()) == 2
    assert dropped(e) == {"not_local": 1}


def test_connected_endpoint_filters_by_peer() -> None:
    e = engine(remote_ip=PEER4, remote_port=4000)
    e.receive_frame(frame_in(sport=4001), META, 0.0)
    e.receive_frame(frame_in(src=bytes([198, 18, 0, 3])), META, 0.0)
    e.receive_frame(frame_in(), META, 0.0)
    assert len(e.events()) == 1
    assert dropped(e) == {"wrong_peer": 2}


def test_gso_superframe_is_not_delivered_concatenated() -> None:
    e = engine()
    e.set_link_mtus({IF: 1500})
    e.receive_frame(frame_in(payload=b"x" * 3000), META, 0.0)
    assert e.events() == []
    assert dropped(e) == {"gso_unsplit": 1}


def arp_reply(sender_ip: bytes = PEER4, sender_mac: bytes = PEER_MAC, target: bytes = ME4) -> bytes:
    arp = ARP(2, sender_mac, sender_ip, MY_MAC, target)
    return build_frame(Frame(Ethernet(MY_MAC, sender_mac, 0x0806), arp, None, b""))


def test_send_resolves_the_next_hop_with_arp_then_sends() -> None:
    e = engine()
    e.send_datagram(b"payload", (PEER4, 4000), route(PEER4), 10.0)
    (req,) = e.frames_to_send()
    parsed = parse_frame(req.frame)
    assert parsed.eth.dst == BROADCAST_MAC
    assert isinstance(parsed.net, ARP)
    assert (parsed.net.op, parsed.net.sender_ip, parsed.net.target_ip) == (1, ME4, PEER4)
    assert parsed.net.sender_mac == MY_MAC
    # An unsolicited reply from someone else changes nothing; the right one releases the datagram.
    e.receive_frame(arp_reply(sender_ip=bytes([198, 18, 0, 7])), META, 10.1)
    assert e.frames_to_send() == []
    e.receive_frame(arp_reply(), META, 10.1)
    (out,) = e.frames_to_send()
    udp = parse_frame(out.frame)
    assert (udp.eth.dst, udp.eth.src) == (PEER_MAC, MY_MAC)
    assert isinstance(udp.net, IPv4)
    assert (udp.net.src, udp.net.dst) == (ME4, PEER4)
    assert udp.payload == b"payload"
    assert out.size == len(b"payload")
    # Now cached: the next datagram leaves at once.
    e.send_datagram(b"again", (PEER4, 4000), route(PEER4), 10.2)
    assert [parse_frame(f.frame).payload for f in e.frames_to_send()] == [b"again"]


def test_send_v6_resolves_with_neighbour_solicitation() -> None:
    e = engine(6)
    e.send_datagram(b"six", (PEER6, 4000), route(PEER6), 0.0)
    (req,) = e.frames_to_send()
    ns = parse_frame(req.frame)
    assert isinstance(ns.transport, NeighborSolicitation)
    assert ns.transport.target == PEER6
    assert ns.eth.dst == bytes.fromhex("3333ff000002")
    na = NeighborAdvertisement(PEER6, PEER_MAC, router=False, solicited=True, override=True)
    from rawtransport.packet import IPv6

    reply = build_frame(
        Frame(Ethernet(MY_MAC, PEER_MAC, 0x86DD), IPv6(PEER6, ME6, 58, hop_limit=255), na, b"")
    )
    e.receive_frame(reply, META, 0.1)
    (out,) = e.frames_to_send()
    assert parse_frame(out.frame).payload == b"six"


def test_resolution_failure_reports_ehostunreach_when_connected() -> None:
    e = engine(remote_ip=PEER4, remote_port=4000)
    e.send_datagram(b"lost", (PEER4, 4000), route(PEER4), 0.0)
    now = 0.0
    requests = len(e.frames_to_send())
    for _ in range(20):
        t = e.get_timer()
        if t is None:
            break
        now = t
        e.handle_timer(now)
        requests += len(e.frames_to_send())
    assert requests == 3
    events = e.events()
    assert len(events) == 1
    assert isinstance(events[0], ErrorReceived)
    assert events[0].exc.errno == errno.EHOSTUNREACH
    assert dropped(e)["neighbour_failed"] == 1


def test_send_errors_match_udp_sendmsg() -> None:
    e = engine()
    with pytest.raises(OSError) as info:
        e.send_datagram(b"x" * 65508, (PEER4, 1), route(PEER4), 0.0)
    assert info.value.errno == errno.EMSGSIZE
    bcast = bytes([198, 18, 0, 255])
    with pytest.raises(PermissionError) as info2:
        e.send_datagram(b"x", (bcast, 1), route(bcast, RouteKind.BROADCAST), 0.0)
    assert info2.value.errno == errno.EACCES
    allowed = engine(allow_broadcast=True)
    allowed.send_datagram(b"x", (bcast, 1), route(bcast, RouteKind.BROADCAST), 0.0)
    (out,) = allowed.frames_to_send()
    assert out.frame[:6] == BROADCAST_MAC


def test_oversized_ipv4_datagram_is_fragmented_to_the_route_mtu() -> None:
    e = engine()
    e.send_datagram(b"z" * 3000, (PEER4, 4000), route(PEER4, RouteKind.LOCAL, mtu=1500), 0.0)
    frames = e.frames_to_send()
    assert len(frames) == 3
    assert all(len(f.frame) <= 1514 for f in frames)
    assert sum(f.size for f in frames) == 3000
