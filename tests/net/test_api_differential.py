"""The asyncio contract, differentially: each call made on a kernel endpoint and on a raw one.

Every case below is an ``async`` function of a :class:`Ctx`: it opens endpoints with
``ctx.open(...)`` (``loop.create_datagram_endpoint`` for the kernel run, the raw path's
``create_raw_datagram_endpoint`` for the raw run, same arguments), makes its calls and returns what
it saw. The runner records, for each run: the value returned or the exception raised (type and
errno), what the protocol was told (``error_received`` errnos, ``connection_lost``), whether the
transport is closing, and what a kernel UDP socket in namespace B received (collected up to a
marker the endpoint sends last, so no wait is a sleep). Both runs, on the same event loop kind in the
same namespaces, must give the same record, except where :data:`BY_DESIGN` names the difference and
its reason (each also in the README's "differences by design"); such a case must still differ, so an
entry goes the day the difference does.
"""

from __future__ import annotations

import array
import asyncio
import gc
import socket
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from rawtransport import create_raw_datagram_endpoint
from tests.net.conformance import Cases, Peer, Recorder, Sides, flush_neighbours
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
    opened: list[tuple[asyncio.BaseTransport, Recorder]] = field(default_factory=list)

    @property
    def dest(self) -> tuple[str, int]:
        return (self.b, self.peer.port)

    async def open(self, **kwargs: Any) -> tuple[Any, Recorder]:
        loop = asyncio.get_running_loop()
        if self.impl == "kernel":
            t, p = await loop.create_datagram_endpoint(Recorder, **kwargs)
        else:
            t, p = await create_raw_datagram_endpoint(Recorder, **kwargs)
        self.opened.append((t, p))
        return t, p

    async def attempt(self, **kwargs: Any) -> tuple[str, int | None] | None:
        """Open an endpoint with ``kwargs``: None if it opened, else what was raised."""
        try:
            await self.open(**kwargs)
        except Exception as exc:
            return outcome(exc)
        return None

    async def bound(self, **kwargs: Any) -> tuple[Any, Recorder]:
        """An endpoint bound to A's address, the peer's neighbour resolved (one echo done)."""
        t, p = await self.open(local_addr=(self.a, 0), **kwargs)
        t.sendto(b"warm-up", self.dest)
        await self.received()
        return t, p

    async def received(self, t: Any = None) -> list[bytes]:
        """What the peer got since the last call, up to a marker sent after it by ``t`` (the
        last endpoint opened by default; ordered with what it sent before, in both paths)."""
        if t is None:
            t = self.opened[-1][0]
        if t.get_extra_info("peername") is not None:
            t.sendto(MARKER)
        else:
            t.sendto(MARKER, self.dest)
        got: list[bytes] = []
        while True:
            data, _ = await asyncio.wait_for(self.peer.recv(), TIMEOUT)
            if data == MARKER:
                return got
            got.append(data)


def outcome(exc: BaseException) -> tuple[str, int | None]:
    return type(exc).__name__, getattr(exc, "errno", None)


async def run_case(ctx: Ctx, fn: Case) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    handled: list[str] = []
    loop.set_exception_handler(lambda _l, c: handled.append(type(c.get("exception")).__name__))
    record: dict[str, Any] = {}
    try:
        record["result"] = await fn(ctx)
    except Exception as exc:  # what the call raised is the outcome being compared
        record["raised"] = outcome(exc)
    record["callbacks"] = [
        [c for c in p.calls if c[0] not in ("made", "data")] for _t, p in ctx.opened
    ]
    record["closing"] = [t.is_closing() for t, _p in ctx.opened]
    record["handler"] = handled
    for t, p in ctx.opened:
        t.close()
        await asyncio.wait_for(p.lost, TIMEOUT)
    return record


def run_both(veth: VethPair, loop_kind: str, fn: Case, family: int) -> dict[str, Any]:
    records = {}
    for impl in ("kernel", "raw"):
        peer = Peer.create(veth, family)
        try:
            ctx = Ctx(impl, veth, family, peer)
            with setns(veth.ns_a), warnings.catch_warnings():
                if impl == "kernel":
                    # uvloop leaks the transport of an endpoint whose bind() failed (its
                    # ResourceWarning is uvloop's, not the case's): collected here, unheard.
                    warnings.simplefilter("ignore", ResourceWarning)
                coro = asyncio.wait_for(run_case(ctx, fn), 60)
                records[impl] = uvloop.run(coro) if loop_kind == "uvloop" else asyncio.run(coro)
                gc.collect()
        finally:
            peer.close()
    return records


# ------------------------------------------------------------------------------- the cases
class Port:
    """An object with ``__index__``: socket.sendto() takes it as a port."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n


@case(4, 6)
async def sendto_bytes_bytearray_memoryview(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    for data in (b"bytes", bytearray(b"bytearray"), memoryview(b"memoryview")):
        t.sendto(data, ctx.dest)
    return await ctx.received()


@case(4, 6)
async def sendto_memoryview_of_wide_items(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    t.sendto(memoryview(array.array("H", [1, 2, 3])), ctx.dest)
    t.sendto(memoryview(b"abcdef").cast("B", (2, 3)), ctx.dest)
    return await ctx.received()


@case(4, 6)
async def sendto_strided_memoryview(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    try:
        t.sendto(memoryview(b"a-b-c")[::2], ctx.dest)
    except Exception as exc:
        return outcome(exc)
    return await ctx.received()


@case(4, 6)
async def sendto_empty(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    t.sendto(b"", ctx.dest)
    return await ctx.received()


@case(4, 6)
async def sendto_str(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    try:
        t.sendto("text", ctx.dest)
    except TypeError as exc:
        return outcome(exc)
    return None


@case(4)
async def sendto_bool_port(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    try:
        t.sendto(b"bool port", (ctx.b, True))
    except Exception as exc:
        return outcome(exc)
    return None


@case(4, 6)
async def sendto_index_port(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    t.sendto(b"index port", (ctx.b, Port(ctx.peer.port)))
    return await ctx.received()


@case(4, 6)
async def sendto_port_out_of_range(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    raised = []
    for port in (65536, -1, 1 << 40):
        try:
            t.sendto(b"x", (ctx.b, port))
        except Exception as exc:
            raised.append(outcome(exc))
    return raised, await ctx.received()


@case(4, 6)
async def sendto_port_zero(ctx: Ctx) -> Any:
    t, _p = await ctx.bound()
    t.sendto(b"to port 0", (ctx.b, 0))
    return await ctx.received()


@case(4)
async def sendto_bytes_host(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    try:
        t.sendto(b"bytes host", (ctx.b.encode(), ctx.peer.port))
    except Exception as exc:
        return outcome(exc)
    return await ctx.received()


@case(4, 6)
async def sendto_list_address(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    try:
        t.sendto(b"list", [ctx.b, ctx.peer.port])
    except Exception as exc:
        return outcome(exc)
    return None


@case(4, 6)
async def sendto_short_tuple(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    try:
        t.sendto(b"short", (ctx.b,))
    except Exception as exc:
        return outcome(exc)
    return None


@case(4)
async def sendto_v4_with_four_tuple(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    try:
        t.sendto(b"4-tuple", (ctx.b, ctx.peer.port, 0, 0))
    except Exception as exc:
        return outcome(exc)
    return await ctx.received()


@case(6)
async def sendto_v6_two_tuple_and_flowinfo(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    t.sendto(b"2-tuple", (ctx.b, ctx.peer.port))
    t.sendto(b"flowinfo", (ctx.b, ctx.peer.port, 0xFFFFF, 0))
    raised = []
    for flow in (0x100000, -1):
        try:
            t.sendto(b"bad flowinfo", (ctx.b, ctx.peer.port, flow, 0))
        except Exception as exc:
            raised.append(outcome(exc))
    return raised, await ctx.received()


@case(4, 6)
async def sendto_none_unconnected(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    try:
        t.sendto(b"no address")
    except Exception as exc:
        return outcome(exc)
    return None


@case(4)
async def sendto_other_family_address(ctx: Ctx) -> Any:
    t, p = await ctx.bound()
    try:
        t.sendto(b"v6 to v4", ("2001:db8::99", ctx.peer.port))
    except Exception as exc:
        return outcome(exc)
    return [e for e in p.calls if e[0] == "error"]


@case(4, 6)
async def sendto_max_and_over(ctx: Ctx) -> Any:
    t, _p = await ctx.bound()
    top = 65507 if ctx.family == 4 else 65527
    t.sendto(bytes(top), ctx.dest)
    t.sendto(bytes(top + 1), ctx.dest)
    got = await ctx.received()
    return [len(g) for g in got]


@case(4, 6)
async def sendto_after_close(ctx: Ctx) -> Any:
    t, p = await ctx.bound()
    t.close()
    await asyncio.wait_for(p.lost, TIMEOUT)
    t.sendto(b"after close", ctx.dest)
    return t.is_closing()


@case(4, 6)
async def connected_send_and_sendto_own_peer(ctx: Ctx) -> Any:
    t, _ = await ctx.open(remote_addr=ctx.dest)
    t.sendto(b"none")
    t.sendto(b"peer", ctx.dest)
    return await ctx.received()


@case(4, 6)
async def connected_sendto_other_address(ctx: Ctx) -> Any:
    t, _ = await ctx.open(remote_addr=ctx.dest)
    try:
        t.sendto(b"other", (ctx.b, ctx.peer.port + 1))
    except Exception as exc:
        return outcome(exc)
    return None


@case(4, 6)
async def connected_remote_port_zero(ctx: Ctx) -> Any:
    t, p = await ctx.open(remote_addr=(ctx.b, 0))
    t.sendto(b"to port zero")
    # Connected to port 0, a socket takes its peer's datagrams from any port (compute_score()).
    ctx.peer.sock.sendto(b"from the peer", (ctx.a, t.get_extra_info("sockname")[1]))
    data, _ = await asyncio.wait_for(p.data.get(), TIMEOUT)
    return data, t.get_extra_info("peername"), [e for e in p.calls if e[0] == "error"]


@case(4)
async def create_local_port_out_of_range(ctx: Ctx) -> Any:
    return [await ctx.attempt(local_addr=(ctx.a, port)) for port in (70000, -1, 65536)]


@case(4)
async def create_local_port_types(ctx: Ctx) -> Any:
    out: list[Any] = []
    for port in ("0", None, 1.5):
        try:
            t, _ = await ctx.open(local_addr=(ctx.a, port))
            out.append(type(t.get_extra_info("sockname")[1]).__name__)
        except Exception as exc:
            out.append(outcome(exc))
    return out


@case(6)
async def create_flowinfo_out_of_range(ctx: Ctx) -> Any:
    return await ctx.attempt(remote_addr=(ctx.b, ctx.peer.port, 1 << 20, 0))


@case(4)
async def create_without_addresses_or_family(ctx: Ctx) -> Any:
    return await ctx.attempt()


@case(4)
async def create_family_mismatch(ctx: Ctx) -> Any:
    return await ctx.attempt(local_addr=(ctx.a, 0), family=socket.AF_INET6)


@case(4)
async def create_reuse_address(ctx: Ctx) -> Any:
    return await ctx.attempt(local_addr=(ctx.a, 0), reuse_address=True)


@case(4)
async def create_port_in_use(ctx: Ctx) -> Any:
    t, _ = await ctx.open(local_addr=(ctx.a, 0))
    return await ctx.attempt(local_addr=(ctx.a, t.get_extra_info("sockname")[1]))


@case(4)
async def create_unix_family(ctx: Ctx) -> Any:
    return await ctx.attempt(family=socket.AF_UNIX)


@case(4, 6)
async def extra_info(ctx: Ctx) -> Any:
    t, _ = await ctx.open(local_addr=(ctx.a, 0), remote_addr=ctx.dest)
    sockname = t.get_extra_info("sockname")
    peername = t.get_extra_info("peername")
    sock = t.get_extra_info("socket")
    return (
        sockname[0], len(sockname), peername[:2] == ctx.dest, len(peername),
        t.get_extra_info("nothing", "default"), sock.family, sock.type, t.get_write_buffer_size(),
    )  # fmt: skip


@case(4)
async def write_buffer_limits(ctx: Ctx) -> Any:
    t, _ = await ctx.open(local_addr=(ctx.a, 0))
    out: list[Any] = [t.get_write_buffer_limits()]
    t.set_write_buffer_limits(high=1000)
    out.append(t.get_write_buffer_limits())
    try:
        t.set_write_buffer_limits(high=10, low=20)
    except Exception as exc:
        out.append(outcome(exc))
    return out


@case(4)
async def close_twice_and_abort(ctx: Ctx) -> Any:
    t, p = await ctx.open(local_addr=(ctx.a, 0))
    t.close()
    t.close()
    t.abort()
    exc = await asyncio.wait_for(p.lost, TIMEOUT)
    return t.is_closing(), exc


@case(4)
async def reading_flow_control(ctx: Ctx) -> Any:
    t, _p = await ctx.bound()
    out = [t.is_reading()]
    t.pause_reading()
    out.append(t.is_reading())
    t.pause_reading()
    t.resume_reading()
    out.append(t.is_reading())
    return out


@case(4, 6)
async def datagram_received_raises(ctx: Ctx) -> Any:
    t, p = await ctx.bound()
    port = t.get_extra_info("sockname")[1]
    got: list[bytes] = []

    def boom(data: bytes, addr: Any) -> None:
        got.append(data)
        raise RuntimeError("boom")

    p.datagram_received = boom  # type: ignore[method-assign]
    ctx.peer.sock.sendto(b"to the raiser", (ctx.a, port))
    async with asyncio.timeout(TIMEOUT):
        while not got:  # a condition wait, not a sleep
            await asyncio.sleep(0.005)
    return got, t.is_closing(), await ctx.received()


@case(4)
async def broadcast_needs_allow_broadcast(ctx: Ctx) -> Any:
    t, p = await ctx.bound()
    bcast = ctx.a.rsplit(".", 1)[0] + ".255"
    t.sendto(b"subnet broadcast", (bcast, ctx.peer.port))
    t.sendto(b"limited broadcast", ("255.255.255.255", ctx.peer.port))
    return [e for e in p.calls if e[0] == "error"], await ctx.received()


@case(4)
async def broadcast_with_allow_broadcast(ctx: Ctx) -> Any:
    t, p = await ctx.open(local_addr=(ctx.a, 0), allow_broadcast=True)
    t.sendto(b"warm-up", ctx.dest)
    await ctx.received()
    bcast = ctx.a.rsplit(".", 1)[0] + ".255"
    t.sendto(b"subnet broadcast", (bcast, ctx.peer.port))
    return [e for e in p.calls if e[0] == "error"]


@case(4, 6)
async def sendto_unroutable(ctx: Ctx) -> Any:
    t, p = await ctx.bound()
    far = "203.0.113.9" if ctx.family == 4 else "2001:db8:ffff::9"
    t.sendto(b"nowhere", (far, 9))
    return [e for e in p.calls if e[0] == "error"], await ctx.received()


@case(4, 6)
async def sendto_own_address(ctx: Ctx) -> Any:
    t, _p = await ctx.bound()
    other, q = await ctx.open(local_addr=(ctx.a, 0))
    t.sendto(b"to myself", (ctx.a, other.get_extra_info("sockname")[1]))
    data, _ = await asyncio.wait_for(q.data.get(), TIMEOUT)
    return data


@case(4, 6)
async def connected_gets_port_unreachable(ctx: Ctx) -> Any:
    closed = Peer.create(ctx.veth, ctx.family)
    port = closed.port
    closed.close()  # nobody listens there now: B answers with ICMP port unreachable
    t, p = await ctx.open(local_addr=(ctx.a, 0), remote_addr=(ctx.b, port))
    t.sendto(b"to a closed port")
    exc = await asyncio.wait_for(p.errors.get(), TIMEOUT)
    return type(exc).__name__, exc.errno, t.is_closing()


@case(4, 6)
async def wildcard_local_addr(ctx: Ctx) -> Any:
    wildcard = "0.0.0.0" if ctx.family == 4 else "::"
    t, _ = await ctx.open(local_addr=(wildcard, 0))
    sockname = t.get_extra_info("sockname")
    t.sendto(b"from the wildcard", ctx.dest)
    data, addr = await asyncio.wait_for(ctx.peer.recv(), TIMEOUT)
    return sockname[0], data, addr[0]


def _link_local_peer(ctx: Ctx) -> tuple[socket.socket, str, int]:
    """A kernel socket in B on its link-local address: it, that address, A's interface index."""
    ll_b, index_b = link_local(ctx.veth.ns_b, ctx.veth.if_b)
    _, index_a = link_local(ctx.veth.ns_a, ctx.veth.if_a)
    with setns(ctx.veth.ns_b):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind((ll_b, 0, 0, index_b))
    sock.settimeout(TIMEOUT)
    return sock, ll_b, index_a


@case(6)
async def link_local_destinations(ctx: Ctx) -> Any:
    """To B's link-local address: with a scope id, with %name (dropped by sendto(), so the
    kernel picks the route), and bare; then B answers from it."""
    t, p = await ctx.open(local_addr=("::", 0))
    peer, ll_b, index_a = _link_local_peer(ctx)
    try:
        port = peer.getsockname()[1]
        sent = []
        dests: list[tuple[Any, ...]] = [
            (ll_b, port, 0, index_a), (f"{ll_b}%{ctx.veth.if_a}", port), (ll_b, port)
        ]  # fmt: skip
        for dest in dests:
            t.sendto(b"%d" % len(dest), dest)
            data, src = await asyncio.to_thread(peer.recvfrom, 100)
            sent.append((data, src[0].startswith("fe80::")))
        peer.sendto(b"back", (src[0], t.get_extra_info("sockname")[1], 0, src[3]))
        back, got_from = await asyncio.wait_for(p.data.get(), TIMEOUT)
        return sent, back, got_from[0] == ll_b, got_from[3] == index_a
    finally:
        peer.close()


@case(6)
async def bound_to_a_link_local_address(ctx: Ctx) -> Any:
    ll_a, index_a = link_local(ctx.veth.ns_a, ctx.veth.if_a)
    t, _ = await ctx.open(local_addr=(ll_a, 0, 0, index_a))
    peer, ll_b, _ = _link_local_peer(ctx)
    try:
        sockname = t.get_extra_info("sockname")
        t.sendto(b"from a link-local address", (ll_b, peer.getsockname()[1], 0, index_a))
        data, src = await asyncio.to_thread(peer.recvfrom, 100)
        return sockname[0] == ll_a, sockname[3] == index_a, data, src[0] == ll_a
    finally:
        peer.close()


@case(4, 6)
async def datagrams_queued_for_a_cold_neighbour(ctx: Ctx) -> Any:
    """65 datagrams before B's MAC is known: the kernel queues them all (unres_qlen_bytes)."""
    flush_neighbours(ctx)
    t, _ = await ctx.open(local_addr=(ctx.a, 0))
    for i in range(65):
        t.sendto(b"%d" % i, ctx.dest)
    got = await ctx.received()
    return len(got), got == [b"%d" % i for i in range(65)]


async def _end_right_after_a_send_to_a_cold_neighbour(ctx: Ctx, end: str) -> Any:
    """The datagram waits for B's MAC in the neighbour's queue, not the socket's: it leaves."""
    flush_neighbours(ctx)
    t, p = await ctx.open(local_addr=(ctx.a, 0))
    t.sendto(f"sent before {end}()".encode(), ctx.dest)
    getattr(t, end)()
    await asyncio.wait_for(p.lost, TIMEOUT)
    return (await asyncio.wait_for(ctx.peer.recv(), TIMEOUT))[0]


@case(4, 6)
async def close_right_after_a_send_to_a_cold_neighbour(ctx: Ctx) -> Any:
    return await _end_right_after_a_send_to_a_cold_neighbour(ctx, "close")


@case(4, 6)
async def abort_right_after_a_send_to_a_cold_neighbour(ctx: Ctx) -> Any:
    return await _end_right_after_a_send_to_a_cold_neighbour(ctx, "abort")


@case(6)
async def sendto_a_global_address_with_a_scope_id(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    t.sendto(b"scope ignored", (ctx.b, ctx.peer.port, 0, 99))
    return await ctx.received()


@case(6)
async def sendto_with_a_flow_label(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    t.sendto(b"labelled", (ctx.b, ctx.peer.port, 0x12345, 0))
    return await ctx.received()


@case(6)
async def sendto_a_mapped_address_from_a_bound_endpoint(ctx: Ctx) -> Any:
    t, p = await ctx.bound()
    t.sendto(b"mapped", ("::ffff:" + ctx.veth.ip4_b, ctx.peer.port))
    return await ctx.received(), [c for c in p.calls if c[0] == "error"]


@case(6)
async def dual_stack_sends_to_a_mapped_address(ctx: Ctx) -> Any:
    t, _ = await ctx.open(local_addr=("::", 0))
    v4 = Peer.create(ctx.veth, 4)
    try:
        t.sendto(b"to IPv4", ("::ffff:" + ctx.veth.ip4_b, v4.port))
        data, src = await asyncio.wait_for(v4.recv(), TIMEOUT)
        return data, src[0] == ctx.veth.ip4_a
    finally:
        v4.close()


@case(4, 6)
async def the_socket_extra_is_the_bound_socket(ctx: Ctx) -> Any:
    t, _ = await ctx.open(local_addr=(ctx.a, 0))
    sock = t.get_extra_info("socket")
    return sock.getsockname() == t.get_extra_info("sockname"), sock.fileno() >= 0, sock.proto


@case(4)
async def local_addr_by_name(ctx: Ctx) -> Any:
    t, _ = await ctx.open(local_addr=("localhost", 0))
    return t.get_extra_info("sockname")[0]


@case(4)
async def proto_udplite(ctx: Ctx) -> Any:
    return await ctx.attempt(local_addr=(ctx.a, 0), proto=socket.IPPROTO_UDPLITE)


@case(4)
async def sock_unbound(ctx: Ctx) -> Any:
    sock = socket.socket(ctx.af, socket.SOCK_DGRAM)
    t, _ = await ctx.open(sock=sock)
    t.sendto(b"from an unbound socket", ctx.dest)
    data, src = await asyncio.wait_for(ctx.peer.recv(), TIMEOUT)
    return data, src[1] == sock.getsockname()[1]


@case(4, 6)
async def sizes_around_the_mtu(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    top = 1500 - (28 if ctx.family == 4 else 48)
    for size in (top, top + 1, 3 * top):
        t.sendto(b"s" * size, ctx.dest)
    return [len(d) for d in await ctx.received()]


@case(4, 6)
async def receive_a_fragmented_datagram(ctx: Ctx) -> Any:
    t, p = await ctx.open(local_addr=(ctx.a, 0))
    ctx.peer.sock.sendto(b"f" * 4000, (ctx.a, t.get_extra_info("sockname")[1]))
    data, _ = await asyncio.wait_for(p.data.get(), TIMEOUT)
    return len(data)


@case(4)
async def family_only(ctx: Ctx) -> Any:
    t, _ = await ctx.open(family=socket.AF_INET)
    sockname = t.get_extra_info("sockname")
    t.sendto(b"family only", ctx.dest)
    data, addr = await asyncio.wait_for(ctx.peer.recv(), TIMEOUT)
    return sockname[0], sockname[1] > 0 or "unbound", data, addr[0]


@case(4, 6)
async def echo_addresses_as_recvfrom_gives_them(ctx: Ctx) -> Any:
    t, p = await ctx.open(local_addr=(ctx.a, 0))
    ctx.peer.sock.sendto(b"hello", (ctx.a, t.get_extra_info("sockname")[1]))
    data, addr = await asyncio.wait_for(p.data.get(), TIMEOUT)
    return data, addr == (ctx.b, ctx.peer.port, *((0, 0) if ctx.family == 6 else ())), len(addr)


@case(4, 6)
async def receive_max_and_empty(ctx: Ctx) -> Any:
    t, p = await ctx.open(local_addr=(ctx.a, 0))
    port = t.get_extra_info("sockname")[1]
    top = 65507 if ctx.family == 4 else 65527
    for size in (0, 1, 1472, top):
        ctx.peer.sock.sendto(bytes(size), (ctx.a, port))
    sizes = []
    for _ in range(4):
        data, _addr = await asyncio.wait_for(p.data.get(), TIMEOUT)
        sizes.append(len(data))
    return sizes


@case(4)
async def sock_bound(ctx: Ctx) -> Any:
    sock = socket.socket(ctx.af, socket.SOCK_DGRAM)
    sock.bind((ctx.a, 0))
    t, _ = await ctx.open(sock=sock)
    t.sendto(b"from sock=", ctx.dest)
    data, _addr = await asyncio.wait_for(ctx.peer.recv(), TIMEOUT)
    return data, t.get_extra_info("sockname") == sock.getsockname()


@case(4)
async def sock_connected_then_sendto_other(ctx: Ctx) -> Any:
    sock = socket.socket(ctx.af, socket.SOCK_DGRAM)
    sock.bind((ctx.a, 0))
    sock.connect(ctx.dest)
    t, _ = await ctx.open(sock=sock)
    t.sendto(b"to the connected peer")
    try:
        t.sendto(b"to another", (ctx.b, ctx.peer.port + 1))
        raised = None
    except Exception as exc:
        raised = outcome(exc)
    return raised, await ctx.received()


@case(4)
async def sock_with_other_arguments(ctx: Ctx) -> Any:
    sock = socket.socket(ctx.af, socket.SOCK_DGRAM)
    try:
        return await ctx.attempt(sock=sock, local_addr=(ctx.a, 0))
    finally:
        sock.close()


@case(4)
async def sock_stream_refused(ctx: Ctx) -> Any:
    sock = socket.socket(ctx.af, socket.SOCK_STREAM)
    try:
        return await ctx.attempt(sock=sock)
    finally:
        sock.close()


@case(4)
async def local_addr_not_ours(ctx: Ctx) -> Any:
    return await ctx.attempt(local_addr=("198.18.255.254", 0))


@case(4)
async def local_addr_wrong_shape(ctx: Ctx) -> Any:
    return [
        await ctx.attempt(local_addr=addr) for addr in ((ctx.a,), (ctx.a, 0, 0), [ctx.a, 0], ctx.a)
    ]


@case(4)
async def protocol_callbacks_raise(ctx: Ctx) -> Any:
    t, p = await ctx.bound()

    def boom(exc: Exception) -> None:
        raise RuntimeError("error_received raised")

    p.error_received = boom  # type: ignore[method-assign]
    t.sendto(b"port 0", (ctx.b, 0))  # EINVAL to error_received, which raises
    return t.is_closing(), await ctx.received()


@case(4)
async def abort_then_close(ctx: Ctx) -> Any:
    t, p = await ctx.bound()
    t.abort()
    t.close()
    exc = await asyncio.wait_for(p.lost, TIMEOUT)
    return exc, t.is_closing(), t.get_extra_info("sockname") is not None


@case(4)
async def write_buffer_size_and_can_write_eof(ctx: Ctx) -> Any:
    t, _ = await ctx.bound()
    out: list[Any] = [t.get_write_buffer_size()]
    for name in ("can_write_eof", "write_eof", "write"):
        out.append(hasattr(t, name) and callable(getattr(t, name)))
    return out


#: Differences that are there on purpose, and why (each also in the README's "differences by
#: design"). In each, the raw transport stays open and calls no exception handler.
_RAISES = (
    "A caller's mistake (a malformed address, a port or flowinfo out of range, a buffer that is "
    "not C-contiguous) raises to the caller as socket.sendto() raises it and leaves the transport "
    "open; the stdlib's transport passes it to _fatal_error(), which closes the transport"
)
_NO_ADDRESS = (
    "sendto() without an address on an unconnected endpoint reports EDESTADDRREQ to "
    "error_received(), as send(2) on an unconnected UDP socket fails (and as uvloop does); the "
    "stdlib's transport calls socket.sendto(data, None) and closes on its TypeError"
)
_AFTER_CLOSE = (
    "sendto() after close() is ignored, as uvloop's transport ignores it; the stdlib's raises "
    "AttributeError from the socket it has dropped"
)
BY_DESIGN: dict[str, tuple[str, bool]] = {
    # name: (why, whether the raw transport is still open at the end of the case)
    "sendto_port_out_of_range": (_RAISES, True),
    "sendto_port_out_of_range-v6": (_RAISES, True),
    "sendto_strided_memoryview": (_RAISES, True),
    "sendto_strided_memoryview-v6": (_RAISES, True),
    "sendto_list_address": (_RAISES, True),
    "sendto_list_address-v6": (_RAISES, True),
    "sendto_short_tuple": (_RAISES, True),
    "sendto_short_tuple-v6": (_RAISES, True),
    "sendto_v4_with_four_tuple": (_RAISES, True),
    "sendto_v6_two_tuple_and_flowinfo-v6": (_RAISES, True),
    "sendto_none_unconnected": (_NO_ADDRESS, True),
    "sendto_none_unconnected-v6": (_NO_ADDRESS, True),
    "sendto_after_close": (_AFTER_CLOSE, False),
    "sendto_after_close-v6": (_AFTER_CLOSE, False),
    "family_only": (
        "an endpoint opened with only a family is bound at once (to the wildcard and an "
        "ephemeral port: the raw path must know its port to take its datagrams); the kernel's "
        "socket is bound by its first sendto()",
        True,
    ),
    "sock_connected_then_sendto_other": (
        "a connected sock= is taken as remote_addr= is: sendto() to another address raises "
        "ValueError; the stdlib's transport sends it to the connected peer, ignoring the "
        "address given (uvloop's reports EISCONN)",
        True,
    ),
    "create_unix_family": ("the raw path carries IPv4 and IPv6 only: AF_UNIX is refused", True),
}


LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    with veth_pair("apidiff") as p:
        yield p


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("name", list(CASES))
def test_raw_endpoint_behaves_as_the_kernel_endpoint(
    pair: VethPair, loop_kind: str, name: str
) -> None:
    fn, family = CASES[name]
    records = run_both(pair, loop_kind, fn, family)
    if records["raw"] == records["kernel"]:
        # The entries describe the stdlib loop's transport: uvloop's may agree with the raw one.
        if loop_kind == "asyncio":
            assert name not in BY_DESIGN, f"no longer differs, drop the entry: {BY_DESIGN[name]}"
        return
    if loop_kind == "uvloop":
        # One raw transport serves both loops. Where uvloop's own transport departs from the
        # stdlib's (exception types, missing methods, defaults), the raw one keeps its behaviour
        # on the stdlib loop: that is what it must equal then.
        stdlib = run_both(pair, "asyncio", fn, family)
        if records["kernel"] != stdlib["kernel"] and records["raw"] == stdlib["raw"]:
            records = stdlib
            if records["raw"] == records["kernel"]:
                return
    assert name in BY_DESIGN, (records["raw"], records["kernel"])
    raw = records["raw"]
    assert not raw["handler"], raw
    if BY_DESIGN[name][1]:
        assert not any(raw["closing"]), raw
