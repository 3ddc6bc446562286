"""DatagramProtocol scenarios run against both the stdlib endpoint and the raw endpoint.

Each scenario is an ``async`` function ``(impl, family, veth) -> result`` whose result is plain data
(no ports, no object identities) so that the stdlib run and the raw run can be compared for equality,
as uvloop's UDP tests run one mixin against two loops. The endpoint under test lives in namespace A;
its peer is a kernel UDP socket created in namespace B.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from rawtransport import create_raw_datagram_endpoint
from tests.netns import VethPair, setns

TIMEOUT = 5.0

Scenario = Callable[[str, int, VethPair], Awaitable[Any]]


class Recorder(asyncio.DatagramProtocol):
    """Records every callback in order; lets a scenario await datagrams, errors and the end."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.calls: list[tuple[Any, ...]] = []
        self.data: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.errors: asyncio.Queue[OSError] = asyncio.Queue()
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.DatagramTransport | None = None
        self.after_lost = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The stdlib's own datagram transport is not an asyncio.DatagramTransport subclass on 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.calls.append(("made",))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.lost.done():
            self.after_lost += 1
        self.calls.append(("data", len(data)))
        self.data.put_nowait((data, addr))
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        if self.lost.done():
            self.after_lost += 1
        assert isinstance(exc, OSError)
        self.calls.append(("error", type(exc).__name__, exc.errno))
        self.errors.put_nowait(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost.done():
            self.after_lost += 1
            return
        self.calls.append(("lost", type(exc).__name__ if exc else None))
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.calls.append(("pause",))

    def resume_writing(self) -> None:
        self.calls.append(("resume",))


async def open_endpoint(
    impl: str, factory: Callable[[], Recorder], **kwargs: Any
) -> tuple[asyncio.DatagramTransport, Recorder]:
    """``loop.create_datagram_endpoint`` or ``create_raw_datagram_endpoint``, same arguments."""
    if impl == "stdlib":
        loop = asyncio.get_running_loop()
        t, p = await loop.create_datagram_endpoint(factory, **kwargs)
        return t, p
    t2, p2 = await create_raw_datagram_endpoint(factory, **kwargs)
    return t2, p2


@dataclass
class Peer:
    """A kernel UDP socket living in namespace B."""

    sock: socket.socket
    family: int
    received: list[tuple[bytes, Any]] = field(default_factory=list)

    @classmethod
    def create(cls, veth: VethPair, family: int, host: str | None = None, port: int = 0) -> Peer:
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        with setns(veth.ns_b):
            sock = socket.socket(af, socket.SOCK_DGRAM)
        sock.bind((host if host is not None else (veth.ip4_b if family == 4 else veth.ip6_b), port))
        sock.settimeout(TIMEOUT)
        return cls(sock, family)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def recv(self) -> tuple[bytes, Any]:
        loop = asyncio.get_running_loop()
        item = await loop.run_in_executor(None, self.sock.recvfrom, 70000)
        self.received.append(item)
        return item

    def close(self) -> None:
        self.sock.close()


def a_ip(veth: VethPair, family: int) -> str:
    return veth.ip4_a if family == 4 else veth.ip6_a


def b_ip(veth: VethPair, family: int) -> str:
    return veth.ip4_b if family == 4 else veth.ip6_b


async def _close(t: asyncio.DatagramTransport, p: Recorder) -> str | None:
    t.close()
    exc = await asyncio.wait_for(p.lost, TIMEOUT)
    return type(exc).__name__ if exc else None


# --------------------------------------------------------------------------------------- scenarios
async def echo(impl: str, family: int, veth: VethPair) -> Any:
    """An echo server answers a kernel client; payloads from 1 byte to a full MTU."""
    t, p = await open_endpoint(
        impl, lambda: Recorder(echo=True), local_addr=(a_ip(veth, family), 0)
    )
    port = t.get_extra_info("sockname")[1]
    peer = Peer.create(veth, family)
    out: list[Any] = []
    mtu_payload = 1500 - (28 if family == 4 else 48)
    for payload in (b"x", b"hello world" * 10, bytes(range(256)) * 4, b"\xa5" * mtu_payload):
        peer.sock.sendto(payload, (a_ip(veth, family), port))
        data, addr = await peer.recv()
        got, src = await asyncio.wait_for(p.data.get(), TIMEOUT)
        out.append(
            (
                data == payload,
                addr[:2] == (a_ip(veth, family), port),
                got == payload,
                src[:2] == (b_ip(veth, family), peer.port),
                len(src),
            )
        )
    out.append(await _close(t, p))
    out.append(p.calls[0])
    peer.close()
    return out


async def many_peers(impl: str, family: int, veth: VethPair) -> Any:
    """Datagrams from several peers arrive with each peer's own address."""
    t, p = await open_endpoint(impl, Recorder, local_addr=(a_ip(veth, family), 0))
    port = t.get_extra_info("sockname")[1]
    peers = [Peer.create(veth, family) for _ in range(4)]
    for i, peer in enumerate(peers):
        for j in range(3):
            peer.sock.sendto(f"{i}:{j}".encode(), (a_ip(veth, family), port))
    seen = set()
    ports = {peer.port: i for i, peer in enumerate(peers)}
    for _ in range(12):
        data, addr = await asyncio.wait_for(p.data.get(), TIMEOUT)
        seen.add((data.decode(), ports[addr[1]], addr[0] == b_ip(veth, family)))
    # Reply to each peer from the endpoint: the peer sees our address and port.
    for peer in peers:
        t.sendto(b"reply", (b_ip(veth, family), peer.port))
    replies = []
    for peer in peers:
        data, addr = await peer.recv()
        replies.append((data, addr[:2] == (a_ip(veth, family), port)))
    for peer in peers:
        peer.close()
    return sorted(seen), replies, await _close(t, p)


async def connected(impl: str, family: int, veth: VethPair) -> Any:
    """A connected endpoint sends to its peer and ignores datagrams from anyone else."""
    peer = Peer.create(veth, family)
    stranger = Peer.create(veth, family)
    t, p = await open_endpoint(impl, Recorder, remote_addr=(b_ip(veth, family), peer.port))
    sockname = t.get_extra_info("sockname")
    peername = t.get_extra_info("peername")
    t.sendto(b"to peer")
    data, addr = await peer.recv()
    stranger.sock.sendto(b"from stranger", sockname[:2])
    peer.sock.sendto(b"from peer", sockname[:2])
    got, src = await asyncio.wait_for(p.data.get(), TIMEOUT)
    wrong_addr = None
    try:
        t.sendto(b"x", (b_ip(veth, family), stranger.port))
    except ValueError as exc:
        wrong_addr = str(exc).split(":")[0]
    result = (
        data,
        addr[:2] == sockname[:2],
        sockname[0] == a_ip(veth, family),
        peername[:2] == (b_ip(veth, family), peer.port),
        got,
        src[:2] == (b_ip(veth, family), peer.port),
        p.data.empty(),
        wrong_addr,
        await _close(t, p),
    )
    peer.close()
    stranger.close()
    return result


async def empty_datagram(impl: str, family: int, veth: VethPair) -> Any:
    """An empty datagram received is delivered; sendto(b'') follows the running asyncio."""
    t, p = await open_endpoint(impl, Recorder, local_addr=(a_ip(veth, family), 0))
    port = t.get_extra_info("sockname")[1]
    peer = Peer.create(veth, family)
    peer.sock.sendto(b"", (a_ip(veth, family), port))
    got, _ = await asyncio.wait_for(p.data.get(), TIMEOUT)
    t.sendto(b"", (b_ip(veth, family), peer.port))
    t.sendto(b"marker", (b_ip(veth, family), peer.port))
    first, _ = await peer.recv()
    peer.close()
    return got, first, await _close(t, p)


async def large_datagrams(impl: str, family: int, veth: VethPair) -> Any:
    """The largest datagram goes out (fragmented); one byte more is EMSGSIZE."""
    t, p = await open_endpoint(impl, Recorder, local_addr=(a_ip(veth, family), 0))
    peer = Peer.create(veth, family)
    dest = (b_ip(veth, family), peer.port)
    biggest = 65507 if family == 4 else 65527
    results: list[Any] = []
    if family == 4:
        t.sendto(b"\x5a" * biggest, dest)
        data, _ = await peer.recv()
        results.append(len(data))
    t.sendto(b"\x5a" * (biggest + 1), dest)
    exc = await asyncio.wait_for(p.errors.get(), TIMEOUT)
    results.append((type(exc).__name__, exc.errno))
    peer.close()
    results.append(await _close(t, p))
    return results


async def broadcast(impl: str, family: int, veth: VethPair) -> Any:
    """Broadcast is EACCES without allow_broadcast, delivered with it."""
    assert family == 4
    peer = Peer.create(veth, family, host="0.0.0.0")
    bcast = veth.ip4_b.rsplit(".", 1)[0] + ".255"
    t, p = await open_endpoint(impl, Recorder, local_addr=(veth.ip4_a, 0))
    t.sendto(b"refused", (bcast, peer.port))
    exc = await asyncio.wait_for(p.errors.get(), TIMEOUT)
    refused = (type(exc).__name__, exc.errno)
    first = await _close(t, p)
    t, p = await open_endpoint(impl, Recorder, local_addr=(veth.ip4_a, 0), allow_broadcast=True)
    t.sendto(b"allowed", (bcast, peer.port))
    data, addr = await peer.recv()
    peer.close()
    return refused, first, data, addr[0] == veth.ip4_a, await _close(t, p)


async def close_while_sending(impl: str, family: int, veth: VethPair) -> Any:
    """close() after a burst: exactly one connection_lost(None), no callback after it."""
    t, p = await open_endpoint(impl, Recorder, local_addr=(a_ip(veth, family), 0))
    peer = Peer.create(veth, family)
    for i in range(200):
        t.sendto(b"%d" % i, (b_ip(veth, family), peer.port))
    t.close()
    t.close()
    closing = t.is_closing()
    exc = await asyncio.wait_for(p.lost, TIMEOUT)
    await asyncio.sleep(0)  # let any wrongly scheduled callback run (not a wait for a condition)
    got = 0
    peer.sock.settimeout(0.5)
    try:
        while True:
            peer.sock.recvfrom(100)
            got += 1
    except TimeoutError:
        pass
    peer.close()
    kinds = [c[0] for c in p.calls]
    return closing, exc, kinds.count("lost"), p.after_lost, got > 0


async def pause_reading(impl: str, family: int, veth: VethPair) -> Any:
    """pause_reading(): datagrams wait, none is delivered; resume_reading() delivers them in
    order. A second endpoint, not paused, tells when the peer's datagrams have all arrived."""
    t, p = await open_endpoint(impl, Recorder, local_addr=(a_ip(veth, family), 0))
    t2, p2 = await open_endpoint(impl, Recorder, local_addr=(a_ip(veth, family), 0))
    peer = Peer.create(veth, family)
    try:
        t.pause_reading()  # type: ignore[attr-defined]
        paused = t.is_reading()  # type: ignore[attr-defined]
        for i in range(3):
            peer.sock.sendto(b"held %d" % i, (a_ip(veth, family), t.get_extra_info("sockname")[1]))
        peer.sock.sendto(b"marker", (a_ip(veth, family), t2.get_extra_info("sockname")[1]))
        await asyncio.wait_for(p2.data.get(), TIMEOUT)
        await asyncio.sleep(0)  # a wrongly delivered datagram would be in by now (not a wait)
        during = p.data.qsize()
        t.resume_reading()  # type: ignore[attr-defined]
        got = [(await asyncio.wait_for(p.data.get(), TIMEOUT))[0] for _ in range(3)]
        reading = t.is_reading()  # type: ignore[attr-defined]
        is_transport = isinstance(t, asyncio.Transport)
    finally:
        peer.close()
    closed = await _close(t, p)
    await _close(t2, p2)
    return paused, during, got, reading, is_transport, t.is_reading(), closed  # type: ignore[attr-defined]


async def abort(impl: str, family: int, veth: VethPair) -> Any:
    """abort(): connection_lost(None) once, then nothing."""
    t, p = await open_endpoint(impl, Recorder, local_addr=(a_ip(veth, family), 0))
    t.abort()
    t.abort()
    exc = await asyncio.wait_for(p.lost, TIMEOUT)
    t.close()
    await asyncio.sleep(0)
    return t.is_closing(), exc, [c[0] for c in p.calls], p.after_lost


async def icmp_refused(impl: str, family: int, veth: VethPair) -> Any:
    """A connected endpoint learns of ICMP port-unreachable as ConnectionRefusedError."""
    closed = Peer.create(veth, family)
    port = closed.port
    closed.close()  # nobody listens on this port in B any more: B's kernel answers with ICMP
    t, p = await open_endpoint(impl, Recorder, remote_addr=(b_ip(veth, family), port))
    t.sendto(b"anyone?")
    exc = await asyncio.wait_for(p.errors.get(), TIMEOUT)
    return type(exc).__name__, exc.errno == errno.ECONNREFUSED, await _close(t, p)


async def kernel_errors(impl: str, family: int, veth: VethPair) -> Any:
    """The kernel's own errors: bind() to a foreign address or a taken port, sendto() port 0."""
    out: list[Any] = []
    try:
        await open_endpoint(impl, Recorder, local_addr=(b_ip(veth, family), 0))
    except OSError as exc:  # B's address is not one of namespace A's
        out.append((type(exc).__name__, exc.errno))
    t, p = await open_endpoint(impl, Recorder, local_addr=(a_ip(veth, family), 0))
    try:
        await open_endpoint(impl, Recorder, local_addr=t.get_extra_info("sockname")[:2])
    except OSError as exc:
        out.append((type(exc).__name__, exc.errno))
    try:
        t.sendto("text", (b_ip(veth, family), 9))  # type: ignore[arg-type]
    except TypeError as exc:
        out.append(("sendto", type(exc).__name__))
    t.sendto(b"port zero", (b_ip(veth, family), 0))
    exc2 = await asyncio.wait_for(p.errors.get(), TIMEOUT)
    out.append((type(exc2).__name__, exc2.errno))
    out.append(await _close(t, p))
    return out


async def flow_control(impl: str, family: int, veth: VethPair) -> Any:
    """Write-buffer limits behave alike; after a burst the buffer is empty and pauses are paired."""
    t, p = await open_endpoint(impl, Recorder, local_addr=(a_ip(veth, family), 0))
    peer = Peer.create(veth, family)
    wt = cast(Any, t)
    out: list[Any] = []
    wt.set_write_buffer_limits(high=10, low=5)
    out.append(wt.get_write_buffer_limits())
    wt.set_write_buffer_limits(low=100)
    out.append(wt.get_write_buffer_limits())
    try:
        wt.set_write_buffer_limits(high=1, low=5)
    except ValueError as exc:
        out.append(str(exc))
    wt.set_write_buffer_limits()
    out.append(wt.get_write_buffer_limits())
    wt.set_write_buffer_limits(high=0)
    for i in range(300):
        t.sendto(b"%d" % i * 100, (b_ip(veth, family), peer.port))
    async with asyncio.timeout(TIMEOUT):
        while wt.get_write_buffer_size():
            await asyncio.sleep(0.001)
    kinds = [c[0] for c in p.calls]
    out.append(kinds.count("pause") == kinds.count("resume"))
    out.append(wt.get_write_buffer_size())
    peer.close()
    out.append(await _close(t, p))
    return out


SCENARIOS: dict[str, Scenario] = {
    "echo": echo,
    "many_peers": many_peers,
    "connected": connected,
    "empty_datagram": empty_datagram,
    "large_datagrams": large_datagrams,
    "broadcast": broadcast,
    "close_while_sending": close_while_sending,
    "abort": abort,
    "pause_reading": pause_reading,
    "icmp_refused": icmp_refused,
    "kernel_errors": kernel_errors,
    "flow_control": flow_control,
}


# ---------------------------------------------------------------- the differential API suites
class Cases(dict[str, tuple[Any, int]]):
    """The cases of a differential suite by name: ``@cases.register(4, 6)`` adds a case for each
    family (default IPv4) as ``name[-v6]``."""

    def register(self, *families: int) -> Callable[[Any], Any]:
        def add(fn: Any) -> Any:
            for family in families or (4,):
                self[fn.__name__ + ("-v6" if family == 6 else "")] = (fn, family)
            return fn

        return add


@dataclass
class Sides:
    """What every differential case knows: which implementation runs, the pair, the family."""

    impl: str
    veth: VethPair
    family: int

    @property
    def af(self) -> int:
        return socket.AF_INET if self.family == 4 else socket.AF_INET6

    @property
    def a(self) -> str:
        return self.veth.ip4_a if self.family == 4 else self.veth.ip6_a

    @property
    def b(self) -> str:
        return self.veth.ip4_b if self.family == 4 else self.veth.ip6_b


def flush_neighbours(ctx: Sides) -> None:
    """Make A's kernel forget B's MAC, as a raw stack of a new run has never known it."""
    subprocess.run(["ip", "-n", ctx.veth.ns_a, "neigh", "flush", "dev", ctx.veth.if_a], check=True)


#: The neighbour resolver's counters that count frames it took (replies and claims), one each;
#: the others count outcomes.
NEIGHBOUR_FRAMES = (
    "replies_accepted", "unsolicited", "duplicate_reply", "claims_verified", "claims_ignored",
)  # fmt: skip


def neighbour_frames(neighbour: dict[str, int]) -> int:
    """How many frames the neighbour resolver took, from its ``stats``."""
    return sum(neighbour[k] for k in NEIGHBOUR_FRAMES)


async def wait_stacks_closed(timeout: float = TIMEOUT) -> None:
    """Wait until every raw stack of the running loop has closed (after its linger) and its
    packet sockets are closed (rawtransport.workers)."""
    from rawtransport import stack_loop, workers

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(not s.closed for s in stack_loop._stacks.get(loop, {}).values()):
        assert loop.time() < deadline, "an idle stack did not close after its linger"
        await asyncio.sleep(0.01)
    assert await asyncio.to_thread(workers.wait_closed, timeout)
