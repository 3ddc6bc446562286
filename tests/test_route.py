"""Unit tests of the route values, the route cache and the local-address snapshot; no privileges."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawtransport.route import (
    ARPHRD_ETHER,
    ARPHRD_LOOPBACK,
    ARPHRD_NONE,
    IFA_F_DADFAILED,
    IFA_F_OPTIMISTIC,
    IFA_F_PERMANENT,
    IFA_F_SECONDARY,
    IFA_F_TENTATIVE,
    IFF_LOOPBACK,
    IFF_NOARP,
    IFF_RUNNING,
    IFF_UP,
    AddressInfo,
    LinkInfo,
    LocalAddresses,
    Route,
    RouteCache,
    RouteKey,
    RouteKind,
)


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def v4(
    address: str,
    prefixlen: int,
    ifindex: int = 2,
    flags: int = IFA_F_PERMANENT,
    broadcast: bytes | None = None,
) -> AddressInfo:
    return AddressInfo(ifindex, 4, ip(address), prefixlen, 0, flags, broadcast)


def v6(address: str, prefixlen: int = 64, flags: int = IFA_F_PERMANENT) -> AddressInfo:
    return AddressInfo(2, 6, ip(address), prefixlen, 0, flags)


def route(n: int) -> Route:
    dst = bytes([198, 18, n >> 8 & 0xFF, n & 0xFF])
    return Route(dst, 2, "rt0", ip("198.18.0.1"), dst, 1500, bytes(6), RouteKind.UNICAST, False)


# -------------------------------------------------------------------------------- LinkInfo
@pytest.mark.parametrize(
    ("flags", "arphrd", "loopback", "noarp"),
    [
        (IFF_UP | IFF_RUNNING, ARPHRD_ETHER, False, False),
        (IFF_UP | IFF_RUNNING | IFF_NOARP, ARPHRD_ETHER, False, True),
        (IFF_UP | IFF_RUNNING | IFF_LOOPBACK, ARPHRD_LOOPBACK, True, True),
        (IFF_UP, ARPHRD_LOOPBACK, True, True),  # type alone is enough
        (IFF_LOOPBACK, ARPHRD_ETHER, True, True),  # flag alone is enough
        (IFF_UP | IFF_RUNNING, ARPHRD_NONE, False, True),  # tun: no hardware address at all
    ],
)
def test_link_properties(flags: int, arphrd: int, loopback: bool, noarp: bool) -> None:
    link = LinkInfo(2, "x", bytes(6), 1500, flags, arphrd, True)
    assert link.is_loopback is loopback
    assert link.noarp is noarp


# ----------------------------------------------------------------------------- AddressInfo
@pytest.mark.parametrize(
    ("flags", "tentative"),
    [
        (IFA_F_PERMANENT, False),
        (IFA_F_TENTATIVE, True),
        (IFA_F_TENTATIVE | IFA_F_OPTIMISTIC, False),  # RFC 4429: usable while DAD runs
        (IFA_F_DADFAILED, True),
        (IFA_F_DADFAILED | IFA_F_TENTATIVE | IFA_F_OPTIMISTIC, True),
    ],
)
def test_address_tentative(flags: int, tentative: bool) -> None:
    assert v6("2001:db8::1", flags=flags).tentative is tentative


# ------------------------------------------------------------------------------ RouteCache
def test_cache_get_put() -> None:
    cache = RouteCache()
    key: RouteKey = (ip("198.18.0.2"), None, None)
    assert cache.get(key) is None
    cache.put(key, route(2))
    assert cache.get(key) == route(2)
    assert cache.get((ip("198.18.0.2"), ip("198.18.0.1"), None)) is None  # the source is in the key
    assert cache.get((ip("198.18.0.2"), None, 3)) is None  # so is the interface
    assert len(cache) == 1


def test_cache_lru_eviction() -> None:
    cache = RouteCache(maxsize=3)
    keys: list[RouteKey] = [(route(n).destination, None, None) for n in range(5)]
    for n in range(3):
        cache.put(keys[n], route(n))
    assert cache.get(keys[0]) is not None  # 0 is now the most recently used
    cache.put(keys[3], route(3))  # evicts 1, the least recently used
    assert cache.get(keys[1]) is None
    assert [cache.get(keys[n]) is not None for n in (0, 2, 3)] == [True, True, True]
    cache.put(keys[2], route(2))  # re-put refreshes, does not grow
    cache.put(keys[4], route(4))  # evicts 0 (2 and 3 were used after it)
    assert len(cache) == 3
    assert cache.get(keys[0]) is None


def test_cache_default_bound() -> None:
    cache = RouteCache()
    assert cache.maxsize == 1024
    for n in range(1500):
        cache.put((route(n).destination, None, None), route(n))
    assert len(cache) == 1024
    assert cache.get((route(0).destination, None, None)) is None
    assert cache.get((route(1499).destination, None, None)) == route(1499)


def test_cache_invalidate() -> None:
    cache = RouteCache()
    key: RouteKey = (ip("198.18.0.2"), None, None)
    cache.put(key, route(2))
    generation = cache.generation
    cache.invalidate()
    assert cache.get(key) is None
    assert len(cache) == 0
    assert cache.generation == generation + 1


@pytest.mark.parametrize(("maxsize", "exc"), [(0, ValueError), (-1, ValueError), (1.5, TypeError)])
def test_cache_bad_size(maxsize: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        RouteCache(maxsize)  # type: ignore[arg-type]


@given(
    st.integers(1, 8),
    st.lists(st.tuples(st.sampled_from(["get", "put", "invalidate"]), st.integers(0, 12))),
)
def test_cache_matches_reference_lru(maxsize: int, ops: list[tuple[str, int]]) -> None:
    cache = RouteCache(maxsize)
    model: OrderedDict[int, Route] = OrderedDict()
    for op, n in ops:
        key: RouteKey = (route(n).destination, None, None)
        if op == "put":
            cache.put(key, route(n))
            model[n] = route(n)
            model.move_to_end(n)
            if len(model) > maxsize:
                model.popitem(last=False)
        elif op == "get":
            expected = model.get(n)
            if expected is not None:
                model.move_to_end(n)
            assert cache.get(key) == expected
        else:
            cache.invalidate()
            model.clear()
        assert len(cache) == len(model) <= maxsize


# -------------------------------------------------------------------------- LocalAddresses
HOST = [
    v4("127.0.0.1", 8, ifindex=1),
    AddressInfo(1, 6, ip("::1"), 128, 254, IFA_F_PERMANENT),
    v4("198.18.0.1", 24),
    v4("198.18.0.3", 24, flags=IFA_F_SECONDARY),
    v4("198.19.0.1", 30),
    v4("198.19.1.1", 31),
    v4("198.19.2.1", 32),
    v4("198.19.3.1", 24, broadcast=ip("198.19.3.127")),
    v6("2001:db8::1"),
    v6("2001:db8::5", flags=IFA_F_TENTATIVE),
    v6("2001:db8::6", flags=IFA_F_TENTATIVE | IFA_F_OPTIMISTIC),
    v6("fe80::1"),
]


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("198.18.0.1", True),
        ("198.18.0.3", True),
        ("198.18.0.2", False),
        ("198.19.2.1", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),  # the loopback prefix route is RTN_LOCAL: all of 127/8
        ("128.0.0.1", False),
        ("198.18.0.255", False),
        ("::1", True),
        ("2001:db8::1", True),
        ("2001:db8::2", False),
        ("2001:db8::5", False),  # tentative (RFC 4862 5.4)
        ("2001:db8::6", True),  # optimistic
        ("fe80::1", True),
        ("::ffff:198.18.0.1", False),
    ],
)
def test_is_local(address: str, local: bool) -> None:
    addrs = LocalAddresses(HOST)
    assert addrs.is_local(ip(address)) is local
    assert (ip(address) in addrs) is local


@pytest.mark.parametrize(
    ("address", "broadcast"),
    [
        ("255.255.255.255", True),
        ("198.18.0.255", True),
        ("198.18.0.0", False),  # network address: no RTN_BROADCAST route on current kernels
        ("198.19.0.3", True),  # /30
        ("198.19.1.1", False),  # /31 (RFC 3021): no broadcast
        ("198.19.1.0", False),
        ("198.19.2.1", False),  # /32
        ("198.19.3.255", True),
        ("198.19.3.127", True),  # explicit IFA_BROADCAST
        ("127.255.255.255", True),
        ("198.18.0.1", False),
        ("198.18.1.255", False),
    ],
)
def test_is_broadcast(address: str, broadcast: bool) -> None:
    assert LocalAddresses(HOST).is_broadcast(ip(address)) is broadcast


def test_is_broadcast_false_for_ipv6() -> None:
    assert not LocalAddresses(HOST).is_broadcast(b"\xff" * 16)


def test_empty_snapshot() -> None:
    addrs = LocalAddresses()
    assert addrs.is_broadcast(ip("255.255.255.255"))
    assert not addrs.is_local(ip("127.0.0.1"))
    assert addrs.on_interface(1) == []


def test_on_interface() -> None:
    addrs = LocalAddresses(HOST)
    assert [a.address for a in addrs.on_interface(1)] == [ip("127.0.0.1"), ip("::1")]
    on_2 = addrs.on_interface(2)
    assert on_2 == [a for a in HOST if a.ifindex == 2]
    on_2.clear()  # a copy: the snapshot is unchanged
    assert addrs.on_interface(2)
    assert addrs.on_interface(99) == []


def test_zero_broadcast_is_ignored() -> None:
    addrs = LocalAddresses([v4("198.18.0.1", 32, broadcast=bytes(4))])
    assert not addrs.is_broadcast(bytes(4))


def test_rejects_non_addresses() -> None:
    with pytest.raises(TypeError, match="AddressInfo"):
        LocalAddresses([("198.18.0.1", 24)])  # type: ignore[list-item]
