"""Packet sockets with PACKET_MMAP rings: ``RingReceiver`` (receive) and ``TxRing`` (transmit).

``TxRing`` (at the end) is the batched send path: frames are copied into a ``PACKET_TX_RING`` and
one ``send()`` hands them all to the device; see :mod:`rawtransport.tx_ring` for the slot protocol.

:class:`RingReceiver` has the interface of :class:`rawtransport.link.PacketReceiver` (``fileno``,
``set_filter``, ``recv``, ``statistics``, ``close``, ``sock``, ``kernel_packets``, ``kernel_drops``,
``ignores_outgoing``), so an endpoint can use either. Frames are read straight out of memory
shared with the kernel: no syscall per frame, and one fewer copy. ``version=2`` (TPACKET_V2) hands
each frame over as soon as it is written, for request/response traffic; ``version=3`` (TPACKET_V3)
hands over whole blocks, for bulk receive, at the price of up to one block timer period
(``block_timeout_ms``) of latency (docs/bench/bench.md: ~1 ms per round trip).

Setup order (tools/testing/selftests/net/psock_tpacket.c too opens with protocol 0, sets
the filter and binds last): socket with protocol 0 -> BPF filter -> ``PACKET_VERSION`` ->
``PACKET_RX_RING`` -> ``mmap`` -> ``bind``; nothing can land in the ring before the filter is on.

The ring walking itself (header layouts, geometry checks, bounds checks on every header the kernel
writes) is the pure :mod:`rawtransport.ring`; this module only maps the memory and drives it.

Buffer lifetime: ``recv()`` returns a memoryview *into the ring*. It is valid until the next
``recv()``, which gives the slot back to the kernel and releases that view (using it afterwards
raises ``ValueError`` instead of reading a frame the kernel is rewriting). Copy what you need first,
and keep no derived views (slices of it) beyond that: ``close()`` can only unmap the ring when no
view of it is left; if one is, the mapping is left to be freed with the last view, after the
socket has been given a drop-all filter so nothing more lands in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import socket
import struct
import time
from typing import Any, Final

from rawtransport.bpf import Program
from rawtransport.bpf_filter import drop_all
from rawtransport.datapath import ACCEL
from rawtransport.engine_types import FrameMeta
from rawtransport.link import (
    ETH_P_ALL,
    PACKET_IGNORE_OUTGOING,
    PACKET_QDISC_BYPASS,
    PACKET_STATISTICS,
    SOL_PACKET,
    PacketReceiver,
    PacketSender,
    SocketReader,
    attach_filter,
    bind_ll,
    open_packet_socket,
)
from rawtransport.ring import TP_STATUS_COPY, RingGeometry, V2Walker, V3Walker, frame_meta
from rawtransport.tx_ring import TX_DATA_OFFSET, TxRingWriter

__all__ = ["RX_MODES", "open_receiver", "RingReceiver", "TxRing", "default_geometry", "tx_geometry"]

PACKET_RX_RING: Final = 5
PACKET_COPY_THRESH: Final = 7
PACKET_VERSION: Final = 10
# struct tpacket_stats { u32 tp_packets, tp_drops; };
# struct tpacket_stats_v3 { u32 tp_packets, tp_drops, tp_freeze_q_cnt; }
_STATS_V2 = struct.Struct("=II")
_STATS_V3 = struct.Struct("=III")

# Defaults: V2 frames of 2 KiB hold a 1500-byte-MTU Ethernet frame after the ~66-byte header; 2048
# of them in 4 MiB. V3 blocks of 1 MiB (a 64 KiB GSO frame still fits in one), 8 of them; the 1 ms
# block timer bounds the latency V3 adds.
_DEFAULTS: Final = {
    2: {"block_size": 1 << 16, "block_count": 64, "frame_size": 2048, "retire_blk_tov": 0},
    3: {"block_size": 1 << 20, "block_count": 8, "frame_size": 2048, "retire_blk_tov": 1},
}


def _map_ring(sock: socket.socket, geometry: RingGeometry) -> mmap.mmap:
    """Map the ring the kernel just allocated (after PACKET_RX_RING / PACKET_TX_RING)."""
    return mmap.mmap(
        sock.fileno(), geometry.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
    )


def default_geometry(
    version: int = 2,
    *,
    block_size: int | None = None,
    block_count: int | None = None,
    frame_size: int | None = None,
    block_timeout_ms: int | None = None,
) -> RingGeometry:
    """A validated :class:`RingGeometry` for this machine's page size, defaults filled in."""
    if version not in _DEFAULTS:
        raise ValueError(f"version must be 2 (TPACKET_V2) or 3 (TPACKET_V3), not {version!r}")
    d = _DEFAULTS[version]
    return RingGeometry(
        version=version,
        block_size=d["block_size"] if block_size is None else block_size,
        block_count=d["block_count"] if block_count is None else block_count,
        frame_size=d["frame_size"] if frame_size is None else frame_size,
        page_size=mmap.PAGESIZE,
        retire_blk_tov=d["retire_blk_tov"] if block_timeout_ms is None else block_timeout_ms,
    )


_libc = ctypes.CDLL(None, use_errno=True)


def setsockopt_unlocked(sock: socket.socket, level: int, option: int, value: bytes) -> None:
    """``sock.setsockopt(level, option, value)`` without holding the GIL.

    CPython's ``socket.setsockopt`` keeps the GIL through the system call, and setting up a ring
    waits in the kernel for milliseconds (``packet_set_ring()`` -> ``synchronize_net()``): on the
    thread that opens an endpoint (rawtransport.workers) that would stall the event loop's thread
    all the same. A ctypes call releases the GIL for the call's duration.
    """
    buf = ctypes.create_string_buffer(value, len(value))
    if _libc.setsockopt(sock.fileno(), level, option, buf, ctypes.c_uint(len(value))) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class RingReceiver:
    """The receiving packet socket of an endpoint, read through a TPACKET_V2 or V3 ring.

    Same interface as :class:`rawtransport.link.PacketReceiver`. ``rcvbuf`` is accepted for that
    reason and applied, but frames go to the ring, whose size (``block_size * block_count``) is what
    bounds the backlog. Frames larger than a V2 slot (``frame_size`` minus the ~66-byte header) or a
    V3 block arrive truncated and are dropped by the engine as such. ``ring_corrupt`` counts ring
    headers the walker refused (never expected from a sane kernel).
    """

    def __init__(
        self,
        program: Program,
        *,
        ifindex: int = 0,
        version: int = 2,
        block_size: int | None = None,
        block_count: int | None = None,
        frame_size: int | None = None,
        block_timeout_ms: int | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        # Validate before opening anything: a bad geometry is a caller error, not an OSError.
        self.geometry = geometry = default_geometry(
            version,
            block_size=block_size,
            block_count=block_count,
            frame_size=frame_size,
            block_timeout_ms=block_timeout_ms,
        )
        self.version = version
        self.sock = sock = open_packet_socket()
        ring: mmap.mmap | None = None
        try:
            attach_filter(sock, program)
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                self.ignores_outgoing = True
            except OSError:  # kernels before 4.20: the engine drops PACKET_OUTGOING instead
                self.ignores_outgoing = False
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            # PACKET_VERSION must precede PACKET_RX_RING: the layout is fixed when the ring is made.
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, geometry.kernel_version)
            if version == 2:
                # A frame too big for its slot is then also queued whole on the socket
                # (tpacket_rcv(): TP_STATUS_COPY), so nothing a link can carry is lost to the slot
                # size: slots can be sized for the wire's MTU, not for loopback's 64 KiB.
                sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
            setsockopt_unlocked(sock, SOL_PACKET, PACKET_RX_RING, geometry.request())
            ring = _map_ring(sock, geometry)
            self._ring = ring
            self._view = memoryview(ring)
            self._walker: V2Walker | V3Walker = (
                V2Walker(self._view, geometry) if version == 2 else V3Walker(self._view, geometry)
            )
            bind_ll(sock, ifindex, ETH_P_ALL)
        except BaseException:
            if ring is not None:
                with contextlib.suppress(NameError, AttributeError, BufferError):
                    self._view.release()
                with contextlib.suppress(BufferError):
                    ring.close()
            sock.close()
            raise
        self._last: memoryview | None = None
        self._copies = SocketReader(sock)
        self._closed = False
        self.kernel_drops = 0
        self.kernel_packets = 0
        #: V3 only: times the kernel found no free block and froze the queue (tp_freeze_q_cnt).
        self.kernel_freezes = 0

    def fileno(self) -> int:
        """The socket's descriptor: readable (``packet_poll()``) when a frame or block is ready."""
        return self.sock.fileno()

    def set_filter(self, program: Program) -> None:
        """Swap the filter without letting unfiltered frames in (SO_ATTACH_FILTER is atomic)."""
        attach_filter(self.sock, program)

    @property
    def ring_corrupt(self) -> dict[str, int]:
        """Ring headers the walker refused and skipped, by reason."""
        return self._walker.corrupt

    @property
    def ring_resyncs(self) -> dict[str, int]:
        """Jumps over ring slots (V2) or blocks (V3) the kernel left behind, and how many were passed
        over (``resyncs``, ``skipped``): see :meth:`rawtransport.ring.V2Walker.resync`."""
        return {"resyncs": self._walker.resyncs, "skipped": self._walker.resync_skipped}

    def recv(self) -> tuple[memoryview, FrameMeta]:
        """The next frame in the ring (``BlockingIOError`` when none is ready).

        Gives the previous frame (V2) or the finished block (V3) back to the kernel first, and
        releases the view returned last. The returned view is valid until the next call.
        """
        self._give_back_last()
        got = self._walker.next_frame()
        # The kernel can leave the walker's slot behind with frames ready after it (see
        # V2Walker.resync): callers come back while packet_poll() says readable, and resync() jumps
        # once that wait has lasted. Until then it reads nothing but the clock.
        if got is None and (
            not self._walker.resync(time.monotonic()) or (got := self._walker.next_frame()) is None
        ):
            raise BlockingIOError(errno.EAGAIN, "no frame ready in the ring")
        offset, length, meta = got
        if meta.status & TP_STATUS_COPY:
            self._walker.release()
            return self._copied(meta)
        view = self._view[offset : offset + length]
        self._last = view
        return view, meta

    def recv_batch(self, budget: int) -> list[tuple[bytes | memoryview, FrameMeta]]:
        """Up to ``budget`` frames, each copied out of the ring (V2: its slot is given back at
        once); ``[]`` when none is ready. What :meth:`recv` returns, in the same order, in one
        call (one C call with the compiled datapath) instead of one per frame."""
        walker = self._walker
        if not isinstance(walker, V2Walker):
            out: list[tuple[bytes | memoryview, FrameMeta]] = []
            for _ in range(budget):
                try:
                    view, meta = self.recv()
                except BlockingIOError:
                    break
                out.append((bytes(view), meta))
            return out
        self._give_back_last()
        frames = walker.next_batch(budget)
        if not frames and walker.resync(time.monotonic()):  # see recv()
            frames = walker.next_batch(budget)
        return [self._whole(data, meta) for data, meta in frames]

    @property
    def can_deliver(self) -> bool:
        """Whether :meth:`recv_fast` works here: a TPACKET_V2 ring and the compiled datapath."""
        return ACCEL is not None and isinstance(self._walker, V2Walker)

    def recv_fast(
        self, budget: int, fast: Any
    ) -> tuple[int, tuple[bytes | memoryview, FrameMeta] | None]:
        """:meth:`recv_batch` through the compiled receive path (``V2Walker.deliver_batch``):
        frames the host's ``fast`` view can take are delivered to their protocols here; the
        walk stops at the first it cannot, returned (whole) for the Python path. ``(taken,
        frame or None)``; only where :attr:`can_deliver`."""
        walker = self._walker
        assert isinstance(walker, V2Walker)
        self._give_back_last()
        taken, slow = walker.deliver_batch(budget, fast)
        if not taken and slow is None and walker.resync(time.monotonic()):  # see recv()
            taken, slow = walker.deliver_batch(budget, fast)
        return taken, None if slow is None else self._whole(slow[0], slow[1])

    def _whole(self, data: bytes | None, meta: FrameMeta) -> tuple[bytes | memoryview, FrameMeta]:
        if data is not None:
            return data, meta
        view, whole = self._copied(meta)
        return bytes(view), whole

    def _give_back_last(self) -> None:
        """Release the view returned last (its slot may then be given back); refuse when closed."""
        last = self._last
        if last is not None:
            self._last = None
            last.release()
        if self._closed:
            raise OSError(errno.EBADF, "the ring receiver is closed")

    def _copied(self, meta: FrameMeta) -> tuple[memoryview, FrameMeta]:
        """A TP_STATUS_COPY slot's frame: the slot held a truncated copy, the whole frame waits in
        the socket's queue, in order. Its view is valid until the next read."""
        try:
            view, _ = self._copies.recv()
        except BlockingIOError:
            return self._view[0:0], meta  # the copy was not made: truncated, dropped
        # tpacket_rcv() fills only the slot's header, not the copy's address or aux data: the
        # slot's facts describe the frame (pkttype matters: never lose OUTGOING/OTHERHOST).
        whole = frame_meta(
            meta.ifindex, meta.pkttype, meta.status & ~TP_STATUS_COPY, meta.hatype, False
        )
        return view, whole

    def statistics(self) -> tuple[int, int]:
        """Accumulated (packets, drops) from ``PACKET_STATISTICS``, which the kernel clears on read.

        With a ring, drops are frames that found the ring full (the next slot, or for V3 every
        block, still held by user space).
        """
        if self.version == 3:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
            packets, drops, freezes = _STATS_V3.unpack(raw)
            self.kernel_freezes += freezes
        else:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V2.size)
            packets, drops = _STATS_V2.unpack(raw)
        self.kernel_packets += packets
        self.kernel_drops += drops
        return self.kernel_packets, self.kernel_drops

    def close(self) -> None:
        """Unmap the ring (when no view of it is left) and close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._last is not None:
            self._last.release()
            self._last = None
        unmapped = False
        with contextlib.suppress(BufferError):
            self._view.release()
            self._ring.close()
            unmapped = True
        if not unmapped:
            # A caller still holds a view into the ring. mmap keeps its own dup of the socket's
            # descriptor, so the socket would live on with the mapping and keep filling it: stop
            # that, and let the mapping go with the last view.
            with contextlib.suppress(OSError):
                attach_filter(self.sock, drop_all())
        self.sock.close()


PACKET_TX_RING: Final = 13
#: Slots of a transmit ring unless told otherwise. With 2 KiB slots that is 1 MiB per interface, and
#: more frames than the default socket send buffer (``wmem_default``, 208 KiB) can hold in flight,
#: so a full send buffer (``EAGAIN``, which ``poll`` does report) normally comes before a full ring.
TX_DEFAULT_SLOTS: Final = 512
#: Cap on one transmit ring's memory; slots shrink in number for jumbo frames.
TX_MAX_BYTES: Final = 4 << 20
# Room in a slot beyond the MTU: the Ethernet header, one 802.1Q tag, the slot header.
_TX_SLOT_OVERHEAD: Final = 14 + 4 + TX_DATA_OFFSET


def tx_geometry(mtu: int, slots: int | None = None) -> RingGeometry:
    """A validated TPACKET_V2 geometry for a transmit ring on a link of ``mtu`` bytes.

    Slots are the smallest power of two (at least 2 KiB) holding a frame of the MTU plus headers;
    each block is one slot or one page, whichever is larger, so no block needs more than one
    page-order allocation of that size.
    """
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise ValueError(f"mtu must be an int in [68, 65535], not {mtu!r}")
    frame = max(2048, 1 << (mtu + _TX_SLOT_OVERHEAD - 1).bit_length())
    if slots is None:
        slots = max(16, min(TX_DEFAULT_SLOTS, TX_MAX_BYTES // frame))
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise ValueError(f"slots must be a positive int, not {slots!r}")
    block = max(mmap.PAGESIZE, frame)
    per_block = block // frame
    return RingGeometry(
        version=2,
        block_size=block,
        block_count=-(-slots // per_block),
        frame_size=frame,
        page_size=mmap.PAGESIZE,
    )


class TxRing:
    """A send-only packet socket on one interface whose frames go through a ``PACKET_TX_RING``.

    :meth:`put` copies a frame into the next free slot; :meth:`kick` makes one ``send()`` syscall
    that hands every queued slot to the device, in order, and reports what the kernel did with them
    (see :mod:`rawtransport.tx_ring`). Frames too long for a slot (the MTU grew after the ring was
    made) go out through :meth:`send_direct`, a plain ``send()`` on a second socket opened for it.

    Setup order: socket with protocol 0 (it never receives) -> drop-all filter -> ``PACKET_VERSION``
    -> ``PACKET_QDISC_BYPASS`` if asked -> ``PACKET_TX_RING`` -> ``mmap`` -> ``bind`` to the interface.
    """

    def __init__(
        self,
        ifindex: int,
        *,
        mtu: int = 1500,
        slots: int | None = None,
        qdisc_bypass: bool = False,
    ) -> None:
        self.geometry = geometry = tx_geometry(mtu, slots)
        self.ifindex = ifindex
        self._qdisc_bypass = qdisc_bypass
        self._direct: PacketSender | None = None
        self.sock = sock = open_packet_socket()
        ring: mmap.mmap | None = None
        try:
            attach_filter(sock, drop_all())
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, geometry.kernel_version)
            if qdisc_bypass:
                sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            setsockopt_unlocked(sock, SOL_PACKET, PACKET_TX_RING, geometry.request())
            ring = _map_ring(sock, geometry)
            self._ring = ring
            self._view = memoryview(ring)
            self.writer = TxRingWriter(self._view, geometry)
            bind_ll(sock, ifindex, 0)
        except BaseException:
            if ring is not None:
                with contextlib.suppress(NameError, AttributeError, BufferError):
                    self._view.release()
                with contextlib.suppress(BufferError):
                    ring.close()
            sock.close()
            raise
        self.put = self.writer.put
        self.max_frame = self.writer.max_frame
        self._closed = False
        #: ``send()`` kicks made.
        self.kicks = 0

    @property
    def queued(self) -> int:
        """Frames written since the last kick and not taken by it."""
        return self.writer.queued

    @property
    def wrong_format(self) -> int:
        """Frames the kernel refused (``TP_STATUS_WRONG_FORMAT``)."""
        return self.writer.wrong_format

    def fileno(self) -> int:
        """The ring socket's descriptor: writable (``POLLOUT``) while its send buffer has room."""
        return self.sock.fileno()

    def kick(self) -> tuple[int, bool, OSError | None]:
        """One ``send()``: the kernel transmits every queued slot it can, in order.

        Returns ``(taken, rejected, error)``: the number of queued frames that left the queue
        (oldest first); whether the next one was refused (``TP_STATUS_WRONG_FORMAT``: taken out of
        the ring, ``error`` says why, frames behind it still queued for another kick); and the
        ``OSError`` the kick raised, if any. Frames still queued without a refusal were not taken:
        the send buffer (``EAGAIN``, or a short count) or the device queue (``ENOBUFS``) is full.
        """
        if self._closed:
            raise OSError(errno.EBADF, "the transmit ring is closed")
        self.kicks += 1
        error: OSError | None = None
        try:
            # Non-blocking socket: tpacket_snd() gets MSG_DONTWAIT and never waits for completions.
            self.sock.send(b"")
        except OSError as exc:
            error = exc
        taken, rejected = self.writer.settle()
        return taken, rejected, error

    def unqueue(self) -> int:
        """Take back the frames still queued after a kick (they were not sent); return the count."""
        return self.writer.unqueue()

    def send_direct(self, frame: bytes) -> None:
        """Send one frame without the ring (``packet_snd()``), for frames longer than a slot.

        A socket with a TX ring only ever sends from it (``packet_sendmsg()``), hence a second one.
        """
        if self._direct is None:
            self._direct = PacketSender(self.ifindex, qdisc_bypass=self._qdisc_bypass)
        self._direct.send(frame)

    def close(self) -> None:
        """Unmap the ring and close the socket(s). Idempotent.

        Frames still in flight keep their pages alive in the kernel until they are freed.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(BufferError):
            self._view.release()
            self._ring.close()
        if self._direct is not None:
            self._direct.close()
        self.sock.close()


Receiver = PacketReceiver | RingReceiver

RX_MODES = ("ring", "bulk", "recv")


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def open_receiver(
    program: Program, rx_mode: str, *, ifindex: int, rcvbuf: int | None, mtu: int
) -> Receiver:
    """The receiving packet socket for ``rx_mode`` (see ``create_raw_datagram_endpoint``).

    Ring slots are sized for ``mtu``; a larger frame (loopback's, or after an MTU increase) is still
    delivered whole through the TPACKET_V2 copy path (``PACKET_COPY_THRESH``).
    """
    if rx_mode == "recv":
        return PacketReceiver(program, ifindex=ifindex, rcvbuf=rcvbuf)
    if rx_mode not in RX_MODES:
        raise ValueError(f"rx_mode must be one of {RX_MODES}, not {rx_mode!r}")
    # Link header, a VLAN tag, the tpacket header and the sockaddr_ll before the frame.
    frame = max(2048, _pow2_at_least(mtu + 18 + 128))
    if rx_mode == "ring":
        # TPACKET_V2: every frame is handed over on its own, at once (the latency mode).
        block = max(65536, frame)
        count = max(64 * frame // block, (4 << 20) // block)
        return RingReceiver(
            program,
            ifindex=ifindex,
            version=2,
            block_size=block,
            block_count=count,
            frame_size=frame,
            rcvbuf=rcvbuf,
        )
    # TPACKET_V3: frames are handed over a block at a time (when full or when its 1 ms timer
    # fires): fewer wake-ups for bulk receive, up to a millisecond more latency (docs/bench/bench.md).
    block = max(1 << 20, frame)
    return RingReceiver(
        program,
        ifindex=ifindex,
        version=3,
        block_size=block,
        block_count=max(8, (8 << 20) // block),
        rcvbuf=rcvbuf,
    )
