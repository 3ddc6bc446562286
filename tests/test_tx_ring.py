"""The pure transmit-ring writer on synthetic ring memory; the tests play the kernel's part.

Slot headers are read and written here at the byte offsets of linux/if_packet.h (``struct
tpacket2_hdr``: tp_status @0, tp_len @4, tp_snaplen @8) and the frame at 32 (``TPACKET2_HDRLEN -
sizeof(struct sockaddr_ll)``), not with the module's own structs, so a layout mistake shows up as a
failure rather than agreeing with itself. :class:`FakeKernel` follows ``tpacket_snd()``: from its
own head, it takes consecutive ``SEND_REQUEST`` slots, refuses bad ones with ``WRONG_FORMAT`` without
moving its head, and on a full queue leaves the slot ``SEND_REQUEST`` and stops.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawtransport.ring import RingGeometry
from rawtransport.tx_ring import (
    TP_STATUS_AVAILABLE,
    TP_STATUS_SEND_REQUEST,
    TP_STATUS_SENDING,
    TP_STATUS_WRONG_FORMAT,
    TX_DATA_OFFSET,
    TxRingWriter,
)

PAGE = 4096
FRAME = 2048
TS_SOFTWARE = 1 << 29


def geometry(slots: int = 8) -> RingGeometry:
    return RingGeometry(version=2, block_size=PAGE, block_count=slots // 2, frame_size=FRAME)


def status(buf: bytearray, slot: int) -> int:
    return int(struct.unpack_from("=I", buf, slot * FRAME)[0])


def set_status(buf: bytearray, slot: int, value: int) -> None:
    struct.pack_into("=I", buf, slot * FRAME, value)


def frame_in(buf: bytearray, slot: int) -> bytes:
    tp_len, snaplen = struct.unpack_from("=II", buf, slot * FRAME + 4)
    assert tp_len == snaplen
    start = slot * FRAME + 32
    return bytes(buf[start : start + tp_len])


class FakeKernel:
    """``tpacket_snd()`` over the same memory: its own head, its own idea of what it may take."""

    def __init__(self, buf: bytearray, slots: int) -> None:
        self.buf = buf
        self.slots = slots
        self.head = 0
        self.wire: list[bytes] = []
        self.in_flight: list[int] = []

    def kick(self, *, room: int = 1 << 30, refuse: bytes | None = None, keep: bool = False) -> None:
        """Send queued slots: ``room`` frames fit the device; ``refuse`` is a malformed frame;
        ``keep`` leaves sent slots SENDING (held by a qdisc) instead of completing them."""
        while status(self.buf, self.head) == TP_STATUS_SEND_REQUEST:
            data = frame_in(self.buf, self.head)
            if data == refuse:
                set_status(self.buf, self.head, TP_STATUS_WRONG_FORMAT)
                return  # out_status: the head stays on the refused slot
            if room == 0:
                return  # ENOBUFS / EAGAIN: the slot stays SEND_REQUEST, the head too
            room -= 1
            self.wire.append(data)
            if keep:
                set_status(self.buf, self.head, TP_STATUS_SENDING)
                self.in_flight.append(self.head)
            else:
                set_status(self.buf, self.head, TP_STATUS_AVAILABLE | TS_SOFTWARE)
            self.head = (self.head + 1) % self.slots

    def complete(self) -> None:
        """The skbs held in flight are freed (tpacket_destruct_skb())."""
        for slot in self.in_flight:
            set_status(self.buf, slot, TP_STATUS_AVAILABLE)
        self.in_flight.clear()


def ring(slots: int = 8) -> tuple[bytearray, TxRingWriter, FakeKernel]:
    g = geometry(slots)
    buf = bytearray(g.size)
    return buf, TxRingWriter(memoryview(buf), g), FakeKernel(buf, g.frame_count)


# ------------------------------------------------------------------------------------ layout
def test_constants_match_if_packet_h() -> None:
    assert (TP_STATUS_AVAILABLE, TP_STATUS_SEND_REQUEST, TP_STATUS_SENDING) == (0, 1, 2)
    assert TP_STATUS_WRONG_FORMAT == 4
    # TPACKET_ALIGN(sizeof(struct tpacket2_hdr)) = TPACKET_ALIGN(32) = 32.
    assert TX_DATA_OFFSET == 32


def test_put_writes_header_and_frame_where_the_kernel_reads_them() -> None:
    buf, w, _k = ring()
    assert w.capacity == 8
    assert w.max_frame == FRAME - 32
    assert w.put(b"\xaa" * 60)
    assert w.put(memoryview(b"\xbb" * 1500))
    assert status(buf, 0) == status(buf, 1) == TP_STATUS_SEND_REQUEST
    assert struct.unpack_from("=II", buf, 4) == (60, 60)
    assert buf[32:92] == b"\xaa" * 60
    assert frame_in(buf, 1) == b"\xbb" * 1500
    assert status(buf, 2) == TP_STATUS_AVAILABLE
    assert (w.queued, w.head) == (2, 2)


def test_rejects_a_frame_longer_than_a_slot_and_the_wrong_layout() -> None:
    buf, w, _k = ring()
    assert w.put(b"x" * (FRAME - 32))  # exactly a slot's room
    with pytest.raises(ValueError, match="exceeds"):
        w.put(b"x" * (FRAME - 31))
    assert w.queued == 1
    v3 = RingGeometry(version=3, block_size=PAGE, block_count=1, frame_size=FRAME)
    with pytest.raises(ValueError, match="TPACKET_V2"):
        TxRingWriter(bytearray(PAGE), v3)
    with pytest.raises(ValueError, match="smaller than the ring"):
        TxRingWriter(bytearray(PAGE), geometry(4))
    del buf


# ------------------------------------------------------------------------------------ kicks
def test_one_kick_takes_every_queued_frame_in_order() -> None:
    _buf, w, k = ring()
    frames = [bytes([i]) * (60 + i) for i in range(5)]
    for f in frames:
        assert w.put(f)
    k.kick()
    assert w.settle() == (5, False)
    assert k.wire == frames
    assert w.queued == 0


def test_full_device_queue_leaves_frames_queued_and_unqueue_takes_them_back() -> None:
    buf, w, k = ring()
    frames = [bytes([i]) * 64 for i in range(6)]
    for f in frames:
        w.put(f)
    k.kick(room=2)  # ENOBUFS on the third
    assert w.settle() == (2, False)
    assert w.queued == 4
    assert w.unqueue() == 4
    assert all(status(buf, s) == TP_STATUS_AVAILABLE for s in range(2, 6))
    assert w.queued == 0
    # The caller retries the same four: they go where the kernel's head is, and leave in order.
    for f in frames[2:]:
        assert w.put(f)
    k.kick()
    assert w.settle() == (4, False)
    assert k.wire == frames


def test_wrong_format_is_taken_out_and_the_rest_still_leaves_in_order() -> None:
    buf, w, k = ring()
    frames = [b"A" * 60, b"B" * 60, b"bad", b"C" * 60, b"D" * 60]
    for f in frames:
        w.put(f)
    k.kick(refuse=b"bad")
    assert w.settle() == (2, True)
    assert w.wrong_format == 1
    # The frames behind moved up into the refused slot, where the kernel's head still is.
    assert (w.queued, w.head, k.head) == (2, 4, 2)
    assert frame_in(buf, 2) == b"C" * 60
    assert status(buf, 4) == TP_STATUS_AVAILABLE
    k.kick()
    assert w.settle() == (2, False)
    assert k.wire == [b"A" * 60, b"B" * 60, b"C" * 60, b"D" * 60]


def test_wrong_format_as_the_last_queued_frame_frees_its_slot() -> None:
    buf, w, k = ring()
    w.put(b"A" * 60)
    w.put(b"bad")
    k.kick(refuse=b"bad")
    assert w.settle() == (1, True)
    assert (w.queued, w.head) == (0, 1)
    assert status(buf, 1) == TP_STATUS_AVAILABLE
    w.put(b"B" * 60)
    k.kick()
    assert w.settle() == (1, False)
    assert k.wire == [b"A" * 60, b"B" * 60]


# ------------------------------------------------------------------------------- ring full
def test_slots_in_flight_make_the_ring_full_until_they_complete() -> None:
    buf, w, k = ring(4)
    for i in range(4):
        assert w.put(bytes([i]) * 60)
    assert not w.put(b"more")  # every slot queued
    k.kick(keep=True)
    assert w.settle() == (4, False)
    assert all(status(buf, s) == TP_STATUS_SENDING for s in range(4))
    assert not w.put(b"more")  # every slot in flight: nothing is overwritten
    assert w.queued == 0
    k.complete()
    assert w.put(b"more")
    assert w.head == 1


def test_timestamp_bits_on_a_completed_slot_still_mean_free() -> None:
    buf, w, k = ring(2)
    w.put(b"a" * 60)
    w.put(b"b" * 60)
    k.kick()
    assert w.settle() == (2, False)
    assert status(buf, 0) == TP_STATUS_AVAILABLE | TS_SOFTWARE
    assert w.put(b"c" * 60)


def test_settle_without_a_kick_reports_nothing_taken() -> None:
    _buf, w, _k = ring()
    assert w.settle() == (0, False)
    w.put(b"x" * 60)
    assert w.settle() == (0, False)
    assert w.queued == 1


# ------------------------------------------------------------------------------- property
class Caller:
    """What the endpoint does: keep frames until the ring took them, retry the rest in order."""

    def __init__(self, w: TxRingWriter, k: FakeKernel) -> None:
        self.w, self.k = w, k
        self.backlog: list[bytes] = []
        self.refused: list[bytes] = []

    def flush(self, room: int, keep: bool) -> None:
        w, k, backlog = self.w, self.k, self.backlog
        while backlog:
            q = w.queued  # backlog[:q] is in the ring already
            while q < len(backlog) and w.put(backlog[q]):
                q += 1
            if q == 0:
                return  # every slot in flight
            refuse = next((f for f in backlog[:q] if f.startswith(b"bad")), None)
            k.kick(room=room, refuse=refuse, keep=keep)
            taken, rejected = w.settle()
            room -= taken
            del backlog[:taken]
            if rejected:
                self.refused.append(backlog.pop(0))
                continue
            if w.queued:
                w.unqueue()
                return


@given(
    st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 12), st.booleans(), st.booleans()),
        max_size=30,
    ),
    st.sets(st.integers(0, 200), max_size=6),
    st.sampled_from([2, 4, 8]),
)
def test_nothing_is_lost_duplicated_or_reordered(
    steps: list[tuple[int, int, bool, bool]], bad: set[int], slots: int
) -> None:
    """Against a kernel that takes some frames, refuses malformed ones and holds some in flight,
    what reaches the wire is exactly the accepted frames, in order; the refused ones are counted."""
    _buf, w, k = ring(slots)
    caller = Caller(w, k)
    n = 0

    def frame(i: int) -> bytes:
        return (b"bad%03d" % i) if i in bad else (b"%05d" % i) * 12

    for new, room, keep, complete in steps:
        for _ in range(new):
            caller.backlog.append(frame(n))
            n += 1
        caller.flush(room, keep)
        assert w.queued == 0  # the ring never keeps a frame across flushes
        if complete:
            k.complete()
    k.complete()
    caller.flush(1 << 30, False)
    frames = [frame(i) for i in range(n)]
    assert k.wire == [f for f in frames if not f.startswith(b"bad")]
    assert caller.refused == [f for f in frames if f.startswith(b"bad")]
    assert w.wrong_format == len(caller.refused)
