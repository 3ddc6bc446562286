"""``parse_address``: a ``sendto`` address taken exactly as ``socket.sendto`` takes it.

The oracle is a real (unbound, unsent) kernel socket: for each address, the exception type that
``socket.sendto`` raises for it is the one ``parse_address`` must raise; what it accepts must parse
to the same destination. The sends that parse go to the discard port on loopback, nowhere else.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from rawtransport.addresses import parse_address


class Port:
    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n


V4 = [
    ("127.0.0.1", 9), ("127.0.0.1", True), ("127.0.0.1", Port(9)), (b"127.0.0.1", 9),
    (bytearray(b"127.0.0.1"), 9), ("127.0.0.1", 65536), ("127.0.0.1", -1),
    ("127.0.0.1", 1 << 70), ("127.0.0.1", "9"), ("127.0.0.1", 9.0), ("127.0.0.1",),
    ("127.0.0.1", 9, 0), ["127.0.0.1", 9], None, (9, 9), ("127.0.0.1", None),
]  # fmt: skip
V6 = [
    ("::1", 9), ("::1", 9, 0xFFFFF), ("::1", 9, 0x100000),
    ("::1", 9, -1), ("::1", 9, 0, 0), ("::1", 9, 0, 0, 0),
    ("::1", 9, "0"), ("::1", True), (b"::1", Port(9)), ("::1",),
]  # fmt: skip


def _kernel(family: int, addr: Any) -> type[BaseException] | None:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            # A send that parses may still fail (the loopback may be down): not the parser's
            # business.
            s.sendto(b"", socket.MSG_DONTWAIT, addr)
        except (TypeError, OverflowError, ValueError) as exc:
            return type(exc)
        except OSError:
            return None
    return None


@pytest.mark.parametrize(("family", "addr"), [*((socket.AF_INET, a) for a in V4),
                                              *((socket.AF_INET6, a) for a in V6)])  # fmt: skip
def test_parse_address_raises_what_sendto_raises(family: int, addr: Any) -> None:
    want = _kernel(family, addr)
    if want is None:
        raw, port, scope = parse_address(addr, family)
        assert socket.inet_ntop(family, raw) == (addr[0] if isinstance(addr[0], str)
                                                 else bytes(addr[0]).decode())  # fmt: skip
        assert port == int(addr[1])
        # The scope is the 4-tuple's, as socket.sendto() sets sin6_scope_id from the tuple only.
        assert scope == (int(addr[3]) & 0xFFFFFFFF if len(addr) == 4 else 0)
    else:
        with pytest.raises(want):
            parse_address(addr, family)


def test_the_cache_takes_plain_addresses_only() -> None:
    cache: dict[tuple[Any, ...], tuple[bytes, int, int]] = {}
    parse_address(("127.0.0.1", 9), socket.AF_INET, cache)
    parse_address(("127.0.0.1", Port(10)), socket.AF_INET, cache)
    parse_address(("127.0.0.1", True), socket.AF_INET, cache)
    assert list(cache) == [("127.0.0.1", 9)]
