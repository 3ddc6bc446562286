"""A soak of the datapath: 10⁶ datagrams through a raw echo on uvloop, from a kernel UDP client in
namespace B that keeps a window of them in flight. Every datagram comes back (the client counts
them), and memory stays flat: the interpreter's allocated blocks (``sys.getallocatedblocks()``, a
lost reference in the C code leaks one or more per datagram) and the process's resident size,
compared between 10 % of the run and its end."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import textwrap
from typing import Any

import rawtransport
from tests.net.conformance import a_ip
from tests.netns import VethPair, setns

TOTAL = 1_000_000
WINDOW = 64
TIMEOUT = 300.0

# The client: WINDOW datagrams in flight, each echo answered by the next; counts what returns.
_CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    host, port, total, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.settimeout(5)
    s.connect((host, port))
    payload = bytes(64)
    sent = got = 0
    t0 = time.monotonic()
    while sent < min(window, total):
        s.send(payload); sent += 1
    try:
        while got < total:
            s.recv(2048); got += 1
            if sent < total:
                s.send(payload); sent += 1
    except socket.timeout:
        pass
    print(json.dumps({"sent": sent, "got": got, "seconds": time.monotonic() - t0}), flush=True)
""")


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.count = 0
        self.samples: dict[str, tuple[int, int]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)
        self.count += 1
        if self.count in (TOTAL // 10, TOTAL):
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
            self.samples[str(self.count)] = (sys.getallocatedblocks(), rss)


def test_a_million_echoes_leave_memory_flat(veth: VethPair) -> None:
    import uvloop

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, tuple[int, int]]]:
        t, p = await rawtransport.create_raw_datagram_endpoint(Echo, local_addr=(a_ip(veth, 4), 0))
        port = t.get_extra_info("sockname")[1]
        client = veth.popen_b(
            sys.executable, "-c", _CLIENT, a_ip(veth, 4), str(port), str(TOTAL), str(WINDOW),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        assert client.stdout is not None
        line = await asyncio.wait_for(loop.run_in_executor(None, client.stdout.readline), TIMEOUT)
        client.wait(10)
        stats: dict[str, Any] = t.get_extra_info("stats")
        t.close()
        return json.loads(line), stats, p.samples

    with setns(veth.ns_a):
        result, stats, samples = uvloop.run(main())
    assert result["got"] == TOTAL, (result, stats["dropped"])
    assert stats["delivered"] == TOTAL
    assert stats["sent"] == TOTAL
    (blocks_early, rss_early), (blocks_end, rss_end) = (
        samples[str(TOTAL // 10)],
        samples[str(TOTAL)],
    )
    # 900 000 datagrams later: a leak of one block per datagram would be 900 000 blocks.
    assert blocks_end - blocks_early < 5_000, samples
    assert rss_end - rss_early < 16 * 1024, samples  # KiB
