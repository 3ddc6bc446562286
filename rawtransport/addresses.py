"""Socket-address handling the boundary shares: ``sendto`` addresses as a UDP socket takes them."""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["parse_address"]


def parse_address(
    addr: Any, family: int, cache: dict[tuple[Any, ...], tuple[bytes, int]] | None = None
) -> tuple[bytes, int]:
    """Turn a ``sendto`` address into (raw IP bytes, port) the way a UDP socket would.

    Raises what ``socket.sendto`` raises for the same argument: ``TypeError`` for a malformed address,
    ``OverflowError`` for a port out of range, ``socket.gaierror`` for a name that does not resolve.
    """
    if cache is not None:
        try:
            return cache[addr]
        except (KeyError, TypeError):
            pass
    if not isinstance(addr, tuple) or len(addr) < 2:
        kind = "AF_INET" if family == socket.AF_INET else "AF_INET6"
        raise TypeError(f"{kind} address must be tuple, not {type(addr).__name__}")
    if (family == socket.AF_INET and len(addr) != 2) or (
        family == socket.AF_INET6 and len(addr) > 4
    ):
        raise TypeError(f"address tuple of the wrong length: {addr!r}")
    host, port = addr[0], addr[1]
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if not 0 <= port <= 0xFFFF:
        raise OverflowError("sendto(): port must be 0-65535.")
    if not isinstance(host, str):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    try:
        raw = socket.inet_pton(family, host)
    except OSError:
        # A name: resolve it as socket.sendto() would (blocking getaddrinfo), first answer wins.
        info = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
        raw = socket.inet_pton(family, str(info[0][4][0]).split("%")[0])
    result = (raw, port)
    if cache is not None and len(cache) < 4096:
        cache[addr] = result
    return result
