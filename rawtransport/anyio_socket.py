"""anyio's UDP socket API on the raw path: runs unchanged on asyncio, asyncio+uvloop and trio.

:func:`create_raw_udp_socket` and :func:`create_raw_connected_udp_socket` take the arguments of
``anyio.create_udp_socket()`` / ``anyio.create_connected_udp_socket()`` (plus a few keyword-only knobs
of the raw path) and return :class:`RawUDPSocket` / :class:`RawConnectedUDPSocket`, which implement
``anyio.abc.UDPSocket`` / ``anyio.abc.ConnectedUDPSocket``. The protocol logic is the asyncio endpoint's
(:class:`~rawtransport.endpoint.RawUdpEndpoint` and its engine); this module only queues and waits.

**One stack per event-loop run.** The sockets of a run that agree on the stack's knobs (``interface``,
``rx_mode``, ``tx_mode``, ``rcvbuf``, ``qdisc_bypass``) and live in one network namespace share one
raw stack (:mod:`rawtransport.stack_anyio`): one receiving packet socket and ring, one sender per
interface, the rtnetlink monitor, the neighbour table and the reassembler. The first socket of a run
opens it on a worker thread (the ring setup waits in the kernel for milliseconds) and sockets created
meanwhile wait for that opening; every later socket is a guard UDP socket and an entry in the stack's
table, made on the event-loop thread in microseconds (``reuse_port`` and ``kernel_bypass`` add a step
off the loop: a fanout ring, an nftables rule). The stack stays
:data:`~rawtransport.stack_loop.LINGER` seconds after its last socket closed, so a
one-socket-per-query client resolves its next hop once, and closes when the run ends.

**Waiting** uses nothing but ``anyio.wait_readable``/``wait_writable``, cancel scopes and events, so it
is the same on every backend. trio lets only one task wait on a descriptor at a time, yet frames must
be read even when the user only sends (an ARP/ND reply releases a datagram waiting for its next hop).
So every wait of every socket of a stack happens in one place, the stack's *pump*: a task that needs
progress (``receive()`` with an empty queue, ``send()`` whose datagram waits for its neighbour or for
a writable socket) pumps if no other task does, else sleeps until the pumper hands its socket news
(or hands it the pump). The pumper reads the shared receiver into every socket's queue and waits
until the receiver is readable (or a connected socket's guard, where ICMP errors land; or a sending
socket writable while frames are held back), at the latest until the host's next timer (ARP/ND
retransmit or failure, fragment expiry).

Semantics (where anyio's own backends differ, the kernel socket is the reference):

- **Receive queue**: datagrams read by the pump wait in a queue of ``receive_queue`` datagrams (default
  1024). When it is full the newest datagram is dropped, as a full kernel socket buffer drops, and
  counted as ``dropped["receive_queue_full"]`` in the stats (anyio's asyncio backend silently keeps the
  last 100). A cancelled ``receive()`` loses nothing. As a kernel socket's buffer fills while its
  owner does not read, a socket's queue fills while other sockets of the stack pump.
- **send()** returns once the datagram's frames are handed to the kernel. To a neighbour not yet in the
  cache it first waits for the ARP/ND reply (one round trip; if the neighbour never answers, about
  ``max_attempts × retransmit_interval`` = 3 s, after which the datagram is dropped and counted as
  ``neighbour_failed``). A ``send()`` cancelled during that wait leaves its datagram queued for the
  neighbour, as a kernel socket's datagram is queued in the neighbour entry once ``sendto()`` returned:
  it leaves when a later pump round reads the reply, or is counted as ``closed_unsent`` at ``aclose()``.
  The neighbour table is the stack's, shared by its sockets as the kernel's is.
- **Errors** of a connected socket (ICMP port unreachable -> ``ConnectionRefusedError``, an unresolvable
  peer -> ``EHOSTUNREACH``) and read errors of the packet socket are held like the kernel's ``sk_err``:
  the next ``receive()`` or ``send()`` raises the ``OSError`` itself, once (anyio's trio backend raises
  ``BrokenResourceError`` from it; its asyncio backend stores it and never raises it). A read error
  of the shared packet socket is held by every socket of the stack.
- **Closing**: ``aclose()`` wakes any task blocked in ``receive()``/``send()``, which then raise
  ``ClosedResourceError``, as does every later call (queued datagrams are discarded and counted as
  ``closed``). Two tasks in ``receive()`` (or in ``send()``) at once: ``BusyResourceError``. A socket
  still open when the event-loop run ends is closed with its stack.
- **A vanished interface** (the one given as ``interface=`` or holding the bound address) breaks the
  socket for good: the next ``receive()``/``send()`` raises ``BrokenResourceError`` from the
  ``ENETDOWN``. Routing and address changes are read from rtnetlink at each pump pass and each send,
  not waited for: a ``receive()`` blocked on a wildcard socket notices them with the next frame,
  as a kernel socket bound to a vanished address would simply go on waiting.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from socket import AddressFamily
from typing import Any, Literal, TypeVar, final

import anyio
from anyio import (
    BrokenResourceError,
    CancelScope,
    ClosedResourceError,
    TypedAttributeSet,
    typed_attribute,
)
from anyio.abc import ConnectedUDPSocket, IPAddressType, IPSockAddrType, UDPSocket
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from rawtransport.addresses import raw_peer
from rawtransport.endpoint import RawUdpEndpoint, filter_entry, reuse_port, stack_options
from rawtransport.engine import DatagramReceived, Event, OutgoingFrame
from rawtransport.stack import StackOptions
from rawtransport.stack_anyio import AnyioStack, anyio_stack, run_off_loop

logger = logging.getLogger(__name__)

__all__ = [
    "RawConnectedUDPSocket",
    "RawSocketAttribute",
    "RawUDPSocket",
    "create_raw_connected_udp_socket",
    "create_raw_udp_socket",
]

AnyIPAddressFamily = Literal[AddressFamily.AF_UNSPEC, AddressFamily.AF_INET, AddressFamily.AF_INET6]

#: Default bound of the receive queue, in datagrams.
DEFAULT_RECEIVE_QUEUE = 1024


class RawSocketAttribute(TypedAttributeSet):
    """Typed attributes the raw path adds to anyio's ``SocketAttribute`` (read with ``sock.extra()``).

    ``stats``: a fresh dict of counters (frames received, datagrams delivered and sent, drops by
    reason, the receive queue's length and bound; shared with the other sockets of the stack: the
    neighbour table's counters, the kernel's ``PACKET_STATISTICS`` of the receiving socket, and
    ``"stack"``, the stack-wide view); after ``aclose()`` the last snapshot. ``packet_socket``: the
    stack's receiving ``AF_PACKET`` socket, shared by its sockets (read it only for its options;
    reading from it steals every socket's frames).
    """

    stats: Mapping[str, object] = typed_attribute()
    packet_socket: socket.socket = typed_attribute()


def _convert_addr(addr: tuple[Any, ...]) -> IPSockAddrType:
    # anyio's convert_ipv6_sockaddr(): a 4-tuple becomes (host[%scope], port).
    if len(addr) == 4:
        host, port, _flow, scope = addr
        return (f"{host}%{scope}" if scope else host), port
    return addr[0], addr[1]


class _Socket:
    """One socket's endpoint, receive queue, held error and held-back frames; its waits go through
    the stack's pump (:class:`~rawtransport.stack_anyio.AnyioStack`, see the module docstring)."""

    def __init__(
        self, endpoint: RawUdpEndpoint, stack: AnyioStack, *, receive_queue: int, connected: bool
    ) -> None:
        self.ep = endpoint
        self.engine = endpoint.engine
        self.stack = stack
        self.connected = connected
        self.queue: deque[tuple[bytes, IPSockAddrType]] = deque()
        self.queue_limit = receive_queue
        self.out: deque[OutgoingFrame] = deque()
        # ENOBUFS (a full device queue) is not signalled by poll(): retry after a growing pause.
        self.backoff = 0.0
        self.retry_at: float | None = None
        self.error: OSError | None = None
        self.closed = False
        self.last_stats: dict[str, object] | None = None
        # The compiled paths: frames the stack's walk can take come to datagram_received() below;
        # a send to an address sent to before is one C call (None on the pure path).
        self.fast_tx = self.engine.fast_sender
        stack.attach(self)
        self.engine.set_fast_protocol(self, self._report)

    # ------------------------------------------------------------------------------ state checks
    def check_usable(self) -> None:
        """Raise ``ClosedResourceError`` after ``aclose()``, ``BrokenResourceError`` once the
        endpoint's interface is gone, else the held error (once)."""
        self.check_open()
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc

    def check_open(self) -> None:
        """Raise ``ClosedResourceError`` or ``BrokenResourceError``, leaving a held error alone."""
        if self.closed:
            raise ClosedResourceError
        if self.ep.lost is not None:
            raise BrokenResourceError from self.ep.lost

    def set_error(self, exc: OSError) -> None:
        """Hold ``exc``: one pending error, the newest winning, as sk_err is overwritten by each
        ICMP error."""
        self.error = exc

    # ----------------------------------------------------------------------------- moving bytes
    def deliver(self, events: list[Event]) -> None:
        """Queue received datagrams (dropping the newest beyond the bound); hold errors."""
        for event in events:
            if isinstance(event, DatagramReceived):
                if len(self.queue) >= self.queue_limit:
                    # A full kernel socket buffer drops the arriving datagram (sock_queue_rcv_skb()).
                    self.engine.count_drop("receive_queue_full")
                else:
                    self.queue.append((event.data, _convert_addr(event.addr)))
            elif self.connected:
                self.set_error(event.exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """A datagram the compiled receive path delivered (as :meth:`deliver` queues one)."""
        if len(self.queue) >= self.queue_limit:
            self.engine.count_drop("receive_queue_full")
            return
        self.queue.append((data, _convert_addr(addr)))
        self.stack.news(self)

    def _report(self, exc: BaseException) -> None:
        logger.error("rawtransport: error queueing a received datagram", exc_info=exc)

    def stack_ready(self) -> None:
        """The pump fed the engine (datagrams, errors, frames a neighbour reply released)."""
        self.deliver(self.engine.events())
        errors = self.flush()
        if errors:
            # Errors writing released or retransmitted frames have no caller: the kernel does not
            # report a neighbour queue's transmit errors to the socket either.
            self.engine.count_drop("tx_error", len(errors))

    def flush(self) -> list[OSError]:
        """Write what the engine produced, in order; keep what the kernel would not take yet."""
        if self.engine.has_output:
            self.out.extend(self.engine.frames_to_send())
        if not self.out:
            return []
        remaining, errors, congested = self.ep.write_frames(self.out)
        self.out = deque(remaining)
        if remaining and congested:
            self.backoff = min(max(self.backoff * 2, 0.0005), 0.05)
            self.retry_at = time.monotonic() + self.backoff
        else:
            self.backoff = 0.0
            self.retry_at = None
        self.stack.set_blocked(self, bool(remaining))
        return errors

    # -------------------------------------------------------------------------------- operations
    async def receive(self) -> tuple[bytes, IPSockAddrType]:
        await checkpoint_if_cancelled()
        yielded = False
        while True:
            # sk_err before the queue, as __skb_recv_udp() checks sock_error() first.
            self.check_usable()
            if self.queue:
                if not yielded:
                    if self.connected:
                        # Other sockets' pumping filled the queue without looking at our guard.
                        guard_error = self.ep.guard_ready()
                        if guard_error is not None:
                            raise guard_error
                    item = self.queue.popleft()
                    await cancel_shielded_checkpoint()
                    return item
                return self.queue.popleft()
            yielded = await self.stack.round(self) or yielded

    async def send(self, data: Any, addr: Any, connected: bool = False) -> None:
        await checkpoint_if_cancelled()
        self.check_usable()
        fast = self.fast_tx
        if fast is not None and not self.out and fast.sendto(data, addr, time.monotonic()):
            await cancel_shielded_checkpoint()  # sent by the compiled path, as below
            return
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'")
        addr = await self._resolve(addr)
        self.check_usable()
        engine = self.engine
        mark = engine.pending_resolution
        self.ep.send(data, addr, time.monotonic(), connected)
        errors = self.flush()
        if errors:
            # What the packet socket refused (ENETDOWN, EMSGSIZE …) is what sendto() would raise.
            raise errors[0]
        if engine.pending_resolution <= mark and not self.out:
            if fast is not None:
                self.ep.learn(fast, addr)
            await cancel_shielded_checkpoint()
            return
        # The pumper may be waiting with no deadline, or not for writability: make it look again.
        self.stack.kick()
        while engine.pending_resolution > mark or self.out:
            self.check_open()
            if not await self.stack.round(self):
                # News at once (datagrams for this socket, say): still let other tasks run.
                await checkpoint()

    async def _resolve(self, addr: Any) -> Any:
        """Resolve a host name without blocking the loop (socket.sendto() would block on it)."""
        if not (isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], str)):
            return addr  # the endpoint raises what socket.sendto() raises for it
        host = addr[0]
        try:
            socket.inet_pton(self.ep.family, host.split("%", 1)[0])
            numeric = True
        except OSError:
            numeric = False
        # A port given as a str (digits or a service name) is looked up, as trio and uvloop do.
        if numeric and not isinstance(addr[1], str):
            if "%" in host and len(addr) == 2 and self.ep.family == socket.AF_INET6:
                # fe80::1%eth0: its scope kept, as anyio's trio and uvloop backends keep it
                # (socket.sendto() would drop it; numeric, so getaddrinfo() does not block).
                scoped = socket.getaddrinfo(
                    host, addr[1], socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST
                )
                return scoped[0][4]
            return addr
        infos = await anyio.getaddrinfo(
            host, addr[1], family=self.ep.family, type=socket.SOCK_DGRAM
        )
        found = infos[0][4]
        return (str(found[0]), found[1], *addr[2:])

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.engine.set_fast_protocol(None, self._report)
            if self.stack.detach(self):
                # Let the pumper leave its waits on our descriptors before they are closed.
                with CancelScope(shield=True):
                    await self.stack.wait_left()
            self._release()
        await checkpoint()

    def run_ended(self) -> None:
        """The event-loop run ends with the socket open: close it with the stack."""
        if not self.closed:
            self.closed = True
            self.engine.set_fast_protocol(None, self._report)
            self.stack.detach(self)
            self._release()

    def _release(self) -> None:
        engine = self.engine
        if self.queue:
            engine.count_drop("closed", len(self.queue))
            self.queue.clear()
        unsent = engine.pending_resolution + sum(1 for f in self.out if f.size)
        if unsent:
            engine.count_drop("closed_unsent", unsent)
        self.out.clear()
        self.last_stats = self.stats()
        for fd in self.stack.fds_of(self):
            anyio.notify_closing(fd)
        try:
            self.ep.close()
        finally:
            self.stack.release()

    def stats(self) -> dict[str, object]:
        if self.last_stats is not None:
            return dict(self.last_stats)
        stats = self.ep.stats()
        stats["receive_queue"] = len(self.queue)
        stats["receive_queue_limit"] = self.queue_limit
        return stats

    def extra(self) -> dict[Any, Callable[[], Any]]:
        return {
            RawSocketAttribute.stats: self.stats,
            RawSocketAttribute.packet_socket: lambda: self.ep.receiver.sock,
        }


@final
class RawUDPSocket(UDPSocket):
    """An unconnected UDP socket on the raw path (``anyio.abc.UDPSocket``); see the module docstring.

    Typed attributes: anyio's ``SocketAttribute`` (family, local_address, local_port, raw_socket — the
    guard UDP socket holding the address) and :class:`RawSocketAttribute`.
    """

    def __init__(self, endpoint: RawUdpEndpoint, stack: AnyioStack, *, receive_queue: int) -> None:
        self._sock = _Socket(endpoint, stack, receive_queue=receive_queue, connected=False)
        self._receive_guard = anyio.ResourceGuard("reading from")
        self._send_guard = anyio.ResourceGuard("writing to")

    @property
    def _raw_socket(self) -> socket.socket:
        return self._sock.ep.guard

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """anyio's socket attributes plus :class:`RawSocketAttribute`."""
        return {**super().extra_attributes, **self._sock.extra()}

    @classmethod
    async def from_socket(cls, sock_or_fd: socket.socket | int) -> RawUDPSocket:
        """Not supported: the raw path creates its own guard socket (use create_raw_udp_socket)."""
        raise NotImplementedError("use rawtransport.anyio_socket.create_raw_udp_socket()")

    async def receive(self) -> tuple[bytes, IPSockAddrType]:
        """The next datagram and its sender's ``(host, port)``."""
        with self._receive_guard:
            return await self._sock.receive()

    async def send(self, item: tuple[bytes, IPSockAddrType]) -> None:
        """Send ``data`` to ``(host, port)``: ``item`` is ``(data, (host, port))``."""
        with self._send_guard:
            data, addr = item
            await self._sock.send(data, addr)

    async def aclose(self) -> None:
        """Close the socket; blocked and later calls raise ``ClosedResourceError``."""
        await self._sock.aclose()


@final
class RawConnectedUDPSocket(ConnectedUDPSocket):
    """A connected UDP socket on the raw path (``anyio.abc.ConnectedUDPSocket``); see the module.

    Datagrams from any other address or port are dropped (counted as ``wrong_peer``). Typed attributes
    as :class:`RawUDPSocket`, plus ``remote_address`` and ``remote_port``.
    """

    def __init__(self, endpoint: RawUdpEndpoint, stack: AnyioStack, *, receive_queue: int) -> None:
        self._sock = _Socket(endpoint, stack, receive_queue=receive_queue, connected=True)
        try:
            self._peer: tuple[Any, ...] = endpoint.guard.getpeername()
        except OSError:
            # Connected to port 0: getpeername() says ENOTCONN, though the socket has a peer.
            remote = endpoint.engine.config.remote_ip
            assert remote is not None
            self._peer = (socket.inet_ntop(endpoint.guard.family, remote), 0)
        self._receive_guard = anyio.ResourceGuard("reading from")
        self._send_guard = anyio.ResourceGuard("writing to")

    @property
    def _raw_socket(self) -> socket.socket:
        return self._sock.ep.guard

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """anyio's socket attributes plus :class:`RawSocketAttribute`."""
        return {**super().extra_attributes, **self._sock.extra()}

    @classmethod
    async def from_socket(cls, sock_or_fd: socket.socket | int) -> RawConnectedUDPSocket:
        """Not supported: the raw path creates its own guard socket (use the create function)."""
        raise NotImplementedError("use rawtransport.anyio_socket.create_raw_connected_udp_socket()")

    async def receive(self) -> bytes:
        """The next datagram from the peer (or the held error, see the module docstring)."""
        with self._receive_guard:
            return (await self._sock.receive())[0]

    async def send(self, item: bytes) -> None:
        """Send one datagram to the peer."""
        with self._send_guard:
            await self._sock.send(item, self._peer, connected=True)

    async def aclose(self) -> None:
        """Close the socket; blocked and later calls raise ``ClosedResourceError``."""
        await self._sock.aclose()


# ------------------------------------------------------------------------------------- creation
async def _getaddrinfo(host: str, port: int, family: int, flags: int = 0) -> list[Any]:
    # A numeric host resolves in this thread with no lookup (trio's getaddrinfo does the same): the
    # answer is the same, and AI_ADDRCONFIG is judged in this thread's network namespace rather than
    # in a resolver thread's. Names go through anyio.getaddrinfo(), off the event loop.
    try:
        return socket.getaddrinfo(
            host, port, family, socket.SOCK_DGRAM, 0, flags | socket.AI_NUMERICHOST
        )
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            raise
    return list(
        await anyio.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM, flags=flags)
    )


def _check_options(family: int, receive_queue: int) -> None:
    if family not in (AddressFamily.AF_UNSPEC, AddressFamily.AF_INET, AddressFamily.AF_INET6):
        raise ValueError(f"the raw path carries IPv4 and IPv6 only, not {family!r}")
    if not isinstance(receive_queue, int) or isinstance(receive_queue, bool):
        raise TypeError(f"receive_queue must be an int, not {type(receive_queue).__name__}")
    if receive_queue < 1:
        raise ValueError(f"receive_queue must be >= 1, not {receive_queue}")


def _make_guard(
    family: int,
    local_address: tuple[Any, ...] | None,
    remote_address: tuple[Any, ...] | None,
    *,
    allow_broadcast: bool,
    reuse_port: bool,
) -> tuple[socket.socket, tuple[bytes, int] | None]:
    """The bound (and maybe connected) guard UDP socket, and the peer as (address bytes, port)."""
    guard = socket.socket(family, socket.SOCK_DGRAM)
    try:
        guard.setblocking(False)
        if reuse_port:
            # As anyio does; the endpoint then joins the address's PACKET_FANOUT group.
            guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if allow_broadcast:
            guard.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if local_address:
            guard.bind(local_address)
        remote = None
        if remote_address:
            # A UDP connect() never blocks; it raises ENETUNREACH, EACCES (broadcast) … at once.
            guard.connect(remote_address)
            remote = raw_peer(guard, remote_address)
        if guard.getsockname()[1] == 0:
            # The raw endpoint needs its port now; a kernel socket autobinds on first use.
            guard.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    except BaseException:
        guard.close()
        raise
    return guard, remote


async def _register(
    stack: AnyioStack,
    guard: socket.socket,
    remote: tuple[bytes, int] | None,
    *,
    allow_broadcast: bool,
    kernel_bypass: bool,
) -> RawUdpEndpoint:
    """The guard's endpoint on ``stack``: a table entry and a filter swap, on the event-loop thread
    (microseconds); a ``reuse_port`` guard's fanout ring and ``kernel_bypass``'s nftables rule are
    made off the loop (ring setup and ``nft`` wait). Closes the guard if it fails."""
    try:
        fanout = None
        if reuse_port(guard):
            fanout = await run_off_loop(
                functools.partial(stack.stack.open_fanout, filter_entry(guard))
            )
        # Registered, the stack owns the fanout receiver; if registering fails, open() closes it.
        endpoint = RawUdpEndpoint.open(
            guard, remote=remote, allow_broadcast=allow_broadcast, stack=stack.stack, fanout=fanout
        )
    except BaseException:
        guard.close()
        raise
    if kernel_bypass:
        try:
            # Registered first, as RawUdpEndpoint.open() does: until the rule is in, the kernel
            # also takes the datagrams and the guard's drop-all filter discards them.
            await run_off_loop(endpoint.install_bypass)
        except BaseException:
            endpoint.close()
            raise
    return endpoint


_S = TypeVar("_S", RawUDPSocket, RawConnectedUDPSocket)


async def _open_socket(
    cls: type[_S],
    family: int,
    local_address: tuple[Any, ...] | None,
    remote_address: tuple[Any, ...] | None,
    *,
    options: StackOptions,
    receive_queue: int,
    allow_broadcast: bool,
    kernel_bypass: bool,
    reuse_port: bool,
) -> _S:
    guard, remote = _make_guard(
        family,
        local_address,
        remote_address,
        allow_broadcast=allow_broadcast,
        reuse_port=reuse_port,
    )
    try:
        # The run's stack for these options: opened off the loop by the first socket, then shared.
        stack = await anyio_stack(options)
    except BaseException:
        guard.close()
        raise
    try:
        endpoint = await _register(
            stack, guard, remote, allow_broadcast=allow_broadcast, kernel_bypass=kernel_bypass
        )
    except BaseException:
        stack.release()
        raise
    return await _finish(cls(endpoint, stack, receive_queue=receive_queue))


async def _finish(sock: _S) -> _S:
    """Checkpoint as anyio's socket creation does, closing the new socket if cancelled there."""
    try:
        await checkpoint()
    except BaseException:
        await sock.aclose()
        raise
    return sock


async def create_raw_udp_socket(
    family: AnyIPAddressFamily = AddressFamily.AF_UNSPEC,
    *,
    local_host: IPAddressType | None = None,
    local_port: int = 0,
    reuse_port: bool = False,
    interface: str | None = None,
    allow_broadcast: bool = False,
    receive_queue: int = DEFAULT_RECEIVE_QUEUE,
    qdisc_bypass: bool = False,
    rcvbuf: int | None = None,
    rx_mode: str = "ring",
    tx_mode: str = "direct",
    kernel_bypass: bool = False,
) -> RawUDPSocket:
    """``anyio.create_udp_socket()`` on the raw path. Needs CAP_NET_RAW.

    The positional and the first keyword arguments are anyio's, validated and resolved as anyio does
    (``reuse_port=True``: ``SO_REUSEPORT``; sockets on one address and port, in this process or
    others, share its flows, each datagram to one of them). Raw-path knobs: ``interface`` (receive
    and send on this link only), ``allow_broadcast`` (``SO_BROADCAST``), ``receive_queue``
    (datagrams held for ``receive()``, the newest dropped beyond it), ``qdisc_bypass``, ``rcvbuf``,
    ``rx_mode``, ``tx_mode`` and ``kernel_bypass`` (as for ``create_raw_datagram_endpoint()``).
    Sockets of one event-loop run with the same ``interface``, ``qdisc_bypass``, ``rcvbuf``,
    ``rx_mode`` and ``tx_mode`` share one raw stack (see the module docstring).
    """
    if family is AddressFamily.AF_UNSPEC and not local_host:
        raise ValueError('Either "family" or "local_host" must be given')
    _check_options(family, receive_queue)
    options = stack_options(
        interface=interface,
        qdisc_bypass=qdisc_bypass,
        rcvbuf=rcvbuf,
        rx_mode=rx_mode,
        tx_mode=tx_mode,
    )
    if local_host:
        gai_res = await _getaddrinfo(
            str(local_host), local_port, family, socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
        family = gai_res[0][0]
        local_address = gai_res[0][-1]
    elif family is AddressFamily.AF_INET6:
        local_address = ("::", local_port)
    else:
        local_address = ("0.0.0.0", local_port)
    return await _open_socket(
        RawUDPSocket,
        family,
        local_address,
        None,
        options=options,
        receive_queue=receive_queue,
        allow_broadcast=allow_broadcast,
        kernel_bypass=kernel_bypass,
        reuse_port=reuse_port,
    )


async def create_raw_connected_udp_socket(
    remote_host: IPAddressType,
    remote_port: int,
    *,
    family: AnyIPAddressFamily = AddressFamily.AF_UNSPEC,
    local_host: IPAddressType | None = None,
    local_port: int = 0,
    reuse_port: bool = False,
    interface: str | None = None,
    allow_broadcast: bool = False,
    receive_queue: int = DEFAULT_RECEIVE_QUEUE,
    qdisc_bypass: bool = False,
    rcvbuf: int | None = None,
    rx_mode: str = "ring",
    tx_mode: str = "direct",
    kernel_bypass: bool = False,
) -> RawConnectedUDPSocket:
    """``anyio.create_connected_udp_socket()`` on the raw path. Needs CAP_NET_RAW.

    Arguments as :func:`create_raw_udp_socket`, plus the peer's ``remote_host``/``remote_port``
    (resolved as anyio resolves them). The guard UDP socket is connected, so the kernel's own checks
    apply (ENETUNREACH, EACCES for a broadcast peer without ``allow_broadcast``) and ICMP errors for
    the peer reach the socket (see the module docstring for how they are reported).
    """
    _check_options(family, receive_queue)
    options = stack_options(
        interface=interface,
        qdisc_bypass=qdisc_bypass,
        rcvbuf=rcvbuf,
        rx_mode=rx_mode,
        tx_mode=tx_mode,
    )
    local_address = None
    if local_host:
        gai_res = await _getaddrinfo(
            str(local_host), local_port, family, socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
        family = gai_res[0][0]
        local_address = gai_res[0][-1]
    gai_res = await _getaddrinfo(str(remote_host), remote_port, family)
    family = gai_res[0][0]
    remote_address = gai_res[0][-1]
    if local_address is None and local_port:
        local_address = (
            ("::", local_port) if family is AddressFamily.AF_INET6 else ("0.0.0.0", local_port)
        )
    return await _open_socket(
        RawConnectedUDPSocket,
        family,
        local_address,
        remote_address,
        options=options,
        receive_queue=receive_queue,
        allow_broadcast=allow_broadcast,
        kernel_bypass=kernel_bypass,
        reuse_port=reuse_port,
    )
