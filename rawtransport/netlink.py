"""Reading routes, addresses, links and neighbours from the kernel over rtnetlink.

The OS boundary for routing: a thin synchronous client over ``socket(AF_NETLINK, SOCK_RAW,
NETLINK_ROUTE)``; the message codec is pure and lives in :mod:`rawtransport.rtnl_codec`. No
dependency beyond the standard library (pyroute2 is only the tests' oracle).

Routing decisions are the kernel's own: :meth:`Rtnl.route_get` is ``ip route get``
(``RTM_GETROUTE``), which runs fib_lookup()/ip6_route_output() and source-address selection exactly
as a kernel UDP socket's send would. :class:`RtnlMonitor` tells the owner when to throw its cached
answers away.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

from rawtransport.errors import MalformedPacketError
from rawtransport.route import AddressInfo, LinkInfo, Route
from rawtransport.rtnl_codec import (
    AF_INET,
    AF_INET6,
    AF_UNSPEC,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTN_LOCAL,
    NetlinkMessage,
    Response,
    RouteReply,
    decode_address,
    decode_link,
    decode_neighbour,
    decode_route,
    encode_dump,
    encode_getlink,
    encode_getroute,
    parse_messages,
    route_error,
    route_from_reply,
)

__all__ = [
    "DEFAULT_GROUPS",
    "RTMGRP_IPV4_IFADDR",
    "RTMGRP_IPV4_ROUTE",
    "RTMGRP_IPV6_IFADDR",
    "RTMGRP_IPV6_ROUTE",
    "RTMGRP_LINK",
    "Rtnl",
    "RtnlMonitor",
]

# Multicast groups (<linux/rtnetlink.h>, the legacy bitmask form accepted by bind()).
RTMGRP_LINK: Final = 0x1
RTMGRP_IPV4_IFADDR: Final = 0x10
RTMGRP_IPV4_ROUTE: Final = 0x40
RTMGRP_IPV6_IFADDR: Final = 0x100
RTMGRP_IPV6_ROUTE: Final = 0x400
DEFAULT_GROUPS: Final = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
)

SO_RCVBUFFORCE: Final = 33  # <asm-generic/socket.h>; not exported by the socket module
# netlink_dump() caps one dump datagram at 32 KiB; a single answer (one RTM_NEWLINK with many
# attributes) can be larger, so the receive buffer is generous and truncation is still checked.
_BUFSIZE: Final = 1 << 18
_DUMP_RETRIES: Final = 8
_CHANGES: Final = frozenset(
    {RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE}
)
_FAMILIES: Final = {
    None: AF_UNSPEC,
    4: AF_INET,
    6: AF_INET6,
    socket.AF_INET: AF_INET,
    socket.AF_INET6: AF_INET6,
}
_SEQ: Final = struct.Struct("=I")


def _oserror(code: int, detail: str = "") -> OSError:
    # The two-argument form makes OSError pick its subclass (ENETUNREACH -> OSError with that errno,
    # EACCES -> PermissionError, ...), exactly as a failing socket call would raise.
    message = os.strerror(code) + (f" ({detail})" if detail else "")
    return OSError(code, message)


def _ip(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be 4 or 16 raw address bytes, not {type(value).__name__}")
    raw = bytes(value)
    if len(raw) not in (4, 16):
        raise ValueError(f"{what} must be 4 or 16 bytes long, not {len(raw)}")
    return raw


def _ifindex(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int")
    if not 0 < value <= 0x7FFFFFFF:
        raise ValueError(f"{what} must be a positive interface index, not {value}")
    return value


def _is_link_local_v6(address: bytes) -> bool:
    # fe80::/10 (RFC 4291 2.5.6): the same address may exist on every link, so it names no route
    # without an interface. __ip6_datagram_connect() refuses it with EINVAL when no device is bound.
    return len(address) == 16 and address[0] == 0xFE and address[1] & 0xC0 == 0x80


class Rtnl:
    """A request/response rtnetlink client (blocking, with a timeout; one request at a time).

    The socket belongs to the network namespace the calling thread is in when it is created.
    Kernel errors are raised as the ``OSError`` the kernel reported (``ENETUNREACH``,
    ``ENODEV`` …); undecodable answers as :class:`~rawtransport.errors.MalformedPacketError`.
    """

    def __init__(self, *, timeout: float | None = 5.0) -> None:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            sock.bind((0, 0))
            sock.settimeout(timeout)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._seq = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        self._buf = bytearray(_BUFSIZE)

    # ------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the netlink socket (idempotent)."""
        self._sock.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._sock.fileno() == -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -------------------------------------------------------------------------------- transport
    def _request(self, build: Callable[[int], bytes], *, dump: bool) -> list[NetlinkMessage]:
        """Send ``build(seq)``, collect the answer; repeat a dump the kernel marked interrupted."""
        for _ in range(_DUMP_RETRIES):
            self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
            response = Response(self._seq, dump=dump)
            self._sock.send(build(self._seq))
            while not response.done:
                size, _anc, flags, _addr = self._sock.recvmsg_into([self._buf])
                if flags & socket.MSG_TRUNC:
                    raise _oserror(errno.EMSGSIZE, "netlink answer larger than the receive buffer")
                response.feed(parse_messages(memoryview(self._buf)[:size]))
            if response.error:
                raise _oserror(response.error)
            if not response.interrupted:
                return response.messages
        # Tables changing faster than they can be dumped (NLM_F_DUMP_INTR every time).
        raise _oserror(errno.EAGAIN, "rtnetlink dump interrupted repeatedly")

    def _one(self, build: Callable[[int], bytes], msg_type: int) -> bytes:
        messages = self._request(build, dump=False)
        if len(messages) != 1 or messages[0].type != msg_type:
            types = [m.type for m in messages]
            raise MalformedPacketError("rtnl_unexpected_answer", f"wanted {msg_type}, got {types}")
        return messages[0].payload

    def _route(self, destination: bytes, source: bytes | None, oif: int | None) -> RouteReply:
        payload = self._one(
            lambda seq: encode_getroute(seq, destination, source, oif), RTM_NEWROUTE
        )
        return decode_route(payload)

    # ---------------------------------------------------------------------------------- queries
    def route_get(
        self, destination: bytes, *, source: bytes | None = None, oif: int | None = None
    ) -> Route:
        """The kernel's route to ``destination`` (``ip route get DST [from SRC] [oif IF]``).

        ``destination`` and ``source`` are raw 4- or 16-byte addresses of the same family.
        Raises ``OSError`` with the kernel's errno: ENETUNREACH when there is no route (and, for
        IPv4, when ``source`` is not a local address: __ip_route_output_key_hash_rcu() checks it
        with __ip_dev_find()), EHOSTUNREACH/EACCES/EINVAL for unreachable/prohibit/blackhole
        routes. An IPv6 link-local destination without ``oif`` takes the route the kernel finds,
        as udpv6_sendmsg() does for a destination without a scope id.

        The kernel does not check an IPv6 source (``ip -6 route get X from <not ours>`` succeeds),
        so for IPv6 the source is checked here with a second lookup: it must route as ``local``,
        else ENETUNREACH, the same answer as IPv4 (a removed address must not be sent from).
        """
        destination = _ip(destination, "destination")
        if source is not None:
            source = _ip(source, "source")
            if len(source) != len(destination):
                raise ValueError("source and destination must be of the same address family")
        if oif is not None:
            oif = _ifindex(oif, "oif")
        reply = self._route(destination, source, oif)
        code = route_error(reply, source)
        if code:
            raise _oserror(code)
        if source is not None and len(source) == 16:
            local = self._route(source, None, oif if _is_link_local_v6(source) else None)
            if local.type != RTN_LOCAL or local.error:
                raise _oserror(errno.ENETUNREACH, "source address is not local")
        if reply.oif is None:
            raise MalformedPacketError("rtnl_route_no_oif", "route answer without RTA_OIF")
        return route_from_reply(reply, self.link(reply.oif), destination, source)

    def link(self, ifindex: int) -> LinkInfo:
        """The interface with index ``ifindex`` (``OSError(ENODEV)`` if there is none)."""
        ifindex = _ifindex(ifindex, "ifindex")
        return decode_link(self._one(lambda seq: encode_getlink(seq, ifindex), RTM_NEWLINK))

    def link_by_name(self, name: str) -> LinkInfo:
        """The interface called ``name`` (``OSError(ENODEV)`` if there is none)."""
        if not isinstance(name, str):
            raise TypeError("interface name must be a str")
        if not name or "\0" in name or len(name.encode()) >= 16:
            # IFNAMSIZ is 16 including the terminating NUL.
            raise ValueError(f"invalid interface name {name!r}")
        return decode_link(self._one(lambda seq: encode_getlink(seq, 0, name), RTM_NEWLINK))

    def links(self) -> list[LinkInfo]:
        """Every interface of the namespace, in ifindex order."""
        messages = self._request(lambda seq: encode_dump(seq, RTM_GETLINK), dump=True)
        return [decode_link(m.payload) for m in messages if m.type == RTM_NEWLINK]

    def addresses(self, family: int | None = None) -> list[AddressInfo]:
        """Every interface address; ``family`` 4 or 6 (or ``AF_INET``/``AF_INET6``) to filter."""
        try:
            nl_family = _FAMILIES[family]
        except (KeyError, TypeError):
            raise ValueError(f"family must be None, 4 or 6, not {family!r}") from None
        messages = self._request(lambda seq: encode_dump(seq, RTM_GETADDR, nl_family), dump=True)
        wanted = {AF_UNSPEC: (4, 6), AF_INET: (4,), AF_INET6: (6,)}[nl_family]
        out = []
        for m in messages:
            if m.type == RTM_NEWADDR:
                info = decode_address(m.payload)
                if info is not None and info.family in wanted:
                    out.append(info)
        return out

    def neighbours(self, ifindex: int | None = None) -> list[tuple[int, bytes, bytes, int]]:
        """Neighbour entries with a usable MAC as ``(ifindex, ip, mac, nud_state)``.

        Only REACHABLE, STALE, DELAY, PROBE and PERMANENT entries: the states in which the kernel
        itself would transmit to the cached link-layer address.
        """
        if ifindex is not None:
            ifindex = _ifindex(ifindex, "ifindex")
        messages = self._request(lambda seq: encode_dump(seq, RTM_GETNEIGH), dump=True)
        out = []
        for m in messages:
            if m.type == RTM_NEWNEIGH:
                entry = decode_neighbour(m.payload)
                if entry is not None and (ifindex is None or entry[0] == ifindex):
                    out.append(entry)
        return out


class RtnlMonitor:
    """Change notifications: links, IPv4/IPv6 addresses and IPv4/IPv6 routes.

    Non-blocking. Register :meth:`fileno` with the event loop and call :meth:`drain` when it is
    readable: it reads everything queued and says whether anything changed. An overflowed socket
    (``ENOBUFS``: notifications were lost) also counts as a change, since the owner must then
    re-read everything anyway.
    """

    def __init__(self, groups: int = DEFAULT_GROUPS, *, rcvbuf: int = 1 << 20) -> None:
        sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            socket.NETLINK_ROUTE,
        )
        try:
            try:
                # Root may exceed net.core.rmem_max; a bigger queue makes ENOBUFS rarer.
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, groups))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._buf = bytearray(_BUFSIZE)

    def fileno(self) -> int:
        """The socket's descriptor, to wait for readability on."""
        return self._sock.fileno()

    def drain(self, budget: int = 4096) -> bool:
        """Read every queued notification (at most ``budget`` datagrams); True if anything changed.

        Returns True without reading further when the budget runs out (the owner resyncs and the
        socket stays readable for the rest).
        """
        changed = False
        for _ in range(budget):
            try:
                size, (pid, _groups) = self._sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return changed
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    changed = True  # the queue overflowed: notifications were lost, resync
                    continue
                raise
            if pid != 0:
                continue  # not from the kernel
            try:
                messages = parse_messages(memoryview(self._buf)[:size])
            except MalformedPacketError:
                changed = True  # cannot tell what it said: assume the worst
                continue
            if any(m.type in _CHANGES for m in messages):
                changed = True
        return True

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
