"""The pure ring walker on synthetic ring memory: geometry checks, V2 frames, V3 blocks, corruption.

Headers are written here at the byte offsets of linux/if_packet.h (not with the module's own structs),
so a layout mistake in :mod:`rawtransport.ring` shows up as a failure rather than agreeing with itself.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawtransport import ring
from rawtransport.datapath import DATAPATH
from rawtransport.engine_types import TP_STATUS_VLAN_VALID, FrameMeta
from rawtransport.ring import (
    MAX_RING_BYTES,
    RESYNC_AFTER,
    RESYNC_MAX_PAUSE,
    TP_STATUS_COPY,
    TP_STATUS_KERNEL,
    TP_STATUS_LOSING,
    TP_STATUS_USER,
    TPACKET2_HDRLEN,
    TPACKET3_HDRLEN,
    TPACKET_V2,
    TPACKET_V3,
    RingGeometry,
    V2Walker,
    V3Walker,
)

PAGE = 4096
CSUMNOTREADY = 0x08
ARPHRD_ETHER = 1
PACKET_HOST = 0
PACKET_BROADCAST = 1


def _u32(buf: bytearray, off: int, value: int) -> None:
    struct.pack_into("=I", buf, off, value)


def _u16(buf: bytearray, off: int, value: int) -> None:
    struct.pack_into("=H", buf, off, value)


def _sll(buf: bytearray, off: int, ifindex: int, hatype: int, pkttype: int) -> None:
    # struct sockaddr_ll: family @0, protocol @2, ifindex @4, hatype @8, pkttype @10, halen @11
    _u16(buf, off, 17)
    struct.pack_into("=i", buf, off + 4, ifindex)
    _u16(buf, off + 8, hatype)
    buf[off + 10] = pkttype
    buf[off + 11] = 6


# ------------------------------------------------------------------------------------ geometry
def test_geometry_v2_layout_and_request() -> None:
    g = RingGeometry(version=2, block_size=2 * PAGE, block_count=3, frame_size=1536)
    assert g.frames_per_block == 5  # 8192 // 1536, with 512 bytes of slack per block
    assert g.frame_count == 15
    assert g.size == 3 * 2 * PAGE
    assert g.frame_offset(0) == 0
    assert g.frame_offset(4) == 4 * 1536
    assert g.frame_offset(5) == 2 * PAGE  # frames never straddle a block
    assert g.frame_offset(14) == 2 * 2 * PAGE + 4 * 1536
    assert g.kernel_version == TPACKET_V2
    assert g.request() == struct.pack("=IIII", 2 * PAGE, 3, 1536, 15)


def test_geometry_v3_request_carries_the_block_timer() -> None:
    g = RingGeometry(
        version=3, block_size=PAGE * 4, block_count=2, frame_size=2048, retire_blk_tov=3
    )
    assert g.kernel_version == TPACKET_V3
    assert g.request() == struct.pack("=IIIIIII", PAGE * 4, 2, 2048, 16, 3, 0, 0)


def test_header_lengths_match_if_packet_h() -> None:
    # TPACKET2_HDRLEN = TPACKET_ALIGN(32) + sizeof(sockaddr_ll); TPACKET3_HDRLEN = ALIGN(48) + 20.
    assert TPACKET2_HDRLEN == 52
    assert TPACKET3_HDRLEN == 68


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"block_size": 3 * PAGE}, ValueError, "power-of-two"),
        ({"block_size": PAGE + 16}, ValueError, "power-of-two"),
        ({"block_size": PAGE // 2}, ValueError, "power-of-two"),
        ({"frame_size": 2040}, ValueError, "multiple of 16"),
        ({"frame_size": 48}, ValueError, "smaller than"),
        ({"frame_size": 2 * PAGE}, ValueError, "no frame fits"),
        ({"block_count": 0}, ValueError, "block_count"),
        ({"block_count": -1}, ValueError, "block_count"),
        ({"block_size": -PAGE}, ValueError, "block_size"),
        ({"block_size": 1 << 32}, ValueError, "block_size"),
        ({"frame_size": 1 << 33}, ValueError, "frame_size"),
        ({"block_count": (MAX_RING_BYTES // PAGE) + 1}, ValueError, "cap"),
        ({"block_count": True}, TypeError, "int"),
        ({"block_count": 2.0}, TypeError, "int"),
        ({"version": 1}, ValueError, "version"),
        ({"version": 4}, ValueError, "version"),
        ({"version": True}, ValueError, "version"),
        ({"retire_blk_tov": 1}, ValueError, "TPACKET_V3 only"),
        ({"page_size": 3000}, ValueError, "page_size"),
    ],
)
def test_geometry_refuses(kw: dict[str, object], exc: type[Exception], match: str) -> None:
    args: dict[str, object] = {
        "version": 2,
        "block_size": PAGE,
        "block_count": 4,
        "frame_size": 2048,
        **kw,
    }
    with pytest.raises(exc, match=match):
        RingGeometry(**args)  # type: ignore[arg-type]


def test_geometry_v3_timer_range() -> None:
    base = {"version": 3, "block_size": PAGE, "block_count": 1, "frame_size": 2048}
    RingGeometry(**base, retire_blk_tov=0)
    with pytest.raises(ValueError, match="retire_blk_tov"):
        RingGeometry(**base, retire_blk_tov=-1)
    with pytest.raises(ValueError, match="retire_blk_tov"):
        RingGeometry(**base, retire_blk_tov=60_001)


@given(
    version=st.sampled_from([2, 3]),
    block_size=st.integers(-(1 << 33), 1 << 33),
    block_count=st.integers(-(1 << 33), 1 << 33),
    frame_size=st.integers(-(1 << 33), 1 << 33),
)
def test_geometry_accepted_values_are_sane(
    version: int, block_size: int, block_count: int, frame_size: int
) -> None:
    try:
        g = RingGeometry(version, block_size, block_count, frame_size)
    except ValueError:
        return
    assert 0 < g.size <= MAX_RING_BYTES
    assert g.block_size % PAGE == 0
    assert g.frame_size % 16 == 0
    assert g.frame_size >= g.header_len
    assert 1 <= g.frame_count <= 0xFFFF_FFFF
    last = g.frame_offset(g.frame_count - 1)
    assert last + g.frame_size <= g.size


# ------------------------------------------------------------------------------------------ V2
V2 = RingGeometry(version=2, block_size=PAGE, block_count=2, frame_size=1024)  # 8 frames


def _v2_frame(
    buf: bytearray,
    geometry: RingGeometry,
    index: int,
    payload: bytes,
    *,
    status: int = TP_STATUS_USER,
    mac: int = 66,
    snaplen: int | None = None,
    tp_len: int | None = None,
    ifindex: int = 7,
    pkttype: int = PACKET_HOST,
    tci: int = 0,
) -> int:
    """Write a tpacket2_hdr frame the way tpacket_rcv() does; return the payload's offset."""
    base = geometry.frame_offset(index)
    snap = len(payload) if snaplen is None else snaplen
    _u32(buf, base + 4, len(payload) if tp_len is None else tp_len)  # tp_len
    _u32(buf, base + 8, snap)  # tp_snaplen
    _u16(buf, base + 12, mac)  # tp_mac
    _u16(buf, base + 14, (mac + 14) & 0xFFFF)  # tp_net
    _u16(buf, base + 24, tci)  # tp_vlan_tci
    _sll(buf, base + 32, ifindex, ARPHRD_ETHER, pkttype)
    if mac >= 0 and base + mac + len(payload) <= len(buf):
        buf[base + mac : base + mac + len(payload)] = payload
    _u32(buf, base, status)  # tp_status last, as the kernel publishes it
    return base + mac


def _status2(buf: bytearray, geometry: RingGeometry, index: int) -> int:
    return int(struct.unpack_from("=I", buf, geometry.frame_offset(index))[0])


def _read(buf: bytearray, got: tuple[int, int, object] | None) -> bytes:
    assert got is not None
    off, n, _ = got
    return bytes(buf[off : off + n])


def test_v2_empty_ring_has_nothing() -> None:
    buf = bytearray(V2.size)
    walker = V2Walker(memoryview(buf), V2)
    assert walker.next_frame() is None
    assert walker.next_frame() is None
    assert walker.index == 0


def test_v2_returns_frame_with_metadata_and_releases_it_at_the_next_call() -> None:
    buf = bytearray(V2.size)
    walker = V2Walker(buf, V2)
    at = _v2_frame(buf, V2, 0, b"hello", status=TP_STATUS_USER | CSUMNOTREADY, ifindex=42)
    got = walker.next_frame()
    assert got is not None
    off, n, meta = got
    assert (off, n) == (at, 5)
    assert buf[off : off + n] == b"hello"
    assert meta.ifindex == 42
    assert meta.pkttype == PACKET_HOST
    assert meta.hatype == ARPHRD_ETHER
    assert meta.status == TP_STATUS_USER | CSUMNOTREADY
    assert not meta.truncated
    # Still the caller's until it asks again.
    assert _status2(buf, V2, 0) & TP_STATUS_USER
    assert walker.next_frame() is None
    assert _status2(buf, V2, 0) == TP_STATUS_KERNEL


def test_v2_explicit_release_is_idempotent() -> None:
    buf = bytearray(V2.size)
    walker = V2Walker(buf, V2)
    _v2_frame(buf, V2, 0, b"a")
    assert walker.next_frame() is not None
    walker.release()
    assert _status2(buf, V2, 0) == TP_STATUS_KERNEL
    _v2_frame(
        buf, V2, 0, b"b"
    )  # the kernel may reuse it at once: a second release must not touch it
    walker.release()
    assert _status2(buf, V2, 0) == TP_STATUS_USER


def test_v2_stops_at_the_first_kernel_owned_slot_and_resumes_there() -> None:
    buf = bytearray(V2.size)
    walker = V2Walker(buf, V2)
    _v2_frame(buf, V2, 0, b"zero")
    _v2_frame(buf, V2, 1, b"one")
    _v2_frame(buf, V2, 3, b"three")  # slot 2 not yet written: 3 must wait behind it
    assert _read(buf, walker.next_frame()) == b"zero"
    assert _read(buf, walker.next_frame()) == b"one"
    assert walker.next_frame() is None
    _v2_frame(buf, V2, 2, b"two")
    assert _read(buf, walker.next_frame()) == b"two"
    assert _read(buf, walker.next_frame()) == b"three"
    assert walker.next_frame() is None
    assert [_status2(buf, V2, i) for i in range(4)] == [TP_STATUS_KERNEL] * 4


def test_v2_wraps_around_across_blocks_with_slack() -> None:
    g = RingGeometry(version=2, block_size=PAGE, block_count=3, frame_size=1536)  # 2 per block
    buf = bytearray(g.size)
    walker = V2Walker(buf, g)
    seen = []
    for lap in range(3):
        for i in range(g.frame_count):
            _v2_frame(buf, g, i, b"%d:%d" % (lap, i))
        for _ in range(g.frame_count):
            seen.append(_read(buf, walker.next_frame()))
        assert walker.next_frame() is None
        assert walker.index == 0
    assert seen == [b"%d:%d" % (lap, i) for lap in range(3) for i in range(g.frame_count)]
    # The slack at the end of each block is never treated as a frame.
    assert g.frame_offset(2) == PAGE


def test_v2_truncation_flags() -> None:
    buf = bytearray(V2.size)
    walker = V2Walker(buf, V2)
    _v2_frame(buf, V2, 0, b"x" * 100, tp_len=1500)  # clipped to the slot
    _v2_frame(buf, V2, 1, b"y" * 10, status=TP_STATUS_USER | TP_STATUS_COPY)
    _v2_frame(buf, V2, 2, b"z" * 10, status=TP_STATUS_USER | TP_STATUS_LOSING)
    metas = []
    for _ in range(3):
        got = walker.next_frame()
        assert got is not None
        metas.append(got[2])
    assert [m.truncated for m in metas] == [True, True, False]
    assert metas[2].status & TP_STATUS_LOSING


@pytest.mark.parametrize(
    ("mac", "snaplen", "reason"),
    [
        (0, 10, "ring_mac_offset"),
        (TPACKET2_HDRLEN - 1, 10, "ring_mac_offset"),
        (66, 1024 - 66 + 1, "ring_frame_bounds"),
        (1000, 100, "ring_frame_bounds"),
        (66, 0xFFFF_FFFF, "ring_frame_bounds"),
        (0xFFFF, 1, "ring_frame_bounds"),
    ],
)
def test_v2_corrupt_frame_is_counted_released_and_skipped(
    mac: int, snaplen: int, reason: str
) -> None:
    buf = bytearray(V2.size)
    walker = V2Walker(buf, V2)
    _v2_frame(buf, V2, 0, b"", mac=mac, snaplen=snaplen)
    _v2_frame(buf, V2, 1, b"good")
    assert _read(buf, walker.next_frame()) == b"good"
    assert walker.corrupt == {reason: 1}
    assert reason in walker.last_corrupt
    assert _status2(buf, V2, 0) == TP_STATUS_KERNEL


def test_v2_frame_filling_its_slot_exactly_is_fine() -> None:
    buf = bytearray(V2.size)
    walker = V2Walker(buf, V2)
    _v2_frame(buf, V2, 7, b"q" * (1024 - 66))
    walker._index = 7  # the last slot of the ring: its end is the end of the buffer
    got = walker.next_frame()
    assert got is not None
    assert got[0] + got[1] == V2.size
    assert walker.corrupt == {}


def test_v2_all_corrupt_ends_after_one_lap() -> None:
    buf = bytearray(V2.size)
    walker = V2Walker(buf, V2)
    for i in range(V2.frame_count):
        _v2_frame(buf, V2, i, b"", mac=1, snaplen=1)
    assert walker.next_frame() is None
    assert walker.corrupt == {"ring_mac_offset": V2.frame_count}
    assert all(_status2(buf, V2, i) == TP_STATUS_KERNEL for i in range(V2.frame_count))


def test_walkers_refuse_wrong_geometry_or_short_buffers() -> None:
    v3 = RingGeometry(version=3, block_size=PAGE, block_count=2, frame_size=2048)
    with pytest.raises(ValueError, match="TPACKET_V2"):
        V2Walker(bytearray(v3.size), v3)
    with pytest.raises(ValueError, match="TPACKET_V3"):
        V3Walker(bytearray(V2.size), V2)
    with pytest.raises(ValueError, match="smaller"):
        V2Walker(bytearray(V2.size - 1), V2)
    with pytest.raises(ValueError, match="smaller"):
        V3Walker(bytearray(v3.size - 1), v3)


_U32S = st.integers(0, 0xFFFF_FFFF) | st.integers(0, 2048)
_STATUS = st.sampled_from([TP_STATUS_KERNEL, TP_STATUS_USER]) | st.integers(0, 0xFFFF_FFFF)


@given(
    st.lists(
        st.tuples(_STATUS, _U32S, _U32S, st.integers(0, 0xFFFF)),
        min_size=V2.frame_count,
        max_size=V2.frame_count,
    ),
    st.integers(1, 2 * V2.frame_count),
)
def test_v2_never_reads_outside_a_frame_on_garbage(
    headers: list[tuple[int, int, int, int]], calls: int
) -> None:
    buf = bytearray(V2.size)
    for i, (status, tp_len, snaplen, mac) in enumerate(headers):
        base = V2.frame_offset(i)
        struct.pack_into("=IIIH", buf, base, status, tp_len, snaplen, mac)
    walker = V2Walker(buf, V2)
    for _ in range(calls):
        got = walker.next_frame()
        if got is None:
            continue
        off, n, _ = got
        # The frame just returned is the one before the walker's next index.
        frame = V2.frame_offset((walker.index - 1) % V2.frame_count)
        assert frame + TPACKET2_HDRLEN <= off
        assert off + n <= frame + V2.frame_size


# ------------------------------------------------------------------------------------------ V3
V3 = RingGeometry(version=3, block_size=PAGE, block_count=3, frame_size=2048, retire_blk_tov=1)
_BLOCK_HDR = 48  # sizeof(struct tpacket_block_desc): the first packet follows it


def _v3_block(
    buf: bytearray,
    geometry: RingGeometry,
    block: int,
    payloads: list[bytes],
    *,
    status: int = TP_STATUS_USER,
    pkt_status: int = TP_STATUS_USER,
    mac: int = 82,
    tci: int = 0,
) -> list[int]:
    """Fill a block as prb_fill_curr_block()/prb_close_block() do; return the payload offsets."""
    base = block * geometry.block_size
    pos = _BLOCK_HDR
    offsets = []
    for i, payload in enumerate(payloads):
        p = base + pos
        total = (mac + len(payload) + 7) & ~7  # TOTAL_PKT_LEN_INCL_ALIGN: 8-byte aligned
        last = i == len(payloads) - 1
        _u32(buf, p, 0 if last else total)  # tp_next_offset, 0 on the last packet
        _u32(buf, p + 12, len(payload))  # tp_snaplen
        _u32(buf, p + 16, len(payload))  # tp_len
        _u32(buf, p + 20, pkt_status)  # tp_status
        _u16(buf, p + 24, mac)  # tp_mac
        _u16(buf, p + 26, (mac + 14) & 0xFFFF)  # tp_net
        _u32(buf, p + 32, tci)  # hv1.tp_vlan_tci
        _sll(buf, p + 48, 3 + i, ARPHRD_ETHER, PACKET_BROADCAST)
        buf[p + mac : p + mac + len(payload)] = payload
        offsets.append(p + mac)
        pos += total
    _u32(buf, base + 4, 0)  # offset_to_priv
    _u32(buf, base + 12, len(payloads))  # num_pkts
    _u32(buf, base + 16, _BLOCK_HDR)  # offset_to_first_pkt
    _u32(buf, base + 20, pos)  # blk_len
    _u32(buf, base + 8, status)  # block_status last
    return offsets


def _block_status(buf: bytearray, geometry: RingGeometry, block: int) -> int:
    return int(struct.unpack_from("=I", buf, block * geometry.block_size + 8)[0])


def _packet_at(buf: bytearray, offset: int) -> int:
    """Offset of the tpacket3_hdr of the first packet of the block containing ``offset``."""
    return offset // V3.block_size * V3.block_size + _BLOCK_HDR


@pytest.mark.parametrize(
    ("tci", "tagged"), [(0, False), (0xA000, False), (5, True), (0xE005, True)]
)
def test_walkers_read_a_priority_tag_as_none(tci: int, tagged: bool) -> None:
    """A tag with VLAN id 0 (priority only) is cleared by __netif_receive_skb_core() and the
    frame delivered untagged: the walkers' status says TP_STATUS_VLAN_VALID only for a VLAN id."""
    vlan = TP_STATUS_USER | TP_STATUS_VLAN_VALID
    buf = bytearray(V2.size)
    _v2_frame(buf, V2, 0, b"x", status=vlan, tci=tci)
    got = V2Walker(buf, V2).next_frame()
    assert got is not None
    assert bool(got[2].status & TP_STATUS_VLAN_VALID) is tagged
    if DATAPATH == "compiled":
        buf = bytearray(V2.size)
        _v2_frame(buf, V2, 0, b"x", status=vlan, tci=tci)
        ((_data, meta),) = V2Walker(buf, V2).next_batch(8)
        assert bool(meta.status & TP_STATUS_VLAN_VALID) is tagged
    buf = bytearray(V3.size)
    _v3_block(buf, V3, 0, [b"x"], pkt_status=vlan, tci=tci)
    got = V3Walker(buf, V3).next_frame()
    assert got is not None
    assert bool(got[2].status & TP_STATUS_VLAN_VALID) is tagged


def test_v3_block_not_ready() -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(memoryview(buf), V3)
    _v3_block(buf, V3, 0, [b"a"], status=TP_STATUS_KERNEL)
    assert walker.next_frame() is None
    assert walker.block == 0


def test_v3_walks_a_block_then_releases_it_after_its_last_packet() -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    payloads = [b"first", b"second packet", b"3"]
    offsets = _v3_block(buf, V3, 0, payloads, pkt_status=TP_STATUS_USER | CSUMNOTREADY)
    for i, (payload, at) in enumerate(zip(payloads, offsets, strict=True)):
        got = walker.next_frame()
        assert got is not None
        off, n, meta = got
        assert (off, n) == (at, len(payload))
        assert buf[off : off + n] == payload
        assert meta.ifindex == 3 + i
        assert meta.pkttype == PACKET_BROADCAST
        assert meta.hatype == ARPHRD_ETHER
        assert meta.status == TP_STATUS_USER | CSUMNOTREADY
        assert not meta.truncated
        # The block is held while any of its packets may still be in use.
        assert _block_status(buf, V3, 0) == TP_STATUS_USER
    assert walker.next_frame() is None
    assert _block_status(buf, V3, 0) == TP_STATUS_KERNEL
    assert walker.block == 1


def test_v3_explicit_release_only_when_the_block_is_done() -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    _v3_block(buf, V3, 0, [b"a", b"b"])
    assert walker.next_frame() is not None
    walker.release()  # one packet still to come: the block stays ours
    assert _block_status(buf, V3, 0) == TP_STATUS_USER
    assert walker.next_frame() is not None
    walker.release()
    assert _block_status(buf, V3, 0) == TP_STATUS_KERNEL
    walker.release()  # idempotent
    assert walker.block == 1


def test_v3_wraps_around_blocks() -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    seen = []
    expected = []
    for lap in range(3):
        for block in range(V3.block_count):
            batch = [b"%d/%d/%d" % (lap, block, k) for k in range(block + 1)]
            _v3_block(buf, V3, block, batch)
            expected += batch
        while (got := walker.next_frame()) is not None:
            seen.append(_read(buf, got))
        assert walker.block == 0
    assert seen == expected


def test_v3_empty_block_is_released_and_skipped() -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    _v3_block(buf, V3, 0, [])
    _v3_block(buf, V3, 1, [b"after"])
    assert _read(buf, walker.next_frame()) == b"after"
    assert _block_status(buf, V3, 0) == TP_STATUS_KERNEL
    assert walker.corrupt == {}


def test_v3_truncated_packet() -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    (at,) = _v3_block(buf, V3, 0, [b"x" * 64])
    _u32(buf, _packet_at(buf, at) + 16, 9000)  # tp_len above tp_snaplen
    got = walker.next_frame()
    assert got is not None
    assert got[2].truncated


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (16, 8, "ring_block_bounds"),  # offset_to_first_pkt inside the block header
        (16, PAGE, "ring_block_bounds"),  # first packet at the very end
        (20, PAGE + 1, "ring_block_bounds"),  # blk_len past the block
        (20, 40, "ring_block_bounds"),  # blk_len shorter than the header
        (12, 0xFFFF_FFFF, "ring_block_num_pkts"),
        (12, 1000, "ring_block_num_pkts"),
    ],
)
def test_v3_corrupt_block_header_skips_the_block(field: int, value: int, reason: str) -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    _v3_block(buf, V3, 0, [b"a", b"b"])
    _u32(buf, field, value)
    _v3_block(buf, V3, 1, [b"next block"])
    assert _read(buf, walker.next_frame()) == b"next block"
    assert walker.corrupt == {reason: 1}
    assert _block_status(buf, V3, 0) == TP_STATUS_KERNEL


@pytest.mark.parametrize(
    ("packet", "field", "value", "reason", "good"),
    [
        # tp_next_offset 0 before the last packet: following it would loop on the same packet.
        (0, 0, 0, "ring_next_offset", 1),
        # Pointing back into the packet itself.
        (0, 0, 16, "ring_next_offset", 1),
        # Far past the block: the next header cannot be read.
        (0, 0, 0x7FFF_FFFF, "ring_packet_bounds", 1),
        # Data past the block's used length.
        (1, 12, PAGE, "ring_frame_bounds", 1),
        (0, 24, 10, "ring_mac_offset", 0),
        (0, 24, 0xFFFF, "ring_frame_bounds", 0),
    ],
)
def test_v3_corrupt_packet_ends_its_block(
    packet: int, field: int, value: int, reason: str, good: int
) -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    offsets = _v3_block(buf, V3, 0, [b"p0", b"p1", b"p2"])
    hdr = offsets[packet] - 82
    _u32(buf, hdr + field, value) if field != 24 else _u16(buf, hdr + field, value)
    _v3_block(buf, V3, 1, [b"next block"])
    seen = []
    while (got := walker.next_frame()) is not None:
        seen.append(_read(buf, got))
    assert seen == [*[b"p0", b"p1", b"p2"][:good], b"next block"]
    assert walker.corrupt == {reason: 1}
    assert _block_status(buf, V3, 0) == TP_STATUS_KERNEL


def test_v3_all_blocks_corrupt_ends_after_one_lap() -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    for block in range(V3.block_count):
        _v3_block(buf, V3, block, [b"a"])
        _u32(buf, block * PAGE + 12, 0xFFFF_FFFF)
    assert walker.next_frame() is None
    assert walker.corrupt == {"ring_block_num_pkts": V3.block_count}
    assert all(_block_status(buf, V3, b) == TP_STATUS_KERNEL for b in range(V3.block_count))


@given(
    st.lists(
        st.tuples(
            _STATUS,
            _U32S,  # num_pkts
            _U32S,  # offset_to_first_pkt
            _U32S,  # blk_len
            st.lists(st.tuples(st.integers(0, PAGE - 68), st.binary(min_size=68, max_size=68))),
        ),
        min_size=V3.block_count,
        max_size=V3.block_count,
    ),
    st.integers(1, 60),
)
def test_v3_never_reads_outside_a_block_on_garbage(
    blocks: list[tuple[int, int, int, int, list[tuple[int, bytes]]]], calls: int
) -> None:
    buf = bytearray(V3.size)
    for b, (status, num_pkts, first, blk_len, packets) in enumerate(blocks):
        base = b * V3.block_size
        for pos, raw in packets:
            buf[base + pos : base + pos + 68] = raw
        struct.pack_into("=IIII", buf, base + 8, status, num_pkts, first, blk_len)
    walker = V3Walker(buf, V3)
    for _ in range(calls):
        got = walker.next_frame()
        if got is None:
            continue
        off, n, _ = got
        # The block stays current until the call after its last packet.
        block = walker.block * V3.block_size
        assert block + _BLOCK_HDR + TPACKET3_HDRLEN <= off
        assert off + n <= block + V3.block_size


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 12, 16, 20]),  # next_offset, snaplen, tp_len, block fields
            st.integers(0, 0xFFFF_FFFF),
        ),
        max_size=4,
    )
)
def test_v3_mutated_real_blocks_stay_in_bounds(mutations: list[tuple[int, int]]) -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    offsets = _v3_block(buf, V3, 0, [b"a" * 40, b"b" * 300, b"c" * 7, b"d" * 1000])
    for i, (field, value) in enumerate(mutations):
        # Alternate between packet headers and the block header.
        target = offsets[i % len(offsets)] - 82 if i % 2 else 0
        _u32(buf, target + field, value)
    for _ in range(10):
        got = walker.next_frame()
        if got is None:
            break
        off, n, _ = got
        assert off >= _BLOCK_HDR + TPACKET3_HDRLEN
        assert off + n <= V3.block_size


# ------------------------------------------------------------------------ gap recovery (resync)
# Under overload the kernel can leave a V2 slot kernel-owned while it fills the slots after it; the
# walker waits there and resync() takes it past once the wait has lasted (see ring._Resync).

#: A step a hair longer than RESYNC_AFTER: calls k steps apart are past each due time despite rounding.
_TICK = RESYNC_AFTER * 1.001


def _v2_walker_at(buf: bytearray, geometry: RingGeometry, index: int) -> V2Walker:
    """A walker that has read ``index`` frames, given them back, and now waits at slot ``index``."""
    walker = V2Walker(buf, geometry)
    for i in range(index):
        _v2_frame(buf, geometry, i, b"old %d" % i)
        assert walker.next_frame() is not None
    assert walker.next_frame() is None
    assert walker.index == index
    return walker


def _drain(buf: bytearray, walker: V2Walker | V3Walker) -> list[bytes]:
    out = []
    while (got := walker.next_frame()) is not None:
        out.append(_read(buf, got))
    return out


class _CountingStruct:
    """Stands in for one of ring.py's struct objects and counts the reads made through it."""

    def __init__(self, inner: struct.Struct) -> None:
        self.inner = inner
        self.size = inner.size
        self.reads = 0

    def unpack_from(self, buf: memoryview | bytearray, offset: int = 0) -> tuple[int, ...]:
        self.reads += 1
        return tuple(self.inner.unpack_from(buf, offset))

    def pack_into(self, buf: memoryview | bytearray, offset: int, *values: int) -> None:
        self.inner.pack_into(buf, offset, *values)


class _StatusReads:
    """Every status word a V2 walker reads: with its frame header, or alone (``_U32``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frame = _CountingStruct(ring._V2_FRAME)
        self.word = _CountingStruct(ring._U32)
        monkeypatch.setattr(ring, "_V2_FRAME", self.frame)
        monkeypatch.setattr(ring, "_U32", self.word)

    @property
    def count(self) -> int:
        return self.frame.reads + self.word.reads


@pytest.fixture
def status_reads(monkeypatch: pytest.MonkeyPatch) -> _StatusReads:
    return _StatusReads(monkeypatch)


def test_v2_resync_jumps_a_slot_the_kernel_left_behind_in_kernel_order() -> None:
    buf = bytearray(V2.size)
    walker = _v2_walker_at(buf, V2, 2)
    for i in (3, 4, 5):  # slot 2 left kernel-owned, the kernel went on after it
        _v2_frame(buf, V2, i, b"after %d" % i)
    t = 1000.0
    assert walker.next_frame() is None
    assert not walker.resync(t)  # the wait starts here
    assert not walker.resync(t + RESYNC_AFTER / 2)
    assert not walker.resync(t + _TICK)  # a ready slot ahead, seen once: not yet
    assert walker.next_frame() is None
    assert walker.resyncs == 0
    assert walker.resync(t + 2 * _TICK)  # seen again, slot 2 still the kernel's: a gap
    assert (walker.resyncs, walker.resync_skipped) == (1, 1)
    assert walker.index == 3
    assert _drain(buf, walker) == [b"after 3", b"after 4", b"after 5"]
    # The slot passed over is met again a lap later, in its place, once the kernel fills it.
    for i in (6, 7, 0, 1, 2, 3):
        _v2_frame(buf, V2, i, b"lap %d" % i)
    assert _drain(buf, walker) == [b"lap %d" % i for i in (6, 7, 0, 1, 2, 3)]
    assert walker.resyncs == 1
    assert [_status2(buf, V2, i) for i in range(V2.frame_count)] == [TP_STATUS_KERNEL] * 8


def test_v2_a_slot_still_being_filled_is_not_passed_over() -> None:
    buf = bytearray(V2.size)
    walker = _v2_walker_at(buf, V2, 2)
    _v2_frame(buf, V2, 3, b"three")  # a second CPU finished slot 3 while slot 2 is being filled
    t = 5.0
    assert walker.next_frame() is None
    assert not walker.resync(t)
    assert not walker.resync(t + _TICK)  # seen once
    _v2_frame(buf, V2, 2, b"two")  # tpacket_rcv() publishes slot 2
    assert _drain(buf, walker) == [b"two", b"three"]
    assert walker.resyncs == 0
    # The walker moved: the next wait starts over and must see its own gap twice.
    _v2_frame(buf, V2, 5, b"five")
    assert walker.next_frame() is None
    assert not walker.resync(t + 2 * _TICK)
    assert not walker.resync(t + 3 * _TICK)
    assert walker.resync(t + 4 * _TICK)
    assert (walker.resyncs, walker.resync_skipped) == (1, 1)
    assert _drain(buf, walker) == [b"five"]


def test_v2_resync_wraps_around_the_ring() -> None:
    buf = bytearray(V2.size)
    last = V2.frame_count - 1
    walker = _v2_walker_at(buf, V2, last - 1)  # waits at slot 6; 6 and 7 left behind
    _v2_frame(buf, V2, 0, b"zero")
    _v2_frame(buf, V2, 1, b"one")
    t = 0.0
    for k in range(3):
        assert walker.next_frame() is None
        jumped = walker.resync(t + k * _TICK)
    assert jumped
    assert (walker.index, walker.resyncs, walker.resync_skipped) == (0, 1, 2)
    assert _drain(buf, walker) == [b"zero", b"one"]
    # And back in step with the kernel's order afterwards: 2.. then the skipped 6 and 7.
    for i in (2, 3, 4, 5, 6, 7):
        _v2_frame(buf, V2, i, b"%d" % i)
    assert _drain(buf, walker) == [b"%d" % i for i in (2, 3, 4, 5, 6, 7)]


def test_v2_a_wait_a_lap_later_at_the_same_slot_starts_afresh() -> None:
    buf = bytearray(V2.size)
    walker = _v2_walker_at(buf, V2, 2)
    _v2_frame(buf, V2, 3, b"3")
    t = 0.0
    assert not walker.resync(t)
    assert not walker.resync(t + _TICK)  # seen once
    _v2_frame(buf, V2, 2, b"2")
    for i in (4, 5, 6, 7, 0, 1):
        _v2_frame(buf, V2, i, b"%d" % i)
    assert len(_drain(buf, walker)) == V2.frame_count  # a whole lap, back at slot 2
    assert walker.index == 2
    _v2_frame(buf, V2, 3, b"3 again")
    # Same slot, a lap later: the old sighting must not count.
    assert not walker.resync(t + 2 * _TICK)
    assert not walker.resync(t + 3 * _TICK)
    assert walker.resync(t + 4 * _TICK)


def test_v2_idle_ring_costs_one_status_read_and_never_resyncs(
    status_reads: _StatusReads,
) -> None:
    buf = bytearray(V2.size)
    walker = V2Walker(buf, V2)
    t = 0.0
    assert walker.next_frame() is None
    assert status_reads.count == 1  # next_frame(): the status word of its own slot
    assert not walker.resync(t)
    assert not walker.resync(t + RESYNC_AFTER / 2)
    assert status_reads.count == 1  # resync() before a look is due: nothing
    # Polled for 10 s as a spinning caller would, every 100 µs: looks back off to one per
    # RESYNC_MAX_PAUSE, each one status word per slot.
    polls = 100_000
    before = status_reads.count
    for k in range(polls):
        now = t + k * 1e-4
        assert walker.next_frame() is None
        assert not walker.resync(now)
    looks = (status_reads.count - before - polls) / V2.frame_count
    assert walker.resyncs == 0
    assert walker.resync_skipped == 0
    doublings = int(RESYNC_MAX_PAUSE / RESYNC_AFTER).bit_length()
    assert 1 <= looks <= doublings + 1 + 10 / RESYNC_MAX_PAUSE


def test_v2_gap_after_a_long_idle_is_found_within_the_longest_pause() -> None:
    buf = bytearray(V2.size)
    walker = V2Walker(buf, V2)
    now = 0.0
    while now < 60:  # a minute of idle polling: the pause is at its longest
        assert walker.next_frame() is None
        assert not walker.resync(now)
        now += 1e-3
    _v2_frame(buf, V2, 1, b"behind a gap")
    start = now
    while walker.next_frame() is None:
        walker.resync(now)
        now += 1e-3
        assert now - start <= RESYNC_MAX_PAUSE + 2 * RESYNC_AFTER + 0.01
    assert walker.resyncs == 1


def test_v2_resync_with_nothing_ahead_does_not_move() -> None:
    buf = bytearray(V2.size)
    walker = _v2_walker_at(buf, V2, 5)
    for k in range(50):
        assert not walker.resync(k * RESYNC_MAX_PAUSE)
    assert walker.index == 5
    assert walker.resyncs == 0


def test_v3_resync_jumps_a_block_left_behind() -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    _v3_block(buf, V3, 0, [b"first"])
    assert _drain(buf, walker) == [b"first"]
    assert walker.block == 1
    _v3_block(buf, V3, 2, [b"x", b"y"])  # block 1 still the kernel's, block 2 handed over
    t = 7.0
    assert not walker.resync(t)
    assert not walker.resync(t + _TICK)
    assert walker.next_frame() is None
    assert walker.resync(t + 2 * _TICK)
    assert (walker.block, walker.resyncs, walker.resync_skipped) == (2, 1, 1)
    assert _drain(buf, walker) == [b"x", b"y"]
    assert walker.block == 0  # wrapped past the last block
    # Block 1, once handed over, is read a lap later in its place.
    _v3_block(buf, V3, 0, [b"0"])
    _v3_block(buf, V3, 1, [b"1"])
    assert _drain(buf, walker) == [b"0", b"1"]


def test_v3_idle_ring_never_resyncs() -> None:
    buf = bytearray(V3.size)
    walker = V3Walker(buf, V3)
    for k in range(1000):
        assert walker.next_frame() is None
        assert not walker.resync(k * 1e-3)
    assert (walker.block, walker.resyncs) == (0, 0)


def _v2_slot_of(geometry: RingGeometry, offset: int) -> int:
    block, rest = divmod(offset, geometry.block_size)
    return block * geometry.frames_per_block + rest // geometry.frame_size


def _drain_with_resync(
    buf: bytearray,
    geometry: RingGeometry,
    walker: V2Walker,
    now: float,
    take: Callable[[tuple[int, int, FrameMeta]], None],
) -> float:
    """Read until no slot is ready, calling resync() whenever nothing is, as RingReceiver.recv does.

    Fails if the walker stops making progress while a slot is ready. Returns the time reached."""
    # A ready slot is reached within three resync() calls RESYNC_AFTER apart (wait, see, jump).
    for _ in range(4 * geometry.frame_count + 4):
        got = walker.next_frame()
        if got is not None:
            take(got)
            continue
        if not any(
            _status2(buf, geometry, i) & TP_STATUS_USER for i in range(geometry.frame_count)
        ):
            return now
        walker.resync(now)
        now += RESYNC_AFTER
    raise AssertionError("the walker made no progress with ready slots in the ring")


@given(
    block_count=st.integers(1, 4),
    start=st.integers(0, 15),
    ready=st.lists(st.booleans(), min_size=16, max_size=16),
)
def test_v2_random_status_patterns_drain_in_ring_order(
    block_count: int, start: int, ready: list[bool]
) -> None:
    g = RingGeometry(version=2, block_size=PAGE, block_count=block_count, frame_size=1024)
    n = g.frame_count
    start %= n
    buf = bytearray(g.size)
    walker = _v2_walker_at(buf, g, start)
    user = [i for i in range(n) if ready[i]]
    for i in user:
        _v2_frame(buf, g, i, b"slot %d" % i)
    order: list[int] = []
    _drain_with_resync(buf, g, walker, 0.0, lambda got: order.append(_v2_slot_of(g, got[0])))
    # Every ready slot once, none of the kernel's, in ring order from where the walker stood.
    assert order == sorted(user, key=lambda i: (i - start) % n)
    # One jump per run of kernel-owned slots in front of a ready one, passing exactly those.
    assert walker.resyncs == sum(1 for i in user if i != start and not ready[(i - 1) % n])
    assert walker.resync_skipped == len(_passed(ready[:n], start))


def _passed(ready: list[bool], start: int) -> set[int]:
    """Kernel-owned slots a walker starting at ``start`` passes on its way to the last ready slot."""
    n = len(ready)
    last = max((k for k in range(n) if ready[(start + k) % n]), default=-1)
    return {(start + k) % n for k in range(last) if not ready[(start + k) % n]}


_OPS = st.sampled_from(["fill", "fill", "fill", "lose", "read", "read", "resync", "wait"])


@given(block_count=st.integers(1, 3), ops=st.lists(_OPS, max_size=300))
def test_v2_walker_against_a_kernel_that_leaves_slots_behind(
    block_count: int, ops: list[str]
) -> None:
    """A model kernel fills slots in order and sometimes moves its head past a slot it never
    publishes ("lose"). Driven as RingReceiver drives it, the walker never returns a frame twice
    nor one from a kernel-owned slot, and once the kernel stops it delivers every frame published."""
    g = RingGeometry(version=2, block_size=PAGE, block_count=block_count, frame_size=1024)
    n = g.frame_count
    buf = bytearray(g.size)
    walker = V2Walker(buf, g)
    head = 0
    published: dict[int, int] = {}  # frame number -> slot it was written to
    delivered: list[int] = []
    now = 0.0

    def take(got: tuple[int, int, FrameMeta]) -> None:
        slot = _v2_slot_of(g, got[0])
        assert _status2(buf, g, slot) & TP_STATUS_USER  # never a kernel-owned slot
        number = int(_read(buf, got).split()[1])
        assert published[number] == slot  # the frame the kernel left there, nothing stale
        assert number not in delivered  # never the same frame twice
        delivered.append(number)

    for op in ops:
        if op in ("fill", "lose"):
            if _status2(buf, g, head) != TP_STATUS_KERNEL:
                continue  # the ring is full at the head: tpacket_rcv() drops
            if op == "fill":
                number = len(published)
                _v2_frame(buf, g, head, b"frame %d" % number)
                published[number] = head
            head = (head + 1) % n  # "lose": claimed, the head moved on, never published
        elif op == "read":
            if (got := walker.next_frame()) is not None:
                take(got)
        elif op == "resync":
            if walker.resync(now) and (got := walker.next_frame()) is not None:
                take(got)
        else:
            now += RESYNC_AFTER
    _drain_with_resync(buf, g, walker, now, take)
    assert sorted(delivered) == sorted(published)


def test_v2_batch_is_next_frame_in_a_loop_copied_out() -> None:
    """next_batch() (one C call when the datapath is built) returns what next_frame() would, in
    order, as bytes, gives every slot back, and leaves a copy-flagged frame to the socket."""
    buf = bytearray(V2.size)
    for i, payload in enumerate([b"one", b"two", b"three"]):
        _v2_frame(buf, V2, i, payload, status=TP_STATUS_USER | (TP_STATUS_COPY if i == 1 else 0))
    ref = bytearray(buf)
    walker, twin = V2Walker(buf, V2), V2Walker(ref, V2)
    got = walker.next_batch(8)
    expected = []
    while (frame := twin.next_frame()) is not None:
        data = None if frame[2].status & TP_STATUS_COPY else _read(ref, frame)
        expected.append((data, frame[2]))
    twin.release()
    assert got == expected
    assert [d for d, _ in got] == [b"one", None, b"three"]
    assert buf == ref
    assert [_status2(buf, V2, i) for i in range(3)] == [TP_STATUS_KERNEL] * 3
    assert walker.index == twin.index == 3
    assert walker.next_batch(8) == []
