"""Fragment reassembly and GSO splitting (rawtransport.reassembly), alone and inside the engine."""

from __future__ import annotations

import itertools
import random
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawtransport.checksum import internet_checksum, udp_checksum
from rawtransport.engine import TP_STATUS_CSUMNOTREADY, DatagramReceived, FrameMeta
from rawtransport.errors import MalformedPacketError
from rawtransport.packet import build_ipv4_fragments, build_ipv6_fragments, build_udp, parse_udp
from rawtransport.reassembly import (
    FRAGMENT_OVERHEAD,
    QUEUE_OVERHEAD,
    Reassembled,
    Reassembler,
    parse_fragment,
    parse_vnet_header,
    split_gso_udp,
    udp_datagram,
)
from tests.test_engine import IF, ME4, ME6, META, MY_MAC, PEER4, PEER6, PEER_MAC, PORT, engine

SPORT = 4000


# ------------------------------------------------------------------------------------ builders
def segment(family: int, payload: bytes, *, sport: int = SPORT, dport: int = PORT) -> bytes:
    """A UDP header + payload with a correct checksum for PEER -> ME."""
    src, dst = (PEER4, ME4) if family == 4 else (PEER6, ME6)
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return seg[:6] + udp_checksum(src, dst, seg).to_bytes(2, "big") + seg[8:]


def v4_frag(
    offset: int,
    data: bytes,
    more: bool,
    *,
    ident: int = 7,
    tos: int = 0,
    proto: int = 17,
    src: bytes = PEER4,
    dst: bytes = ME4,
    options: bytes = b"",
) -> bytes:
    ihl = 20 + len(options)
    flags = (0x2000 if more else 0) | (offset >> 3)
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl >> 2, tos, ihl + len(data), ident, flags, 64, proto, 0, src, dst
    )
    hdr += options
    hdr = hdr[:10] + internet_checksum(hdr).to_bytes(2, "big") + hdr[12:]
    return MY_MAC + PEER_MAC + b"\x08\x00" + hdr + data


def v6_frag(
    offset: int,
    data: bytes,
    more: bool,
    *,
    ident: int = 7,
    nh: int = 17,
    tc: int = 0,
    src: bytes = PEER6,
    dst: bytes = ME6,
) -> bytes:
    frag = struct.pack("!BBHI", nh, 0, offset | int(more), ident)
    fixed = struct.pack("!IHBB16s16s", 0x60000000 | tc << 20, 8 + len(data), 44, 64, src, dst)
    return MY_MAC + PEER_MAC + b"\x86\xdd" + fixed + frag + data


def frag(family: int, offset: int, data: bytes, more: bool, **kw: Any) -> bytes:
    return (v4_frag if family == 4 else v6_frag)(offset, data, more, **kw)


def pieces(seg: bytes, size: int) -> list[tuple[int, bytes, bool]]:
    """``seg`` cut in ``size``-byte pieces (a multiple of 8): (offset, data, more)."""
    return [(o, seg[o : o + size], o + size < len(seg)) for o in range(0, len(seg), size)]


def feed(r: Reassembler, frames: list[bytes], now: float = 0.0) -> list[Reassembled]:
    out = []
    for f in frames:
        got = r.receive(f, now, IF)
        if got is not None:
            out.append(got)
    return out


def invariant(r: Reassembler) -> None:
    s: dict[str, Any] = r.stats()
    assert s["fragments"] == s["datagrams"] + s["merged"] + s["pending"] + sum(
        s["dropped"].values()
    )


FAMILIES = pytest.mark.parametrize("family", [4, 6])


# ---------------------------------------------------------------------------------- reassembly
@pytest.mark.parametrize(("family", "size"), [(4, 3000), (4, 65507), (6, 3000), (6, 65527)])
def test_in_order_builder_fragments_reassemble(family: int, size: int) -> None:
    payload = bytes(random.Random(size).randbytes(size))
    if family == 4:
        frames = build_ipv4_fragments(MY_MAC, PEER_MAC, PEER4, ME4, SPORT, PORT, payload, mtu=1500)
    else:
        frames = build_ipv6_fragments(
            MY_MAC, PEER_MAC, PEER6, ME6, SPORT, PORT, payload, mtu=1500, ident=99
        )
    assert len(frames) > 1
    r = Reassembler()
    done = feed(r, frames)
    assert len(done) == 1
    assert udp_datagram(done[0]) == (SPORT, PORT, payload)
    assert done[0].fragments == len(frames)
    assert r.stats()["pending"] == 0
    assert r.memory == 0
    assert r.get_timer() is None
    invariant(r)


@FAMILIES
@pytest.mark.parametrize("order", ["reversed", "shuffled", "last_first"])
def test_out_of_order(family: int, order: str) -> None:
    seg = segment(family, bytes(range(256)) * 20)
    parts = pieces(seg, 512)
    if order == "reversed":
        parts.reverse()
    elif order == "shuffled":
        random.Random(5).shuffle(parts)
    else:
        parts = [parts[-1], *parts[:-1]]
    r = Reassembler()
    done = feed(r, [frag(family, *p) for p in parts])
    assert [udp_datagram(d)[2] for d in done] == [bytes(range(256)) * 20]
    invariant(r)


@FAMILIES
def test_exact_duplicates_are_ignored(family: int) -> None:
    seg = segment(family, b"d" * 3000)
    frames = [frag(family, *p) for p in pieces(seg, 1024)]
    r = Reassembler()
    done = feed(r, [frames[0], frames[0], frames[1], frames[0], frames[1], frames[2]])
    assert len(done) == 1
    assert udp_datagram(done[0])[2] == b"d" * 3000
    assert r.dropped == {"reassembly_duplicate": 3}
    invariant(r)


# Overlap shapes, each a list of (offset, length, more) over a 64-byte datagram (plus the UDP
# header at 0); "dup" means kept going and completed, "overlap" means the datagram was discarded.
# Runs follow inet_frag_queue_insert(): in-order arrivals extend the tail run; an arrival before the
# tail is a run of its own.
OVERLAPS: dict[str, tuple[list[tuple[int, int, bool]], str]] = {
    "tail_partial": ([(0, 16, True), (8, 16, True)], "overlap"),
    "tail_superset": ([(8, 8, True), (0, 24, True)], "overlap"),
    "front_partial": ([(16, 16, True), (8, 16, True)], "overlap"),
    "middle_partial_left": (
        [(32, 8, True), (0, 8, True), (48, 16, False), (24, 16, True)],
        "overlap",
    ),
    "middle_partial_right": (
        [(0, 8, True), (48, 16, False), (16, 16, True), (24, 16, True)],
        "overlap",
    ),
    "spans_two_runs": ([(48, 16, False), (0, 8, True), (16, 8, True), (0, 24, True)], "overlap"),
    "superset_of_middle": ([(48, 16, False), (16, 8, True), (8, 24, True)], "overlap"),
    "past_last_start": ([(0, 8, True), (48, 16, False), (40, 16, True)], "overlap"),
    "inside_one_run": ([(0, 16, True), (16, 16, True), (8, 16, True)], "dup"),
    "inside_tail_run_start": ([(0, 32, True), (0, 8, True)], "dup"),
    "inside_middle_fragment": ([(48, 16, False), (8, 24, True), (16, 8, True)], "dup"),
    "across_runs_that_touch": ([(16, 16, True), (0, 16, True), (8, 16, True)], "overlap"),
    "same_offset_shorter_last": ([(0, 32, True), (0, 16, True)], "dup"),
}


def _run_shape(family: int, shape: list[tuple[int, int, bool]]) -> tuple[Reassembler, list[Any]]:
    seg = segment(family, bytes(range(56)))  # 64 bytes of UDP datagram
    frames = [frag(family, o, seg[o : o + n], m) for o, n, m in shape]
    # Then whatever is missing, in order, so that a surviving queue completes.
    covered = set()
    for o, n, _ in shape:
        covered |= set(range(o, o + n))
    rest = [o for o in range(0, 64, 8) if o not in covered]
    frames += [frag(family, o, seg[o : o + 8], o != 56) for o in rest]
    if 56 in covered and not any(o + n == 64 and not m for o, n, m in shape):
        frames.append(frag(family, 56, seg[56:], False))
    r = Reassembler()
    return r, feed(r, frames)


@FAMILIES
@pytest.mark.parametrize("name", sorted(OVERLAPS))
def test_overlap_shapes(family: int, name: str) -> None:
    shape, outcome = OVERLAPS[name]
    r, done = _run_shape(family, shape)
    if outcome == "dup":
        assert len(done) == 1
        assert udp_datagram(done[0])[2] == bytes(range(56))
        assert set(r.dropped) == {"reassembly_duplicate"}
    else:
        assert done == []
        assert r.dropped.get("reassembly_overlap", 0) >= 1
    invariant(r)


@FAMILIES
def test_overlap_discards_queue_then_later_fragments_start_afresh(family: int) -> None:
    seg = segment(family, b"z" * 56)
    r = Reassembler()
    feed(r, [frag(family, 0, seg[:16], True), frag(family, 8, seg[8:24], True)])
    assert r.dropped == {"reassembly_overlap": 2}
    assert r.stats()["queues"] == 0
    assert r.memory == 0
    # A full clean retransmission after the overlap reassembles in a fresh queue.
    done = feed(r, [frag(family, *p) for p in pieces(seg, 16)])
    assert len(done) == 1
    invariant(r)


def test_v6_tiny_first_fragment_dropped() -> None:
    r = Reassembler()
    # A destination-options header of 16 bytes, cut after 8: the chain is not in the first fragment.
    dest = bytes([17, 1]) + bytes([0x1E, 12]) + bytes(12)  # an unknown option to skip
    body = dest + segment(6, b"x" * 40)
    feed(r, [frag(6, 0, body[:8], True, nh=60)])
    # UDP header missing: a first fragment holding just an 8-byte destination-options header.
    dest8 = bytes([17, 0, 1, 4, 0, 0, 0, 0])
    feed(r, [frag(6, 0, dest8, True, nh=60, ident=8)])
    assert r.dropped == {"reassembly_tiny_first": 2}
    # The same with the UDP header in it is accepted and completes.
    body8 = dest8 + segment(6, b"y" * 16)
    done = feed(
        r, [frag(6, 0, body8[:16], True, nh=60, ident=9), frag(6, 16, body8[16:], False, ident=9)]
    )
    assert udp_datagram(done[0])[2] == b"y" * 16
    invariant(r)


def test_v4_tiny_first_fragment_is_empty_after_trim() -> None:
    r = Reassembler()
    seg = segment(4, b"q" * 30)
    feed(r, [v4_frag(0, seg[:7], True)])
    assert r.dropped == {"reassembly_empty_fragment": 1}
    assert r.stats()["queues"] == 0


def test_v4_non_multiple_of_8_is_trimmed_like_ip_frag_queue() -> None:
    seg = segment(4, bytes(range(40)))
    r = Reassembler()
    # 13 bytes with MF: the kernel keeps the first 8; the next fragment starts at 8.
    done = feed(r, [v4_frag(0, seg[:13], True), v4_frag(8, seg[8:], False)])
    assert udp_datagram(done[0])[2] == bytes(range(40))


def test_v6_non_multiple_of_8_is_dropped() -> None:
    seg = segment(6, bytes(range(40)))
    r = Reassembler()
    feed(r, [v6_frag(0, seg[:13], True)])
    assert r.dropped == {"reassembly_misaligned": 1}
    assert r.stats()["queues"] == 0


@pytest.mark.parametrize(
    ("family", "offset", "length", "reason", "queues_left"),
    [
        (4, 65528, 8, None, 1),  # end 65536 > 65515: held, judged whole (ip_frag_reasm())
        (4, 65488, 27, None, 1),  # end 65515: the largest IPv4 payload, held
        (6, 65528, 8, "reassembly_too_long", 1),  # end 65536 > 65535: the fragment alone
        (6, 65520, 16, "reassembly_too_long", 1),  # end 65536 > 65535: the fragment alone
        (6, 65520, 15, None, 1),  # end 65535: held
    ],
)
def test_too_long(
    family: int, offset: int, length: int, reason: str | None, queues_left: int
) -> None:
    r = Reassembler()
    seg = segment(family, b"a" * 8)
    feed(r, [frag(family, 0, seg, True)])  # a queue for the datagram
    feed(r, [frag(family, offset, b"b" * length, False)])
    if reason is None:
        assert r.dropped == {}
    else:
        assert set(r.dropped) == {reason}
    assert r.stats()["queues"] == queues_left
    invariant(r)


def test_v4_reassembled_header_plus_payload_over_65535_dropped() -> None:
    # 40 bytes of options in the first fragment: 60 + 65515 > 65535 (ip_frag_reasm() oversize).
    opts = bytes([1]) * 40
    r = Reassembler()
    first = v4_frag(0, segment(4, b"")[:8], True, options=opts)
    last = v4_frag(65488, b"c" * 27, False)
    middle = [v4_frag(o, b"m" * 1480, True) for o in range(8, 65488 - 1480 + 1, 1480)]
    assert not feed(r, [first, *middle])
    # Fill the exact gap before the last fragment, then the last.
    covered_end = 8 + 1480 * len(middle)
    gap = v4_frag(covered_end, b"g" * (65488 - covered_end), True)
    assert not feed(r, [gap, last])
    assert r.dropped == {"reassembly_too_long": len(middle) + 3}


@FAMILIES
@pytest.mark.parametrize(
    "shape",
    [
        [(0, 16, True), (32, 8, False), (32, 16, False)],  # two lasts, different ends
        [(0, 8, True), (16, 8, False), (32, 8, True)],  # data past the end
        [(0, 32, True), (16, 8, False)],  # last ends before data held
    ],
)
def test_inconsistent_end_discards(family: int, shape: list[tuple[int, int, bool]]) -> None:
    r = Reassembler()
    feed(r, [frag(family, o, bytes(n), m) for o, n, m in shape])
    assert set(r.dropped) == {"reassembly_bad_end"}
    assert r.stats()["queues"] == 0
    invariant(r)


@FAMILIES
def test_empty_last_fragment_discards(family: int) -> None:
    r = Reassembler()
    feed(r, [frag(family, 0, segment(family, b"")[:8], True), frag(family, 16, b"", False)])
    assert r.dropped == {"reassembly_empty_fragment": 2}


@FAMILIES
def test_ecn_not_ect_mixed_with_ce_discards(family: int) -> None:
    seg = segment(family, b"e" * 24)
    key = "tos" if family == 4 else "tc"
    r = Reassembler()
    feed(
        r,
        [
            frag(family, 0, seg[:16], True, **{key: 0}),
            frag(family, 16, seg[16:], False, **{key: 3}),
        ],
    )
    assert r.dropped == {"reassembly_ecn": 2}
    ok = feed(
        r,
        [
            frag(family, 0, seg[:16], True, **{key: 3}),
            frag(family, 16, seg[16:], False, **{key: 2}),
        ],
    )
    assert len(ok) == 1


@FAMILIES
def test_timeout(family: int) -> None:
    limit = 30.0 if family == 4 else 60.0
    r = Reassembler()
    seg = segment(family, b"t" * 100)
    parts = pieces(seg, 32)
    feed(r, [frag(family, *parts[0]), frag(family, *parts[1])], now=100.0)
    assert r.get_timer() == 100.0 + limit
    # A later fragment does not extend the deadline (the queue timer is set at creation).
    feed(r, [frag(family, *parts[2])], now=110.0)
    assert r.get_timer() == 100.0 + limit
    r.handle_timer(100.0 + limit - 0.001)
    assert r.stats()["pending"] == 3
    r.handle_timer(100.0 + limit)
    assert r.dropped == {"reassembly_timeout": 3}
    assert r.get_timer() is None
    assert r.memory == 0
    invariant(r)


def test_expired_queue_is_not_completed_by_a_late_fragment() -> None:
    r = Reassembler()
    seg = segment(4, b"t" * 24)
    feed(r, [v4_frag(0, seg[:16], True)], now=0.0)
    # handle_timer was late: the fragment arriving after the deadline starts a new queue.
    assert not feed(r, [v4_frag(16, seg[16:], False)], now=31.0)
    assert r.dropped == {"reassembly_timeout": 1}
    assert r.stats()["pending"] == 1


def test_timer_is_the_earliest_of_both_families() -> None:
    r = Reassembler()
    feed(r, [v6_frag(0, segment(6, b"x" * 16), True)], now=0.0)
    feed(r, [v4_frag(0, segment(4, b"x" * 16), True)], now=10.0)
    assert r.get_timer() == 40.0
    r.handle_timer(40.0)
    assert r.get_timer() == 60.0


def test_queue_cap_evicts_oldest() -> None:
    r = Reassembler(max_queues=3)
    seg = segment(4, b"c" * 16)
    feed(r, [v4_frag(0, seg[:16], True, ident=i) for i in range(5)])
    assert r.dropped == {"reassembly_evicted": 2}
    assert r.stats()["queues"] == 3
    # The survivors are the newest: idents 2, 3, 4 complete; 0 does not.
    assert not feed(r, [v4_frag(16, seg[16:], False, ident=0)])
    assert feed(r, [v4_frag(16, seg[16:], False, ident=4)])
    invariant(r)


def test_memory_cap_evicts_down_to_low_threshold() -> None:
    per = QUEUE_OVERHEAD + FRAGMENT_OVERHEAD + 1024
    r = Reassembler(high_thresh=10 * per, low_thresh=6 * per)
    for i in range(50):
        feed(r, [v4_frag(0, b"m" * 1024, True, ident=i)])
        assert r.memory <= 10 * per
    assert r.dropped["reassembly_evicted"] > 0
    invariant(r)


@pytest.mark.parametrize(("total", "size"), [(32000, 8), (59200, 16)])
def test_tiny_fragments_are_reassembled_as_the_kernel_does(total: int, size: int) -> None:
    """No cap per datagram (issue 14, item 6a): 4000 fragments of 8 bytes, 3700 of 16, delivered as
    the kernel delivers them, within the family's threshold."""
    r = Reassembler()
    seg = segment(4, b"t" * (total - 8))
    frames = [v4_frag(o, seg[o : o + size], o + size < total) for o in range(0, total, size)]
    (got,) = feed(r, frames)
    assert got.payload == seg
    assert r.memory == 0
    assert not r.dropped
    invariant(r)


def test_constructor_rejects_bad_caps() -> None:
    with pytest.raises(ValueError):
        Reassembler(high_thresh=1, low_thresh=2)
    with pytest.raises(ValueError):
        Reassembler(max_queues=0)


def test_v6_atomic_fragment_is_processed_alone() -> None:
    seg = segment(6, b"atomic")
    r = Reassembler()
    done = feed(r, [v6_frag(0, seg, False, ident=1), v6_frag(0, seg, False, ident=1)])
    assert [udp_datagram(d)[2] for d in done] == [b"atomic", b"atomic"]
    assert r.stats()["queues"] == 0
    assert r.dropped == {}
    # And through the engine (the codec walks atomic fragments itself).
    e = engine(6)
    e.receive_frame(v6_frag(0, seg, False), META, 0.0)
    assert [ev.data for ev in e.events() if isinstance(ev, DatagramReceived)] == [b"atomic"]


def test_keys_separate_datagrams() -> None:
    a, b = segment(4, b"A" * 24), segment(4, b"B" * 24)
    r = Reassembler()
    done = feed(
        r,
        [
            v4_frag(0, a[:16], True, ident=1),
            v4_frag(0, b[:16], True, ident=2),
            v4_frag(16, b[16:], False, ident=2),
            v4_frag(16, a[16:], False, ident=1),
        ],
    )
    assert [udp_datagram(d)[2] for d in done] == [b"B" * 24, b"A" * 24]


def test_parse_fragment_refusals() -> None:
    with pytest.raises(MalformedPacketError) as exc:
        parse_fragment(v4_frag(0, b"x" * 8, True, proto=6))
    assert exc.value.reason == "not_udp"
    with pytest.raises(MalformedPacketError) as exc:
        parse_fragment(MY_MAC + PEER_MAC + b"\x81\x00" + bytes(30))
    assert exc.value.reason == "vlan_no_device"
    with pytest.raises(MalformedPacketError) as exc:
        parse_fragment(b"short")
    assert exc.value.reason == "eth_short"
    lsrr = bytes([131, 7, 4, 0, 0, 0, 0, 0])
    with pytest.raises(MalformedPacketError) as exc:
        parse_fragment(v4_frag(0, b"x" * 8, True, options=lsrr))
    assert exc.value.reason == "ipv4_source_route"
    bad = bytearray(v4_frag(0, b"x" * 8, True))
    bad[24] ^= 1  # header checksum
    with pytest.raises(MalformedPacketError) as exc:
        parse_fragment(bytes(bad))
    assert exc.value.reason == "ipv4_bad_checksum"


@pytest.mark.parametrize(
    ("seg", "reason"),
    [
        (b"\x0f\xa0\x13\x88\x00\x04\x00\x00" + b"x" * 8, "udp_length"),  # ulen < 8
        (b"\x0f\xa0\x13\x88\x01\x00\x00\x00" + b"x" * 8, "udp_length"),  # ulen > payload
        (b"\x0f\xa0", "udp_short"),
    ],
)
def test_udp_checks_on_reassembled(seg: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacketError) as exc:
        udp_datagram(Reassembled(4, PEER4, ME4, 17, seg, 64, 2))
    assert exc.value.reason == reason


def test_udp6_zero_checksum_and_hbh_after_fragment() -> None:
    seg = bytearray(segment(6, b"zero"))
    seg[6:8] = b"\x00\x00"
    with pytest.raises(MalformedPacketError) as exc:
        udp_datagram(Reassembled(6, PEER6, ME6, 17, bytes(seg), 64, 2))
    assert exc.value.reason == "udp6_zero_checksum"
    with pytest.raises(MalformedPacketError) as exc:
        udp_datagram(Reassembled(6, PEER6, ME6, 0, bytes(16), 64, 2))
    assert exc.value.reason == "ipv6_hbh_not_first"
    # A zero UDP length over IPv6 means "the rest" (RFC 2675 5).
    seg2 = bytearray(segment(6, b"rest"))
    seg2[4:6] = b"\x00\x00"
    fixed = udp_checksum(PEER6, ME6, bytes(seg2))  # the pseudo-header takes the real length
    seg2[6:8] = fixed.to_bytes(2, "big")
    assert udp_datagram(Reassembled(6, PEER6, ME6, 17, bytes(seg2), 64, 2))[2] == b"rest"


# ------------------------------------------------------------------------------------- engine
@FAMILIES
def test_engine_delivers_reassembled_and_keeps_the_invariant(family: int) -> None:
    e = engine(family)
    payload = bytes(range(256)) * 12
    frames = [frag(family, *p) for p in pieces(segment(family, payload), 1024)]
    for f in frames[::-1]:
        e.receive_frame(f, META, 0.0)
    e.receive_frame(frames[0], META, 0.0)  # a late duplicate: a new queue, held
    events = e.events()
    assert len(events) == 1
    assert isinstance(events[0], DatagramReceived)
    assert events[0].data == payload
    peer = "198.18.0.2" if family == 4 else "2001:db8::2"
    assert events[0].addr[:2] == (peer, SPORT)
    s: dict[str, Any] = e.stats()
    r: dict[str, Any] = s["reassembly"]
    assert r["datagrams"] == 1
    assert r["pending"] == 1
    assert r["merged"] == len(frames) - 1
    assert s["received"] == s["delivered"] + s["dropped_total"] + r["pending"] + r["merged"]
    assert e.get_timer() == (30.0 if family == 4 else 60.0)
    e.handle_timer(100.0)
    assert e.stats()["dropped"] == {"reassembly_timeout": 1}
    assert e.get_timer() is None


@FAMILIES
def test_engine_verifies_checksum_even_when_fragments_are_vouched_for(family: int) -> None:
    e = engine(family)
    seg = bytearray(segment(family, b"p" * 100))
    seg[50] ^= 0xFF
    vouched = FrameMeta(ifindex=IF, status=TP_STATUS_CSUMNOTREADY)
    for o, d, m in pieces(bytes(seg), 64):
        e.receive_frame(frag(family, o, d, m), vouched, 0.0)
    assert e.events() == []
    assert e.stats()["dropped"] == {"udp_bad_checksum": 1}


@FAMILIES
def test_engine_applies_address_checks_after_reassembly(family: int) -> None:
    e = engine(family)
    for o, d, m in pieces(segment(family, b"w" * 40, dport=PORT + 1), 24):
        e.receive_frame(frag(family, o, d, m), META, 0.0)
    src = bytes([224, 0, 0, 1]) if family == 4 else bytes([0xFF, 2]) + bytes(14)
    seg = segment(family, b"m" * 40)  # checksum is for PEER: recompute for the martian source
    seg = seg[:6] + udp_checksum(src, ME4 if family == 4 else ME6, seg).to_bytes(2, "big") + seg[8:]
    for o, d, m in pieces(seg, 24):
        e.receive_frame(frag(family, o, d, m, src=src), META, 0.0)
    assert e.events() == []
    assert e.stats()["dropped"] == {"wrong_port": 1, "martian_source": 1}


@FAMILIES
def test_engine_with_reassembly_off_drops_fragments_as_before(family: int) -> None:
    e = engine(family, reassemble=False)
    for o, d, m in pieces(segment(family, b"o" * 40), 24):
        e.receive_frame(frag(family, o, d, m), META, 0.0)
    assert e.events() == []
    reason = "ipv4_fragment" if family == 4 else "ipv6_fragment"
    assert e.stats()["dropped"] == {reason: 2}
    assert e.stats()["reassembly"] == {}
    assert e.get_timer() is None


def test_engine_normal_frames_untouched() -> None:
    e = engine(4)
    e.receive_frame(build_udp(MY_MAC, PEER_MAC, PEER4, ME4, SPORT, PORT, b"plain"), META, 0.0)
    assert [ev.data for ev in e.events() if isinstance(ev, DatagramReceived)] == [b"plain"]
    r: dict[str, Any] = e.stats()["reassembly"]  # type: ignore[assignment]
    assert r["fragments"] == 0


# ------------------------------------------------------------------------------------ scapy oracle
@FAMILIES
def test_scapy_fragments_reassemble(family: int) -> None:
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
    from scapy.layers.l2 import Ether

    payload = bytes(random.Random(1).randbytes(5000))
    if family == 4:
        pkt = (
            IP(src="198.18.0.2", dst="198.18.0.1", id=321) / UDP(sport=SPORT, dport=PORT) / payload
        )
        pieces4 = fragment(pkt, fragsize=1000)  # type: ignore[no-untyped-call]
        frames = [bytes(Ether(dst=MY_MAC, src=PEER_MAC) / f) for f in pieces4]
    else:
        pkt6 = (
            IPv6(src="2001:db8::2", dst="2001:db8::1")
            / IPv6ExtHdrFragment(id=321)
            / UDP(sport=SPORT, dport=PORT)
            / payload
        )
        pieces6 = fragment6(pkt6, 1280)  # type: ignore[no-untyped-call]
        frames = [bytes(Ether(dst=MY_MAC, src=PEER_MAC) / f) for f in pieces6]
    random.Random(2).shuffle(frames)
    r = Reassembler()
    done = feed(r, frames)
    assert len(done) == 1
    assert udp_datagram(done[0]) == (SPORT, PORT, payload)


# ---------------------------------------------------------------------------------- hypothesis
@st.composite
def fragment_lists(draw: st.DrawFn) -> tuple[int, bytes, list[bytes]]:
    family = draw(st.sampled_from([4, 6]))
    payload = draw(st.binary(min_size=0, max_size=3000))
    seg = segment(family, payload)
    top = (len(seg) - 1) // 8
    cuts = draw(st.lists(st.integers(1, top), unique=True, max_size=20)) if top else []
    bounds = [0, *sorted(c * 8 for c in cuts), len(seg)]
    bounds = sorted(set(bounds))
    parts = [(a, seg[a:b], b < len(seg)) for a, b in itertools.pairwise(bounds)]
    ident = draw(st.integers(0, 0xFFFF))
    frames = [frag(family, *p, ident=ident) for p in parts]
    dups = draw(st.lists(st.sampled_from(frames), max_size=5))
    order = draw(st.permutations(frames + dups))
    return family, payload, list(order)


@given(fragment_lists())
def test_any_permutation_reassembles(case: tuple[int, bytes, list[bytes]]) -> None:
    _, payload, frames = case
    r = Reassembler()
    done = feed(r, frames)
    # Duplicates arriving after completion start a new queue (which may complete again if every
    # fragment was duplicated); before completion they are ignored. An unfragmented datagram is
    # delivered once per copy.
    assert len(done) >= 1
    assert all(udp_datagram(d)[2] == payload for d in done)
    invariant(r)


_GARBAGE_CAP = 64 * 1024


@given(
    st.lists(
        st.tuples(
            st.sampled_from([4, 6]),
            st.integers(0, 3),  # ident: few, so fragments collide in queues
            st.integers(0, 0x1FFF),  # offset in 8-byte units
            st.booleans(),
            st.binary(max_size=1500),
            st.integers(0, 3),  # ECN
            st.floats(0, 100),
        ),
        max_size=60,
    ),
    st.lists(st.binary(max_size=100), max_size=10),
)
def test_garbage_never_raises_and_stays_capped(
    items: list[tuple[int, int, int, bool, bytes, int, float]], junk: list[bytes]
) -> None:
    r = Reassembler(
        high_thresh=_GARBAGE_CAP,
        low_thresh=_GARBAGE_CAP // 2,
        max_queues=4,
    )
    now = 0.0
    for family, ident, off8, more, data, ecn, dt in items:
        now += dt
        key = "tos" if family == 4 else "tc"
        offset = off8 * 8 if family == 4 else (off8 * 8) & 0xFFF8
        r.receive(frag(family, offset, data, more, ident=ident, **{key: ecn}), now, IF)
        assert r.memory <= _GARBAGE_CAP
        assert r.stats()["queues"] <= 8  # type: ignore[operator]
        if dt > 50:
            r.handle_timer(now)
    for j in junk:
        r.receive(j, now, IF)
        r.receive(MY_MAC + PEER_MAC + b"\x08\x00" + j, now, IF)
        r.receive(MY_MAC + PEER_MAC + b"\x86\xdd" + j, now, IF)
    invariant(r)


# ----------------------------------------------------------------------------------------- GSO
@FAMILIES
@pytest.mark.parametrize(("size", "gso"), [(5000, 1000), (4500, 1000), (1000, 1000), (0, 100)])
def test_split_gso(family: int, size: int, gso: int) -> None:
    payload = bytes(random.Random(size).randbytes(size))
    src, dst = (PEER4, ME4) if family == 4 else (PEER6, ME6)
    whole = bytearray(build_udp(MY_MAC, PEER_MAC, src, dst, SPORT, PORT, payload, ident=0x1234))
    # As it reaches a tap: CHECKSUM_PARTIAL, the field holds only the pseudo-header sum.
    u = 34 if family == 4 else 54
    whole[u + 6 : u + 8] = b"\x12\x34"
    segs = split_gso_udp(bytes(whole), gso)
    assert len(segs) == max(1, -(-size // gso))
    got = b""
    for i, s in enumerate(segs):
        d = parse_udp(s)  # verifies the IPv4 header checksum and the UDP checksum
        assert (d.src_port, d.dst_port, d.src, d.dst) == (SPORT, PORT, src, dst)
        assert len(d.payload) == (gso if i < len(segs) - 1 else size - gso * (len(segs) - 1))
        if family == 4:
            assert struct.unpack_from("!H", s, 18)[0] == 0x1234 + i
        got += d.payload
    assert got == payload


def test_split_gso_refusals() -> None:
    f = build_udp(MY_MAC, PEER_MAC, PEER4, ME4, SPORT, PORT, b"x" * 100)
    with pytest.raises(ValueError):
        split_gso_udp(f, 0)
    bad = bytearray(f)
    bad[38:40] = (50).to_bytes(2, "big")  # UDP length disagrees with the IP length
    with pytest.raises(MalformedPacketError) as exc:
        split_gso_udp(bytes(bad), 10)
    assert exc.value.reason == "udp_length"
    with pytest.raises(MalformedPacketError) as exc:
        split_gso_udp(v4_frag(0, b"x" * 16, True), 8)
    assert exc.value.reason == "ipv4_fragment"
    with pytest.raises(MalformedPacketError):
        split_gso_udp(MY_MAC + PEER_MAC + b"\x88\x99" + bytes(50), 8)


def test_parse_vnet_header_as_seen_on_linux() -> None:
    h = parse_vnet_header(bytes.fromhex("01052a00e80322000600"))
    assert (h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset) == (
        1, 5, 42, 1000, 34, 6,
    )  # fmt: skip
    with pytest.raises(MalformedPacketError):
        parse_vnet_header(b"\x01")


def test_v4_fragment_past_the_limit_holds_its_queue_until_the_end_disagrees() -> None:
    """Issue 14, item 6b: a fragment ending past 65515 is held (ip_frag_queue() has no such check;
    ip_frag_reasm() refuses the datagram when whole), so a datagram sent later under the same id
    joins its queue and dies with it (its last fragment ends before the poison), as in the kernel."""
    r = Reassembler()
    seg = segment(4, b"p" * 120)
    assert not feed(r, [v4_frag(65000, b"x" * 600, True)])
    assert r.pending == 1
    assert not r.dropped
    assert not feed(r, [v4_frag(0, seg[:64], True), v4_frag(64, seg[64:], False)])
    assert r.dropped == {"reassembly_bad_end": 3}
    # The queue is gone with them: the next datagram under that id is delivered.
    (got,) = feed(r, [v4_frag(0, seg[:64], True), v4_frag(64, seg[64:], False)])
    assert got.payload == seg
    invariant(r)


def test_v6_first_fragment_with_an_option_to_discard_holds_its_place() -> None:
    """Issue 14, item 6c: the options behind the Fragment header are judged once the datagram is
    whole. A first fragment whose destination options say "discard" is queued, a clean first
    fragment after it is a duplicate, and the datagram made with the first is discarded."""
    discard = bytes([17, 0, 0x5E, 4, 0, 0, 0, 0])  # unknown option, action bits 01: discard
    padn = bytes([17, 0, 1, 4, 0, 0, 0, 0])
    seg = segment(6, b"d" * 56)
    bad, clean = discard + seg, padn + seg
    r = Reassembler()
    (whole,) = feed(
        r,
        [
            v6_frag(0, bad[:40], True, nh=60),
            v6_frag(0, clean[:40], True, nh=60),
            v6_frag(40, clean[40:], False, nh=60),
        ],
    )
    assert r.dropped == {"reassembly_duplicate": 1}
    assert whole.payload == discard + seg
    with pytest.raises(MalformedPacketError) as exc:
        udp_datagram(whole)
    assert exc.value.reason == "ipv6_option"
    invariant(r)


def test_first_v6_fragment_header_chain_checks() -> None:
    """A first fragment needs its upper-layer header whole (TCP's 20 bytes here); what the headers
    behind the Fragment header say is judged once the datagram is whole."""
    r = Reassembler()
    tcp = bytes(20) + b"tcp!"
    assert not feed(r, [v6_frag(0, tcp[:16], True, nh=6, ident=2)])
    assert r.dropped == {"reassembly_tiny_first": 1}
    hbh = feed(r, [v6_frag(0, bytes(16), True, nh=0), v6_frag(16, bytes(8), False, nh=0)])
    tcp = bytes(24) + b"tcp!"
    other = feed(
        r, [v6_frag(0, tcp[:24], True, nh=6, ident=3), v6_frag(24, tcp[24:], False, nh=6, ident=3)]
    )
    for (whole,), reason in ((hbh, "ipv6_hbh_not_first"), (other, "not_udp")):
        with pytest.raises(MalformedPacketError) as exc:
            udp_datagram(whole)
        assert exc.value.reason == reason
    with pytest.raises(MalformedPacketError) as exc:
        udp_datagram(Reassembled(4, PEER4, ME4, 6, bytes(16), 64, 2))
    assert exc.value.reason == "not_udp"
