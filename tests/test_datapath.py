"""The compiled datapath against its pure-Python reference: one semantics, two implementations.

Every function of ``rawtransport._datapath`` has a twin in ``packet_fast.py`` that is the spec.
Hypothesis feeds both the same frames (valid, mutated, truncated, random) and requires the same
outcome: the same datagram, or the same drop reason, and byte-identical frames built.

The compiled module is imported directly, so these tests run under ``RAWTRANSPORT_PURE=1`` too.
Under ``CI=true`` a missing build fails instead of skipping: CI must test the C code.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rawtransport import datapath, packet_fast
from rawtransport.errors import MalformedPacketError
from rawtransport.packet_fast import _parse_udp_general, _raw, build_udp, parse_udp_py
from rawtransport.packet_types import UdpDatagram

from .conftest import IN_CI


def _load() -> ModuleType:
    try:
        from rawtransport import _datapath
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"the compiled datapath is not built under CI=true: {exc}")
        pytest.skip(f"the compiled datapath is not built: {exc}")
    _datapath.init(UdpDatagram)
    return _datapath


C = _load()

macs = st.binary(min_size=6, max_size=6)
ip4 = st.binary(min_size=4, max_size=4)
ip6 = st.binary(min_size=16, max_size=16)
u16 = st.integers(0, 0xFFFF)
payloads = st.one_of(st.binary(max_size=64), st.binary(min_size=1300, max_size=1500))


def outcome_py(frame: bytes, verify: bool) -> tuple[str, object]:
    try:
        return "ok", parse_udp_py(frame, verify_udp_checksum=verify)
    except MalformedPacketError as exc:
        return "drop", exc.reason


def outcome_c(frame: bytes, verify: bool) -> tuple[str, object]:
    """The accelerated parse_udp(): the C fast path, then the shared Python general path."""
    d = C.parse_udp_fast(frame, verify)
    if d is not None:
        assert type(d) is UdpDatagram
        return "ok", d
    try:
        return "ok", _parse_udp_general(frame, verify)
    except MalformedPacketError as exc:
        return "drop", exc.reason


@st.composite
def udp_frames(draw: st.DrawFn) -> bytes:
    """Frames the send path builds: IPv4 or IPv6, any ports, TTL, payload; sometimes tagged."""
    v6 = draw(st.booleans())
    addr = ip6 if v6 else ip4
    kwargs: dict[str, int | bool | None] = {}
    if draw(st.integers(0, 9)) == 0:
        kwargs["vlan_id"] = draw(st.integers(0, 4094))
    if v6:
        kwargs["hop_limit"] = draw(st.integers(0, 255))
        kwargs["flow_label"] = draw(st.integers(0, 0xFFFFF))
    else:
        kwargs["ttl"] = draw(st.integers(0, 255))
        kwargs["udp_checksum"] = draw(st.booleans())
        kwargs["dont_fragment"] = draw(st.booleans())
    return build_udp(
        draw(macs), draw(macs), draw(addr), draw(addr), draw(u16), draw(u16), draw(payloads),
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid frame with a few bytes changed, then maybe cut short or lengthened."""
    frame = bytearray(draw(udp_frames()))
    for _ in range(draw(st.integers(1, 4))):
        # Bias towards the headers, where every check lives.
        i = draw(st.integers(0, min(len(frame), 70) - 1))
        frame[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, 2))
    if cut == 1:
        del frame[draw(st.integers(0, len(frame))) :]
    elif cut == 2:
        frame += draw(st.binary(max_size=16))
    return bytes(frame)


# The 16-bit length fields every bound check reads (untagged offsets): IPv4 total length and
# UDP length; IPv6 payload length and UDP length.
_LENGTH_FIELDS = {0x0800: (16, 38), 0x86DD: (18, 58)}


@st.composite
def edge_lengths(draw: st.DrawFn) -> bytes:
    """A valid frame with one length field moved a little, where off-by-one bugs live."""
    frame = bytearray(draw(udp_frames()))
    fields = _LENGTH_FIELDS.get(int.from_bytes(frame[12:14], "big"), (16, 18))
    at = draw(st.sampled_from(fields))
    (value,) = struct.unpack_from("!H", frame, at)
    struct.pack_into("!H", frame, at, (value + draw(st.integers(-3, 3))) & 0xFFFF)
    if frame[12:14] == b"\x08\x00" and frame[14] == 0x45 and draw(st.booleans()):
        # Keep the IPv4 header checksum right, so that only the length checks decide.
        frame[24:26] = b"\0\0"
        frame[24:26] = ((-_raw(frame[14:34])) % 0xFFFF).to_bytes(2, "big")
    if draw(st.booleans()):
        del frame[len(frame) - draw(st.integers(0, 3)) :]
    return bytes(frame)


frames = st.one_of(udp_frames(), mutated(), edge_lengths(), st.binary(max_size=128))


@given(frame=frames, verify=st.booleans())
@example(frame=b"", verify=True)
@example(frame=bytes(42), verify=True)
def test_parse_matches_reference(frame: bytes, verify: bool) -> None:
    assert outcome_c(frame, verify) == outcome_py(frame, verify)


@given(frame=edge_lengths(), verify=st.booleans())
def test_parse_matches_reference_at_length_edges(frame: bytes, verify: bool) -> None:
    assert outcome_c(frame, verify) == outcome_py(frame, verify)


@given(frame=udp_frames())
def test_fast_path_takes_what_the_send_path_builds(frame: bytes) -> None:
    """The common case never falls back: untagged frames built by build_udp() parse in C."""
    d = parse_udp_py(frame)
    if d.vlan_id is None:
        assert C.parse_udp_fast(frame, True) == d


@given(frame=frames, verify=st.booleans())
def test_parse_takes_any_buffer(frame: bytes, verify: bool) -> None:
    """A memoryview (ring slot) or bytearray gives the same result as bytes."""
    want = C.parse_udp_fast(frame, verify)
    assert C.parse_udp_fast(memoryview(frame), verify) == want
    assert C.parse_udp_fast(bytearray(frame), verify) == want


def test_parse_rejects_non_buffers() -> None:
    with pytest.raises(TypeError):
        C.parse_udp_fast("not bytes", True)
    with pytest.raises(TypeError):
        C.parse_udp_fast(b"")


@given(data=st.binary(max_size=2000))
@example(data=b"")
@example(data=b"\xff\xff")
@example(data=b"\xff" * 4001)
def test_inet_sum_congruent_to_reference(data: bytes) -> None:
    s = C.inet_sum(data)
    assert 0 <= s <= 0xFFFF
    assert s % 0xFFFF == _raw(data) % 0xFFFF


@given(
    eth_dst=macs,
    eth_src=macs,
    v6=st.booleans(),
    data=st.data(),
    sport=u16,
    dport=u16,
    payload=payloads,
    ttl=st.integers(0, 255),
)
def test_build_matches_reference(
    eth_dst: bytes,
    eth_src: bytes,
    v6: bool,
    data: st.DataObject,
    sport: int,
    dport: int,
    payload: bytes,
    ttl: int,
) -> None:
    addr = ip6 if v6 else ip4
    src, dst = data.draw(addr), data.draw(addr)
    want = packet_fast.build_udp_fast_py(eth_dst, eth_src, src, dst, sport, dport, payload, ttl)
    got = C.build_udp_fast(eth_dst, eth_src, src, dst, sport, dport, payload, ttl)
    assert type(got) is bytes
    assert got == want
    # The receive path takes what the send path builds, checksum verified.
    assert C.parse_udp_fast(got, True) == parse_udp_py(want)
    assert (
        C.build_udp_fast(eth_dst, eth_src, src, dst, sport, dport, memoryview(payload), ttl) == want
    )


@pytest.mark.parametrize(
    "args",
    [
        (b"\x00" * 5, b"\x00" * 6, bytes(4), bytes(4), 1, 2, b"", 64),  # short MAC
        (b"\x00" * 6, b"\x00" * 6, bytes(4), bytes(16), 1, 2, b"", 64),  # mixed families
        (b"\x00" * 6, b"\x00" * 6, bytes(5), bytes(5), 1, 2, b"", 64),  # no family
        (b"\x00" * 6, b"\x00" * 6, bytes(4), bytes(4), 70000, 2, b"", 64),  # port
        (b"\x00" * 6, b"\x00" * 6, bytes(4), bytes(4), -1, 2, b"", 64),  # port
        (b"\x00" * 6, b"\x00" * 6, bytes(4), bytes(4), 1, 2, b"", 256),  # TTL
        (b"\x00" * 6, b"\x00" * 6, bytes(4), bytes(4), 1, 2, bytes(65508), 64),  # too long
        (b"\x00" * 6, b"\x00" * 6, bytes(16), bytes(16), 1, 2, bytes(65528), 64),  # too long
    ],
)
def test_build_rejects_what_the_reference_rejects(args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        packet_fast.build_udp_fast_py(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        C.build_udp_fast(*args)


def test_build_at_the_limits() -> None:
    """The largest datagram each family carries, checked by the reference parser."""
    for src, size in ((bytes(4), 65507), (bytes(16), 65527)):
        frame = C.build_udp_fast(b"\x02" * 6, b"\x04" * 6, src, src, 1, 2, bytes(size), 1)
        assert frame == packet_fast.build_udp_fast_py(
            b"\x02" * 6, b"\x04" * 6, src, src, 1, 2, bytes(size), 1
        )


def test_checksum_zero_goes_out_as_all_ones() -> None:
    """RFC 768: find a payload whose checksum computes to 0; both send 0xFFFF."""
    src, dst = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    base = packet_fast.build_udp_fast_py(b"\x02" * 6, b"\x04" * 6, src, dst, 1, 2, b"\0\0", 64)
    (ck,) = struct.unpack_from("!H", base, 40)
    # Adding the old checksum's value into the payload makes the new sum all ones.
    payload = struct.pack("!H", ck)
    want = packet_fast.build_udp_fast_py(b"\x02" * 6, b"\x04" * 6, src, dst, 1, 2, payload, 64)
    assert want[40:42] == b"\xff\xff"
    assert C.build_udp_fast(b"\x02" * 6, b"\x04" * 6, src, dst, 1, 2, payload, 64) == want


def test_datapath_names_the_path_in_use() -> None:
    pure = os.environ.get(datapath.PURE_ENV, "") not in ("", "0")
    assert datapath.DATAPATH.startswith("pure" if pure else "compiled")
    assert (datapath.ACCEL is None) == pure
    if not pure:
        assert packet_fast.parse_udp_fast is C.parse_udp_fast
        assert packet_fast.build_udp_fast is C.build_udp_fast


def test_pure_env_forces_the_reference() -> None:
    """A fresh interpreter with RAWTRANSPORT_PURE=1 runs the Python functions and says so."""
    import subprocess
    import sys

    code = (
        "from rawtransport import datapath, packet_fast as p;"
        "print(datapath.DATAPATH, p.parse_udp_fast is p.parse_udp_py,"
        " p.build_udp_fast is p.build_udp_fast_py)"
    )
    env = {**os.environ, datapath.PURE_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out == ["pure", f"({datapath.PURE_ENV}", "is", "set)", "True", "True"]


def assert_no_leak(round_: Callable[[], None], *objects: object) -> None:
    """Run ``round_`` (a few thousand calls into C) six times: traced memory stays flat after the
    first and the reference counts of ``objects`` do not move (a lost Py_DECREF shows here)."""
    import sys
    import tracemalloc

    round_()  # warm caches (hypothesis, pytest.raises, small ints)
    counts = [sys.getrefcount(x) for x in objects]
    tracemalloc.start()
    try:
        round_()
        first, _ = tracemalloc.get_traced_memory()
        for _ in range(4):
            round_()
        last, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A leak of one object per call would be megabytes.
    assert last - first < 64 * 1024
    assert [sys.getrefcount(x) for x in objects] == counts


def test_no_reference_or_memory_leak() -> None:
    """A soak of every C entry point, on the success and the error paths: flat traced memory and
    unchanged reference counts (a lost Py_DECREF or PyBuffer_Release shows here)."""

    src, dst = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    payload = bytearray(b"x" * 100)
    frame4 = C.build_udp_fast(b"\x02" * 6, b"\x04" * 6, src, dst, 1, 2, payload, 64)
    frame6 = C.build_udp_fast(b"\x02" * 6, b"\x04" * 6, bytes(16), bytes(16), 1, 2, payload, 64)
    bad = frame4[:30]

    def round_() -> None:
        for _ in range(2000):
            C.parse_udp_fast(frame4, True)
            C.parse_udp_fast(frame6, True)
            C.parse_udp_fast(bad, True)
            C.inet_sum(payload)
            C.build_udp_fast(b"\x02" * 6, b"\x04" * 6, src, dst, 1, 2, payload, 64)
            with pytest.raises(ValueError):
                C.build_udp_fast(b"\x02" * 6, b"\x04" * 6, src, dst, 1, 2, payload, 999)
            with pytest.raises(ValueError):
                C.build_udp_fast(b"\x02" * 5, b"\x04" * 6, src, dst, 1, 2, payload, 64)

    assert_no_leak(round_, frame4, frame6, bad, payload, src, dst, UdpDatagram)
    payload.extend(b"y")  # a buffer export never released would make this raise BufferError


# ------------------------------------------------------------------- the engine on both datapaths


def _engine_outcome(case: Any, frame: bytes, parse: Any) -> tuple[object, object]:
    """Events and counters of a fresh engine that received ``frame`` with ``parse`` as its fast path."""
    from rawtransport import engine
    from tests.test_receive_checks import make_engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "parse_udp_fast", parse)
        e = make_engine(case)
        e.receive_frame(frame, case.meta, 1.0)
        return e.events(), e.stats()


def _receive_cases() -> list[Any]:
    from tests.test_receive_checks import CASES

    return list(CASES)


@pytest.mark.parametrize("case", _receive_cases(), ids=lambda c: c.name)
def test_every_receive_check_gives_the_same_outcome_on_both_paths(case: Any) -> None:
    """Each kernel receive check (tests/test_receive_checks.py): same events and counters."""
    frame = case.frame()
    assert _engine_outcome(case, frame, C.parse_udp_fast) == _engine_outcome(
        case, frame, parse_udp_py
    )


@given(data=st.data())
def test_engine_outcomes_match_on_mutated_check_frames(data: st.DataObject) -> None:
    """The receive-check frames with bytes changed or cut: still the same outcome on both paths."""
    case = data.draw(st.sampled_from(_receive_cases()))
    frame = bytearray(case.frame())
    for _ in range(data.draw(st.integers(0, 3))):
        if frame:
            frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del frame[data.draw(st.integers(0, len(frame))) :]
    got = bytes(frame)
    assert _engine_outcome(case, got, C.parse_udp_fast) == _engine_outcome(case, got, parse_udp_py)


# ----------------------------------------------------------------------- the ring and the peek
@given(frame=frames)
@example(frame=bytes(42))
@example(frame=bytes(12) + b"\x08\x00" + b"\x4f" + bytes(8) + b"\x11" + bytes(18))
def test_peek_matches_reference(frame: bytes) -> None:
    from rawtransport.host import peek_py

    assert C.peek_udp(frame) == peek_py(frame)
    assert C.peek_udp(memoryview(frame)) == peek_py(frame)


_V2_STATUSES = st.sampled_from([0, 1, 1, 1, 1 | 2, 1 | 4, 1 | 0x80, 2, 0xFFFFFFFF])


@st.composite
def v2_rings(draw: st.DrawFn) -> tuple[Any, bytearray, int, int]:
    """A TPACKET_V2 ring of random geometry whose slots the 'kernel' filled at random: ready or
    not, copy-flagged, with sane or impossible tp_mac/tp_snaplen, truncated or whole."""
    from rawtransport.ring import TPACKET2_HDRLEN, RingGeometry

    frame_size = draw(st.sampled_from([128, 256, 2048]))
    per_block = draw(st.integers(1, 4))
    slack = draw(st.sampled_from([0, 16, 4096]))
    block = 4096
    while block < per_block * frame_size + slack:  # a power-of-two multiple of the page
        block *= 2
    g = RingGeometry(version=2, block_size=block, block_count=draw(st.integers(1, 3)),
                     frame_size=frame_size)  # fmt: skip
    buf = bytearray(g.size)
    for i in range(g.frame_count):
        base = g.frame_offset(i)
        mac = draw(st.sampled_from([TPACKET2_HDRLEN, 66, 80, 0, 40, frame_size - 10, 0xFFFF]))
        data = draw(st.binary(max_size=frame_size))
        snap = draw(st.sampled_from([len(data), len(data) // 2, frame_size, 0xFFFFFFFF]))
        tp_len = draw(st.sampled_from([snap, snap + 100, 0]))
        struct.pack_into("=IIIHH", buf, base, 0, tp_len & 0xFFFFFFFF, snap, mac, 0)
        struct.pack_into(
            "=iHB", buf, base + 36, draw(st.integers(-1, 5)), 1, draw(st.integers(0, 7))
        )
        if base + mac + len(data) <= base + frame_size:
            buf[base + mac : base + mac + len(data)] = data
        struct.pack_into("=I", buf, base, draw(_V2_STATUSES))
    return g, buf, draw(st.integers(0, g.frame_count - 1)), draw(st.integers(0, 12))


@given(ring=v2_rings())
def test_ring_walk_matches_the_python_walker(ring: tuple[Any, bytearray, int, int]) -> None:
    """v2_read() takes the frames V2Walker.next_frame() would, in order, with the same metadata,
    counts the same corrupt slots, ends at the same slot, and gives back the same slots."""
    from rawtransport.ring import V2Walker

    g, buf, start, budget = ring
    ref_buf = bytearray(buf)
    walker = V2Walker(ref_buf, g)
    walker._index = start
    laps_before = getattr(walker, "_laps", 0)
    expected = []
    for _ in range(budget):
        got = walker.next_frame()
        if got is None:
            break
        off, n, meta = got
        data = None if meta.status & 2 else bytes(ref_buf[off : off + n])
        expected.append(
            (data, meta.ifindex, meta.pkttype, meta.status, meta.hatype, meta.truncated)
        )
    walker.release()
    frames, index, laps, corrupt = C.v2_read(
        buf, start, budget, g.frame_count, g.frames_per_block, g.block_size, g.frame_size
    )
    assert frames == expected
    assert index == walker.index
    if hasattr(walker, "_laps"):
        assert laps == walker._laps - laps_before
    counted: dict[str, int] = {}
    for reason in corrupt:
        counted[reason] = counted.get(reason, 0) + 1
    assert counted == walker.corrupt
    assert buf == ref_buf, "the same slots given back"


def test_ring_walk_refuses_a_geometry_outside_the_buffer() -> None:
    buf = bytearray(4096)
    with pytest.raises(ValueError, match="geometry"):
        C.v2_read(buf, 0, 1, 3, 2, 4096, 2048)  # the second block is not there
    with pytest.raises(ValueError, match="geometry"):
        C.v2_read(buf, 2, 1, 2, 2, 4096, 2048)  # index past the last slot
    with pytest.raises(ValueError, match="geometry"):
        C.v2_read(buf, 0, 1, 1, 3, 4096, 2048)  # more slots than the block holds
    with pytest.raises(BufferError):
        C.v2_read(bytes(4096), 0, 1, 1, 1, 4096, 2048)  # read-only: slots cannot be given back
