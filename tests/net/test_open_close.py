"""Opening and closing an endpoint does not hold the event loop while the kernel waits.

The ring setup (``setsockopt(PACKET_RX_RING)``) runs in a thread of its own and packet sockets close
on a worker thread (rawtransport.workers). These tests check the ordering, not the time: the loop
must run another task while the setup is in progress, a cancelled opener must not leak its port,
and closed endpoints' sockets are really closed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

import rawtransport
from rawtransport import workers
from rawtransport.endpoint import RawUdpEndpoint
from tests.net.conformance import Peer, Recorder, a_ip
from tests.netns import VethPair, setns

TIMEOUT = 10.0


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
    real_open = RawUdpEndpoint.open

    def gated_open(guard: socket.socket, **kwargs: Any) -> RawUdpEndpoint:
        started.set()
        assert proceed.wait(TIMEOUT), "the event loop did not run while the endpoint opened"
        return real_open(guard, **kwargs)

    monkeypatch.setattr(RawUdpEndpoint, "open", staticmethod(gated_open))

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
    """Cancel the creating task while the setup runs (held until the cancel has landed): the
    endpoint is closed once it is built, so its port is free again (a kernel socket can bind it)."""
    started = threading.Event()
    proceed = threading.Event()
    real_open = RawUdpEndpoint.open

    def gated_open(guard: socket.socket, **kwargs: Any) -> RawUdpEndpoint:
        started.set()
        assert proceed.wait(TIMEOUT), "the test never let the setup go on"
        return real_open(guard, **kwargs)

    monkeypatch.setattr(RawUdpEndpoint, "open", staticmethod(gated_open))

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
        proceed.set()
        while not port_free(port):
            assert loop.time() < deadline + TIMEOUT, "the cancelled endpoint still holds its port"
            await asyncio.sleep(0.01)

    in_a(veth, main)


def test_many_endpoints_open_concurrently_and_close(veth: VethPair) -> None:
    """Opened together (the dnspython pattern, one endpoint per query), each works; after close
    and the closer's drain, none of their packet sockets is left open."""

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
            fds = [t.get_extra_info("packet_socket").fileno() for t, _ in pairs]
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
        assert await asyncio.to_thread(workers.wait_closed, TIMEOUT)
        sockets = [socket.socket(fileno=fd) for fd in fds if _is_packet_socket(fd)]
        for s in sockets:
            s.detach()
        assert sockets == [], "packet sockets still open after close"
        return got

    assert in_a(veth, main) == [b"q%d" % i for i in range(20)]


def _is_packet_socket(fd: int) -> bool:
    """Whether ``fd`` is (still, or again) an AF_PACKET socket."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        return s.family == socket.AF_PACKET
    finally:
        s.detach()
