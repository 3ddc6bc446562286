"""Argument handling of the anyio raw sockets equals anyio's own, with no privilege needed.

Every case here fails before any socket is opened (or before the packet socket is), so it runs
unprivileged, once per backend, against ``anyio.create_udp_socket``/``create_connected_udp_socket``
and against the raw twins.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from rawtransport.anyio_socket import (
    RawConnectedUDPSocket,
    RawUDPSocket,
    _convert_addr,
    create_raw_connected_udp_socket,
    create_raw_udp_socket,
)

BACKENDS = ["asyncio", "trio"]


def _outcome(exc: BaseException) -> tuple[str, Any]:
    detail = exc.errno if isinstance(exc, OSError) else str(exc)
    return type(exc).__name__, detail


def _raises(backend: str, make: Callable[[], Awaitable[Any]]) -> tuple[str, Any]:
    async def main() -> tuple[str, Any]:
        with pytest.raises(Exception) as info:
            await make()
        return _outcome(info.value)

    result: tuple[str, Any] = anyio.run(main, backend=backend)
    return result


UNCONNECTED = [
    pytest.param({}, id="no-family-no-host"),
    pytest.param({"family": socket.AF_INET, "local_host": "::1"}, id="family-mismatch"),
    pytest.param({"family": socket.AF_INET6, "local_host": "127.0.0.1"}, id="family-mismatch-v6"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", UNCONNECTED)
def test_unconnected_misuse_raises_what_anyio_raises(backend: str, kwargs: dict[str, Any]) -> None:
    ref = _raises(backend, lambda: anyio.create_udp_socket(**kwargs))
    raw = _raises(backend, lambda: create_raw_udp_socket(**kwargs))
    assert raw == ref


CONNECTED = [
    pytest.param(("::1", 9), {"family": socket.AF_INET}, id="remote-family-mismatch"),
    pytest.param(("127.0.0.1", 9), {"local_host": "::1"}, id="local-v6-remote-v4"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("remote", "kwargs"), CONNECTED)
def test_connected_misuse_raises_what_anyio_raises(
    backend: str, remote: tuple[str, int], kwargs: dict[str, Any]
) -> None:
    ref = _raises(backend, lambda: anyio.create_connected_udp_socket(*remote, **kwargs))
    raw = _raises(backend, lambda: create_raw_connected_udp_socket(*remote, **kwargs))
    assert raw == ref


def test_missing_family_message_is_anyios() -> None:
    outcome = _raises("asyncio", create_raw_udp_socket)
    assert outcome == ("ValueError", 'Either "family" or "local_host" must be given')


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"receive_queue": 0}, ValueError, "receive_queue", id="queue-zero"),
        pytest.param({"receive_queue": "8"}, TypeError, "receive_queue", id="queue-str"),
        pytest.param({"receive_queue": True}, TypeError, "receive_queue", id="queue-bool"),
    ],
)
@pytest.mark.parametrize("connected", [False, True])
def test_raw_only_options_are_checked_first(
    kwargs: dict[str, Any], error: type[Exception], match: str, connected: bool
) -> None:
    async def make() -> Any:
        if connected:
            return await create_raw_connected_udp_socket("127.0.0.1", 9, **kwargs)
        return await create_raw_udp_socket(socket.AF_INET, **kwargs)

    async def main() -> None:
        with pytest.raises(error, match=match):
            await make()

    anyio.run(main)


def test_non_ip_family_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="IPv4 and IPv6 only"):
            await create_raw_udp_socket(socket.AF_UNIX)  # type: ignore[arg-type]

    anyio.run(main)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (create_raw_udp_socket, anyio.create_udp_socket),
        (create_raw_connected_udp_socket, anyio.create_connected_udp_socket),
    ],
)
def test_signature_starts_with_anyios(ours: Any, theirs: Any) -> None:
    """Same parameters, kinds and defaults as anyio's; the raw knobs only follow them."""
    mine = list(inspect.signature(ours).parameters.values())
    ref = list(inspect.signature(theirs).parameters.values())
    assert [(p.name, p.kind, p.default) for p in mine[: len(ref)]] == [
        (p.name, p.kind, p.default) for p in ref
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in mine[len(ref) :])


@pytest.mark.parametrize("cls", [RawUDPSocket, RawConnectedUDPSocket])
def test_from_socket_is_not_offered(cls: Any) -> None:
    async def main() -> None:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
            pytest.raises(NotImplementedError, match="create_raw"),
        ):
            await cls.from_socket(sock)

    anyio.run(main)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        (("198.18.0.1", 9), ("198.18.0.1", 9)),
        (("2001:db8::1", 9, 0, 0), ("2001:db8::1", 9)),
        (("fe80::1", 9, 0, 3), ("fe80::1%3", 9)),
    ],
)
def test_addresses_are_converted_as_anyio_converts_them(
    addr: tuple[Any, ...], expected: tuple[str, int]
) -> None:
    from anyio._core._sockets import convert_ipv6_sockaddr

    assert _convert_addr(addr) == expected == convert_ipv6_sockaddr(addr)
