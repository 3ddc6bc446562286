"""Opening and closing endpoints on the loop's raw stack: the loop never waits for the kernel.

The first endpoint of a loop opens the stack (``setsockopt(PACKET_RX_RING)``, in a thread of its own);
every later one is a guard socket, a table entry and a filter swap on the stack, and closing one
closes its guard. The stack's packet sockets close on a worker thread (rawtransport.workers) once
its last endpoint has gone and the linger has passed. These tests check the ordering (the loop
runs another task while the ring is set up, a cancelled opener leaks nothing), the sharing (one
packet socket for many endpoints, reused within the linger, closed after it), and that 200
endpoints open and close while a ticker task keeps running.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import statistics
import threading
import time
from typing import Any

import pytest

import rawtransport
from rawtransport import stack_loop
from rawtransport.stack import RawStack, StackOptions
from tests.net.conformance import Peer, Recorder, a_ip, wait_stacks_closed
from tests.netns import VethPair, is_packet_socket, setns, udp_echo_peer_b, wait_for

TIMEOUT = 10.0

ECHO_PORT = 7009


def in_a(veth: VethPair, main: Any) -> Any:
    with setns(veth.ns_a):
        return asyncio.run(asyncio.wait_for(main(), 60))


def test_loop_runs_other_tasks_while_the_ring_is_set_up(
    veth: VethPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The setup waits on an event that only another task on the loop sets: if the setup ran on
    the loop thread this would never finish (and the wait would time out)."""
    started = threading.Event()
    proceed = threading.Event()
    real_open = RawStack.open

    def gated_open(options: StackOptions) -> RawStack:
        started.set()
        assert proceed.wait(TIMEOUT), "the event loop did not run while the stack opened"
        return real_open(options)

    monkeypatch.setattr(RawStack, "open", staticmethod(gated_open))

    async def main() -> bytes:
        async def release() -> None:
            while not started.is_set():
                await asyncio.sleep(0.001)
            proceed.set()

        releaser = asyncio.create_task(release())
        t, _ = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(a_ip(veth, 4), 0)
        )
        await releaser
        peer = Peer.create(veth, 4)
        try:
            t.sendto(b"opened off the loop", (veth.ip4_b, peer.port))
            data, _ = await peer.recv()
        finally:
            peer.close()
            t.close()
        return data

    assert in_a(veth, main) == b"opened off the loop"


def test_cancelled_open_closes_what_it_opened(
    veth: VethPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel the creating task while the stack's setup runs (held until the cancel has landed):
    its guard is closed at once, so its port is free again (a kernel socket can bind it); the
    stack is still made, and the next endpoint uses it."""
    started = threading.Event()
    proceed = threading.Event()
    real_open = RawStack.open

    def gated_open(options: StackOptions) -> RawStack:
        started.set()
        assert proceed.wait(TIMEOUT), "the test never let the setup go on"
        return real_open(options)

    monkeypatch.setattr(RawStack, "open", staticmethod(gated_open))

    def port_free(port: int) -> bool:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((a_ip(veth, 4), port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    async def main() -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((a_ip(veth, 4), 0))
        port = probe.getsockname()[1]
        probe.close()
        task = asyncio.create_task(
            rawtransport.create_raw_datagram_endpoint(Recorder, local_addr=(a_ip(veth, 4), port))
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not started.is_set():
            assert loop.time() < deadline, "the setup never started"
            await asyncio.sleep(0.001)
        assert not port_free(port), "the guard should hold the port while the setup runs"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert port_free(port), "the cancelled endpoint still holds its port"
        proceed.set()
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(a_ip(veth, 4), port)
        )
        assert t.get_extra_info("sockname")[1] == port
        t.close()
        await asyncio.wait_for(p.lost, TIMEOUT)

    in_a(veth, main)


def test_many_endpoints_open_concurrently_and_close(
    veth: VethPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened together (the dnspython pattern, one endpoint per query), each works and all share
    one packet socket; after close and the linger, the stack's packet socket is closed."""
    monkeypatch.setattr(stack_loop, "LINGER", 0.05)

    async def main() -> list[bytes]:
        peer = Peer.create(veth, 4)
        try:
            pairs = await asyncio.gather(
                *(
                    rawtransport.create_raw_datagram_endpoint(
                        Recorder, local_addr=(a_ip(veth, 4), 0)
                    )
                    for _ in range(20)
                )
            )
            fds = {t.get_extra_info("packet_socket").fileno() for t, _ in pairs}
            assert len(fds) == 1, "the endpoints of a loop share its stack's packet socket"
            got = []
            for i, (t, _) in enumerate(pairs):
                t.sendto(b"q%d" % i, (veth.ip4_b, peer.port))
                data, _ = await peer.recv()
                got.append(data)
            for t, p in pairs:
                t.close()
                await asyncio.wait_for(p.lost, TIMEOUT)
        finally:
            peer.close()
        await wait_stacks_closed()
        assert [fd for fd in fds if is_packet_socket(fd)] == [], "packet socket left open"
        return got

    assert in_a(veth, main) == [b"q%d" % i for i in range(20)]


def test_an_endpoint_within_the_linger_reuses_the_stack(veth: VethPair) -> None:
    """Close the only endpoint and open another at once: same stack, same packet socket, and the
    neighbour it resolved is still known (no ARP request for the second datagram)."""

    async def main() -> None:
        peer = Peer.create(veth, 4)
        try:
            t, p = await rawtransport.create_raw_datagram_endpoint(
                Recorder, local_addr=(a_ip(veth, 4), 0)
            )
            first = t.get_extra_info("packet_socket")
            t.sendto(b"one", (veth.ip4_b, peer.port))
            await peer.recv()
            t.close()
            await asyncio.wait_for(p.lost, TIMEOUT)
            t, p = await rawtransport.create_raw_datagram_endpoint(
                Recorder, local_addr=(a_ip(veth, 4), 0)
            )
            assert t.get_extra_info("packet_socket") is first
            t.sendto(b"two", (veth.ip4_b, peer.port))
            assert (await peer.recv())[0] == b"two"
            stats = t.get_extra_info("stats")
            assert stats["neighbour"]["requests_sent"] == 1, stats["neighbour"]
            t.close()
            await asyncio.wait_for(p.lost, TIMEOUT)
        finally:
            peer.close()

    in_a(veth, main)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_stack_lingering_when_its_loop_ends_is_closed(veth: VethPair, loop_kind: str) -> None:
    """asyncio.run() (uvloop.run()) ending while the stack lingers closes the stack: its packet
    socket does not outlive the loop (one stack a run was left open, with its ring, until the loop
    was collected; a process running one loop after another ran out of descriptors)."""
    import uvloop

    async def main() -> tuple[RawStack, int]:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(a_ip(veth, 4), 0)
        )
        fd = t.get_extra_info("packet_socket").fileno()
        (stack,) = stack_loop._stacks[asyncio.get_running_loop()].values()
        t.close()
        await asyncio.wait_for(p.lost, TIMEOUT)
        assert not stack.closed, "lingers"
        return stack.stack, fd

    run = uvloop.run if loop_kind == "uvloop" else asyncio.run
    with setns(veth.ns_a):
        stack, fd = run(asyncio.wait_for(main(), 60))
    assert stack.closed
    wait_for(lambda: not is_packet_socket(fd), TIMEOUT, what="the packet socket to close")


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_endpoints_open_and_close_without_stalling_the_loop(veth: VethPair, loop_kind: str) -> None:
    """With the stack up, 400 endpoints are opened one after another, each sends and receives a
    datagram, and half are closed at once while the other half stays open (so the table and the
    filter grow to 200), then those are closed one by one. A ticker task records how late each of
    its turns comes: no open, close or filter swap may block the loop (garbage collection is paused
    meanwhile, since a collection stalls any Python loop, the kernel path's as well).

    The bounds here catch blocking, not slowness: 10 ms for the longest stall and 5 ms for the
    median open, where an open or close that waits in the kernel's synchronize_net() (the ring
    setup or teardown on the loop thread) takes 7 to 50 ms. How short they are (the issue's 2 ms
    and 1 ms) is measured by ``python -m rawtransport bench endpoints``, not asserted: on these
    2-core machines one filter swap at 200 endpoints plus the opening task's step is 1 to 2.5 ms
    of loop time, and a timed bound that close to it flakes.

    The peer is a kernel UDP echo in its own process: no helper thread competes with the loop for
    the interpreter, and the loop thread sends only what the endpoints send."""
    import uvloop

    echo = udp_echo_peer_b(veth, 4, ECHO_PORT)
    dest = (veth.ip4_b, ECHO_PORT)

    async def main() -> tuple[float, float]:
        # The stack is up (the one open that waits for the kernel happens off the loop thread).
        t0, p0 = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(a_ip(veth, 4), 0)
        )
        t0.sendto(b"warm", dest)
        await asyncio.wait_for(p0.data.get(), TIMEOUT)
        worst = 0.0
        stop = False

        async def tick() -> None:
            # Yields at every loop iteration: the longest gap between two of its turns is the
            # longest the loop was held (a timer would add its own granularity: uvloop's is 1 ms).
            # The gap is counted in the loop thread's CPU time: work that holds the loop, not the
            # other processes of a busy 2-core machine that preempt it.
            nonlocal worst
            clock = time.thread_time
            while not stop:
                before = clock()
                await asyncio.sleep(0)
                worst = max(worst, clock() - before)

        # A collection of the interpreter's cyclic garbage holds any loop for milliseconds (the
        # kernel path's too): that is not what is measured here.
        gc.collect()
        gc.disable()
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.01)
        opens: list[float] = []
        kept = []
        try:
            for i in range(400):
                began = time.perf_counter()
                t, p = await rawtransport.create_raw_datagram_endpoint(
                    Recorder, local_addr=(a_ip(veth, 4), 0)
                )
                opens.append(time.perf_counter() - began)
                t.sendto(b"%d" % i, dest)
                data, addr = await asyncio.wait_for(p.data.get(), TIMEOUT)
                assert data == b"%d" % i  # there and back: the endpoint sends and receives
                assert addr == dest
                if i % 2:
                    t.close()
                    await asyncio.wait_for(p.lost, TIMEOUT)
                else:
                    kept.append((t, p))
            for t, p in kept:  # one at a time, as the other half: each close is the measure
                t.close()
                await asyncio.wait_for(p.lost, TIMEOUT)
        finally:
            stop = True
            await ticker
            gc.enable()
            t0.close()
        return worst, statistics.median(opens)

    try:
        with setns(veth.ns_a):
            run = uvloop.run if loop_kind == "uvloop" else asyncio.run
            worst, median_open = run(asyncio.wait_for(main(), 120))
    finally:
        echo.kill()
        echo.wait()
    assert median_open <= 0.005, f"median open {median_open * 1e6:.0f} µs"
    assert worst <= 0.010, f"longest loop stall {worst * 1e3:.2f} ms"
