"""A packet socket receiving through a PACKET_MMAP ring: the drop-in sibling of ``PacketReceiver``.

:class:`RingReceiver` has the interface of :class:`rawtransport.link.PacketReceiver` (``fileno``,
``set_filter``, ``recv``, ``statistics``, ``close``, ``sock``, ``kernel_packets``, ``kernel_drops``,
``ignores_outgoing``), so an endpoint can use either. Frames are read straight out of memory
shared with the kernel: no syscall per frame, and one fewer copy. ``version=2`` (TPACKET_V2) hands
each frame over as soon as it is written, for request/response traffic; ``version=3`` (TPACKET_V3)
hands over whole blocks, for bulk receive, at the price of up to one block timer period
(``block_timeout_ms``) of latency (PERF.md).

Setup order (RAWPATH.md trap 5): socket with protocol 0 -> BPF filter -> ``PACKET_VERSION`` ->
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
import errno
import mmap
import socket
import struct
from typing import Final

from rawtransport.bpf import Program
from rawtransport.bpf_filter import drop_all
from rawtransport.engine import FrameMeta
from rawtransport.link import (
    ETH_P_ALL,
    PACKET_IGNORE_OUTGOING,
    PACKET_STATISTICS,
    SOL_PACKET,
    SocketReader,
    attach_filter,
    bind_ll,
    open_packet_socket,
)
from rawtransport.ring import TP_STATUS_COPY, RingGeometry, V2Walker, V3Walker

__all__ = ["RingReceiver", "default_geometry"]

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
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, geometry.request())
            ring = mmap.mmap(
                sock.fileno(),
                geometry.size,
                flags=mmap.MAP_SHARED,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
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

    def recv(self) -> tuple[memoryview, FrameMeta]:
        """The next frame in the ring (``BlockingIOError`` when none is ready).

        Gives the previous frame (V2) or the finished block (V3) back to the kernel first, and
        releases the view returned last. The returned view is valid until the next call.
        """
        last = self._last
        if last is not None:
            self._last = None
            last.release()
        if self._closed:
            raise OSError(errno.EBADF, "the ring receiver is closed")
        got = self._walker.next_frame()
        if got is None:
            raise BlockingIOError(errno.EAGAIN, "no frame ready in the ring")
        offset, length, meta = got
        if meta.status & TP_STATUS_COPY:
            # The slot holds a truncated copy; the whole frame waits in the socket's queue, in order.
            self._walker.release()
            try:
                return self._copies.recv()
            except BlockingIOError:
                return self._view[offset:offset], meta  # the copy was not made: truncated, dropped
        view = self._view[offset : offset + length]
        self._last = view
        return view, meta

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
