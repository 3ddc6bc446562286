"""The anyio contract, differentially: each call made on anyio's UDP socket and on the raw one.

As ``tests/net/test_api_differential.py`` does for asyncio's endpoint: every case is an ``async``
function of a :class:`Ctx`, which opens sockets with ``ctx.udp(...)``/``ctx.connected(...)``
(``anyio.create_udp_socket`` and ``create_connected_udp_socket`` for the kernel run, the raw path's
``create_raw_udp_socket``/``create_raw_connected_udp_socket`` for the raw run, same arguments),
makes its calls and returns what it saw: values, or the exception raised (type, and errno or the
type of a wrapped cause), and what a kernel UDP socket in namespace B received (up to a marker the
socket sends last, so no wait is a sleep). Both runs, on the same backend (asyncio, uvloop, trio)
in the same namespaces, must give the same record, except where :data:`BY_DESIGN` names the
difference and its reason (each also in the README); such a case must still differ.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import socket
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute

from rawtransport import create_raw_connected_udp_socket, create_raw_udp_socket
from tests.net.conformance import Cases, Sides, flush_neighbours
from tests.net.test_anyio import BACKENDS, Peer, outcome
from tests.netns import VethPair, link_local, setns, veth_pair

TIMEOUT = 10.0
MARKER = b"--marker--"

Case = Callable[["Ctx"], Awaitable[Any]]
CASES = Cases()
case = CASES.register


@dataclass
class Ctx(Sides):
    """What a case runs with: the implementation, the pair, the family and a kernel peer in B."""

    peer: Peer
    opened: list[Any] = field(default_factory=list)

    async def udp(self, **kwargs: Any) -> Any:
        make = create_raw_udp_socket if self.impl == "raw" else anyio.create_udp_socket
        sock = await make(**kwargs)
        self.opened.append(sock)
        return sock

    async def connected(self, host: Any, port: int, **kwargs: Any) -> Any:
        if self.impl == "raw":
            sock: Any = await create_raw_connected_udp_socket(host, port, **kwargs)
        else:
            sock = await anyio.create_connected_udp_socket(host, port, **kwargs)
        self.opened.append(sock)
        return sock

    async def bound(self) -> Any:
        """An unconnected socket on A's address that has reached the peer once (resolved)."""
        sock = await self.udp(local_host=self.a)
        await sock.sendto(b"warm-up", self.b, self.peer.port)
        await self.received(sock)
        return sock

    async def received(self, sock: Any) -> list[bytes]:
        """What the peer got from ``sock`` since the last call, up to a marker sent after it."""
        if hasattr(sock, "sendto"):
            await sock.sendto(MARKER, self.b, self.peer.port)
        else:
            await sock.send(MARKER)
        got: list[bytes] = []
        while True:
            data, _ = await self.peer.recv()
            if data == MARKER:
                return got
            got.append(data)


async def attempt(call: Awaitable[Any]) -> Any:
    """None if ``call`` returned None, "value" if something else (a socket), or what it raised."""
    try:
        value = await call
    except Exception as exc:
        return outcome(exc)
    return None if value is None else "value"


async def run_case(ctx: Ctx, fn: Case) -> dict[str, Any]:
    record: dict[str, Any] = {}
    try:
        with anyio.fail_after(60):
            record["result"] = await fn(ctx)
    except Exception as exc:  # what the call raised is the outcome being compared
        record["raised"] = outcome(exc)
    for sock in ctx.opened:
        await sock.aclose()
    return record


def run_both(veth: VethPair, backend: str, fn: Case, family: int) -> dict[str, Any]:
    name, options = BACKENDS[backend]
    records = {}
    for impl in ("kernel", "raw"):
        peer = Peer.create(veth, family)
        try:
            ctx = Ctx(impl, veth, family, peer)

            async def main(ctx: Ctx = ctx) -> dict[str, Any]:
                return await run_case(ctx, fn)

            with setns(veth.ns_a), warnings.catch_warnings():
                if impl == "kernel":
                    # uvloop leaks the transport of an endpoint whose bind() failed (its
                    # ResourceWarning is uvloop's, not the case's): collected here, unheard.
                    warnings.simplefilter("ignore", ResourceWarning)
                records[impl] = anyio.run(main, backend=name, backend_options=options)
                gc.collect()
        finally:
            peer.close()
    return records


# ------------------------------------------------------------------------------- the cases
@case(4, 6)
async def send_the_bytes_of_any_buffer(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    out = []
    for data in (b"bytes", bytearray(b"bytearray"), memoryview(b"memoryview")):
        out.append(await attempt(sock.sendto(data, ctx.b, ctx.peer.port)))
    return out, await ctx.received(sock)


@case(4)
async def send_str(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    return await attempt(sock.sendto("text", ctx.b, ctx.peer.port)), await ctx.received(sock)


@case(4, 6)
async def send_empty(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    return await attempt(sock.sendto(b"", ctx.b, ctx.peer.port)), await ctx.received(sock)


@case(4, 6)
async def send_the_largest_and_one_more(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    largest = 65507 if ctx.family == 4 else 65527
    out = [
        await attempt(sock.sendto(b"m" * largest, ctx.b, ctx.peer.port)),
        await attempt(sock.sendto(b"m" * (largest + 1), ctx.b, ctx.peer.port)),
    ]
    return out, [len(d) for d in await ctx.received(sock)]


@case(4)
async def sendto_port_out_of_range(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    out = [await attempt(sock.sendto(b"x", ctx.b, port)) for port in (70000, -1)]
    return out, await ctx.received(sock)


@case(4)
async def sendto_port_zero(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    return await attempt(sock.sendto(b"x", ctx.b, 0)), await ctx.received(sock)


@case(4)
async def sendto_other_family(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    return await attempt(sock.sendto(b"x", ctx.veth.ip6_b, ctx.peer.port))


@case(4)
async def sendto_unroutable(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    return await attempt(sock.sendto(b"x", "203.0.113.9", 9)), await ctx.received(sock)


@case(4)
async def broadcast_without_the_option(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    bcast = ctx.veth.prefix4.rsplit(".", 1)[0] + ".255"
    return await attempt(sock.sendto(b"x", bcast, ctx.peer.port))


@case(4, 6)
async def send_after_close(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    await sock.aclose()
    return [
        await attempt(sock.sendto(b"x", ctx.b, ctx.peer.port)),
        await attempt(sock.receive()),
        await attempt(sock.aclose()),
    ]


@case(4)
async def receive_from_another_task_then_close(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    out: list[Any] = []

    async def receiver() -> None:
        out.append(await attempt(sock.receive()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(receiver)
        await anyio.wait_all_tasks_blocked()
        await sock.aclose()
    return out


@case(4, 6)
async def receive_sizes(ctx: Ctx) -> Any:
    sock = await ctx.udp(local_host=ctx.a)
    port = sock.extra(SocketAttribute.local_port)
    largest = 65507 if ctx.family == 4 else 65527
    out = []
    for size in (0, 1, 1472, largest):
        ctx.peer.sock.sendto(b"r" * size, (ctx.a, port))
        data, addr = await sock.receive()
        out.append((len(data), addr == (ctx.b, ctx.peer.port)))
    return out


@case(4, 6)
async def addresses_as_anyio_gives_them(ctx: Ctx) -> Any:
    sock = await ctx.udp(local_host=ctx.a)
    port = sock.extra(SocketAttribute.local_port)
    ctx.peer.sock.sendto(b"hi", (ctx.a, port))
    _, addr = await sock.receive()
    local = sock.extra(SocketAttribute.local_address)
    return (
        type(addr).__name__,
        len(addr),
        addr == (ctx.b, ctx.peer.port),
        local == (ctx.a, port),
        sock.extra(SocketAttribute.family) == ctx.af,
    )


@case(4)
async def wildcard_local_host(ctx: Ctx) -> Any:
    sock = await ctx.udp(family=socket.AF_INET)
    host, port = sock.extra(SocketAttribute.local_address)
    ctx.peer.sock.sendto(b"to the wildcard", (ctx.a, port))
    data, addr = await sock.receive()
    return host, port > 0, data, addr[0]


@case(4)
async def local_host_not_ours(ctx: Ctx) -> Any:
    return await attempt(ctx.udp(local_host="198.18.255.254"))


@case(4)
async def local_port_in_use(ctx: Ctx) -> Any:
    first = await ctx.udp(local_host=ctx.a)
    port = first.extra(SocketAttribute.local_port)
    return await attempt(ctx.udp(local_host=ctx.a, local_port=port))


@case(4)
async def local_port_in_use_with_reuse_port(ctx: Ctx) -> Any:
    first = await ctx.udp(local_host=ctx.a, reuse_port=True)
    port = first.extra(SocketAttribute.local_port)
    return await attempt(ctx.udp(local_host=ctx.a, local_port=port, reuse_port=True))


@case(4, 6)
async def connected_send_receive_and_attributes(ctx: Ctx) -> Any:
    sock = await ctx.connected(ctx.b, ctx.peer.port, local_host=ctx.a)
    await sock.send(b"to the peer")
    got = await ctx.received(sock)
    port = sock.extra(SocketAttribute.local_port)
    ctx.peer.sock.sendto(b"from the peer", (ctx.a, port))
    data = await sock.receive()
    remote = sock.extra(SocketAttribute.remote_address)
    return got, type(data).__name__, data, remote == (ctx.b, ctx.peer.port)


@case(4)
async def connected_ignores_other_sources(ctx: Ctx) -> Any:
    sock = await ctx.connected(ctx.b, ctx.peer.port, local_host=ctx.a)
    port = sock.extra(SocketAttribute.local_port)
    other = Peer.create(ctx.veth, ctx.family)
    try:
        other.sock.sendto(b"not from the peer", (ctx.a, port))
        ctx.peer.sock.sendto(b"from the peer", (ctx.a, port))
        return await sock.receive()
    finally:
        other.close()


@case(4, 6)
async def connected_to_port_zero(ctx: Ctx) -> Any:
    sock = await ctx.connected(ctx.b, 0, local_host=ctx.a)
    # Connected to port 0, a socket takes its peer's datagrams from any port (compute_score()).
    ctx.peer.sock.sendto(b"from the peer", (ctx.a, sock.extra(SocketAttribute.local_port)))
    return await sock.receive(), await attempt(sock.send(b"to port zero"))


@case(4)
async def connected_send_of_a_str(ctx: Ctx) -> Any:
    sock = await ctx.connected(ctx.b, ctx.peer.port, local_host=ctx.a)
    return await attempt(sock.send("text")), await ctx.received(sock)


@case(4)
async def iterate_until_closed(ctx: Ctx) -> Any:
    sock = await ctx.udp(local_host=ctx.a)
    port = sock.extra(SocketAttribute.local_port)
    for payload in (b"a", b"b"):
        ctx.peer.sock.sendto(payload, (ctx.a, port))
    got = []
    async for data, _addr in sock:
        got.append(data)
        if len(got) == 2:
            await sock.aclose()
    return got


@contextlib.contextmanager
def link_local_peer(ctx: Ctx) -> Iterator[tuple[socket.socket, str]]:
    """A kernel socket in B on its link-local address; yields it and that address as A's side
    must write it (with A's interface as the scope)."""
    ll_b, index_b = link_local(ctx.veth.ns_b, ctx.veth.if_b)
    with setns(ctx.veth.ns_b):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.bind((ll_b, 0, 0, index_b))
        sock.settimeout(TIMEOUT)
        yield sock, f"{ll_b}%{ctx.veth.if_a}"
    finally:
        sock.close()


@case(6)
async def link_local_peer_with_a_scope(ctx: Ctx) -> Any:
    sock = await ctx.udp(family=socket.AF_INET6)
    with link_local_peer(ctx) as (peer, host):
        port = peer.getsockname()[1]
        await sock.sendto(b"to the link-local peer", host, port)
        data, (src, _sport, *_rest) = await anyio.to_thread.run_sync(peer.recvfrom, 100)
        peer.sendto(b"back", (src, sock.extra(SocketAttribute.local_port), 0, _rest[1]))
        back, addr = await sock.receive()
        return data, src.startswith("fe80::"), back, addr[0].startswith("fe80::"), len(addr)


@case(4)
async def address_objects(ctx: Ctx) -> Any:
    sock = await ctx.udp(local_host=ipaddress.ip_address(ctx.a))
    connected = await ctx.connected(ipaddress.ip_address(ctx.b), ctx.peer.port)
    await connected.send(b"via an address object")
    return (
        sock.extra(SocketAttribute.local_address)[0],
        connected.extra(SocketAttribute.remote_address) == (ctx.b, ctx.peer.port),
        await ctx.received(connected),
    )


@case(4)
async def sendto_host_as_an_address_object(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    sent = await attempt(sock.sendto(b"x", ipaddress.ip_address(ctx.b), ctx.peer.port))
    return sent, await ctx.received(sock)


@case(4)
async def sendto_port_as_a_str(ctx: Ctx) -> Any:
    sock = await ctx.bound()
    return await attempt(sock.sendto(b"x", ctx.b, str(ctx.peer.port))), await ctx.received(sock)


@case(4, 6)
async def attributes_after_close(ctx: Ctx) -> Any:
    sock = await ctx.udp(local_host=ctx.a)
    await sock.aclose()
    out: list[Any] = []
    for attribute in (SocketAttribute.local_address, SocketAttribute.family):
        try:
            value = sock.extra(attribute)
        except Exception as exc:
            out.append(outcome(exc))
        else:
            out.append(type(value).__name__)
    return out


@case(4, 6)
async def raw_socket_attribute(ctx: Ctx) -> Any:
    sock = await ctx.udp(local_host=ctx.a)
    raw = sock.extra(SocketAttribute.raw_socket)
    local = sock.extra(SocketAttribute.local_address)
    return isinstance(raw, socket.socket), raw.getsockname()[:2] == local, raw.type


@case(6)
async def dual_stack_takes_ipv4(ctx: Ctx) -> Any:
    sock = await ctx.udp(family=socket.AF_INET6, local_host="::")
    port = sock.extra(SocketAttribute.local_port)
    v4 = Peer.create(ctx.veth, 4)
    try:
        v4.sock.sendto(b"over IPv4", (ctx.veth.ip4_a, port))
        data, addr = await sock.receive()
        await sock.sendto(b"answer", *addr[:2])
        answer, _ = await v4.recv()
        return data, addr[0] == "::ffff:" + ctx.veth.ip4_b, len(addr), answer
    finally:
        v4.close()


@case(4, 6)
async def connected_send_buffers(ctx: Ctx) -> Any:
    sock = await ctx.connected(ctx.b, ctx.peer.port, local_host=ctx.a)
    for data in (b"bytes", bytearray(b"bytearray"), memoryview(b"memoryview")):
        await sock.send(data)
    return await ctx.received(sock)


@case(4, 6)
async def connected_send_over_the_largest(ctx: Ctx) -> Any:
    sock = await ctx.connected(ctx.b, ctx.peer.port, local_host=ctx.a)
    largest = 65507 if ctx.family == 4 else 65527
    return await attempt(sock.send(b"m" * (largest + 1))), await ctx.received(sock)


async def _sent_in_order(ctx: Ctx, sock: Any, n: int) -> Any:
    for i in range(n):
        await sock.sendto(b"%d" % i, ctx.b, ctx.peer.port)
    got = await ctx.received(sock)
    return len(got), got == [b"%d" % i for i in range(n)]


@case(4, 6)
async def a_burst_of_sends_all_arrive(ctx: Ctx) -> Any:
    return await _sent_in_order(ctx, await ctx.bound(), 200)


@case(4, 6)
async def a_burst_received_in_order(ctx: Ctx) -> Any:
    sock = await ctx.udp(local_host=ctx.a)
    port = sock.extra(SocketAttribute.local_port)
    for i in range(100):
        ctx.peer.sock.sendto(b"%d" % i, (ctx.a, port))
    return [(await sock.receive())[0] for _ in range(100)] == [b"%d" % i for i in range(100)]


@case(6)
async def family_only(ctx: Ctx) -> Any:
    sock = await ctx.udp(family=ctx.af)
    host, port = sock.extra(SocketAttribute.local_address)
    return host, port > 0


@case(4, 6)
async def datagrams_queued_for_a_cold_neighbour(ctx: Ctx) -> Any:
    flush_neighbours(ctx)
    return await _sent_in_order(ctx, await ctx.udp(local_host=ctx.a), 65)


@case(4, 6)
async def aclose_right_after_a_send_to_a_cold_neighbour(ctx: Ctx) -> Any:
    flush_neighbours(ctx)
    sock = await ctx.connected(ctx.b, ctx.peer.port, local_host=ctx.a)
    await sock.send(b"sent before aclose()")
    await sock.aclose()
    return (await ctx.peer.recv())[0]


@case(4, 6)
async def a_receive_cancelled_by_a_timeout_leaves_the_socket_usable(ctx: Ctx) -> Any:
    sock = await ctx.udp(local_host=ctx.a)
    with anyio.move_on_after(0.05) as scope:
        await sock.receive()
    ctx.peer.sock.sendto(b"after the timeout", (ctx.a, sock.extra(SocketAttribute.local_port)))
    return scope.cancelled_caught, (await sock.receive())[0]


#: Where the raw socket departs from anyio's on purpose: name -> why (README "differences").
_RAISES = (
    "a send's error is raised as the kernel's OSError on every backend (anyio's asyncio backend "
    "hands it to a protocol that never raises it, its trio backend wraps it in "
    "BrokenResourceError)"
)
_MISTAKE = (
    "a caller's mistake (a port out of range, a host that is not a str) raises what "
    "socket.sendto() raises, and the socket stays open (anyio's asyncio backend closes the "
    "socket, uvloop's ignores it; trio raises it)"
)
_EMPTY = (
    "an empty datagram is sent on every backend (asyncio's transport, under anyio's asyncio "
    "backend, drops it on Python 3.11: gh-113812)"
)
BY_DESIGN: dict[str, str] = {
    "send_empty": _EMPTY,
    "send_empty-v6": _EMPTY,
    "send_the_largest_and_one_more": _RAISES,
    "send_the_largest_and_one_more-v6": _RAISES,
    "sendto_port_zero": _RAISES,
    "sendto_other_family": _RAISES,
    "sendto_unroutable": _RAISES,
    "broadcast_without_the_option": _RAISES,
    "sendto_port_out_of_range": _MISTAKE,
    "connected_send_over_the_largest": _RAISES,
    "connected_send_over_the_largest-v6": _RAISES,
    "sendto_host_as_an_address_object": _MISTAKE,
    "sendto_port_as_a_str": (
        "a port given as a str is looked up, as anyio's trio and uvloop backends do (its "
        "asyncio backend closes the socket on socket.sendto()'s TypeError)"
    ),
    "raw_socket_attribute": (
        "raw_socket is the guard socket itself, a socket.socket as on trio (anyio's asyncio "
        "backend gives asyncio's TransportSocket wrapper)"
    ),
    "raw_socket_attribute-v6": (
        "raw_socket is the guard socket itself, a socket.socket as on trio (anyio's asyncio "
        "backend gives asyncio's TransportSocket wrapper)"
    ),
}


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    with veth_pair("anyiodiff") as p:
        yield p


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("name", list(CASES))
def test_raw_socket_behaves_as_anyios(pair: VethPair, backend: str, name: str) -> None:
    fn, family = CASES[name]
    records = run_both(pair, backend, fn, family)
    if records["raw"] != records["kernel"] and backend == "uvloop":
        # One raw socket serves every backend. Where uvloop's own transport departs from the
        # stdlib's (an errno missing), the raw one keeps its behaviour on the stdlib loop.
        stdlib = run_both(pair, "asyncio", fn, family)
        if records["kernel"] != stdlib["kernel"] and records["raw"] == stdlib["raw"]:
            records = stdlib
    if name in BY_DESIGN:
        if records["raw"] == records["kernel"]:
            # Where the backend's own socket happens to agree (trio raises a mistake too).
            assert backend != "asyncio", f"no longer differs: {BY_DESIGN[name]}"
        return
    assert records["raw"] == records["kernel"]
