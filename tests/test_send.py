"""The compiled send path (``_datapath.FastSender``, rawtransport/_send.c) against the Python one:
frames built from a template are byte-identical to what ``build_udp_fast()`` builds for the same
datagram, and the template is used only where the Python path's fast branch would have been (the
same address object shape, a REACHABLE neighbour, a payload within the MTU, a type asyncio takes).
The frames are read back from a socketpair, so no privilege is needed."""

from __future__ import annotations

import socket
from array import array
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rawtransport.packet import build_udp_fast
from tests.test_datapath import C, assert_no_leak

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
SRC4, DST4 = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")
REACHABLE = 30.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def frame(v6: bool, payload: bytes, sport: int = 5000, dport: int = 9000, ttl: int = 64) -> bytes:
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    return build_udp_fast(MAC_B, MAC_A, src, dst, sport, dport, payload, ttl)


def sender(a: socket.socket, key: object, v6: bool, mtu: int = 1500, **kw: int) -> object:
    s = C.FastSender()
    assert s.install(key, frame(v6, b"first", **kw), a.fileno(), mtu - (48 if v6 else 28),
                     100.0, REACHABLE)  # fmt: skip
    return s


@settings(max_examples=200, deadline=None)
@given(
    v6=st.booleans(),
    payloads=st.lists(st.binary(min_size=1, max_size=1472), min_size=1, max_size=5),
    sport=st.integers(1, 0xFFFF),
    dport=st.integers(1, 0xFFFF),
    ttl=st.integers(0, 255),
)
def test_frames_are_what_the_python_path_builds(
    v6: bool, payloads: list[bytes], sport: int, dport: int, ttl: int
) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        s = sender(a, ("198.18.0.2", dport), v6, sport=sport, dport=dport, ttl=ttl)
        for p in payloads:
            assert s.sendto(p, ("198.18.0.2", dport), 101.0) is True  # type: ignore[attr-defined]
            assert b.recv(4096) == frame(v6, p, sport, dport, ttl)
        assert s.sent == len(payloads)  # type: ignore[attr-defined]


def test_every_buffer_type_the_transport_takes(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    s = sender(a, ("198.18.0.2", 9000), False)
    key = ("198.18.0.2", 9000)
    assert s.sendto(bytearray(b"ab"), key, 101.0)  # type: ignore[attr-defined]
    assert b.recv(4096) == frame(False, b"ab")
    # An array('H') view is its bytes (socket.sendto() sends 6 bytes for 3 items).
    assert s.sendto(memoryview(array("H", [1, 2, 3])), key, 101.0)  # type: ignore[attr-defined]
    assert b.recv(4096) == frame(False, array("H", [1, 2, 3]).tobytes())
    # What the Python path must take (it raises, copies, drops or fragments): nothing sent.
    for data in (array("B", b"x"), "text", b"", memoryview(b"abcd")[::2], bytes(1473)):
        assert s.sendto(data, key, 101.0) is False  # type: ignore[attr-defined]
    with pytest.raises(BlockingIOError):
        b.recv(4096)


def test_only_the_very_address_shape_reaches_a_template(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """An address that only compares equal (a float or bool port, a list, a str subclass) goes
    to the Python path, which checks it as the kernel path would."""
    a, _b = pair
    s = sender(a, ("198.18.0.2", 9000), False)

    class Host(str):
        pass

    for addr in (("198.18.0.2", 9000.0), ["198.18.0.2", 9000], (Host("198.18.0.2"), 9000),
                 ("198.18.0.2", 9001), None, ("198.18.0.2",)):  # fmt: skip
        assert s.sendto(b"x", addr, 101.0) is False  # type: ignore[attr-defined]
    assert s.sendto(b"x", ("198.18.0.2", 9000), 101.0) is True  # type: ignore[attr-defined]
    assert C.FastSender().install(("198.18.0.2", 9000.0), frame(False, b"x"), a.fileno(),
                                  1472, 100.0, REACHABLE) is False  # fmt: skip
    assert s.sendto(b"x", {}, 101.0) is False  # type: ignore[attr-defined]  # unhashable


def test_a_template_lasts_while_the_neighbour_is_reachable(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, _b = pair
    s = sender(a, None, True)
    assert s.sendto(b"x", None, 100.0 + REACHABLE - 0.001) is True  # type: ignore[attr-defined]
    assert s.sendto(b"x", None, 100.0 + REACHABLE) is False  # type: ignore[attr-defined]
    s2 = sender(a, None, True)
    s2.clear()  # type: ignore[attr-defined]
    assert s2.sendto(b"x", None, 101.0) is False  # type: ignore[attr-defined]


def test_news_on_the_watched_socket_sends_the_datagram_down_the_python_path(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The rtnetlink monitor readable (a route or address change not applied yet): False, so the
    Python path applies it first; looked at no more than once per interval while quiet."""
    a, b = pair
    news_r, news_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with news_r, news_w:
        s = sender(a, ("198.18.0.2", 9000), False)
        s.watch(news_r.fileno(), 0.001)  # type: ignore[attr-defined]
        key = ("198.18.0.2", 9000)
        assert s.sendto(b"x", key, 101.0) is True  # type: ignore[attr-defined]
        news_w.send(b"change")
        assert s.sendto(b"y", key, 101.0005) is True  # type: ignore[attr-defined]  # not looked
        assert s.sendto(b"z", key, 101.002) is False  # type: ignore[attr-defined]
        news_r.recv(16)  # applied
        assert s.sendto(b"z", key, 101.002) is True  # type: ignore[attr-defined]
        assert [b.recv(4096)[42:] for _ in range(3)] == [b"x", b"y", b"z"]


def test_a_failed_send_sends_nothing_and_says_so(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A full socket (EAGAIN) or a closed one: False, so the Python path queues or reports."""
    a, b = pair
    a.setblocking(False)
    s = sender(a, ("198.18.0.2", 9000), False)
    sent = 0
    while s.sendto(bytes(1000), ("198.18.0.2", 9000), 101.0):  # type: ignore[attr-defined]
        sent += 1
        assert sent < 100_000
    assert s.sent == sent  # type: ignore[attr-defined]
    assert sent > 0
    b.close()
    assert s.sendto(b"x", ("198.18.0.2", 9000), 101.0) is False  # type: ignore[attr-defined]


def test_install_refuses_what_is_not_a_template() -> None:
    s = C.FastSender()
    with pytest.raises(ValueError):
        s.install(None, b"\x00" * 10, 3, 1472, 0.0, 1.0)
    with pytest.raises(ValueError):
        s.install(None, frame(False, b"x"), -1, 1472, 0.0, 1.0)
    with pytest.raises(ValueError):
        s.install(None, frame(False, b"x"), 3, 70000, 0.0, 1.0)


def test_no_reference_or_memory_leak() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setblocking(False)
        key = ("198.18.0.2", 9000)
        s = sender(a, key, False)
        payload = b"x" * 100

        def round_() -> None:
            for _ in range(2000):
                s.sendto(payload, key, 101.0)  # type: ignore[attr-defined]
                s.sendto(payload, ("198.18.0.2", 1), 101.0)  # type: ignore[attr-defined]
                b.recv(4096)

        assert_no_leak(round_, s, key, payload)
