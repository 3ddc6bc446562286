"""PACKET_MMAP receive rings, sans I/O: header layouts, geometry checks and ring walkers.

A packet socket with ``PACKET_RX_RING`` shares a ring of frames with the kernel
(Documentation/networking/packet_mmap.rst). Ownership of each slot is handed back and forth
through a status word: the kernel fills a slot and sets ``TP_STATUS_USER``; user space reads it
and writes ``TP_STATUS_KERNEL`` to give it back. Two layouts are supported:

- ``TPACKET_V2`` (latency mode): fixed-size frames, each with its own ``tpacket2_hdr``. A frame is
  visible as soon as the kernel has written it.
- ``TPACKET_V3`` (bulk mode): variable-size packets packed into blocks. The kernel hands over a
  whole block when it is full or when the block timer (``tp_retire_blk_tov``, >= 1 ms) fires, so it
  batches well but adds up to a timer period of latency (docs/bench/bench.md).

This module never maps memory or touches a socket: the walkers work over any writable buffer (the
``mmap`` in :mod:`rawtransport.ring_setup`, or a ``bytearray`` of synthetic blocks in tests). They
treat the ring as untrusted input: a header pointing outside its frame or block, an absurd packet
count or an offset chain that does not move forward is counted and skipped (never followed), so a
walker never reads outside its slot and never loops.

A walker can also be left behind by the kernel: under overload, a V2 slot can stay kernel-owned
for good while the kernel fills the slots after it (libpcap issue 898, Suricata's "fix kernel offset
issue"), and a walker that waits there waits until the kernel laps the whole ring.
:meth:`V2Walker.resync` (the same for V3 blocks) looks past such a slot once the wait has lasted,
and counts the jump.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

from rawtransport.datapath import ACCEL
from rawtransport.engine_types import TP_STATUS_VLAN_VALID, FrameMeta, untag_priority
from rawtransport.errors import MalformedPacketError

__all__ = [
    "BLOCK_DESC",
    "MAX_RING_BYTES",
    "RESYNC_AFTER",
    "RESYNC_MAX_PAUSE",
    "SOCKADDR_LL",
    "TPACKET2_HDR",
    "TPACKET2_HDRLEN",
    "TPACKET3_HDR",
    "TPACKET3_HDRLEN",
    "TPACKET_ALIGNMENT",
    "TPACKET_REQ",
    "TPACKET_REQ3",
    "TPACKET_V2",
    "TPACKET_V3",
    "TP_STATUS_BLK_TMO",
    "TP_STATUS_COPY",
    "TP_STATUS_KERNEL",
    "TP_STATUS_LOSING",
    "TP_STATUS_USER",
    "RingGeometry",
    "V2Walker",
    "V3Walker",
    "tpacket_align",
]

# linux/if_packet.h
TPACKET_V2: Final = 1
TPACKET_V3: Final = 2
TP_STATUS_KERNEL: Final = 0x00
TP_STATUS_USER: Final = 0x01
TP_STATUS_COPY: Final = 0x02
TP_STATUS_LOSING: Final = 0x04
TP_STATUS_BLK_TMO: Final = 0x20
TPACKET_ALIGNMENT: Final = 16

_U32_MAX: Final = 0xFFFF_FFFF
#: Cap on the memory one ring may pin (the kernel allows far more; a transport needs far less).
MAX_RING_BYTES: Final = 64 << 20
#: Cap on the V3 block timer, in milliseconds.
MAX_RETIRE_BLK_TOV: Final = 60_000
#: Seconds a walker's slot (V2) or block (V3) must stay kernel-owned, with a later one ready, before
#: ``resync()`` jumps to the later one, counted twice (see ``_Resync``). tpacket_rcv() runs in
#: softirq context and publishes a slot it claimed within microseconds (tens of them on a busy VM);
#: a wait this long means the slot was left behind. Short next to any timeout a sender keeps.
RESYNC_AFTER: Final = 0.001
#: Longest pause, in seconds, between two looks ahead while nothing is ready anywhere (an idle ring
#: polled by a spinning caller): the pause doubles from :data:`RESYNC_AFTER` up to this, so an idle
#: ring costs one look (a status word per slot) per this long at most.
RESYNC_MAX_PAUSE: Final = 0.1


_META_CACHE: dict[tuple[int, int, int, int, bool], FrameMeta] = {}


def frame_meta(ifindex: int, pkttype: int, status: int, hatype: int, truncated: bool) -> FrameMeta:
    """An interned :class:`FrameMeta`: a busy link repeats a handful of combinations, and a dict
    lookup costs a fraction of building a frozen dataclass per frame (the hot receive path)."""
    key = (ifindex, pkttype, status, hatype, truncated)
    meta = _META_CACHE.get(key)
    if meta is None:
        if len(_META_CACHE) >= 1024:  # bounded: status bits or ifindexes cannot grow it forever
            _META_CACHE.clear()
        meta = _META_CACHE[key] = FrameMeta(ifindex, pkttype, status, hatype, truncated)
    return meta


def tpacket_align(n: int) -> int:
    """``TPACKET_ALIGN(n)``: round up to ``TPACKET_ALIGNMENT``."""
    return (n + TPACKET_ALIGNMENT - 1) & ~(TPACKET_ALIGNMENT - 1)


# struct sockaddr_ll { u16 family; be16 protocol; int ifindex; u16 hatype; u8 pkttype, halen;
# u8 addr[8]; } -- the kernel writes it right after the aligned tpacket header of every frame.
SOCKADDR_LL: Final = struct.Struct("=HHiHBB8s")
# struct tpacket2_hdr { u32 tp_status, tp_len, tp_snaplen; u16 tp_mac, tp_net; u32 tp_sec, tp_nsec;
# u16 tp_vlan_tci, tp_vlan_tpid; u8 tp_padding[4]; }
TPACKET2_HDR: Final = struct.Struct("=IIIHHIIHH4x")
# struct tpacket3_hdr { u32 tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status;
# u16 tp_mac, tp_net; struct tpacket_hdr_variant1 { u32 tp_rxhash, tp_vlan_tci; u16 tp_vlan_tpid,
# tp_padding; } hv1; u8 tp_padding[8]; }
TPACKET3_HDR: Final = struct.Struct("=IIIIIIHHIIHH8x")
# struct tpacket_block_desc { u32 version, offset_to_priv; struct tpacket_hdr_v1 { u32 block_status,
# num_pkts, offset_to_first_pkt, blk_len; aligned_u64 seq_num; struct tpacket_bd_ts { u32 ts_sec,
# ts_usec; } ts_first_pkt, ts_last_pkt; } }
BLOCK_DESC: Final = struct.Struct("=IIIIIIQIIII")
# struct tpacket_req { u32 tp_block_size, tp_block_nr, tp_frame_size, tp_frame_nr; } and
# struct tpacket_req3 { ... ; u32 tp_retire_blk_tov, tp_sizeof_priv, tp_feature_req_word; }
TPACKET_REQ: Final = struct.Struct("=IIII")
TPACKET_REQ3: Final = struct.Struct("=IIIIIII")

#: ``TPACKET2_HDRLEN`` / ``TPACKET3_HDRLEN``: aligned header plus the sockaddr_ll after it.
TPACKET2_HDRLEN: Final = tpacket_align(TPACKET2_HDR.size) + SOCKADDR_LL.size
TPACKET3_HDRLEN: Final = tpacket_align(TPACKET3_HDR.size) + SOCKADDR_LL.size

# Fast paths: one unpack per frame reads the status fields and the parts of sockaddr_ll we need
# (ifindex, hatype, pkttype). Their layouts are the structs above, concatenated.
_V2_FRAME = struct.Struct("=III HH 8x H 6x 4x iHB 9x".replace(" ", ""))
_V3_PACKET = struct.Struct("=I 8x IIIH 2x 4x I 12x 4x iHB 9x".replace(" ", ""))
_U32 = struct.Struct("=I")
# block_status, num_pkts, offset_to_first_pkt, blk_len
_BLOCK_HDR = struct.Struct("=8xIIII")
_BLOCK_STATUS_OFFSET: Final = 8
assert _V2_FRAME.size == TPACKET2_HDRLEN
assert _V3_PACKET.size == TPACKET3_HDRLEN
assert TPACKET3_HDR.size == 48
assert BLOCK_DESC.size == 48


def _check_u32(name: str, value: object, *, minimum: int = 1) -> int:
    # bool is an int subclass; a geometry of True blocks is a caller bug, not a request for 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    # The kernel's tpacket_req fields are unsigned 32-bit; range-check before anything multiplies
    # them (CVE-2017-7308 came from a signedness slip in exactly these checks in packet_set_ring()).
    if not minimum <= value <= _U32_MAX:
        raise ValueError(f"{name} must be in [{minimum}, {_U32_MAX}], not {value}")
    return value


@dataclass(frozen=True, slots=True)
class RingGeometry:
    """A validated ring layout: ``block_count`` blocks of ``block_size`` bytes, cut into frames.

    The checks are those of the kernel's ``packet_set_ring()`` plus stricter ones of our own: every
    value an unsigned 32-bit integer > 0; ``block_size`` a power-of-two multiple of ``page_size``
    (the kernel needs page alignment; a power of two keeps each block one page-order allocation); a
    frame a multiple of ``TPACKET_ALIGNMENT`` and large enough for the header and ``sockaddr_ll``;
    at least one frame per block; the whole ring at most :data:`MAX_RING_BYTES`. For V3,
    ``frame_size`` only sizes the request (packets are packed into blocks) and ``retire_blk_tov`` is
    the block timer in milliseconds (0: let the kernel derive it from the link speed).

    ``version`` is 2 or 3, the number in the layout's name (the kernel's own constants are
    ``TPACKET_V2`` = 1 and ``TPACKET_V3`` = 2: see :attr:`kernel_version`).
    """

    version: int
    block_size: int
    block_count: int
    frame_size: int
    page_size: int = 4096
    retire_blk_tov: int = 0

    def __post_init__(self) -> None:
        if self.version not in (2, 3) or isinstance(self.version, bool):
            raise ValueError(
                f"version must be 2 (TPACKET_V2) or 3 (TPACKET_V3), not {self.version!r}"
            )
        page = _check_u32("page_size", self.page_size)
        if page & (page - 1):
            raise ValueError(f"page_size {page} is not a power of two")
        block = _check_u32("block_size", self.block_size)
        count = _check_u32("block_count", self.block_count)
        frame = _check_u32("frame_size", self.frame_size)
        _check_u32("retire_blk_tov", self.retire_blk_tov, minimum=0)
        if self.retire_blk_tov > MAX_RETIRE_BLK_TOV:
            raise ValueError(f"retire_blk_tov must be at most {MAX_RETIRE_BLK_TOV} ms")
        if self.version == 2 and self.retire_blk_tov:
            raise ValueError("retire_blk_tov applies to TPACKET_V3 only")
        pages, rest = divmod(block, page)
        if rest or pages & (pages - 1):
            raise ValueError(
                f"block_size {block} must be a power-of-two multiple of the page size {page}"
            )
        if frame % TPACKET_ALIGNMENT:
            raise ValueError(f"frame_size {frame} is not a multiple of {TPACKET_ALIGNMENT}")
        if frame < self.header_len:
            raise ValueError(
                f"frame_size {frame} is smaller than the {self.header_len}-byte header"
            )
        if frame > block:
            raise ValueError(f"frame_size {frame} exceeds block_size {block}: no frame fits")
        if block * count > MAX_RING_BYTES:
            raise ValueError(
                f"ring of {block} x {count} bytes exceeds the {MAX_RING_BYTES >> 20} MiB cap"
            )
        # tp_frame_nr is a u32 too; implied by the cap above, checked so the invariant is local.
        _check_u32("frame_count", self.frame_count)

    @property
    def header_len(self) -> int:
        """``TPACKET2_HDRLEN`` or ``TPACKET3_HDRLEN``: the smallest possible ``tp_mac``."""
        return TPACKET2_HDRLEN if self.version == 2 else TPACKET3_HDRLEN

    @property
    def kernel_version(self) -> int:
        """The ``PACKET_VERSION`` option value (``TPACKET_V2`` is 1, ``TPACKET_V3`` is 2)."""
        return TPACKET_V2 if self.version == 2 else TPACKET_V3

    @property
    def frames_per_block(self) -> int:
        """Frames in one block (V2 frames never straddle a block boundary)."""
        return self.block_size // self.frame_size

    @property
    def frame_count(self) -> int:
        """``tp_frame_nr``: the kernel insists on exactly ``frames_per_block * block_count``."""
        return self.frames_per_block * self.block_count

    @property
    def size(self) -> int:
        """Bytes to map: blocks are laid out back to back."""
        return self.block_size * self.block_count

    def frame_offset(self, index: int) -> int:
        """Where V2 frame ``index`` starts in the mapping."""
        block, slot = divmod(index, self.frames_per_block)
        return block * self.block_size + slot * self.frame_size

    def request(self) -> bytes:
        """The ``PACKET_RX_RING`` option value: ``tpacket_req`` (V2) or ``tpacket_req3`` (V3)."""
        if self.version == 2:
            return TPACKET_REQ.pack(
                self.block_size, self.block_count, self.frame_size, self.frame_count
            )
        # tp_sizeof_priv 0: no private area, so offset_to_first_pkt is just the block header.
        return TPACKET_REQ3.pack(
            self.block_size,
            self.block_count,
            self.frame_size,
            self.frame_count,
            self.retire_blk_tov,
            0,
            0,
        )


# What a frame's status says, for both layouts: tp_snaplen < tp_len means the slot was too small
# (tpacket_rcv() clips snaplen); TP_STATUS_COPY means the ring frame was clipped and a full copy went
# to the receive queue instead. Either way the bytes in the ring are not the whole frame: truncated.
# TP_STATUS_LOSING only says drops happened since the last PACKET_STATISTICS read; the frame itself
# is intact. The status is passed on whole, as PACKET_AUXDATA does (it carries TP_STATUS_USER too),
# for the engine's CSUMNOTREADY / CSUM_VALID / VLAN_VALID checks. (Inlined in both walkers: it is
# the per-frame hot path.)


class _Resync:
    """Recovery from a slot (V2) or block (V3) the kernel left behind; shared by both walkers.

    A walker stops at the first slot the kernel still owns, which is right while the kernel fills
    slots in order. Under overload it does not always: tpacket_rcv() can move its head past a V2
    slot whose frame never becomes ready (seen here after bursts from two CPUs, and from one), and
    go on filling the slots after it. The walker then waits at that slot until the kernel laps the
    whole ring, frames pile up behind it, and ``packet_poll()``, which looks at the slot before the
    kernel's head and not at the walker's, keeps the socket readable: an idle process spins.

    :meth:`resync` is the way out, for a caller to call each time ``next_frame()`` found nothing
    (callers come back while the socket polls readable, so a wait that lasts is the evidence):

    - the first call at a slot reads nothing; it notes the time;
    - once the walker has waited there :data:`RESYNC_AFTER`, a call looks ahead (one status word
      per slot, at most one lap, stopping at the first ready one);
    - a ready slot ahead, seen twice :data:`RESYNC_AFTER` apart with the walker's slot the kernel's
      all along, is a gap, not a slot still being filled: the walker jumps to it, counts the jump in
      :attr:`resyncs` and the slots passed in :attr:`resync_skipped`, and goes on in the kernel's
      order from there. A passed slot the kernel fills later is met again a lap later;
    - nothing ready ahead (the idle case) doubles the pause before the next look, up to
      :data:`RESYNC_MAX_PAUSE`.

    A walker that keeps up never looks ahead (it moves on before a look is due), and no slot is
    passed while tpacket_rcv() may still be filling it, so frames keep the kernel's order; only a
    fill stalled for longer (a vCPU taken away mid-fill) would see its frame come a lap late.
    A passed slot whose frame was really lost shows in the kernel's count of packets and not in the
    frames read: :attr:`resync_skipped` bounds how many.
    """

    __slots__ = (
        "_gap_seen",
        "_laps",
        "_look_at",
        "_pause",
        "_waiting_at",
        "resync_skipped",
        "resyncs",
    )

    def __init__(self) -> None:
        #: Jumps over slots (V2) or blocks (V3) the kernel left behind.
        self.resyncs = 0
        #: Slots (V2) or blocks (V3) passed over by those jumps, in total.
        self.resync_skipped = 0
        # Times the walker wrapped around the ring: with the index it says where the walker is, so
        # a walker back at the same slot a lap later does not inherit an old wait.
        self._laps = 0
        self._waiting_at = -1
        self._look_at = 0.0
        self._pause = RESYNC_AFTER
        self._gap_seen = False

    def _position(self) -> int:
        raise NotImplementedError

    def _ready_ahead(self) -> int:
        """How far ahead the first ready slot is (0: the current one is ready, or none is)."""
        raise NotImplementedError

    def _skip(self, distance: int) -> None:
        raise NotImplementedError

    def resync(self, now: float) -> bool:
        """``next_frame()`` found nothing: jump past a slot the kernel left behind, if there is one.

        ``now`` is a monotonic time in seconds. Returns True when the walker jumped (call
        ``next_frame()`` again: the slot it now looks at is ready). See the class notes for when.
        """
        position = self._position()
        if position != self._waiting_at:
            # The walker moved since the last call: start timing the wait here, read nothing.
            self._waiting_at = position
            self._look_at = now + RESYNC_AFTER
            self._pause = RESYNC_AFTER
            self._gap_seen = False
            return False
        if now < self._look_at:
            return False
        distance = self._ready_ahead()
        if not distance:
            self._gap_seen = False
            self._pause = min(self._pause * 2, RESYNC_MAX_PAUSE)
            self._look_at = now + self._pause
            return False
        if not self._gap_seen:
            # Seen once: give a tpacket_rcv() that may still be filling our slot time to finish.
            self._gap_seen = True
            self._look_at = now + RESYNC_AFTER
            return False
        self._skip(distance)
        self.resyncs += 1
        self.resync_skipped += distance
        return True


class V2Walker(_Resync):
    """Walks a TPACKET_V2 ring in kernel order, one frame at a time.

    :meth:`next_frame` first gives back the frame it returned last (``tp_status =
    TP_STATUS_KERNEL``), then returns ``(offset, length, meta)`` of the next ready frame, or
    ``None`` when the next slot still belongs to the kernel. The caller must copy what it needs
    before calling again. Frames whose header points outside their slot are counted in
    :attr:`corrupt`, given back and skipped. When ``next_frame()`` finds nothing, :meth:`resync`
    recovers from a slot the kernel left behind (counted in :attr:`resyncs`).
    """

    __slots__ = (
        "_buf",
        "_c_geometry",
        "_frame_size",
        "_geometry",
        "_held",
        "_index",
        "_offsets",
        "corrupt",
        "last_corrupt",
    )

    def __init__(self, buf: memoryview | bytearray, geometry: RingGeometry) -> None:
        super().__init__()
        if geometry.version != 2:
            raise ValueError("V2Walker needs a TPACKET_V2 geometry")
        if len(buf) < geometry.size:
            raise ValueError(
                f"buffer of {len(buf)} bytes is smaller than the ring ({geometry.size})"
            )
        self._buf = buf
        self._geometry = geometry
        self._frame_size = geometry.frame_size
        # Frame starts, precomputed: this is the per-frame hot path of the pure datapath.
        self._offsets = [geometry.frame_offset(i) for i in range(geometry.frame_count)]
        # What the compiled walks take, computed once (RingGeometry's are properties).
        self._c_geometry = (
            geometry.frame_count, geometry.frames_per_block, geometry.block_size,
            geometry.frame_size,
        )  # fmt: skip
        self._index = 0
        self._held = -1
        #: Frames skipped because their header was impossible, by reason.
        self.corrupt: dict[str, int] = {}
        #: The last such problem, with detail (for diagnostics; never payload bytes).
        self.last_corrupt = ""

    @property
    def index(self) -> int:
        """The next frame the walker will look at."""
        return self._index

    def release(self) -> None:
        """Give the frame returned last back to the kernel now (idempotent)."""
        if self._held >= 0:
            _U32.pack_into(self._buf, self._offsets[self._held], TP_STATUS_KERNEL)
            self._held = -1

    def _count(self, reason: str, detail: str = "") -> None:
        self.corrupt[reason] = self.corrupt.get(reason, 0) + 1
        self.last_corrupt = f"{reason}: {detail}" if detail else reason

    def next_frame(self) -> tuple[int, int, FrameMeta] | None:
        """Release the previous frame; return ``(offset, length, meta)`` of the next one."""
        buf = self._buf
        offsets = self._offsets
        if self._held >= 0:
            _U32.pack_into(buf, offsets[self._held], TP_STATUS_KERNEL)
            self._held = -1
        count = len(offsets)
        frame_size = self._frame_size
        # Each skipped frame is given back, so at most one lap of the ring is examined per call.
        for _ in range(count):
            index = self._index
            base = offsets[index]
            # The status word is read first; the kernel publishes it last (smp_wmb() before
            # __packet_set_status() in tpacket_rcv()), so the rest is complete once it says USER.
            status, tp_len, snaplen, mac, _net, tci, ifindex, hatype, pkttype = (
                _V2_FRAME.unpack_from(buf, base)
            )
            if not status & TP_STATUS_USER:
                return None
            if status & TP_STATUS_VLAN_VALID:
                status = untag_priority(status, tci)
            if index + 1 < count:
                self._index = index + 1
            else:
                self._index = 0
                self._laps += 1
            # tpacket_rcv() puts the frame at macoff >= tp_hdrlen and clips snaplen to the slot.
            if mac < TPACKET2_HDRLEN or mac + snaplen > frame_size:
                try:
                    self._check(mac, snaplen)
                except MalformedPacketError as exc:
                    self._count(exc.reason, exc.detail)
                _U32.pack_into(buf, base, TP_STATUS_KERNEL)
                continue
            self._held = index
            truncated = snaplen < tp_len or bool(status & TP_STATUS_COPY)
            return base + mac, snaplen, frame_meta(ifindex, pkttype, status, hatype, truncated)
        return None

    def next_batch(self, budget: int) -> list[tuple[bytes | None, FrameMeta]]:
        """Up to ``budget`` frames as :meth:`next_frame` would return them, copied out, each slot
        given back at once: ``(data, meta)``, with ``data`` ``None`` for a ``TP_STATUS_COPY`` slot
        (the whole frame waits in the socket's queue). One call into the compiled datapath
        (``_datapath.v2_read``) when it is built; else the same through :meth:`next_frame`."""
        if ACCEL is None:
            out: list[tuple[bytes | None, FrameMeta]] = []
            for _ in range(budget):
                got = self.next_frame()
                if got is None:
                    break
                offset, length, meta = got
                data = (
                    None
                    if meta.status & TP_STATUS_COPY
                    else bytes(self._buf[offset : offset + length])
                )
                out.append((data, meta))
            self.release()
            return out
        self.release()
        g = self._geometry
        frames, self._index, laps, corrupt = ACCEL.v2_read(
            self._buf, self._index, budget, g.frame_count, g.frames_per_block, g.block_size,
            g.frame_size,
        )  # fmt: skip
        self._laps += laps
        for reason in corrupt:
            self._count(reason, "")
        return [(f[0], frame_meta(f[1], f[2], f[3], f[4], f[5])) for f in frames]

    def deliver_batch(
        self, budget: int, fast: Any
    ) -> tuple[int, tuple[bytes | None, FrameMeta] | None]:
        """The compiled receive path (``_datapath.v2_deliver``): up to ``budget`` frames, each one
        the host's ``fast`` view can take delivered straight to its protocol, stopping at the
        first it cannot. Returns ``(taken, slow)``: how many were delivered, and that frame as
        :meth:`next_batch` gives it (or ``None``: the ring is empty or the budget spent). Every
        slot read is given back. A ``SystemExit``/``KeyboardInterrupt`` from a protocol is
        raised once the position is saved. Only with the compiled datapath."""
        assert ACCEL is not None
        if self._held >= 0:
            self.release()
        count, per_block, block_size, frame_size = self._c_geometry
        taken, self._index, laps, corrupt, slow, exc = ACCEL.v2_deliver(
            self._buf, self._index, budget, count, per_block, block_size, frame_size, fast
        )
        if laps:
            self._laps += laps
        if corrupt:
            for reason in corrupt:
                self._count(reason, "")
        if exc is not None:
            raise exc
        if slow is None:
            return taken, None
        return taken, (slow[0], frame_meta(slow[1], slow[2], slow[3], slow[4], slow[5]))

    def _position(self) -> int:
        return self._laps * len(self._offsets) + self._index

    def _ready_ahead(self) -> int:
        buf = self._buf
        offsets = self._offsets
        count = len(offsets)
        index = self._index
        if _U32.unpack_from(buf, offsets[index])[0] & TP_STATUS_USER:
            return 0  # filled since next_frame() looked: no gap
        # One status word per slot, at most one lap, stopping at the first ready slot.
        for distance in range(1, count):
            if _U32.unpack_from(buf, offsets[(index + distance) % count])[0] & TP_STATUS_USER:
                return distance
        return 0

    def _skip(self, distance: int) -> None:
        count = len(self._offsets)
        index = self._index + distance
        if index >= count:
            index -= count
            self._laps += 1
        self._index = index

    def _check(self, mac: int, snaplen: int) -> None:
        """Raise the reason a frame's bounds are impossible."""
        if mac < TPACKET2_HDRLEN:
            raise MalformedPacketError("ring_mac_offset", f"tp_mac {mac} inside the header")
        if mac + snaplen > self._frame_size:
            raise MalformedPacketError(
                "ring_frame_bounds", f"tp_mac {mac} + tp_snaplen {snaplen} > {self._frame_size}"
            )


class V3Walker(_Resync):
    """Walks a TPACKET_V3 ring block by block, packet by packet within a block.

    :meth:`next_frame` returns ``(offset, length, meta)`` of the next packet, or ``None`` when the
    next block still belongs to the kernel. A block is given back (``block_status =
    TP_STATUS_KERNEL``) at the first call after its last packet was returned, so the caller's view
    of that packet stays valid until it asks for the next one. A block with an impossible header
    (packet count, first offset or length out of range) is skipped whole; a packet that points
    outside the block ends the block (the chain after it cannot be trusted). Both are counted in
    :attr:`corrupt`.

    :meth:`resync` works as for V2, a block at a time. The kernel hands blocks over in order
    (``prb_retire_current_block()`` and ``prb_dispatch_next_block()`` run under the queue lock, and
    a block user space still holds freezes the queue rather than being passed over), so a V3 gap is
    not expected and none showed under the overload that strands V2 rings; the recovery is there so
    that one could not strand the walker either.
    """

    __slots__ = (
        "_block",
        "_block_base",
        "_block_end",
        "_buf",
        "_geometry",
        "_open",
        "_pos",
        "_remaining",
        "corrupt",
        "last_corrupt",
    )

    def __init__(self, buf: memoryview | bytearray, geometry: RingGeometry) -> None:
        super().__init__()
        if geometry.version != 3:
            raise ValueError("V3Walker needs a TPACKET_V3 geometry")
        if len(buf) < geometry.size:
            raise ValueError(
                f"buffer of {len(buf)} bytes is smaller than the ring ({geometry.size})"
            )
        self._buf = buf
        self._geometry = geometry
        self._block = 0
        self._open = False
        self._block_base = 0
        self._block_end = 0
        self._pos = 0
        self._remaining = 0
        #: Blocks or packets skipped because their header was impossible, by reason.
        self.corrupt: dict[str, int] = {}
        #: The last such problem, with detail (for diagnostics; never payload bytes).
        self.last_corrupt = ""

    @property
    def block(self) -> int:
        """The block being read, or the next one the walker will look at."""
        return self._block

    def _count(self, reason: str, detail: str = "") -> None:
        self.corrupt[reason] = self.corrupt.get(reason, 0) + 1
        self.last_corrupt = f"{reason}: {detail}" if detail else reason

    def release(self) -> None:
        """Give the current block back to the kernel if every packet in it has been returned."""
        if self._open and self._remaining == 0:
            _U32.pack_into(self._buf, self._block_base + _BLOCK_STATUS_OFFSET, TP_STATUS_KERNEL)
            self._open = False
            if self._block + 1 < self._geometry.block_count:
                self._block += 1
            else:
                self._block = 0
                self._laps += 1

    def _position(self) -> int:
        return self._laps * self._geometry.block_count + self._block

    def _ready_ahead(self) -> int:
        if self._open:
            return 0  # reading a block: not waiting on the kernel
        block_size = self._geometry.block_size
        count = self._geometry.block_count
        block = self._block
        if (
            _U32.unpack_from(self._buf, block * block_size + _BLOCK_STATUS_OFFSET)[0]
            & TP_STATUS_USER
        ):
            return 0
        for distance in range(1, count):
            base = (block + distance) % count * block_size
            if _U32.unpack_from(self._buf, base + _BLOCK_STATUS_OFFSET)[0] & TP_STATUS_USER:
                return distance
        return 0

    def _skip(self, distance: int) -> None:
        count = self._geometry.block_count
        block = self._block + distance
        if block >= count:
            block -= count
            self._laps += 1
        self._block = block

    def _open_block(self) -> bool:
        """Open the next block if the kernel handed it over; False when it is still the kernel's."""
        block_size = self._geometry.block_size
        base = self._block * block_size
        status, num_pkts, first, blk_len = _BLOCK_HDR.unpack_from(self._buf, base)
        if not status & TP_STATUS_USER:
            return False
        self._open = True
        self._block_base = base
        self._remaining = 0
        try:
            # prb_open_block(): the first packet follows the block header (and private area);
            # blk_len grows from there by each packet's aligned length, never past the block.
            if not BLOCK_DESC.size <= first <= blk_len <= block_size:
                raise MalformedPacketError(
                    "ring_block_bounds",
                    f"offset_to_first_pkt {first}, blk_len {blk_len}, block_size {block_size}",
                )
            # Every packet takes at least a header; more packets than that cannot fit.
            if num_pkts > (blk_len - first) // TPACKET3_HDRLEN:
                raise MalformedPacketError(
                    "ring_block_num_pkts", f"{num_pkts} packets in {blk_len - first} bytes"
                )
        except MalformedPacketError as exc:
            self._count(exc.reason, exc.detail)
            return True  # open with nothing left: released and skipped by the caller's loop
        self._block_end = base + blk_len
        self._pos = base + first
        self._remaining = num_pkts
        return True

    def next_frame(self) -> tuple[int, int, FrameMeta] | None:
        """Release what is done with; return ``(offset, length, meta)`` of the next packet."""
        # A lap over every block, plus the one being finished, bounds the work per call even if
        # every block the kernel handed over is empty or corrupt.
        for _ in range(self._geometry.block_count + 1):
            self.release()
            if not self._open and not self._open_block():
                return None
            if self._remaining == 0:
                continue
            got = self._next_packet()
            if got is not None:
                return got
        return None

    def _next_packet(self) -> tuple[int, int, FrameMeta] | None:
        pos = self._pos
        end = self._block_end
        if pos + TPACKET3_HDRLEN > end:
            self._corrupt_block("ring_packet_bounds", f"header at {pos} past block end {end}")
            return None
        next_off, snaplen, tp_len, status, mac, tci, ifindex, hatype, pkttype = (
            _V3_PACKET.unpack_from(self._buf, pos)
        )
        if status & TP_STATUS_VLAN_VALID:
            status = untag_priority(status, tci)
        if mac < TPACKET3_HDRLEN:
            self._corrupt_block("ring_mac_offset", f"tp_mac {mac} inside the header")
            return None
        if pos + mac + snaplen > end:
            self._corrupt_block(
                "ring_frame_bounds", f"tp_mac {mac} + tp_snaplen {snaplen} past block end"
            )
            return None
        self._remaining -= 1
        if self._remaining:
            # prb_fill_curr_block(): tp_next_offset is the packet's aligned total length, so the
            # next header lies strictly after this packet's data. Demanding that rules out loops.
            if next_off < mac + snaplen:
                self._count("ring_next_offset", f"tp_next_offset {next_off} inside the packet")
                self._remaining = 0
            else:
                self._pos = pos + next_off
        truncated = snaplen < tp_len or bool(status & TP_STATUS_COPY)
        return pos + mac, snaplen, frame_meta(ifindex, pkttype, status, hatype, truncated)

    def _corrupt_block(self, reason: str, detail: str) -> None:
        # The rest of this block's chain cannot be trusted: give the whole block back.
        self._count(reason, detail)
        self._remaining = 0
