"""Socket-address handling the boundary shares: ``sendto`` addresses as a UDP socket takes them."""

from __future__ import annotations

import operator
import socket
from typing import Any

__all__ = ["parse_address", "raw_peer"]


def _port(value: Any) -> int:
    # The "i" format of getsockaddrarg() (Modules/socketmodule.c): anything with __index__,
    # bool included; then "port must be 0-65535".
    try:
        port = operator.index(value)
    except TypeError:
        raise TypeError(
            f"'{type(value).__name__}' object cannot be interpreted as an integer"
        ) from None
    if not 0 <= port <= 0xFFFF:
        raise OverflowError("sendto(): port must be 0-65535.")
    return port


def _host(value: Any) -> str:
    # idna_converter(): str, or bytes/bytearray taken as ASCII.
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("ascii")
    raise TypeError(f"str, bytes or bytearray expected, not {type(value).__name__}")


def parse_address(
    addr: Any, family: int, cache: dict[tuple[Any, ...], tuple[bytes, int, int]] | None = None
) -> tuple[bytes, int, int]:
    """Turn a ``sendto`` address into (raw IP bytes, port, scope id) the way a UDP socket would.

    The scope id is an IPv6 4-tuple's last item, else 0: ``socket.sendto()`` sets
    ``sin6_scope_id`` from the tuple only (a ``%name`` in the host is resolved, then overwritten
    with the tuple's default 0), and the kernel then routes a link-local destination as it finds
    it (``udpv6_sendmsg()``: no scope, no output interface).

    Raises what ``socket.sendto`` raises for the same argument (``getsockaddrarg()`` in CPython's
    Modules/socketmodule.c): ``TypeError`` for a malformed address, ``OverflowError`` for a port
    or an IPv6 flowinfo out of range, ``socket.gaierror`` for a name that does not resolve.
    """
    if cache is not None:
        try:
            return cache[addr]
        except (KeyError, TypeError):
            pass
    v4 = family == socket.AF_INET
    kind = "AF_INET" if v4 else "AF_INET6"
    if not isinstance(addr, tuple):
        raise TypeError(f"sendto(): {kind} address must be tuple, not {type(addr).__name__}")
    if v4 and len(addr) != 2:
        raise TypeError("AF_INET address must be a pair (host, port)")
    if not v4 and not 2 <= len(addr) <= 4:
        raise TypeError("AF_INET6 address must be a tuple (host, port[, flowinfo[, scopeid]])")
    host, port = _host(addr[0]), _port(addr[1])
    for extra in addr[2:]:
        # The "I" format: an int, masked to 32 bits; a flowinfo wider than 20 bits is refused.
        try:
            operator.index(extra)
        except TypeError:
            raise TypeError(
                f"'{type(extra).__name__}' object cannot be interpreted as an integer"
            ) from None
    if len(addr) > 2 and not 0 <= operator.index(addr[2]) & 0xFFFFFFFF <= 0xFFFFF:
        raise OverflowError("sendto(): flowinfo must be 0-1048575.")
    if host == "<broadcast>" and v4:
        host = "255.255.255.255"  # setipaddr()
    elif host == "":
        host = "0.0.0.0" if v4 else "::"  # setipaddr(): the empty name is INADDR_ANY
    try:
        raw = socket.inet_pton(family, host)
    except OSError:
        # A name: resolve it as socket.sendto() would (blocking getaddrinfo), first answer wins.
        info = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
        raw = socket.inet_pton(family, str(info[0][4][0]).split("%")[0])
    scope = operator.index(addr[3]) & 0xFFFFFFFF if len(addr) == 4 else 0
    result = (raw, port, scope)
    # Only plain values are cached: another object may compare (and hash) like one it is not.
    plain = type(addr[0]) is str and all(type(x) is int for x in addr[1:])
    if cache is not None and plain and len(cache) < 4096:
        cache[addr] = result
    return result


def raw_peer(sock: socket.socket, connected_to: Any = None) -> tuple[bytes, int]:
    """A connected socket's peer as (raw address, port). A UDP socket connected to port 0 has one,
    but getpeername() says ENOTCONN (inet_getname() wants a port): ``connected_to``, the address
    it was connected to, then says it."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        if connected_to is None:
            raise
        host, port = connected_to[0], 0
    return socket.inet_pton(sock.family, host.split("%")[0]), port
