"""``create_raw_datagram_endpoint()``: asyncio's ``create_datagram_endpoint()`` on the raw path.

The argument handling is CPython's ``BaseEventLoop.create_datagram_endpoint`` (3.11) step by step, so
misuse raises the same ``TypeError``/``ValueError`` and the kernel's own ``bind()``/``connect()`` on the
guard UDP socket raises the same ``OSError`` (EADDRINUSE, EADDRNOTAVAIL, ENETUNREACH …). Only public
loop APIs are used, so the same code runs on the stdlib loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from rawtransport.addresses import raw_peer
from rawtransport.endpoint import RawUdpEndpoint, filter_entry, stack_options
from rawtransport.endpoint import reuse_port as reuse_port_of
from rawtransport.ring_setup import Receiver
from rawtransport.stack_loop import loop_stack
from rawtransport.transport import RawDatagramTransport
from rawtransport.workers import run_in_new_thread

__all__ = ["create_raw_datagram_endpoint", "install"]

_P = TypeVar("_P", bound=asyncio.BaseProtocol)


def _numeric(addr: Any, family: int, proto: int) -> tuple[int, int, Any] | None:
    """The answer for a numeric host without a lookup, as CPython's ``_ipaddr_info()`` gives it
    (``_ensure_resolved()`` skips ``getaddrinfo`` then, and so the executor round trip)."""
    host, port = addr[0], addr[1]
    if proto not in (0, socket.IPPROTO_UDP) or host is None:
        return None
    if port is None or port in (b"", ""):
        port = 0
    else:
        try:
            port = int(port)  # a service name ("domain") still goes to getaddrinfo()
        except (TypeError, ValueError):
            return None
    if isinstance(host, bytes):
        host = host.decode("idna")
    if not isinstance(host, str) or "%" in host:
        return None  # inet_pton() takes no zone index ("fe80::1%eth0")
    families = [socket.AF_INET, socket.AF_INET6] if family == socket.AF_UNSPEC else [family]
    for af in families:
        try:
            socket.inet_pton(af, host)
        except OSError:
            continue
        if af == socket.AF_INET6:
            return af, socket.IPPROTO_UDP, (host, port, 0, 0)
        return af, socket.IPPROTO_UDP, (host, port)
    return None


async def _resolve(
    loop: asyncio.AbstractEventLoop, addr: Any, family: int, proto: int, flags: int
) -> list[tuple[int, int, Any]]:
    info = _numeric(addr, family, proto)
    if info is not None:
        return [info]
    infos = await loop.getaddrinfo(
        addr[0], addr[1], family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags
    )
    return [(fam, pro, address) for fam, _t, pro, _c, address in infos]


async def create_raw_datagram_endpoint(
    protocol_factory: Callable[[], _P],
    local_addr: tuple[str, int] | None = None,
    remote_addr: tuple[str, int] | None = None,
    *,
    family: int = 0,
    proto: int = 0,
    flags: int = 0,
    reuse_port: bool | None = None,
    allow_broadcast: bool | None = None,
    sock: socket.socket | None = None,
    interface: str | None = None,
    qdisc_bypass: bool = False,
    rcvbuf: int | None = None,
    rx_mode: str = "ring",
    kernel_bypass: bool = False,
    busy_poll: int | None = None,
    spin_us: int | None = None,
    tx_mode: str = "direct",
    loop: asyncio.AbstractEventLoop | None = None,
) -> tuple[RawDatagramTransport, _P]:
    """Create a datagram endpoint whose datagrams travel through an ``AF_PACKET`` socket.

    The positional and the standard keyword arguments are those of
    ``loop.create_datagram_endpoint()``; ``sock`` is a UDP socket that becomes the endpoint's guard
    (its address is the endpoint's). The raw path adds keyword-only knobs: ``interface`` (receive and
    send only on this link), ``qdisc_bypass`` (``PACKET_QDISC_BYPASS`` on the sending sockets) and
    ``rcvbuf`` (``SO_RCVBUF`` of the receiving packet socket) and ``rx_mode``: ``"ring"`` (default, a
    TPACKET_V2 ring: each frame handed over at once, no syscall per frame), ``"bulk"`` (TPACKET_V3:
    one wake-up per block of frames, best throughput, up to ~1 ms more latency) or ``"recv"`` (one
    ``recvmsg`` per frame). Needs CAP_NET_RAW.

    Opt-in receive knobs (off by default): ``kernel_bypass=True`` installs an nftables
    netdev-ingress rule that drops the endpoint's datagrams after the packet socket saw them and
    before the kernel's IP/UDP input runs (needs ``nft`` and CAP_NET_ADMIN; removed on close, and by
    the kernel if the process dies; see :mod:`rawtransport.nft`). ``busy_poll`` (µs) sets
    ``SO_BUSY_POLL`` on the receiving socket; ``spin_us`` (µs, up to 10 000) keeps polling the
    receiver once per loop iteration after a wake-up, until that long has passed with no frame —
    lower latency for a busy core (other callbacks and tasks run between polls).

    ``tx_mode``: ``"direct"`` (default) makes one ``send()`` syscall per datagram, inside
    ``sendto()`` — the lowest latency for request/response. ``"ring"`` copies outgoing frames into a
    ``PACKET_TX_RING`` per sending interface; the datagrams of one loop iteration (every ``sendto()``
    in a callback, replies made while handling a batch of received datagrams, ARP/ND requests and
    datagrams released by a neighbour reply) leave together with one ``send()`` syscall, at the end
    of that iteration. Measured here (bench, 64 B, uvloop): ring sends bursts ~1.3x faster, and adds
    ~10-15 µs to a round trip (one loop iteration of delay on a lone ``sendto()``); a burst above the
    high-water mark is written at once. Both keep ``ENOBUFS`` and a full socket buffer as flow
    control: nothing accepted is lost or reordered.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    r_addr: Any = None
    if sock is not None:
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError(f"A UDP Socket was expected, got {sock!r}")
        if local_addr or remote_addr or family or proto or flags or reuse_port or allow_broadcast:
            opts = {
                "local_addr": local_addr,
                "remote_addr": remote_addr,
                "family": family,
                "proto": proto,
                "flags": flags,
                "reuse_port": reuse_port,
                "allow_broadcast": allow_broadcast,
            }
            problems = ", ".join(f"{k}={v}" for k, v in opts.items() if v)
            raise ValueError(
                f"socket modifier keyword arguments can not be used when sock is specified. "
                f"({problems})"
            )
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"the raw path carries IPv4 and IPv6 only, got {sock.family!r}")
        sock.setblocking(False)
        if sock.getsockname()[1] == 0:
            sock.bind(("::" if sock.family == socket.AF_INET6 else "0.0.0.0", 0))
        try:
            r_addr = sock.getpeername()
        except OSError:
            r_addr = None
        remote = raw_peer(sock) if r_addr is not None else None
        guard = sock
    else:
        if family == getattr(socket, "AF_UNIX", -1):
            raise ValueError("the raw path carries IPv4 and IPv6 only, not AF_UNIX")
        if family not in (0, socket.AF_INET, socket.AF_INET6):
            raise ValueError("unexpected address family")
        if not (local_addr or remote_addr):
            if family == 0:
                raise ValueError("unexpected address family")
            addr_pairs_info: list[tuple[tuple[int, int], list[Any]]] = [
                ((family, proto), [None, None])
            ]
        else:
            addr_infos: dict[tuple[int, int], list[Any]] = {}
            for idx, addr in ((0, local_addr), (1, remote_addr)):
                if addr is not None:
                    if not (isinstance(addr, tuple) and len(addr) == 2):
                        raise TypeError("2-tuple is expected")
                    infos = await _resolve(loop, addr, family, proto, flags)
                    if not infos:
                        raise OSError("getaddrinfo() returned empty list")
                    for fam, pro, address in infos:
                        addr_infos.setdefault((fam, pro), [None, None])[idx] = address
            addr_pairs_info = [
                (key, pair)
                for key, pair in addr_infos.items()
                if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))
            ]
            if not addr_pairs_info:
                raise ValueError("can not get address information")
        if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("reuse_port not supported by socket module")  # as CPython says
        exceptions: list[OSError] = []
        for (fam, pro), (local_address, remote_address) in addr_pairs_info:
            guard_sock: socket.socket | None = None
            r_addr = None
            try:
                guard_sock = socket.socket(family=fam, type=socket.SOCK_DGRAM, proto=pro)
                if reuse_port:
                    # The guard is what the kernel balances between: its bind() makes the uid
                    # check of SO_REUSEPORT; the endpoint then joins the PACKET_FANOUT group of
                    # the address and port (stack.py), which balances the raw path's flows.
                    guard_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if allow_broadcast:
                    guard_sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                guard_sock.setblocking(False)
                if local_addr:
                    guard_sock.bind(local_address)
                if remote_addr:
                    if not allow_broadcast:
                        await loop.sock_connect(guard_sock, remote_address)
                    r_addr = remote_address
                if guard_sock.getsockname()[1] == 0:
                    # The raw endpoint needs its port now: a kernel socket would autobind on its
                    # first send (inet_autobind()); binding the wildcard to port 0 is the same.
                    guard_sock.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 0))
            except OSError as exc:
                if guard_sock is not None:
                    guard_sock.close()
                exceptions.append(exc)
            except BaseException:
                if guard_sock is not None:
                    guard_sock.close()
                raise
            else:
                break
        else:
            raise exceptions[0]
        assert guard_sock is not None
        guard = guard_sock
        remote = raw_peer(guard, r_addr) if (r_addr is not None and not allow_broadcast) else None

    try:
        options = stack_options(
            interface=interface,
            qdisc_bypass=qdisc_bypass,
            rcvbuf=rcvbuf,
            rx_mode=rx_mode,
            busy_poll=busy_poll,
            spin_us=spin_us,
            tx_mode=tx_mode,
        )
        # The loop's raw stack for these options: opened off the loop thread the first time
        # (ring setup waits in the kernel), then shared by every endpoint that agrees on them.
        stack = await loop_stack(loop, options)
        fanout = None
        if reuse_port_of(guard):
            # Its own ring (setup waits in the kernel): off the loop thread too.
            fanout = await _open_fanout(
                loop, functools.partial(stack.stack.open_fanout, filter_entry(guard))
            )
    except BaseException:
        guard.close()
        raise
    # A table entry and a filter swap, on the loop thread (the stack is the loop's alone).
    endpoint = _open_endpoint(
        guard,
        remote=remote,
        allow_broadcast=bool(allow_broadcast),
        stack=stack.stack,
        fanout=fanout,
    )
    if kernel_bypass:
        # Installing the nftables rule runs nft: off the loop thread; the endpoint is closed
        # (the rule with it) if that fails or the opener is cancelled meanwhile.
        installing = asyncio.wrap_future(run_in_new_thread(endpoint.install_bypass), loop=loop)
        try:
            await asyncio.shield(installing)
        except asyncio.CancelledError:
            # Closed once nft is done, so that a rule it installs is removed with the endpoint.
            installing.add_done_callback(lambda _f: endpoint.close())
            raise
        except BaseException:
            endpoint.close()
            raise
    protocol = protocol_factory()
    waiter: asyncio.Future[None] = loop.create_future()
    transport = RawDatagramTransport(
        loop,
        endpoint,
        protocol,  # type: ignore[arg-type]
        r_addr,
        waiter,
        stack=stack,
    )
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    return transport, protocol


def _open_endpoint(guard: socket.socket, **options: Any) -> RawUdpEndpoint:
    """RawUdpEndpoint.open(), closing the guard if it fails."""
    try:
        return RawUdpEndpoint.open(guard, **options)
    except BaseException:
        guard.close()
        raise


async def _open_fanout(loop: asyncio.AbstractEventLoop, fn: Callable[[], Receiver]) -> Receiver:
    """Open a fanout receiver in a worker thread; if the opener is cancelled, close it once made."""
    opening = asyncio.wrap_future(run_in_new_thread(fn), loop=loop)
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[Receiver]) -> None:
    """What was opened for a cancelled opener: close it."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


async def _method(
    self: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], _P],
    local_addr: tuple[str, int] | None = None,
    remote_addr: tuple[str, int] | None = None,
    **kwargs: Any,
) -> tuple[RawDatagramTransport, _P]:
    return await create_raw_datagram_endpoint(
        protocol_factory, local_addr, remote_addr, loop=self, **kwargs
    )


def install(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Make ``loop.create_raw_datagram_endpoint(...)`` available.

    With a loop: on that loop instance only. Without one: on every stdlib event loop
    (``asyncio.BaseEventLoop``) and, if uvloop is installed, every ``uvloop.Loop``. Idempotent.
    """
    if loop is not None:
        loop.create_raw_datagram_endpoint = _method.__get__(loop)  # type: ignore[attr-defined]
        return
    asyncio.BaseEventLoop.create_raw_datagram_endpoint = _method  # type: ignore[attr-defined]
    try:
        import uvloop
    except ImportError:
        return
    uvloop.Loop.create_raw_datagram_endpoint = _method  # type: ignore[attr-defined]
