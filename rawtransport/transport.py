"""``RawDatagramTransport``: an ``asyncio.DatagramTransport`` over the raw path.

It follows CPython's ``_SelectorDatagramTransport`` contract so an unmodified
``asyncio.DatagramProtocol`` cannot tell the difference: ``connection_made`` and the reader are scheduled
with ``call_soon``; ``OSError`` from a send goes to ``error_received``; anything else is one
``_fatal_error`` and exactly one ``connection_lost``; data is buffered on EAGAIN with flow control. Only
public loop APIs (``add_reader``, ``add_writer``, ``call_soon``, ``call_at``) are used, so it runs on
uvloop too. The transport only moves bytes; the protocol logic lives in the engine.

The packet sockets belong to the loop's raw stack (:mod:`rawtransport.stack_loop`), which reads the
shared receiver and calls :meth:`RawDatagramTransport.stack_ready` when this endpoint's engine has
news; the transport owns its guard socket (ICMP errors), its write buffer and flow control.

With ``tx_mode="ring"`` writes are batched per loop iteration: ``sendto()`` buffers its
frames and schedules one flush with ``call_soon``; the read and timer callbacks flush what they
produced before returning. Each flush is one ``write_frames()`` call, one kick of the transmit ring.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections import deque
from typing import Any, final

from rawtransport.endpoint import RawUdpEndpoint
from rawtransport.engine import DatagramReceived, Event, OutgoingFrame
from rawtransport.stack_loop import LoopStack

__all__ = ["RawDatagramTransport"]

logger = logging.getLogger("rawtransport")

_DEFAULT_HIGH_WATER = 64 * 1024
#: Bytes of datagrams held while reading is paused: a kernel UDP socket's default receive buffer
#: (net.core.rmem_default).
RECEIVE_BUFFER = 212992
# What each held datagram costs against it, roughly the skb overhead the kernel charges (truesize).
_DATAGRAM_OVERHEAD = 768
_LOG_THRESHOLD_FOR_CONNLOST_WRITES = 5


def _set_result_unless_cancelled(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.set_result(None)


@final
class RawDatagramTransport(asyncio.DatagramTransport, asyncio.Transport):
    """The transport returned by ``create_raw_datagram_endpoint()``.

    Like CPython's selector datagram transport it is also an ``asyncio.Transport`` (whose
    ``is_reading``/``pause_reading``/``resume_reading`` it implements; ``write()`` is not for
    datagrams). While reading is paused, datagrams wait as in a kernel socket's receive buffer,
    up to :data:`RECEIVE_BUFFER` bytes; beyond that they are dropped and counted
    (``dropped["receive_buffer_full"]``), as the kernel's ``__udp_queue_rcv_skb()`` does.

    Beyond ``asyncio.DatagramTransport`` it answers ``get_extra_info("stats")`` (frames received,
    datagrams delivered and sent, drops by reason, kernel drops) and ``get_extra_info("packet_socket")``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        endpoint: RawUdpEndpoint,
        protocol: asyncio.DatagramProtocol,
        address: Any = None,
        waiter: asyncio.Future[None] | None = None,
        *,
        stack: LoopStack,
    ) -> None:
        super().__init__(None)
        self._loop: asyncio.AbstractEventLoop = loop
        self._ep = endpoint
        self._stack = stack
        self._protocol: asyncio.DatagramProtocol = protocol
        self._address = address
        self._buffer: deque[OutgoingFrame] = deque()
        self._buffer_size = 0
        self._writer_fd: int | None = None
        self._closing = False
        self._conn_lost = 0
        self._reading = False
        self._paused = False
        # Datagrams received while paused (the kernel socket's receive queue), and their cost.
        self._held: deque[Event] = deque()
        self._held_bytes = 0
        self._protocol_paused = False
        self._high_water = _DEFAULT_HIGH_WATER
        self._low_water = _DEFAULT_HIGH_WATER // 4
        # After connection_lost, datagrams still waiting for ARP/ND keep the sockets open until they
        # leave or fail, as a kernel socket's datagrams sit in the neighbour's queue after close().
        self._lingering = False
        self._retry: asyncio.TimerHandle | None = None
        self._backoff = 0.0
        # tx_mode="ring": sendto() queues its frames and one flush per loop iteration writes them
        # all (one kick of the transmit ring); with "direct" each sendto() writes at once.
        self._batch = endpoint.tx_mode == "ring"
        # The compiled send path (None on the pure path and in batch mode, whose frames wait).
        self._fast_tx: Any = None if self._batch else endpoint.engine.fast_sender
        self._flush_handle: asyncio.Handle | None = None
        guard = endpoint.guard
        try:
            peername = guard.getpeername()
        except OSError:
            peername = None
        self._extra: dict[str, Any] = {
            "socket": _transport_socket(guard),
            "sockname": guard.getsockname(),
            "peername": peername,
            "packet_socket": endpoint.receiver.sock,
        }
        loop.call_soon(protocol.connection_made, self)
        # Only start reading when connection_made() has been called (as selector_events does).
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter)

    # ----------------------------------------------------------------------- BaseTransport API
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """As asyncio's, plus ``"stats"`` (a fresh dict of counters) and ``"packet_socket"``."""
        if name == "stats":
            return self._ep.stats() if not self._ep.closed else default
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        """True once ``close()`` or ``abort()`` was called or the transport failed."""
        return self._closing

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol receiving this transport's callbacks."""
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol (it must be a ``DatagramProtocol``)."""
        self._protocol = protocol  # type: ignore[assignment]
        self._update_fast()

    def close(self) -> None:
        """Stop reading; ``connection_lost(None)`` follows once the write buffer has drained."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._buffer:
            self._conn_lost += 1
            self._remove_writer()
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """Close at once, discarding buffered data; ``connection_lost(None)`` follows. Datagrams
        already waiting for a neighbour's MAC still leave, as from a kernel socket."""
        self._force_close(None)

    # ------------------------------------------------------------------ flow control (writes)
    def get_write_buffer_size(self) -> int:
        """Payload bytes waiting for the packet socket to become writable."""
        return self._buffer_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """(low, high) water marks."""
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks as asyncio's transports do (high defaults to 64 KiB, low to high/4)."""
        if high is None:
            high = _DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water = high
        self._low_water = low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._buffer_size <= self._high_water or self._protocol_paused:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report(exc, "protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self._buffer_size <= self._low_water:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._report(exc, "protocol.resume_writing() failed")

    def _report(self, exc: BaseException, message: str) -> None:
        """Hand an exception raised by the protocol to the loop's exception handler, as the loop
        does for one escaping a callback: the transport goes on."""
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )

    # --------------------------------------------------------------------------------- sending
    def sendto(self, data: Any, addr: Any = None) -> None:
        """Send ``data`` to ``addr`` (or to the connected peer), as ``DatagramTransport.sendto``."""
        fast = self._fast_tx
        if (
            fast is not None
            and not self._buffer
            and not self._conn_lost
            and fast.sendto(data, addr, self._loop.time())
        ):
            return  # the compiled send path: a destination sent to before, unchanged since
        key = addr
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if not data:
            # As _SelectorDatagramTransport and uvloop do on Python 3.11/3.12: an empty sendto() is
            # dropped (gh-113812). Received empty datagrams are delivered.
            return
        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address
        if self._conn_lost:
            if self._address and self._conn_lost >= _LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        # error_received() is called inline here, unguarded, as _SelectorDatagramTransport.sendto()
        # and uvloop call it: what it raises reaches sendto()'s caller.
        if addr is None:
            # send(2) on an unconnected UDP socket: udp_sendmsg() returns -EDESTADDRREQ.
            self._protocol.error_received(
                OSError(errno.EDESTADDRREQ, os.strerror(errno.EDESTADDRREQ))
            )
            return
        try:
            self._ep.send(data, addr, self._loop.time())
        except OSError as exc:
            self._protocol.error_received(exc)
            return
        except (TypeError, ValueError, OverflowError, BufferError):
            # The caller's mistake (a malformed address, a port out of range): raised to the
            # caller as socket.sendto() raises it, and the transport stays open. The stdlib's
            # transport closes itself on these (_fatal_error()); uvloop raises them, as here.
            raise
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on datagram transport")
            return
        if self._batch:
            self._queue_output()
        else:
            self._flush_engine()
            if fast is not None and not self._buffer and not self._conn_lost:
                self._ep.learn(fast, key)  # it left at once: the next one may take the C path

    def _queue_output(self) -> None:
        """Batch mode: buffer the engine's frames now, write them once this loop iteration ends.

        The frames count in ``get_write_buffer_size()`` from here on. A burst larger than the
        high-water mark is written at once instead (bounding what one callback can pile up), and
        pauses the protocol if it cannot all leave, as an unbatched transport would.
        """
        engine = self._ep.engine
        if engine.has_output:
            frames = engine.frames_to_send()
            self._buffer.extend(frames)
            self._buffer_size += sum(f.size for f in frames)
        if self._writer_fd is not None or self._retry is not None:
            self._maybe_pause_protocol()  # waiting for room already; that wait writes these too
        elif self._buffer_size > self._high_water:
            self._flush_engine()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        if not self._conn_lost or self._lingering:
            self._flush_engine()

    def _flush_engine(self) -> None:
        """Write what the engine produced (datagrams, released pending frames, ARP/ND requests).

        Together with what ``sendto()`` queued in batch mode: everything leaves in one
        ``write_frames()`` call (one kick of the transmit ring).
        """
        if self._ep.engine.has_output:
            frames = self._ep.engine.frames_to_send()
            self._buffer.extend(frames)
            self._buffer_size += sum(f.size for f in frames)
        if self._buffer:
            if self._writer_fd is None and self._retry is None:
                self._write_buffer()
            else:
                self._maybe_pause_protocol()
        self._arm_timer()
        if self._ep.lost is not None and not self._conn_lost:
            self._fatal_error(self._ep.lost, "interface of the endpoint vanished")

    def _write_buffer(self) -> None:
        """Write the buffer until it is empty, the socket is full, or the device queue is."""
        frames = list(self._buffer)
        self._buffer.clear()
        try:
            remaining, errors, congested = self._ep.write_frames(frames)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._buffer_size = 0
            self._fatal_error(exc, "Fatal write error on datagram transport")
            return
        # Subtract exactly what was added for the frames that left (gh-135444: symmetric accounting).
        self._buffer.extend(remaining)
        self._buffer_size = sum(f.size for f in remaining)
        for err in errors:
            self._error_received(err)
        if remaining:
            if congested:
                # ENOBUFS: the device queue (qdisc) is full and the socket stays writable, so
                # add_writer would spin. Keep the frames, back off, and retry (kernel UDP would have
                # dropped them silently; we keep them and apply flow control instead).
                self._remove_writer()
                # Back off exponentially while nothing leaves; start over once the queue moves.
                progress = len(remaining) < len(frames)
                self._backoff = 0.0005 if progress else min(max(self._backoff * 2, 0.0005), 0.05)
                self._retry = self._loop.call_later(self._backoff, self._retry_write)
            else:
                self._add_writer(remaining[0].ifindex)
            self._maybe_pause_protocol()
            return
        self._backoff = 0.0
        self._remove_writer()
        self._maybe_resume_protocol()
        if self._closing and not self._conn_lost:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def _retry_write(self) -> None:
        self._retry = None
        if not self._conn_lost or self._lingering:
            self._write_buffer()

    def _add_writer(self, ifindex: int) -> None:
        fd = self._ep.sender_fileno(ifindex)
        if self._writer_fd != fd:
            self._remove_writer()
            self._writer_fd = fd
            self._loop.add_writer(fd, self._write_ready)

    def _remove_writer(self) -> None:
        if self._writer_fd is not None:
            self._loop.remove_writer(self._writer_fd)
            self._writer_fd = None

    def _write_ready(self) -> None:
        self._remove_writer()
        self._write_buffer()

    # -------------------------------------------------------------------------------- reading
    def _start_reading(self) -> None:
        if self._closing or self._reading:
            return
        self._reading = True
        self._stack.attach(self._ep.engine, self)
        self._loop.add_reader(self._ep.guard.fileno(), self._guard_ready)
        # Datagrams that arrived between the registration and now wait in the engine.
        self.stack_ready()
        self._update_fast()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._ep.guard.fileno())
        self._update_fast()

    def _update_fast(self) -> None:
        """Let the compiled receive path call the protocol directly exactly while this transport
        would dispatch each datagram at once (reading, not paused, nothing held, not closing);
        otherwise datagrams queue in the engine and take the path above."""
        on = self._reading and not (self._paused or self._held or self._closing or self._conn_lost)
        self._ep.engine.set_fast_protocol(self._protocol if on else None, self._report_received)

    def _report_received(self, exc: BaseException) -> None:
        self._report(exc, "Exception in datagram_received/error_received")

    # ------------------------------------------------------------------ ReadTransport API
    def is_reading(self) -> bool:
        """True unless reading is paused or the transport is closing."""
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        """Stop calling ``datagram_received()``; datagrams wait (see the class docstring)."""
        if self.is_reading():
            self._paused = True
            self._update_fast()

    def resume_reading(self) -> None:
        """Deliver what waited, then go on delivering."""
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held:
            self._loop.call_soon(self._deliver_held)
        else:
            self._update_fast()

    def _deliver_held(self) -> None:
        if self._paused or self._closing:
            return
        events = list(self._held)
        self._held.clear()
        self._held_bytes = 0
        self._dispatch(events)
        self._flush_engine()
        self._update_fast()

    def _hold(self, events: list[Event]) -> None:
        for event in events:
            cost = (
                len(event.data) + _DATAGRAM_OVERHEAD if isinstance(event, DatagramReceived) else 0
            )
            if self._held_bytes + cost > RECEIVE_BUFFER:
                self._ep.engine.count_drop("receive_buffer_full")
                continue
            self._held.append(event)
            self._held_bytes += cost

    def stack_ready(self) -> None:
        """The stack fed the engine (datagrams, errors, frames a neighbour reply released)."""
        if self._conn_lost:
            self._linger_step()
            return
        if self._closing:
            # The kernel socket would have kept these datagrams queued and unread until close;
            # count them rather than call a closing protocol. close() waits for the buffer, and
            # frames a neighbour reply released join it.
            events = self._ep.engine.events()
            self._ep.engine.count_drop(
                "closed", sum(isinstance(e, DatagramReceived) for e in events)
            )
            self._flush_engine()
            return
        if self._paused or self._held:
            # Held datagrams go first (resume_reading() delivers them on the next iteration).
            self._hold(self._ep.engine.events())
        else:
            self._dispatch(self._ep.engine.events())
        self._flush_engine()

    def netlink_changed(self) -> None:
        """Routes, addresses or links changed: a vanished interface ends the transport."""
        if self._ep.lost is not None and not self._conn_lost:
            self._fatal_error(self._ep.lost, "interface of the endpoint vanished")

    def read_error(self, exc: OSError) -> None:
        """Reading the stack's packet socket failed: the protocol hears it, as from recvfrom()."""
        if not self._conn_lost and not self._closing:
            self._error_received(exc)

    def _guard_ready(self) -> None:
        exc = self._ep.guard_ready()
        if exc is not None and not self._conn_lost:
            self._error_received(exc)

    def _dispatch(self, events: list[Event]) -> None:
        protocol = self._protocol
        for i, event in enumerate(events):
            if self._closing:
                # The protocol closed us mid-batch: the kernel socket would have kept these datagrams
                # queued and unread until close; count them rather than call a closed protocol.
                self._ep.engine.count_drop("closed", len(events) - i)
                return
            try:
                if isinstance(event, DatagramReceived):
                    protocol.datagram_received(event.data, event.addr)
                else:
                    protocol.error_received(event.exc)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                # A faulty protocol must not cost the rest of the batch: report it the way the loop
                # reports an exception escaping a callback, and go on.
                self._report(exc, "Exception in datagram_received/error_received")

    def _error_received(self, exc: OSError) -> None:
        try:
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as err:
            self._report(err, "Exception in error_received")

    def _arm_timer(self) -> None:
        # Neighbour retransmits and fragment expiry are the shared host's: the stack runs them.
        self._stack.arm_timer()

    # ------------------------------------------------------------------------------- shutdown
    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if isinstance(exc, OSError):
            logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._report(exc, message)
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._buffer_size = 0
            self._remove_writer()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            self._stop_reading()
            if exc is None and self._ep.engine.pending_resolution:
                # Datagrams waiting for a neighbour are in the kernel's neighbour queue on the
                # kernel path, not the socket's: they leave after close() and abort() alike (abort
                # discards the write buffer only). The stack calls stack_ready() when the neighbour
                # answers or fails.
                self._lingering = True
            else:
                self._release()

    def _linger_step(self) -> None:
        """After connection_lost: send what resolved (datagrams queued on a neighbour leave after a
        kernel socket's close() too); nobody is listening any more, so received datagrams are
        counted. The last pending datagram gone, a lingering transport releases its endpoint."""
        engine = self._ep.engine
        events = engine.events()
        engine.count_drop("closed", sum(isinstance(e, DatagramReceived) for e in events))
        if engine.has_output:
            remaining, _errors, _congested = self._ep.write_frames(engine.frames_to_send())
            engine.count_drop("linger_unsent", sum(1 for f in remaining if f.size))
        if self._lingering and not engine.pending_resolution:
            self._release()

    def _release(self) -> None:
        self._lingering = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._remove_writer()
        if self._held:  # paused until the end: the kernel frees a closed socket's queue too
            held = sum(isinstance(e, DatagramReceived) for e in self._held)
            self._ep.engine.count_drop("closed", held)
            self._held.clear()
        self._stack.release(self._ep)

    def __repr__(self) -> str:
        state = "closed" if self._conn_lost else "closing" if self._closing else "open"
        return f"<RawDatagramTransport {state} sockname={self._extra.get('sockname')!r}>"


def _transport_socket(sock: Any) -> Any:
    """The guard socket wrapped as asyncio wraps its own (``asyncio.trsock.TransportSocket``)."""
    try:
        from asyncio import trsock

        return trsock.TransportSocket(sock)
    except ImportError:  # pragma: no cover - every supported Python has it
        return sock
