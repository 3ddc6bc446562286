"""The anyio sockets on the raw path, on asyncio, asyncio+uvloop and trio, against kernel peers.

Each scenario is an ``async`` function ``(impl, family, veth) -> result`` returning plain data (no ports,
no object identities). It runs once on the raw sockets (``impl="raw"``) and once on anyio's own
(``impl="anyio"``), each time in fresh namespaces with the socket under test created in namespace A
(``setns`` around the whole ``anyio.run``) and a kernel UDP peer in namespace B. Both results are
checked against what the scenario must return; where anyio's backends disagree with each other (ICMP
errors on a connected socket) the expectation says so and the raw socket keeps the kernel's answer.

The last tests check the stack the sockets of a run share (rawtransport.stack_anyio): opened once
by concurrent first sockets, registered on without a thread afterwards, reused by one socket per
query within the linger, and closed after the linger or when the run ends, packet sockets and all.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ConnectedUDPSocket, IPSockAddrType, SocketAttribute, UDPSocket

from rawtransport import stack_loop, workers
from rawtransport.anyio_socket import (
    RawConnectedUDPSocket,
    RawSocketAttribute,
    RawUDPSocket,
    create_raw_connected_udp_socket,
    create_raw_udp_socket,
)
from rawtransport.stack import RawStack, StackOptions
from rawtransport.stack_anyio import AnyioStack
from tests.netns import VethPair, is_packet_socket, readable, setns, udp_echo_peer_b, veth_pair

TIMEOUT = 5.0
ROOT = Path(__file__).resolve().parents[2]
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
Scenario = Callable[[str, int, VethPair], Awaitable[Any]]


def run_in_a(veth: VethPair, backend: str, main: Callable[[], Awaitable[Any]]) -> Any:
    """``anyio.run(main)`` on ``backend`` with the thread in namespace A for the whole run."""
    name, options = BACKENDS[backend]
    with setns(veth.ns_a):
        return anyio.run(main, backend=name, backend_options=options)


# ------------------------------------------------------------------------------------- helpers
def a_ip(veth: VethPair, family: int) -> str:
    return veth.ip4_a if family == 4 else veth.ip6_a


def b_ip(veth: VethPair, family: int) -> str:
    return veth.ip4_b if family == 4 else veth.ip6_b


@dataclass
class Peer:
    """A kernel UDP socket in namespace B (blocking, with a timeout; read off the event loop)."""

    sock: socket.socket

    @classmethod
    def create(cls, veth: VethPair, family: int, port: int = 0) -> Peer:
        with setns(veth.ns_b):
            sock = socket.socket(
                socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM
            )
        sock.bind((b_ip(veth, family), port))
        sock.settimeout(TIMEOUT)
        return cls(sock)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def recv(self) -> tuple[bytes, tuple[str, int]]:
        data, addr = await anyio.to_thread.run_sync(self.sock.recvfrom, 70000)
        return data, (addr[0], addr[1])

    def close(self) -> None:
        self.sock.close()


async def open_udp(impl: str, **kwargs: Any) -> UDPSocket:
    if impl == "raw":
        return await create_raw_udp_socket(**kwargs)
    return await anyio.create_udp_socket(**kwargs)


async def open_connected(impl: str, host: str, port: int, **kwargs: Any) -> ConnectedUDPSocket:
    if impl == "raw":
        return await create_raw_connected_udp_socket(host, port, **kwargs)
    return await anyio.create_connected_udp_socket(host, port, **kwargs)


def outcome(exc: BaseException) -> tuple[str, Any]:
    """An exception as comparable data: its type and errno (or, if broken, the type of the cause)."""
    if isinstance(exc, OSError):
        return type(exc).__name__, exc.errno
    cause = exc.__cause__ if isinstance(exc, anyio.BrokenResourceError) else None
    return type(exc).__name__, type(cause).__name__ if cause else None


# ----------------------------------------------------------------------------------- scenarios
async def echo(impl: str, family: int, veth: VethPair) -> Any:
    """An echo server answers a kernel client in B, from 1 byte to a full-MTU payload."""
    mtu_payload = 1500 - (28 if family == 4 else 48)
    peer = Peer.create(veth, family)
    out = []
    with anyio.fail_after(TIMEOUT):
        async with await open_udp(impl, local_host=a_ip(veth, family)) as sock:
            port = sock.extra(SocketAttribute.local_port)
            for payload in (b"x", b"hello world" * 10, b"\xa5" * mtu_payload):
                peer.sock.sendto(payload, (a_ip(veth, family), port))
                data, addr = await sock.receive()
                await sock.send((data, addr))
                got, src = await peer.recv()
                out.append(
                    (
                        data == payload,
                        addr == (b_ip(veth, family), peer.port),
                        got == payload,
                        src == (a_ip(veth, family), port),
                    )
                )
    peer.close()
    return out


async def sendto(impl: str, family: int, veth: VethPair) -> Any:
    """Send to a peer whose MAC nobody here knows yet, never calling receive().

    send() must itself read the ARP/ND reply: the peer gets both datagrams only if it did.
    """
    peer = Peer.create(veth, family)
    host = b_ip(veth, family)
    with anyio.fail_after(TIMEOUT):
        async with await open_udp(impl, local_host=a_ip(veth, family)) as sock:
            local = sock.extra(SocketAttribute.local_address)
            await sock.sendto(b"one", host, peer.port)
            await sock.send((b"two", (host, peer.port)))
            got = [await peer.recv(), await peer.recv()]
    peer.close()
    return [(data, src == local) for data, src in got]


async def connected(impl: str, family: int, veth: VethPair) -> Any:
    """A connected socket talks to its peer and drops what a stranger sends."""
    peer = Peer.create(veth, family)
    stranger = Peer.create(veth, family)
    with anyio.fail_after(TIMEOUT):
        sock = await open_connected(
            impl, b_ip(veth, family), peer.port, local_host=a_ip(veth, family)
        )
        async with sock:
            local = sock.extra(SocketAttribute.local_address)
            await sock.send(b"to peer")
            data, src = await peer.recv()
            # The stranger's datagram arrives first: a connected socket must skip it.
            stranger.sock.sendto(b"stranger", local)
            peer.sock.sendto(b"from peer", local)
            got = await sock.receive()
    peer.close()
    stranger.close()
    return data, src == local, got


async def iteration(impl: str, family: int, veth: VethPair) -> Any:
    """``async for`` yields each datagram with its sender."""
    peer = Peer.create(veth, family)
    seen = []
    with anyio.fail_after(TIMEOUT):
        async with await open_udp(impl, local_host=a_ip(veth, family)) as sock:
            local = sock.extra(SocketAttribute.local_address)
            for word in (b"a", b"b", b"c"):
                peer.sock.sendto(word, local)
            async for data, addr in sock:
                seen.append((data, addr == (b_ip(veth, family), peer.port)))
                if len(seen) == 3:
                    break
    peer.close()
    return seen


async def close_from_other_task(impl: str, family: int, veth: VethPair) -> Any:
    """aclose() wakes a receive() blocked in another task; every later call is refused."""
    results: dict[str, Any] = {}
    sock = await open_udp(impl, local_host=a_ip(veth, family))

    async def blocked() -> None:
        try:
            await sock.receive()
        except Exception as exc:
            results["blocked"] = outcome(exc)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked)
            await anyio.wait_all_tasks_blocked()
            await sock.aclose()
        for name, call in (
            ("receive", sock.receive),
            ("send", lambda: sock.sendto(b"x", b_ip(veth, family), 9)),
        ):
            try:
                await call()
            except Exception as exc:
                results[name] = outcome(exc)
        await sock.aclose()  # idempotent
    return results


async def cancellation(impl: str, family: int, veth: VethPair) -> Any:
    """A cancelled receive() loses nothing: the datagram in flight is the next one received."""
    peer = Peer.create(veth, family)
    got = []
    with anyio.fail_after(TIMEOUT):
        async with await open_udp(impl, local_host=a_ip(veth, family)) as sock:
            local = sock.extra(SocketAttribute.local_address)
            scope = anyio.CancelScope()

            async def doomed() -> None:
                with scope:
                    await sock.receive()
                    got.append(b"not cancelled")

            async with anyio.create_task_group() as tg:
                tg.start_soon(doomed)
                await anyio.wait_all_tasks_blocked()
                # No checkpoint between the send and the cancel: the datagram may or may not have
                # been read by the doomed task's wait; either way it must not be lost.
                peer.sock.sendto(b"a", local)
                scope.cancel()
            for word in (b"b", b"c"):
                peer.sock.sendto(word, local)
            for _ in range(3):
                got.append((await sock.receive())[0])
    peer.close()
    return got, scope.cancelled_caught


async def busy(impl: str, family: int, veth: VethPair) -> Any:
    """Two tasks receiving at once: the second gets BusyResourceError."""
    peer = Peer.create(veth, family)
    out: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with await open_udp(impl, local_host=a_ip(veth, family)) as sock:
            local = sock.extra(SocketAttribute.local_address)

            async def first() -> None:
                out.append((await sock.receive())[0])

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await anyio.wait_all_tasks_blocked()
                try:
                    await sock.receive()
                except Exception as exc:
                    out.append(outcome(exc))
                peer.sock.sendto(b"for the first", local)
    peer.close()
    return out


async def extra_attributes(impl: str, family: int, veth: VethPair) -> Any:
    """SocketAttribute values of an unconnected and a connected socket."""
    peer = Peer.create(veth, family)
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    out: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with await open_udp(impl, local_host=a_ip(veth, family)) as sock:
            local = sock.extra(SocketAttribute.local_address)
            raw = sock.extra(SocketAttribute.raw_socket)
            out.append(
                (
                    sock.extra(SocketAttribute.family) == af,
                    local[0] == a_ip(veth, family),
                    sock.extra(SocketAttribute.local_port) == local[1] != 0,
                    # anyio's asyncio backend hands out asyncio's TransportSocket wrapper.
                    raw.type == socket.SOCK_DGRAM and raw.fileno() >= 0,
                    raw.getsockname()[:2] == local,
                    sock.extra(SocketAttribute.remote_address, None),
                    sock.extra(SocketAttribute.remote_port, None),
                )
            )
        conn = await open_connected(impl, b_ip(veth, family), peer.port)
        async with conn:
            out.append(
                (
                    conn.extra(SocketAttribute.family) == af,
                    conn.extra(SocketAttribute.local_address)[0] == a_ip(veth, family),
                    conn.extra(SocketAttribute.remote_address) == (b_ip(veth, family), peer.port),
                    conn.extra(SocketAttribute.remote_port) == peer.port,
                    conn.extra(SocketAttribute.raw_socket).getpeername()[:2]
                    == (b_ip(veth, family), peer.port),
                )
            )
    peer.close()
    return out


async def refused(impl: str, family: int, veth: VethPair) -> Any:
    """A connected socket sends to a closed port: ICMP port unreachable comes back. Then it recovers.

    The first error is held until receive() asks. For the second the neighbour is known, so the
    send leaves at once and nothing but the error itself can wake the receive() already blocked.
    """
    closed = Peer.create(veth, family)
    port = closed.port
    closed.close()
    result: list[Any] = []
    sock = await open_connected(impl, b_ip(veth, family), port, local_host=a_ip(veth, family))
    async with sock:

        async def receive_outcome() -> None:
            # anyio's asyncio backend never reports the error: bound that case's wait.
            with anyio.move_on_after(0.5) as scope:
                try:
                    result.append(("data", await sock.receive()))
                except Exception as exc:
                    result.append(outcome(exc))
            if scope.cancelled_caught:
                result.append("timeout")

        await sock.send(b"knock")
        await receive_outcome()
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive_outcome)
            await anyio.wait_all_tasks_blocked()
            await sock.send(b"knock again")
        with anyio.fail_after(TIMEOUT):
            peer = Peer.create(veth, family, port)
            await sock.send(b"again")
            data, src = await peer.recv()
            peer.sock.sendto(b"welcome", src)
            result.append((data, await sock.receive()))
        peer.close()
    return result


async def send_while_receiving(impl: str, family: int, veth: VethPair) -> Any:
    """A task blocked in receive() (waiting on the packet socket) while another sends to a cold peer."""
    peer = Peer.create(veth, family)
    received: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with await open_udp(impl, local_host=a_ip(veth, family)) as sock:

            async def receiver() -> None:
                received.append(await sock.receive())

            async with anyio.create_task_group() as tg:
                tg.start_soon(receiver)
                await anyio.wait_all_tasks_blocked()
                await sock.sendto(b"ping", b_ip(veth, family), peer.port)
                data, src = await peer.recv()
                peer.sock.sendto(b"pong", src)
    result = data, [(d, a == (b_ip(veth, family), peer.port)) for d, a in received]
    peer.close()
    return result


SCENARIOS: dict[str, Scenario] = {
    "echo": echo,
    "sendto": sendto,
    "connected": connected,
    "iteration": iteration,
    "close_from_other_task": close_from_other_task,
    "cancellation": cancellation,
    "busy": busy,
    "extra_attributes": extra_attributes,
    "refused": refused,
    "send_while_receiving": send_while_receiving,
}


def expected(name: str, impl: str, backend: str, family: int) -> Any:
    """What each scenario must return (ports and addresses already reduced to booleans)."""
    if name == "echo":
        return [(True, True, True, True)] * 3
    if name == "sendto":
        return [(b"one", True), (b"two", True)]
    if name == "connected":
        return b"to peer", True, b"from peer"
    if name == "iteration":
        return [(b"a", True), (b"b", True), (b"c", True)]
    if name == "close_from_other_task":
        closed = ("ClosedResourceError", None)
        return {"blocked": closed, "receive": closed, "send": closed}
    if name == "cancellation":
        return [b"a", b"b", b"c"], True
    if name == "busy":
        return [("BusyResourceError", None), b"for the first"]
    if name == "extra_attributes":
        return [(True, True, True, True, True, None, None), (True, True, True, True, True)]
    if name == "refused":
        # The raw socket raises the kernel's error itself from the next receive(); anyio's trio
        # backend wraps it in BrokenResourceError; its asyncio backend stores it and never raises.
        if impl == "raw":
            first: Any = ("ConnectionRefusedError", errno.ECONNREFUSED)
        elif backend == "trio":
            first = ("BrokenResourceError", "ConnectionRefusedError")
        else:
            first = "timeout"
        return [first, first, (b"again", b"welcome")]
    if name == "send_while_receiving":
        return b"ping", [(b"pong", True)]
    raise AssertionError(name)


def run_scenario(name: str, impl: str, backend: str, family: int) -> Any:
    with veth_pair() as veth:
        return run_in_a(veth, backend, lambda: SCENARIOS[name](impl, family, veth))


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_raw_behaves_as_anyio(name: str, backend: str, family: int) -> None:
    raw = run_scenario(name, "raw", backend, family)
    assert raw == expected(name, "raw", backend, family)
    ref = run_scenario(name, "anyio", backend, family)
    assert ref == expected(name, "anyio", backend, family), "anyio's own socket disagrees"


# --------------------------------------------------------------------------- raw-path specifics
@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_types_stats_and_cold_neighbour(veth: VethPair, backend: str, family: int) -> None:
    """The raw socket resolved the cold peer itself and counts what it did; stats survive aclose."""

    async def main() -> Any:
        peer = Peer.create(veth, family)
        with anyio.fail_after(TIMEOUT):
            sock = await create_raw_udp_socket(local_host=a_ip(veth, family))
            assert type(sock) is RawUDPSocket
            assert type(sock.extra(SocketAttribute.raw_socket)) is socket.socket
            packet = sock.extra(RawSocketAttribute.packet_socket)
            assert packet.family == socket.AF_PACKET
            await sock.sendto(b"hello", b_ip(veth, family), peer.port)
            data, src = await peer.recv()
            assert data == b"hello"
            peer.sock.sendto(b"back", src)
            assert await sock.receive() == (b"back", (b_ip(veth, family), peer.port))
            live = sock.extra(RawSocketAttribute.stats)
            await sock.aclose()
            after = sock.extra(RawSocketAttribute.stats)
            conn = await create_raw_connected_udp_socket(b_ip(veth, family), peer.port)
            assert type(conn) is RawConnectedUDPSocket
            await conn.aclose()
        peer.close()
        return live, after

    live, after = run_in_a(veth, backend, main)
    assert (live["sent"], live["delivered"]) == (1, 1), live
    assert live["neighbour"]["requests_sent"] >= 1, live
    assert live["neighbour"]["replies_accepted"] == 1, live
    assert (live["receive_queue"], live["receive_queue_limit"]) == (0, 1024), live
    assert (after["sent"], after["dropped"]) == (1, live["dropped"]), after


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_receive_queue_overflow_drops_newest_and_counts(veth: VethPair, backend: str) -> None:
    """A full receive queue drops the arriving datagram, as a full socket buffer does, and counts it."""

    async def main() -> Any:
        peer = Peer.create(veth, 4)
        with anyio.fail_after(TIMEOUT):
            sock = await create_raw_udp_socket(local_host=veth.ip4_a, receive_queue=4)
            local = sock.extra(SocketAttribute.local_address)
            for i in range(10):
                peer.sock.sendto(b"%d" % i, local)
            # All ten wait in the packet socket before anyone reads: the first pump round reads
            # them in one batch into a queue with room for four.
            while sock.extra(RawSocketAttribute.stats)["kernel_packets"] < 10:  # type: ignore[operator]
                await anyio.sleep(0.005)
            got = [(await sock.receive())[0] for _ in range(4)]
            stats = sock.extra(RawSocketAttribute.stats)
            with anyio.move_on_after(0.2):
                got.append((await sock.receive())[0])
            await sock.aclose()
        peer.close()
        return got, stats

    got, stats = run_in_a(veth, backend, main)
    assert got == [b"0", b"1", b"2", b"3"]
    assert stats["dropped"] == {"receive_queue_full": 6}, stats
    assert stats["delivered"] == 10, stats


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_send_waiting_for_a_silent_neighbour(veth: VethPair, backend: str) -> None:
    """send() to an address nobody answers for: it blocks; a second send is busy; aclose() ends it."""
    silent = veth.ip4_b.rsplit(".", 1)[0] + ".99"

    async def main() -> Any:
        out: dict[str, Any] = {}
        with anyio.fail_after(TIMEOUT):
            sock = await create_raw_udp_socket(local_host=veth.ip4_a)

            async def blocked() -> None:
                try:
                    await sock.sendto(b"lost", silent, 9)
                    out["blocked"] = "returned"
                except Exception as exc:
                    out["blocked"] = outcome(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                await anyio.wait_all_tasks_blocked()
                try:
                    await sock.sendto(b"second", silent, 9)
                except Exception as exc:
                    out["second"] = outcome(exc)
                await sock.aclose()
            out["stats"] = sock.extra(RawSocketAttribute.stats)
        return out

    out = run_in_a(veth, backend, main)
    assert out["blocked"] == ("ClosedResourceError", None)
    assert out["second"] == ("BusyResourceError", None)
    assert out["stats"]["dropped"] == {"closed_unsent": 1}, out["stats"]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_unresolvable_peer_is_reported_on_a_connected_socket(veth: VethPair, backend: str) -> None:
    """The neighbour never answers: send() gives up after the retries; receive() raises EHOSTUNREACH.

    A receive() is blocked (waiting on the packet socket, with no timer) before the send: the send
    must get the retransmits going all the same, and the error must wake the blocked receive().
    """

    async def one(family: int, out: dict[int, Any]) -> None:
        silent = f"{veth.ip4_b.rsplit('.', 1)[0]}.99" if family == 4 else f"{veth.ip6_b[:-1]}99"
        with anyio.fail_after(15):
            sock = await create_raw_connected_udp_socket(silent, 9, local_host=a_ip(veth, family))
            errors: list[int | None] = []

            async def receiver() -> None:
                try:
                    await sock.receive()
                except OSError as exc:
                    errors.append(exc.errno)

            async with anyio.create_task_group() as tg:
                tg.start_soon(receiver)
                await anyio.wait_all_tasks_blocked()
                start = time.monotonic()
                await sock.send(b"nobody")
                elapsed = time.monotonic() - start
            out[family] = (errors, elapsed, sock.extra(RawSocketAttribute.stats))
            await sock.aclose()

    async def main() -> dict[int, Any]:
        out: dict[int, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 4, out)
            tg.start_soon(one, 6, out)
        return out

    out = run_in_a(veth, backend, main)
    for family in (4, 6):
        errors, elapsed, stats = out[family]
        assert errors == [errno.EHOSTUNREACH]
        assert 1.5 < elapsed < 10, elapsed  # three attempts a second apart (neighbour.py defaults)
        assert stats["dropped"] == {"neighbour_failed": 1}, stats
        assert stats["neighbour"]["requests_sent"] >= 3, stats


# ------------------------------------------------------------------------------------- examples
def _wait_for_line(proc: subprocess.Popen[str], needle: str) -> bool:
    """Read the process's output until a line containing ``needle``; False if it exits or is slow."""
    assert proc.stdout is not None
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and (left := deadline - time.monotonic()) > 0:
        if readable(proc.stdout, left) and needle in proc.stdout.readline():
            return True
    return False


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_trio_client_example(veth: VethPair, family: int) -> None:
    """examples/trio_client.py, run with plain ``trio.run`` in A, against a kernel echo peer in B."""
    echo_peer = udp_echo_peer_b(veth, family, 7777)
    try:
        res = veth.run_a(
            sys.executable,
            str(ROOT / "examples" / "trio_client.py"),
            b_ip(veth, family),
            "7777",
            "hello",
            "raw",
            "world",
            timeout=30,
        )
    finally:
        echo_peer.terminate()
        echo_peer.wait(TIMEOUT)
    assert res.stdout.splitlines() == ["hello", "raw", "world"], res.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_anyio_echo_example(veth: VethPair, family: int, backend: str) -> None:
    """examples/anyio_echo.py in A answers a kernel client in B."""
    server = veth.popen_a(
        sys.executable,
        str(ROOT / "examples" / "anyio_echo.py"),
        a_ip(veth, family),
        "7000",
        "--backend",
        backend,
        stdout=subprocess.PIPE,
    )
    try:
        assert _wait_for_line(server, "serving on"), f"server not serving (exit {server.poll()})"
        client = Peer.create(veth, family)
        for word in (b"one", b"two"):
            client.sock.sendto(word, (a_ip(veth, family), 7000))
            data, src = client.sock.recvfrom(100)
            assert (data, src[:2]) == (word, (a_ip(veth, family), 7000))
        client.close()
    finally:
        server.terminate()
        server.wait(TIMEOUT)


# ------------------------------------------------------------------- one stack per event-loop run


def _packet_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd") if is_packet_socket(int(fd))}


def _count_stack_opens(monkeypatch: pytest.MonkeyPatch) -> list[StackOptions]:
    """Record each RawStack.open() (each is a ring setup on a worker thread)."""
    opened: list[StackOptions] = []
    real_open = RawStack.open

    def counting_open(options: StackOptions) -> RawStack:
        opened.append(options)
        return real_open(options)

    monkeypatch.setattr(RawStack, "open", staticmethod(counting_open))
    return opened


def _stack_of(sock: RawUDPSocket | RawConnectedUDPSocket) -> AnyioStack:
    return sock._sock.stack


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_sockets_opened_together_share_one_stack(
    veth: VethPair, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 sockets opened at once: one stack opening (the others wait for it), one packet socket;
    all 20 wait in receive() at once and each gets the reply to its own datagram."""
    opened = _count_stack_opens(monkeypatch)
    n = 20

    async def main() -> Any:
        peer = Peer.create(veth, 4)
        socks: list[RawUDPSocket] = []
        with anyio.fail_after(TIMEOUT):

            async def open_one() -> None:
                socks.append(await create_raw_udp_socket(local_host=veth.ip4_a))

            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(open_one)
            packet = {id(s.extra(RawSocketAttribute.packet_socket)) for s in socks}
            got: dict[int, tuple[bytes, IPSockAddrType]] = {}

            async def receive(i: int) -> None:
                got[i] = await socks[i].receive()

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(receive, i)
                await anyio.wait_all_tasks_blocked()
                for i, sock in enumerate(socks):
                    await sock.sendto(b"q%d" % i, veth.ip4_b, peer.port)
                for _ in range(n):
                    data, src = await peer.recv()
                    peer.sock.sendto(b"re:" + data, src)
            stats = [s.extra(RawSocketAttribute.stats) for s in socks]
            for sock in socks:
                await sock.aclose()
        result = packet, got, stats, peer.port
        peer.close()
        return result

    packet, got, stats, peer_port = run_in_a(veth, backend, main)
    assert len(opened) == 1
    assert len(packet) == 1, "the sockets of a run share the stack's packet socket"
    assert got == {i: (b"re:q%d" % i, (veth.ip4_b, peer_port)) for i in range(n)}
    assert [(s["sent"], s["delivered"]) for s in stats] == [(1, 1)] * n
    # One resolution of the peer for all of them: the neighbour table is the stack's.
    assert stats[-1]["neighbour"]["requests_sent"] == 1, stats[-1]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_socket_on_a_running_stack_opens_on_the_loop_thread(
    veth: VethPair, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the stack is up, a socket (unconnected or connected) opens without any thread and
    without opening a stack; it works at once."""
    opened = _count_stack_opens(monkeypatch)
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self)
        real_start(self)

    async def main() -> Any:
        peer = Peer.create(veth, 4)
        with anyio.fail_after(TIMEOUT):
            first = await create_raw_udp_socket(local_host=veth.ip4_a)
            with monkeypatch.context() as patch:
                patch.setattr(threading.Thread, "start", counting_start)
                second = await create_raw_udp_socket(local_host=veth.ip4_a)
                third = await create_raw_connected_udp_socket(veth.ip4_b, peer.port)
            threads = list(started)
            same = (
                second.extra(RawSocketAttribute.packet_socket)
                is third.extra(RawSocketAttribute.packet_socket)
                is first.extra(RawSocketAttribute.packet_socket)
            )
            await second.sendto(b"from second", veth.ip4_b, peer.port)
            await third.send(b"from third")
            got = [(await peer.recv())[0], (await peer.recv())[0]]
            for sock in (first, second, third):
                await sock.aclose()
        peer.close()
        return threads, same, got

    threads, same, got = run_in_a(veth, backend, main)
    assert threads == [], "opening on a running stack started a thread"
    assert len(opened) == 1
    assert same
    assert sorted(got) == [b"from second", b"from third"]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_one_socket_per_query_reuses_the_stack(
    veth: VethPair, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dnspython pattern: a new connected socket per query, closed after the answer. Each
    one after the first registers on the lingering stack, and the peer is resolved once."""
    opened = _count_stack_opens(monkeypatch)
    echo_peer = udp_echo_peer_b(veth, 4, 5353)
    queries = 50

    async def main() -> Any:
        answers = []
        stats: Mapping[str, Any] = {}
        with anyio.fail_after(TIMEOUT):
            for i in range(queries):
                async with await create_raw_connected_udp_socket(
                    veth.ip4_b, 5353, local_host=veth.ip4_a
                ) as sock:
                    await sock.send(b"query %d" % i)
                    answers.append(await sock.receive())
                    stats = sock.extra(RawSocketAttribute.stats)
        return answers, stats

    try:
        answers, stats = run_in_a(veth, backend, main)
    finally:
        echo_peer.terminate()
        echo_peer.wait(TIMEOUT)
    assert answers == [b"query %d" % i for i in range(queries)]
    assert len(opened) == 1
    assert stats["neighbour"]["requests_sent"] == 1, stats["neighbour"]
    assert stats["stack"]["endpoints"] == 1, stats["stack"]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_an_idle_stack_closes_after_the_linger(
    veth: VethPair, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the last socket starts the linger; a socket opened within it reuses the stack; once
    the linger has passed with none, the stack and its packet sockets close, and the next socket
    opens a new stack."""
    linger = 0.3
    monkeypatch.setattr(stack_loop, "LINGER", linger)
    opened = _count_stack_opens(monkeypatch)

    async def main() -> Any:
        peer = Peer.create(veth, 4)
        out: dict[str, Any] = {}
        with anyio.fail_after(TIMEOUT):
            sock = await create_raw_udp_socket(local_host=veth.ip4_a)
            stack = _stack_of(sock)
            fd = sock.extra(RawSocketAttribute.packet_socket).fileno()
            await sock.aclose()
            sock = await create_raw_udp_socket(local_host=veth.ip4_a)
            out["reused"] = _stack_of(sock) is stack
            await sock.aclose()
            closed_at = time.monotonic()
            out["open_after_close"] = not stack.closed and is_packet_socket(fd)
            await stack.closed_event.wait()
            out["lingered"] = time.monotonic() - closed_at
            out["drained"] = await anyio.to_thread.run_sync(workers.wait_closed, TIMEOUT)
            out["fd_closed"] = not is_packet_socket(fd)
            sock = await create_raw_udp_socket(local_host=veth.ip4_a)
            out["new_stack"] = _stack_of(sock) is not stack
            await sock.sendto(b"after", veth.ip4_b, peer.port)
            out["sent"] = (await peer.recv())[0]
            await sock.aclose()
        peer.close()
        return out

    out = run_in_a(veth, backend, main)
    assert out.pop("lingered") >= linger * 0.9
    assert out == {
        "reused": True,
        "open_after_close": True,
        "drained": True,
        "fd_closed": True,
        "new_stack": True,
        "sent": b"after",
    }
    assert len(opened) == 2


@pytest.mark.parametrize("left", ["idle", "open"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_no_packet_socket_outlives_the_run(veth: VethPair, backend: str, left: str) -> None:
    """The run ends with its stack lingering (``idle``) or with sockets still open (``open``: one
    plain, one connected and one ``reuse_port`` with its fanout ring, each having sent): no packet
    socket of the run is left once anyio.run() has returned, and it did not wait for the linger."""
    before = _packet_fds()

    async def main() -> Any:
        peer = Peer.create(veth, 4)
        with anyio.fail_after(TIMEOUT):
            socks: list[Any] = [
                await create_raw_udp_socket(local_host=veth.ip4_a),
                await create_raw_connected_udp_socket(veth.ip4_b, peer.port),
                await create_raw_udp_socket(local_host=veth.ip4_a, reuse_port=True),
            ]
            await socks[0].sendto(b"a", veth.ip4_b, peer.port)
            await socks[1].send(b"b")
            await socks[2].sendto(b"c", veth.ip4_b, peer.port)
            got = sorted([(await peer.recv())[0] for _ in range(3)])
            fds = _packet_fds() - before
            if left == "idle":
                for sock in socks:
                    await sock.aclose()
        peer.close()
        return got, fds, socks

    start = time.monotonic()
    got, fds, socks = run_in_a(veth, backend, main)
    elapsed = time.monotonic() - start
    assert got == [b"a", b"b", b"c"]
    assert len(fds) >= 3, fds  # the shared receiver, the fanout receiver, a sender
    assert workers.wait_closed(TIMEOUT)
    assert sorted(fd for fd in fds if is_packet_socket(fd)) == [], "packet socket left open"
    assert elapsed < stack_loop.LINGER, elapsed
    # Sockets left open were closed with the stack, guards included.
    assert all(s.extra(SocketAttribute.raw_socket).fileno() == -1 for s in socks)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_failed_stack_opening_fails_every_waiting_opener(veth: VethPair, backend: str) -> None:
    """Sockets waiting for the same opening all get its error; nothing is left half-open, and a
    later socket opens a stack of its own."""

    async def main() -> Any:
        errors: list[Any] = []

        async def open_one() -> None:
            try:
                await create_raw_udp_socket(local_host=veth.ip4_a, interface="nosuch0")
            except OSError as exc:
                errors.append(exc.errno)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(open_one)
            async with await create_raw_udp_socket(local_host=veth.ip4_a) as sock:
                works = sock.extra(SocketAttribute.local_port) > 0
        return errors, works

    assert run_in_a(veth, backend, main) == ([errno.ENODEV] * 3, True)
