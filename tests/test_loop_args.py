"""Argument validation of create_raw_datagram_endpoint() equals asyncio's, message for message.

These mistakes are caught before any socket is opened, so no privilege is needed: each case runs
against the running loop's own ``create_datagram_endpoint`` and against the raw one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from rawtransport import create_raw_datagram_endpoint


def _outcome(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


async def _both(kwargs: dict[str, Any]) -> tuple[tuple[str, str], tuple[str, str]]:
    loop = asyncio.get_running_loop()
    factory: Callable[[], asyncio.DatagramProtocol] = asyncio.DatagramProtocol
    with pytest.raises(Exception) as std:
        await loop.create_datagram_endpoint(factory, **kwargs)
    with pytest.raises(Exception) as raw:
        await create_raw_datagram_endpoint(factory, **kwargs)
    return _outcome(std.value), _outcome(raw.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="no-address-no-family"),
        pytest.param({"local_addr": ("127.0.0.1", 0, 0)}, id="local-3-tuple"),
        pytest.param({"local_addr": ["127.0.0.1", 0]}, id="local-list"),
        pytest.param({"remote_addr": ("127.0.0.1",)}, id="remote-1-tuple"),
        pytest.param({"remote_addr": "127.0.0.1:9"}, id="remote-str"),
        pytest.param({"local_addr": ("::1", 0), "family": socket.AF_INET}, id="family-mismatch"),
        # A numeric host skips getaddrinfo (which wraps the port modulo 65536): bind() refuses it.
        pytest.param({"local_addr": ("127.0.0.1", 70000)}, id="port-70000"),
        pytest.param({"local_addr": ("127.0.0.1", -1)}, id="port-minus-1"),
        pytest.param({"remote_addr": ("127.0.0.1", 70000)}, id="remote-port-70000"),
    ],
)
def test_misuse_raises_what_asyncio_raises(kwargs: dict[str, Any]) -> None:
    std, raw = asyncio.run(_both(kwargs))
    assert raw == std


def test_sock_arguments_are_validated_like_asyncio() -> None:
    async def main() -> list[tuple[tuple[str, str], tuple[str, str]]]:
        out = []
        with socket.socket() as stream:
            out.append(await _both({"sock": stream}))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
            out.append(await _both({"sock": dgram, "local_addr": ("127.0.0.1", 0)}))
            out.append(await _both({"sock": dgram, "allow_broadcast": True, "family": 2}))
        return out

    for std, raw in asyncio.run(main()):
        assert raw == std
        assert std[0] == "ValueError"


def test_removed_reuse_address_is_an_unexpected_keyword() -> None:
    std, raw = asyncio.run(_both({"local_addr": ("127.0.0.1", 0), "reuse_address": True}))
    assert std[0] == raw[0] == "TypeError"
    assert "unexpected keyword argument 'reuse_address'" in raw[1]
