"""The compiled receive path (``_datapath.v2_deliver``, rawtransport/_deliver.c) against the pure
one: the same frames, laid in a TPACKET_V2 ring, walked once through the host's fast view (frames
delivered straight to the protocols, the others handed to ``Host.receive_frame``) and once through
the Python path alone. Both must deliver the same datagrams, with the same addresses, to the same
protocols in the same order, report the same protocol exceptions, and count the same frames,
deliveries and drops, endpoint by endpoint and for the host."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rawtransport.engine import DatagramReceived, EndpointConfig, UdpEngine
from rawtransport.host import Host
from rawtransport.packet import build_udp
from rawtransport.ring import RingGeometry, V2Walker
from tests.test_datapath import C, assert_no_leak
from tests.test_engine import IF, ME4, ME6, PEER4, PEER6, local_addresses

OTHER4 = bytes([198, 18, 0, 3])
OTHER6 = bytes.fromhex("20010db8000000000000000000000003")
FOREIGN4 = bytes([198, 19, 0, 9])
MAPPED4 = bytes(10) + b"\xff\xff" + PEER4
SOURCES4 = [PEER4, OTHER4, ME4, bytes(4), bytes([127, 0, 0, 1]), bytes([224, 0, 0, 1]),
            b"\xff\xff\xff\xff", bytes([240, 0, 0, 1]), bytes([198, 18, 0, 255])]  # fmt: skip
DESTS4 = [ME4, OTHER4, FOREIGN4, b"\xff\xff\xff\xff", bytes([198, 18, 0, 255]),
          bytes([224, 0, 0, 1]), bytes(4), bytes([127, 0, 0, 1])]  # fmt: skip
SOURCES6 = [PEER6, OTHER6, ME6, bytes(15) + b"\x01", bytes.fromhex("ff02" + "00" * 13 + "01"),
            bytes.fromhex("fe80" + "00" * 13 + "07"), MAPPED4]  # fmt: skip
DESTS6 = [ME6, OTHER6, bytes(15) + b"\x01", bytes.fromhex("ff02" + "00" * 13 + "01"),
          bytes.fromhex("ff01" + "00" * 13 + "01")]  # fmt: skip
PORTS4 = [5000, 5001, 5002, 5003, 5004, 7000, 9999, 6001, 8888]
PORTS6 = [6000, 6001, 6002, 5000, 8888]
FRAME_SIZE = 2048
MAC_OFFSET = 80  # where the kernel puts an untagged frame in a V2 slot (>= TPACKET2_HDRLEN)


class Recorder:
    """A protocol that logs what it gets in a log shared by every endpoint; raises for payloads
    that start with b"raise" (the transport reports those and goes on)."""

    def __init__(self, name: str, log: list[tuple[object, ...]]) -> None:
        self.name = name
        self.log = log

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.log.append((self.name, data, addr))
        if data.startswith(b"raise"):
            raise ValueError(self.name)


# The endpoints of one stack: every kind the socket table knows, two sharing a port (the fast
# path leaves such ports to Python), a reuse_port one, one bound to a device, and two bound to
# addresses that are not (or no longer) the host's.
ENDPOINTS: dict[str, dict[str, Any]] = {
    "bound4": {"family": 4, "local_port": 5000, "local_ip": ME4},
    "wild4": {"family": 4, "local_port": 5001},
    "conn4": {
        "family": 4,
        "local_port": 5002,
        "local_ip": ME4,
        "remote_ip": PEER4,
        "remote_port": 4000,
    },
    "dev4": {"family": 4, "local_port": 5003, "ifindex": IF},
    "bound6": {"family": 6, "local_port": 6000, "local_ip": ME6},
    # Bound to addresses the host does not have (removed since bind()): nothing is delivered.
    "gone4": {"family": 4, "local_port": 5004, "local_ip": OTHER4},
    "gone6": {"family": 6, "local_port": 6002, "local_ip": OTHER6},
    "dual6": {"family": 6, "local_port": 6001, "dual_stack": True},
    "shared-a": {"family": 4, "local_port": 7000, "local_ip": ME4},
    "shared-b": {"family": 4, "local_port": 7000},
    "reuse": {"family": 4, "local_port": 9999, "reuse_port": True},
}


def world(fast: bool) -> tuple[Host, dict[str, UdpEngine], list[tuple[object, ...]]]:
    h = Host(local_addresses())
    h.set_link_mtus({IF: 1500, 1: 65536})
    log: list[tuple[object, ...]] = []
    engines = {}
    for name, kw in ENDPOINTS.items():
        e = UdpEngine(EndpointConfig(**kw), host=h)
        engines[name] = e
        if fast:
            proto = Recorder(name, log)
            e.set_fast_protocol(proto, lambda exc: log.append(("report", type(exc).__name__)))
    return h, engines, log


def dispatch(h: Host, engines: dict[str, UdpEngine], log: list[tuple[object, ...]]) -> None:
    """What the transports do with the engines a frame touched: call each protocol in turn."""
    names = {id(e): n for n, e in engines.items()}
    for e in h.take_touched():
        proto = Recorder(names[id(e)], log)
        for ev in e.events():
            assert isinstance(ev, DatagramReceived)
            try:
                proto.datagram_received(ev.data, ev.addr)
            except ValueError as exc:
                log.append(("report", type(exc).__name__))


# One slot: (frame, ifindex, pkttype, status, hatype, tp_len or None for len(frame), tp_vlan_tci).
Slot = tuple[bytes, int, int, int, int, int | None, int]


def ring_of(slots: Sequence[Slot]) -> tuple[RingGeometry, bytearray]:
    g = RingGeometry(version=2, block_size=1 << 16, block_count=1, frame_size=FRAME_SIZE)
    assert len(slots) <= g.frame_count
    buf = bytearray(g.size)
    for i, (frame, ifindex, pkttype, status, hatype, tp_len, tci) in enumerate(slots):
        base = g.frame_offset(i)
        snap = min(len(frame), FRAME_SIZE - MAC_OFFSET)
        struct.pack_into("=IIIHH", buf, base, 0, tp_len or len(frame), snap, MAC_OFFSET, 0)
        struct.pack_into("=H", buf, base + 24, tci)
        struct.pack_into("=iHB", buf, base + 36, ifindex, hatype, pkttype)
        buf[base + MAC_OFFSET : base + MAC_OFFSET + snap] = frame[:snap]
        struct.pack_into("=I", buf, base, status | 1)  # TP_STATUS_USER last, as the kernel
    return g, buf


def path_free(stats: dict[str, object]) -> dict[str, object]:
    """An endpoint's counters less the ones that say which path took what (they differ, by
    design, between the two runs)."""
    return {k: v for k, v in stats.items() if not k.startswith("compiled_")}


def run_python(slots: Sequence[Slot]) -> tuple[list[tuple[object, ...]], dict[str, object]]:
    h, engines, log = world(fast=False)
    g, buf = ring_of(slots)
    walker = V2Walker(buf, g)
    for data, meta in walker.next_batch(len(slots)):
        assert data is not None
        h.receive_frame(data, meta, 1.0)
        dispatch(h, engines, log)
    return log, {"host": h.stats(), **{n: path_free(e.stats()) for n, e in engines.items()}}


def run_compiled(
    slots: Sequence[Slot], budget: int
) -> tuple[list[tuple[object, ...]], dict[str, object], int]:
    """As RawStack.read_ready() walks with the fast view, in batches of ``budget``."""
    h, engines, log = world(fast=True)
    g, buf = ring_of(slots)
    walker = V2Walker(buf, g)
    taken_total = 0
    while True:
        left = budget
        progress = False
        while left > 0:
            taken, slow = walker.deliver_batch(left, h.fast)
            taken_total += taken
            left -= taken
            progress = progress or bool(taken)
            if slow is None:
                break
            progress = True
            left -= 1
            assert slow[0] is not None
            h.receive_frame(slow[0], slow[1], 1.0)
            dispatch(h, engines, log)
        if not progress:
            break
    assert bytes(buf[g.frame_offset(i)] for i in range(len(slots))) == bytes(len(slots)), (
        "every slot given back"
    )
    stats = {n: e.stats() for n, e in engines.items()}
    assert sum(int(str(x["compiled_delivered"])) for x in stats.values()) == taken_total
    return log, {"host": h.stats(), **{n: path_free(x) for n, x in stats.items()}}, taken_total


def often(common: Any, others: list[Any], weight: int = 9) -> st.SearchStrategy[Any]:
    """``common`` ``weight`` times in ``weight + 1``, else one of ``others``: most frames are the
    ordinary kind, where the fast path's checks must match the Python path's one by one."""
    return st.sampled_from([common] * weight + others)


@st.composite
def slots(draw: st.DrawFn) -> Slot:
    v6 = draw(st.booleans())
    src = draw(often(PEER6, SOURCES6, 6) if v6 else often(PEER4, SOURCES4, 8))
    dst = draw(often(ME6, DESTS6, 5) if v6 else often(ME4, DESTS4, 8))
    payload = draw(st.sampled_from([b"", b"hello", b"raise!", bytes(1400)]))
    payload += draw(st.binary(max_size=8))
    sport = draw(often(4000, [4001, 53], 4))
    dport = draw(st.sampled_from(PORTS6 if v6 else PORTS4))
    vlan_id = draw(often(None, [5, 0], 18))
    mac = b"\x02" * 6
    frame = bytearray(build_udp(mac, mac, src, dst, sport, dport, payload, vlan_id=vlan_id))
    # Sometimes a broken byte (a header field, a checksum, a length), or a cut.
    if draw(st.integers(0, 5)) == 0:
        for _ in range(draw(st.integers(1, 2))):
            i = draw(st.integers(0, min(len(frame), 64) - 1))
            frame[i] = draw(st.integers(0, 255))
    if draw(st.integers(0, 9)) == 0:
        del frame[len(frame) - draw(st.integers(1, len(frame))) :]
    ifindex = draw(often(IF, [1, 7], 19))
    pkttype = draw(often(0, [1, 2, 3, 4], 19))
    status = draw(often(0, [0x8, 0x80, 0x10], 19))
    hatype = draw(often(1, [772, 776], 19))
    tp_len = draw(often(None, [len(frame) + 10], 19))
    # A tag's TCI: a priority tag (VLAN id 0, the frame is untagged) or a VLAN id (dropped).
    tci = draw(st.sampled_from([0, 0xA000, 5, 0x2FFF])) if status & 0x10 else 0
    return bytes(frame), ifindex, pkttype, status, hatype, tp_len, tci


@settings(max_examples=400, deadline=None)
@given(batch=st.lists(slots(), min_size=1, max_size=24), budget=st.integers(1, 30))
def test_compiled_delivery_matches_the_python_path(batch: list[Slot], budget: int) -> None:
    """Whatever the frames, both paths give every protocol the same datagrams in the same order
    and count the same."""
    want_log, want_stats = run_python(batch)
    got_log, got_stats, _ = run_compiled(batch, budget)
    assert got_log == want_log
    assert got_stats == want_stats


def run_per_frame(slots: Sequence[Slot]) -> tuple[list[tuple[object, ...]], dict[str, object]]:
    """As RawStack.read_ready() reads a recvmsg or V3 receiver: each frame offered to
    ``_datapath.deliver_frame`` first, the Python path taking what it leaves."""
    h, engines, log = world(fast=True)
    g, buf = ring_of(slots)
    for data, meta in V2Walker(buf, g).next_batch(len(slots)):
        assert data is not None
        if not C.deliver_frame(data, meta.ifindex, meta.pkttype, meta.status, meta.hatype,
                               meta.truncated, h.fast):  # fmt: skip
            h.receive_frame(data, meta, 1.0)
            dispatch(h, engines, log)
    return log, {"host": h.stats(), **{n: path_free(e.stats()) for n, e in engines.items()}}


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(slots(), min_size=1, max_size=12))
def test_per_frame_delivery_matches_the_python_path(batch: list[Slot]) -> None:
    """deliver_frame() (the recvmsg and V3 receivers' compiled delivery) against the Python path:
    the same datagrams, order, reports and counters."""
    assert run_per_frame(batch) == run_python(batch)


def test_per_frame_delivery_lets_a_stop_through() -> None:
    h, engines, _log = world(fast=True)

    class Stop:
        def datagram_received(self, data: bytes, addr: object) -> None:
            raise KeyboardInterrupt

    engines["bound4"].set_fast_protocol(Stop(), lambda exc: None)
    frame = build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5000, b"x")
    with pytest.raises(KeyboardInterrupt):
        C.deliver_frame(frame, IF, 0, 0, 1, False, h.fast)
    assert engines["bound4"].stats()["compiled_delivered"] == 1
    # Metadata out of range is the Python path's, not an error.
    assert C.deliver_frame(frame, -1, 0, 0, 1, False, h.fast) is False
    assert C.deliver_frame(frame, IF, 0, 1 << 40, 1, False, h.fast) is False


def test_the_fast_path_takes_the_common_frames() -> None:
    """The frames the fast path is for are delivered by it (not all handed back to Python), to
    the right endpoint, including after a frame it leaves to Python."""
    common = [
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5000, b"a"), IF, 0, 0, 1, None, 0),
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER6, ME6, 4000, 6000, b"b"), IF, 0, 0, 1, None, 0),
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 7000, b"c"), IF, 0, 0, 1, None, 0),
        (
            build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5002, b"d"),
            IF,
            0,
            0x80,
            1,
            None,
            0,
        ),
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5001, b"e"), IF, 0, 0, 1, None, 0),
    ]
    log, stats, taken = run_compiled(common, 64)
    assert taken == 4  # port 7000 has two endpoints: the Python path's
    assert [x[:2] for x in log] == [
        ("bound4", b"a"), ("bound6", b"b"), ("shared-a", b"c"), ("conn4", b"d"), ("wild4", b"e"),
    ]  # fmt: skip
    assert log[0][2] == ("198.18.0.2", 4000)
    assert log[1][2] == ("2001:db8::2", 4000, 0, 0)
    assert stats == run_python(common)[1]


def test_a_protocol_that_stops_the_program_stops_the_walk_where_it_was() -> None:
    """SystemExit from datagram_received propagates (as from the Python dispatch) once the
    walker's position is saved: the next walk goes on with the next frame."""
    h, engines, log = world(fast=True)

    class Stop:
        def datagram_received(self, data: bytes, addr: object) -> None:
            log.append(("stop", data))
            raise SystemExit(3)

    engines["bound4"].set_fast_protocol(Stop(), lambda exc: None)
    frames = [
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5000, b"x"), IF, 0, 0, 1, None, 0),
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5001, b"y"), IF, 0, 0, 1, None, 0),
    ]
    g, buf = ring_of(frames)
    walker = V2Walker(buf, g)
    with pytest.raises(SystemExit):
        walker.deliver_batch(64, h.fast)
    assert walker.deliver_batch(64, h.fast) == (1, None)
    assert log == [("stop", b"x"), ("wild4", b"y", ("198.18.0.2", 4000))]


def test_an_endpoint_without_a_protocol_gets_its_frames_through_python() -> None:
    """protocol None (paused, closing) or a closed endpoint: no fast delivery, no frame lost."""
    h, engines, log = world(fast=True)
    engines["bound4"].set_fast_protocol(None, lambda exc: None)
    engines["wild4"].close()
    frames = [
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5000, b"x"), IF, 0, 0, 1, None, 0),
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5001, b"y"), IF, 0, 0, 1, None, 0),
    ]
    g, buf = ring_of(frames)
    walker = V2Walker(buf, g)
    taken, slow = walker.deliver_batch(64, h.fast)
    assert taken == 0
    assert slow is not None
    h.receive_frame(slow[0], slow[1], 1.0)  # type: ignore[arg-type]
    assert [getattr(e, "data", None) for e in engines["bound4"].events()] == [b"x"]
    taken, slow = walker.deliver_batch(64, h.fast)
    assert taken == 0
    assert slow is not None
    h.receive_frame(slow[0], slow[1], 1.0)  # type: ignore[arg-type]
    assert h.stats()["dropped"] == {"no_socket": 1}
    assert log == []


def test_host_snapshot_changes_reach_the_fast_view() -> None:
    """An address removed from the host: frames to it are no longer the fast path's."""
    from rawtransport.route import LocalAddresses

    h, engines, _log = world(fast=True)
    frame = build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5001, b"z")
    h.set_local_addresses(LocalAddresses())
    g, buf = ring_of([(frame, IF, 0, 0, 1, None, 0)])
    taken, slow = V2Walker(buf, g).deliver_batch(8, h.fast)
    assert taken == 0
    assert slow is not None
    h.receive_frame(slow[0], slow[1], 1.0)  # type: ignore[arg-type]
    assert engines["wild4"].stats()["dropped"] == {"not_local": 1}


def test_no_reference_or_memory_leak_in_the_walk() -> None:
    """A soak of v2_deliver over delivered, reported and handed-back frames: flat memory and the
    protocols', payloads' and host's reference counts unchanged."""
    h, _engines, log = world(fast=True)
    frames = [
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5000, b"a"), IF, 0, 0, 1, None, 0),
        (
            build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 5001, b"raise"),
            IF,
            0,
            0,
            1,
            None,
            0,
        ),
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER6, ME6, 4000, 6000, b"b"), IF, 0, 0, 1, None, 0),
        (build_udp(b"\x02" * 6, b"\x04" * 6, PEER4, ME4, 4000, 8888, b"c"), IF, 0, 0, 1, None, 0),
    ]
    g, template = ring_of(frames)

    def round_() -> None:
        for _ in range(500):
            buf = bytearray(template)
            walker = V2Walker(buf, g)
            while True:
                _taken, slow = walker.deliver_batch(64, h.fast)
                if slow is None:
                    break
            log.clear()

    fast = h.fast
    assert_no_leak(round_, fast, *fast.entries.values())
    assert fast.taken == 6 * 500 * 3


def test_the_types_check_their_arguments() -> None:
    with pytest.raises(ValueError):
        C.FastEntry(5, None, None, 0, 0, print, print)
    with pytest.raises(ValueError):
        C.FastEntry(4, bytes(16), None, 0, 0, print, print)
    with pytest.raises(TypeError):
        C.FastEntry(4, None, None, 0, 0, None, print)
    host = C.FastHost()
    with pytest.raises(ValueError):
        host.set_local([b"abc"], [])
    with pytest.raises(TypeError):
        host.rx_limit = []
    with pytest.raises(TypeError):
        C.v2_deliver(bytearray(4096), 0, 1, 1, 1, 4096, 2048, object())
    with pytest.raises(ValueError, match="geometry"):
        C.v2_deliver(bytearray(4096), 0, 1, 3, 2, 4096, 2048, host)
