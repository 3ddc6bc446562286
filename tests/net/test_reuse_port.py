"""``reuse_port=True`` as ``SO_REUSEPORT`` does it: servers on one address and port share its flows.

Four server processes (asyncio, uvloop, or anyio on trio) bind the same address and port with
``reuse_port=True`` and answer every datagram with their pid. A kernel client in the peer namespace
sends one datagram from each of 400 source ports. Every datagram must be delivered exactly once
(the servers' ``delivered`` counters sum to 400, and 400 distinct answers come back), every server
must get some flows, and each flow's answer must come from one server.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.netns import VethPair, readable

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0
SERVERS = 4
FLOWS = 400

_SERVER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    sys.path.insert(0, sys.argv[4])
    import rawtransport

    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pid = str(os.getpid()).encode()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, t):
            self.t = t

        def datagram_received(self, data, addr):
            self.t.sendto(data + b" " + pid, addr)

    async def on_asyncio():
        loop = asyncio.get_running_loop()
        t, _ = await rawtransport.create_raw_datagram_endpoint(
            Echo, local_addr=(host, port), reuse_port=True
        )
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        print("ready", flush=True)
        await stop
        print("delivered", t.get_extra_info("stats")["delivered"], flush=True)

    async def on_anyio():
        import anyio

        sock = await rawtransport.create_raw_udp_socket(
            local_host=host, local_port=port, reuse_port=True
        )
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                async def serve():
                    async for data, addr in sock:
                        await sock.send((data + b" " + pid, addr))

                tg.start_soon(serve)
                print("ready", flush=True)
                async for _ in signals:
                    stats = sock.extra(rawtransport.RawSocketAttribute.stats)
                    print("delivered", stats["delivered"], flush=True)
                    tg.cancel_scope.cancel()
                    break

    if kind == "trio":
        import anyio

        anyio.run(on_anyio, backend="trio")
    elif kind == "uvloop":
        import uvloop

        uvloop.run(on_asyncio())
    else:
        asyncio.run(on_asyncio())
    """
)


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    assert readable(proc.stdout, timeout), "a server said nothing in time"
    return proc.stdout.readline().strip()


@pytest.mark.parametrize(
    ("kind", "family"),
    [("asyncio", 4), ("asyncio", 6), ("uvloop", 4), ("trio", 4)],
)
def test_servers_on_one_port_share_its_flows(veth: VethPair, kind: str, family: int) -> None:
    host = veth.ip4_a if family == 4 else veth.ip6_a
    probe = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    with probe:
        probe.bind(("127.0.0.1", 0) if family == 4 else ("::1", 0))
        port = probe.getsockname()[1]
    argv = (sys.executable, "-c", _SERVER, kind, host, str(port), str(ROOT))
    servers = [veth.popen_a(*argv, stdout=subprocess.PIPE) for _ in range(SERVERS)]
    try:
        for proc in servers:
            assert _readline(proc, TIMEOUT) == "ready"
        answers = _client(veth, family, host, port)
        delivered = []
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
            line = _readline(proc, TIMEOUT).split()
            assert line[0] == "delivered", line
            delivered.append(int(line[1]))
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
    pids = {str(p.pid) for p in servers}
    assert sorted(answers) == list(range(FLOWS)), "every datagram answered, none twice"
    assert set(answers.values()) <= pids
    assert sum(delivered) == FLOWS, delivered
    assert all(delivered), f"every server gets some flows: {delivered}"


def _client(veth: VethPair, family: int, host: str, port: int) -> dict[int, str]:
    """Send datagram ``i`` from source port number ``i`` of FLOWS; the pid that answered each."""
    code = textwrap.dedent(
        f"""
        import select, socket, sys, time
        af = socket.AF_INET if {family} == 4 else socket.AF_INET6
        socks = []
        for i in range({FLOWS}):
            s = socket.socket(af, socket.SOCK_DGRAM)
            s.bind(("", 0))
            s.setblocking(False)
            socks.append(s)
        for i, s in enumerate(socks):
            s.sendto(b"%d" % i, ({host!r}, {port}))
        got = 0
        deadline = time.monotonic() + {TIMEOUT}
        while got < {FLOWS} and time.monotonic() < deadline:
            ready, _, _ = select.select(socks, [], [], 0.5)
            for s in ready:
                data = s.recv(100)
                print(data.decode(), flush=True)
                got += 1
        """
    )
    out = veth.run_b(sys.executable, "-c", code, timeout=TIMEOUT + 10).stdout
    answers: dict[int, str] = {}
    for line in out.splitlines():
        flow, pid = line.split()
        assert int(flow) not in answers, f"flow {flow} answered twice"
        answers[int(flow)] = pid
    return answers


def test_a_reuse_port_endpoint_leaves_other_ports_to_the_shared_receiver(veth: VethPair) -> None:
    """In one process: two reuse_port endpoints on one port and a plain one on another; each
    datagram reaches exactly one endpoint, the plain one gets all of its own."""
    import asyncio

    import rawtransport
    from tests.net.conformance import Peer, Recorder
    from tests.netns import setns

    async def main() -> tuple[list[int], int]:
        group = [
            await rawtransport.create_raw_datagram_endpoint(
                Recorder, local_addr=(veth.ip4_a, 0), reuse_port=True
            )
        ]
        port = group[0][0].get_extra_info("sockname")[1]
        group.append(
            await rawtransport.create_raw_datagram_endpoint(
                Recorder, local_addr=(veth.ip4_a, port), reuse_port=True
            )
        )
        plain, plain_p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(veth.ip4_a, 0)
        )
        peers = [Peer.create(veth, 4) for _ in range(40)]
        try:
            for i, peer in enumerate(peers):
                peer.sock.sendto(b"g%d" % i, (veth.ip4_a, port))
                peer.sock.sendto(b"p%d" % i, (veth.ip4_a, plain.get_extra_info("sockname")[1]))
            got: list[bytes] = []
            deadline = time.monotonic() + TIMEOUT
            while len(got) < 40 and time.monotonic() < deadline:
                for _, p in group:
                    while not p.data.empty():
                        got.append(p.data.get_nowait()[0])
                await asyncio.sleep(0.01)
            for _ in range(40):
                await asyncio.wait_for(plain_p.data.get(), TIMEOUT)
            counts = [t.get_extra_info("stats")["delivered"] for t, _ in group]
            assert sorted(got) == sorted(b"g%d" % i for i in range(40))
            return counts, plain.get_extra_info("stats")["delivered"]
        finally:
            for peer in peers:
                peer.close()
            for t, p in [*group, (plain, plain_p)]:
                t.close()
                await asyncio.wait_for(p.lost, TIMEOUT)

    with setns(veth.ns_a):
        counts, plain_delivered = asyncio.run(main())
    assert sum(counts) == 40, counts
    assert plain_delivered == 40
