"""PACKET_TX_RING slots, sans I/O: the TPACKET_V2 transmit-ring writer over a memoryview.

A packet socket with ``PACKET_TX_RING`` shares a ring of fixed-size frames with the kernel
(Documentation/networking/packet_mmap.rst, "Transmission process"). Ownership of each slot goes
through its ``tp_status`` word:

- user space fills a slot whose status is ``TP_STATUS_AVAILABLE`` (0): the frame at
  :data:`TX_DATA_OFFSET`, its length in ``tp_len``, then ``TP_STATUS_SEND_REQUEST``;
- one ``send()`` on the socket (the *kick*) makes ``tpacket_snd()`` walk the ring from its own head,
  taking every consecutive ``SEND_REQUEST`` slot: each becomes ``TP_STATUS_SENDING`` while its
  ``sk_buff`` lives, and ``TP_STATUS_AVAILABLE`` again when the skb is freed
  (``tpacket_destruct_skb()``);
- a frame the kernel refuses (``tpacket_parse_header()``: longer than the slot or the MTU;
  ``tpacket_fill_skb()``: shorter than the link header …) is marked ``TP_STATUS_WRONG_FORMAT`` and the
  kick fails with that error. Without ``PACKET_LOSS`` the kernel's head does *not* move past it, so
  the writer takes the frame out (:meth:`TxRingWriter.settle`) or nothing behind it would ever leave;
- when the device queue drops a frame (``ENOBUFS``) or the socket's send buffer is full (``EAGAIN``),
  the kernel sets that slot back to ``SEND_REQUEST`` and stops: it and every slot after it are still
  queued. :meth:`TxRingWriter.unqueue` takes them back, so the caller keeps them in order and retries.

The kernel only reads ``SEND_REQUEST`` slots inside the kick, on the caller's own thread, so writing a
slot's header and data in any order before the kick is safe; it only writes ``SENDING`` slots
asynchronously (skb destructor), and the writer never touches those.

This module never maps memory or touches a socket (that is :class:`rawtransport.ring_setup.TxRing`);
tests drive it over a ``bytearray`` and play the kernel's part by writing status words.
"""

from __future__ import annotations

import struct
from typing import Final

from rawtransport.ring import TPACKET2_HDR, RingGeometry, tpacket_align

__all__ = [
    "TP_STATUS_AVAILABLE",
    "TP_STATUS_SENDING",
    "TP_STATUS_SEND_REQUEST",
    "TP_STATUS_WRONG_FORMAT",
    "TX_DATA_OFFSET",
    "TxRingWriter",
]

# linux/if_packet.h, transmit side.
TP_STATUS_AVAILABLE: Final = 0x0
TP_STATUS_SEND_REQUEST: Final = 0x1
TP_STATUS_SENDING: Final = 0x2
TP_STATUS_WRONG_FORMAT: Final = 0x4
# The kernel may OR timestamp bits (TP_STATUS_TS_*, bits 29-31) into a completed slot's status; only
# the low bits say who owns it.
_OWNER_MASK: Final = TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING | TP_STATUS_WRONG_FORMAT

#: Where a frame's bytes start in its slot: ``TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)``, the
#: offset ``tpacket_parse_header()`` uses when ``PACKET_TX_HAS_OFF`` is not set.
TX_DATA_OFFSET: Final = tpacket_align(TPACKET2_HDR.size)

# tp_status, tp_len, tp_snaplen: the only header fields tpacket_snd() reads for a SOCK_RAW socket
# without PACKET_TX_HAS_OFF.
_HEAD = struct.Struct("=III")
_U32 = struct.Struct("=I")
assert TX_DATA_OFFSET == 32


class TxRingWriter:
    """Fills TPACKET_V2 transmit slots in ring order and reads back what a kick did with them.

    Slots move through three stretches, in ring order: *queued* (``SEND_REQUEST``, written since
    the last kick, starting at the kernel's head), then the slots being filled next at
    :attr:`head`. Slots behind the kernel's head are the kernel's until it marks them
    ``AVAILABLE``; :meth:`put` only ever writes a slot whose status says it is free, so a slot still
    in flight (``SENDING``) is never overwritten: the ring is then full.
    """

    __slots__ = (
        "_buf",
        "_count",
        "_head",
        "_kernel",
        "_max_frame",
        "_offsets",
        "_queued",
        "wrong_format",
    )

    def __init__(self, buf: memoryview | bytearray, geometry: RingGeometry) -> None:
        if geometry.version != 2:
            raise ValueError("TxRingWriter needs a TPACKET_V2 geometry")
        if len(buf) < geometry.size:
            raise ValueError(
                f"buffer of {len(buf)} bytes is smaller than the ring ({geometry.size})"
            )
        self._buf = buf
        self._offsets = [geometry.frame_offset(i) for i in range(geometry.frame_count)]
        self._count = geometry.frame_count
        self._max_frame = geometry.frame_size - TX_DATA_OFFSET
        self._head = 0
        self._kernel = 0
        self._queued = 0
        #: Frames the kernel refused (``TP_STATUS_WRONG_FORMAT``) and the writer took out.
        self.wrong_format = 0

    @property
    def capacity(self) -> int:
        """Number of slots."""
        return self._count

    @property
    def max_frame(self) -> int:
        """The longest frame a slot holds (the kernel may still refuse one longer than the MTU)."""
        return self._max_frame

    @property
    def queued(self) -> int:
        """Slots written with ``SEND_REQUEST`` that no kick has taken yet."""
        return self._queued

    @property
    def head(self) -> int:
        """The slot :meth:`put` writes next."""
        return self._head

    def put(self, frame: bytes | bytearray | memoryview) -> bool:
        """Queue ``frame`` in the next slot; False (nothing written) when that slot is not free.

        Raises ``ValueError`` for a frame longer than :attr:`max_frame`: it cannot go through the
        ring at all (the caller sends it another way).
        """
        n = len(frame)
        if n > self._max_frame:
            raise ValueError(f"frame of {n} bytes exceeds the {self._max_frame}-byte slot")
        if self._queued >= self._count:
            return False
        off = self._offsets[self._head]
        if _U32.unpack_from(self._buf, off)[0] & _OWNER_MASK:
            return False  # still in flight (or not yet settled): the ring is full
        start = off + TX_DATA_OFFSET
        self._buf[start : start + n] = frame
        _HEAD.pack_into(self._buf, off, TP_STATUS_SEND_REQUEST, n, n)
        head = self._head + 1
        self._head = head if head < self._count else 0
        self._queued += 1
        return True

    def settle(self) -> tuple[int, bool]:
        """After a kick: how many queued frames the kernel took, in order, and whether it refused one.

        Returns ``(taken, rejected)``. ``taken`` queued slots (oldest first) left the ring's queue:
        ``SENDING`` or already ``AVAILABLE``. If ``rejected``, the next one was marked
        ``TP_STATUS_WRONG_FORMAT``; it has been taken out (counted in :attr:`wrong_format`) and the
        frames queued behind it moved up one slot, still queued for the next kick. Otherwise any
        frames still queued were not taken (the kick stopped on ``EAGAIN``/``ENOBUFS``).
        """
        taken = 0
        buf = self._buf
        offsets = self._offsets
        count = self._count
        while self._queued:
            status = _U32.unpack_from(buf, offsets[self._kernel])[0] & _OWNER_MASK
            if status == TP_STATUS_SEND_REQUEST:
                break
            if status & TP_STATUS_WRONG_FORMAT:
                self._take_out_refused()
                return taken, True
            nxt = self._kernel + 1
            self._kernel = nxt if nxt < count else 0
            self._queued -= 1
            taken += 1
        return taken, False

    def _take_out_refused(self) -> None:
        # tpacket_snd() leaves its head on the refused slot (it is only advanced past frames it
        # sent, or dropped with PACKET_LOSS). Shift the frames queued behind it forward by one slot
        # so the kernel's head finds the next frame there; order is kept and nothing is lost.
        self.wrong_format += 1
        buf = self._buf
        offsets = self._offsets
        count = self._count
        dst = self._kernel
        for _ in range(self._queued - 1):
            src = dst + 1 if dst + 1 < count else 0
            s_off, d_off = offsets[src], offsets[dst]
            n = _HEAD.unpack_from(buf, s_off)[1]
            buf[d_off + TX_DATA_OFFSET : d_off + TX_DATA_OFFSET + n] = buf[
                s_off + TX_DATA_OFFSET : s_off + TX_DATA_OFFSET + n
            ]
            _HEAD.pack_into(buf, d_off, TP_STATUS_SEND_REQUEST, n, n)
            dst = src
        _U32.pack_into(buf, offsets[dst], TP_STATUS_AVAILABLE)
        self._head = dst
        self._queued -= 1

    def unqueue(self) -> int:
        """Give back every queued slot (``AVAILABLE``, nothing sent); return how many there were.

        Used when a kick stopped early: the caller still holds those frames and writes them again,
        in order, when it retries; the ring itself never keeps a frame across calls.
        """
        n = self._queued
        buf = self._buf
        offsets = self._offsets
        i = self._kernel
        for _ in range(n):
            _U32.pack_into(buf, offsets[i], TP_STATUS_AVAILABLE)
            i = i + 1 if i + 1 < self._count else 0
        self._head = self._kernel
        self._queued = 0
        return n
