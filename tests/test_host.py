"""The shared host of a raw stack, sans I/O: the socket table's precedence, one neighbour table for
many endpoints (datagrams released to, and failed on, the endpoint that sent them), fragments
reassembled once and delivered to their endpoint, and frames no endpoint takes counted."""

from __future__ import annotations

import errno
from typing import Any

from rawtransport.engine import (
    DatagramReceived,
    EndpointConfig,
    ErrorReceived,
    FrameMeta,
    UdpEngine,
)
from rawtransport.host import FRAGMENT, Host, peek_udp
from rawtransport.packet import build_ipv4_fragments, build_udp
from tests.test_engine import (
    IF,
    ME4,
    ME6,
    MY_MAC,
    PEER4,
    PEER6,
    PEER_MAC,
    arp_reply,
    frame_in,
    local_addresses,
    route,
)

META = FrameMeta(ifindex=IF)
OTHER4 = bytes([198, 18, 0, 3])


def host() -> Host:
    return Host(local_addresses())


def endpoint(h: Host, port: int = 5000, family: int = 4, **kw: Any) -> UdpEngine:
    return UdpEngine(EndpointConfig(family=family, local_port=port, **kw), host=h)


def delivered(e: UdpEngine) -> list[bytes]:
    return [ev.data for ev in e.events() if isinstance(ev, DatagramReceived)]


def test_peek_reads_the_lookup_key_without_checks() -> None:
    assert peek_udp(frame_in(4, sport=1234, dport=5678)) == (PEER4, ME4, 1234, 5678)
    assert peek_udp(frame_in(6, sport=1, dport=2)) == (PEER6, ME6, 1, 2)
    frags = build_ipv4_fragments(MY_MAC, PEER_MAC, PEER4, ME4, 1, 2, bytes(3000), mtu=1500, ident=7)
    assert [peek_udp(f) for f in frags] == [FRAGMENT] * len(frags)
    assert peek_udp(arp_reply()) is None
    assert peek_udp(b"\x00" * 20) is None


def test_each_datagram_goes_to_the_endpoint_of_its_port() -> None:
    h = host()
    a, b = endpoint(h, 5000), endpoint(h, 6000)
    h.receive_frame(frame_in(4, b"to a", dport=5000), META, 0.0)
    h.receive_frame(frame_in(4, b"to b", dport=6000), META, 0.0)
    h.receive_frame(frame_in(4, b"nobody", dport=7000), META, 0.0)
    assert delivered(a) == [b"to a"]
    assert delivered(b) == [b"to b"]
    assert set(h.take_touched()) == {a, b}
    assert h.stats()["dropped"] == {"no_socket": 1}
    assert h.counters.received == 3
    assert a.stats()["received"] == b.stats()["received"] == 1


def test_the_most_specific_endpoint_wins_as_in_compute_score() -> None:
    h = host()
    wildcard = endpoint(h)
    bound = endpoint(h, local_ip=ME4)
    connected = endpoint(h, local_ip=ME4, remote_ip=PEER4, remote_port=4000)
    dual = endpoint(h, family=6, dual_stack=True)
    h.receive_frame(frame_in(4, b"from the peer", sport=4000), META, 0.0)
    h.receive_frame(frame_in(4, b"other port", sport=4001), META, 0.0)
    assert delivered(connected) == [b"from the peer"]
    assert delivered(bound) == [b"other port"]
    assert delivered(wildcard) == delivered(dual) == []
    # A frame to another local address: only the wildcard sockets match; IPv4's scores higher.
    h.receive_frame(frame_in(4, b"broadcast", dst=bytes([198, 18, 0, 255])), META, 0.0)
    assert delivered(wildcard) == [b"broadcast"]
    wildcard.close()
    h.receive_frame(frame_in(4, b"now dual", dst=bytes([198, 18, 0, 255])), META, 0.0)
    assert [ev.addr for ev in dual.events() if isinstance(ev, DatagramReceived)] == [
        ("::ffff:198.18.0.2", 4000, 0, 0)
    ]


def test_a_connected_endpoint_sees_only_its_peer_and_a_device_bound_one_its_device() -> None:
    h = host()
    connected = endpoint(h, remote_ip=PEER4, remote_port=4000)
    pinned = endpoint(h, 6000, ifindex=IF + 1)
    h.receive_frame(frame_in(4, b"stranger", src=OTHER4, sport=4000), META, 0.0)
    h.receive_frame(frame_in(4, b"wrong device", dport=6000), META, 0.0)
    assert delivered(connected) == delivered(pinned) == []
    assert h.stats()["dropped"] == {"no_socket": 2}
    h.receive_frame(frame_in(4, b"right device", dport=6000), FrameMeta(ifindex=IF + 1), 0.0)
    assert delivered(pinned) == [b"right device"]


def test_equal_endpoints_share_by_flow() -> None:
    h = host()
    group = [endpoint(h, local_ip=ME4) for _ in range(4)]
    for sport in range(1000, 1200):
        for _ in range(3):  # a flow always reaches the same endpoint
            h.receive_frame(frame_in(4, b"%d" % sport, sport=sport), META, 0.0)
    got = [delivered(e) for e in group]
    assert sum(len(x) for x in got) == 600
    assert all(got), "every endpoint of the group gets some flows"
    for x in got:
        for i in range(0, len(x), 3):
            assert x[i] == x[i + 1] == x[i + 2]


def test_one_resolution_serves_every_endpoint_and_releases_to_each_sender() -> None:
    h = host()
    a, b = endpoint(h, 5000, local_ip=ME4), endpoint(h, 6000, local_ip=ME4)
    a.send_datagram(b"from a", (PEER4, 9), route(PEER4), 0.0)
    b.send_datagram(b"from b", (PEER4, 9), route(PEER4), 0.0)
    requests = a.frames_to_send() + b.frames_to_send()
    assert len(requests) == 1, "one ARP request for the next hop, whoever asked"
    assert a.pending_resolution == b.pending_resolution == 1
    h.receive_frame(arp_reply(), META, 0.1)
    assert {x: x.pending_resolution for x in h.take_touched()} == {a: 0, b: 0}
    (fa,), (fb,) = a.frames_to_send(), b.frames_to_send()
    assert fa.frame[:6] == fb.frame[:6] == PEER_MAC
    assert fa.frame.endswith(b"from a")
    assert fb.frame.endswith(b"from b")
    assert a.stats()["sent"] == b.stats()["sent"] == 1
    # The next endpoint finds the neighbour resolved: its datagram leaves at once.
    c = endpoint(h, 7000, local_ip=ME4)
    c.send_datagram(b"from c", (PEER4, 9), route(PEER4), 0.2)
    (fc,) = c.frames_to_send()
    assert fc.frame[:6] == PEER_MAC


def test_a_failed_resolution_fails_each_senders_datagram() -> None:
    h = host()
    connected = endpoint(h, 5000, local_ip=ME4, remote_ip=PEER4, remote_port=9)
    unconnected = endpoint(h, 6000, local_ip=ME4)
    connected.send_datagram(b"x", (PEER4, 9), route(PEER4), 0.0)
    unconnected.send_datagram(b"y", (PEER4, 9), route(PEER4), 0.0)
    now = 0.0
    for _ in range(10):
        when = h.get_timer()
        if when is None:
            break
        now = when
        h.handle_timer(now)
    assert len(h.out) == 2, "the two retransmits are the host's own frames"
    assert set(h.take_touched()) == {connected, unconnected}
    errors = [ev.exc.errno for ev in connected.events() if isinstance(ev, ErrorReceived)]
    assert errors == [errno.EHOSTUNREACH]
    assert unconnected.events() == []
    for e in (connected, unconnected):
        assert e.stats()["dropped"] == {"neighbour_failed": 1}
        assert e.pending_resolution == 0
        assert e.get_timer() is None, "in a stack the host runs the timers"


def test_fragments_are_reassembled_once_and_delivered_to_their_endpoint() -> None:
    h = host()
    a, b = endpoint(h, 5000), endpoint(h, 6000)
    payload = bytes(range(256)) * 12
    for f in build_ipv4_fragments(MY_MAC, PEER_MAC, PEER4, ME4, 4000, 6000, payload,
                                  mtu=1500, ident=9):  # fmt: skip
        h.receive_frame(f, META, 0.0)
    assert delivered(b) == [payload]
    assert delivered(a) == []
    stats = b.stats()
    assert (stats["received"], stats["delivered"], stats["reassembled"]) == (1, 1, 1)
    r = h.stats()["reassembly"]
    assert isinstance(r, dict)
    assert (r["datagrams"], r["merged"]) == (1, 2)


def test_neighbour_replies_and_foreign_frames_are_the_hosts() -> None:
    h = host()
    a = endpoint(h)
    h.receive_frame(arp_reply(), META, 0.0)
    h.receive_frame(build_udp(MY_MAC, PEER_MAC, PEER4, ME4, 1, 5000, b"x")[:30], META, 0.0)
    assert a.stats()["received"] == 0
    s = h.stats()
    assert s["received"] == 2
    neighbour = s["neighbour"]
    assert isinstance(neighbour, dict)
    assert neighbour["unsolicited"] == 1
    assert s["dropped_total"] == 1


def test_a_neighbours_queue_is_bounded_by_bytes_as_the_kernels() -> None:
    """unres_qlen_bytes (212992): 200 small datagrams wait for one resolution and all leave; the
    queue refuses what would pass the byte budget (a 65-datagram burst is no longer cut at 64)."""
    h = host()
    e = endpoint(h, local_ip=ME4)
    for i in range(200):
        e.send_datagram(b"%03d" % i, (PEER4, 9), route(PEER4), 0.0)
    assert e.pending_resolution == 200
    big = endpoint(h, 6000, local_ip=ME4)
    for _ in range(10):
        big.send_datagram(bytes(60000), (PEER4, 9), route(PEER4), 0.0)
    assert big.pending_resolution == 0, "over the byte budget: refused"
    assert h.neigh.stats["pending_overflow"] == 10
    e.frames_to_send()
    h.receive_frame(arp_reply(), META, 0.1)
    frames = e.frames_to_send()
    assert [f.frame[-3:] for f in frames] == [b"%03d" % i for i in range(200)]


def test_an_na_without_target_lladdr_confirms_only_a_known_neighbour() -> None:
    """RFC 4861 7.2.5: an NA with no target link-layer option resolves nothing (the frame's
    Ethernet source is not the target's address: an attacker could send it); for an entry being
    re-probed it confirms the MAC already known."""
    from tests.test_receive_checks import nd

    h = host()
    e = endpoint(h, family=6, local_ip=ME6)
    r6 = route(PEER6)
    e.send_datagram(b"waiting", (PEER6, 9), r6, 0.0)
    e.frames_to_send()
    h.receive_frame(nd(options=b""), META, 0.1)
    assert e.pending_resolution == 1, "still waiting: nothing resolved it"
    assert h.stats()["dropped"] == {"nd_no_target_lladdr": 1}
    h.receive_frame(nd(), META, 0.2)  # with the option: resolved, the datagram leaves
    assert e.pending_resolution == 0
    (f,) = e.frames_to_send()
    assert f.frame[:6] == PEER_MAC
    # 40 s later the entry is STALE: using it starts a unicast probe, which an NA without the
    # option answers (the MAC is known).
    e.send_datagram(b"later", (PEER6, 9), r6, 40.0)
    e.frames_to_send()
    h.receive_frame(nd(options=b""), META, 40.1)
    assert h.neigh.stats["replies_accepted"] == 2
