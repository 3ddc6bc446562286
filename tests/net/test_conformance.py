"""The conformance suite: every scenario against the stdlib endpoint and the raw endpoint.

For each (scenario, loop, family) the same scenario runs twice in fresh namespaces — once on
``loop.create_datagram_endpoint`` and once on ``create_raw_datagram_endpoint`` — and the results must be
equal. Each scenario's result is also checked against what it must be, so agreement on a wrong answer
(or on nothing at all) fails too.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from tests.net.conformance import SCENARIOS
from tests.netns import VethPair, setns, veth_pair

LOOPS = ["asyncio", "uvloop"]


def run_on(loop_kind: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main()`` on a fresh loop of the given kind."""
    if loop_kind == "uvloop":
        return uvloop.run(main())
    return asyncio.run(main())


def run_scenario(name: str, impl: str, loop_kind: str, family: int) -> Any:
    """One scenario in a fresh veth pair, the endpoint's sockets created in namespace A."""
    scenario = SCENARIOS[name]
    with veth_pair() as veth, setns(veth.ns_a):

        async def main() -> Any:
            return await asyncio.wait_for(scenario(impl, family, veth), 30)

        return run_on(loop_kind, main)


def _cases() -> list[Any]:
    cases = []
    for name in SCENARIOS:
        for family in (4, 6):
            if name == "broadcast" and family == 6:
                continue  # IPv6 has no broadcast
            for loop_kind in LOOPS:
                cases.append(
                    pytest.param(name, loop_kind, family, id=f"{name}-{loop_kind}-v{family}")
                )
    return cases


# What each scenario must return (independent of the implementation). Ports and addresses are already
# reduced to booleans by the scenarios.
def expected(name: str, family: int) -> Any:
    mtu = 1500 - (28 if family == 4 else 48)
    v6 = family == 6
    addr_len = 4 if v6 else 2
    if name == "echo":
        rows: list[Any] = [(True, True, True, True, addr_len) for _ in range(4)]
        del mtu
        return [*rows, None, ("made",)]
    if name == "many_peers":
        seen = sorted((f"{i}:{j}", i, True) for i in range(4) for j in range(3))
        return seen, [(b"reply", True)] * 4, None
    if name == "connected":
        return (b"to peer", True, True, True, b"from peer", True, True, "Invalid address", None)
    if name == "empty_datagram":
        return b"", b"marker", None
    if name == "large_datagrams":
        too_big = ("OSError", errno.EMSGSIZE)
        return [too_big, None] if v6 else [65507, too_big, None]
    if name == "broadcast":
        return ("PermissionError", errno.EACCES), None, b"allowed", True, None
    if name == "close_while_sending":
        return True, None, 1, 0, True
    if name == "abort":
        return True, None, ["made", "lost"], 0
    if name == "pause_reading":
        return False, 0, [b"held 0", b"held 1", b"held 2"], True, True, False, None
    if name == "icmp_refused":
        return "ConnectionRefusedError", True, None
    if name == "kernel_errors":
        return [
            ("OSError", errno.EADDRNOTAVAIL),
            ("OSError", errno.EADDRINUSE),
            ("sendto", "TypeError"),
            ("OSError", errno.EINVAL),
            None,
        ]
    if name == "flow_control":
        return [
            (5, 10),
            (100, 400),
            "high (1) must be >= low (5) must be >= 0",
            (16384, 65536),
            True,
            0,
            None,
        ]
    raise AssertionError(name)


# Where the loop's own UDP endpoint departs from the kernel's answer, the raw endpoint keeps the
# kernel's answer and is checked against the expectation alone: uvloop turns bind() errors into an
# OSError without errno (and leaks the half-made transport, a ResourceWarning), and its UDP
# transport has no pause_reading() (CPython's, an asyncio.Transport, has).
LOOP_QUIRKS = {("kernel_errors", "uvloop"), ("pause_reading", "uvloop")}


@pytest.mark.parametrize(("name", "loop_kind", "family"), _cases())
def test_raw_matches_stdlib(name: str, loop_kind: str, family: int) -> None:
    raw = run_scenario(name, "raw", loop_kind, family)
    if (name, loop_kind) in LOOP_QUIRKS:
        assert raw == expected(name, family)
        return
    stdlib = run_scenario(name, "stdlib", loop_kind, family)
    assert stdlib == expected(name, family), "the stdlib run is not what the scenario expects"
    assert raw == stdlib


def test_cold_cache_resolution_on_the_wire(veth: VethPair) -> None:
    """After a cold neighbour cache the raw endpoint resolves the peer itself, on the wire."""
    from tests.net.conformance import Recorder, open_endpoint

    for family in (4, 6):
        stats: dict[str, Any] = {}
        with setns(veth.ns_a):

            async def main(family: int = family, stats: dict[str, Any] = stats) -> None:
                from tests.net.conformance import Peer, a_ip

                t, p = await open_endpoint(
                    "raw", lambda: Recorder(echo=True), local_addr=(a_ip(veth, family), 0)
                )
                peer = Peer.create(veth, family)
                peer.sock.sendto(b"ping", (a_ip(veth, family), t.get_extra_info("sockname")[1]))
                data, _ = await peer.recv()
                assert data == b"ping"
                stats.update(t.get_extra_info("stats"))
                t.close()
                await asyncio.wait_for(p.lost, 5)
                peer.close()

            asyncio.run(main())
        neighbour = stats["neighbour"]
        assert neighbour["requests_sent"] >= 1, stats
        assert neighbour["replies_accepted"] == 1, stats
