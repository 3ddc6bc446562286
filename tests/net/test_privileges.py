"""``rawtransport.drop_privileges()`` (issue 13, item 4), in a process of its own in namespace A.

The program opens a raw endpoint and a ``kernel_bypass`` one, drops its capabilities, and then:
its open endpoints keep echoing (their packet sockets were made with the capability), a new
endpoint on the open stack opens (it needs only a guard socket, as a kernel UDP socket needs no
capability), one that needs a new stack gets the clear ``PermissionError``, a new
``kernel_bypass`` endpoint is refused, and the ``nft`` child, which held CAP_NET_ADMIN in a
process of its own, is gone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.net.conformance import Peer
from tests.netns import VethPair, readable

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0

_PROGRAM = """
import asyncio, json, os, sys
sys.path.insert(0, {root!r})
import rawtransport

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, d, a): self.t.sendto(d, a)

def caps():
    line = next(x for x in open("/proc/self/status") if x.startswith("CapEff:"))
    return int(line.split()[1], 16)

def outcome(exc):
    return [type(exc).__name__, exc.errno, str(exc)]

async def main():
    a = {addr!r}
    t, _ = await rawtransport.create_raw_datagram_endpoint(Echo, local_addr=(a, 0))
    tb, _ = await rawtransport.create_raw_datagram_endpoint(
        Echo, local_addr=(a, 0), kernel_bypass=True
    )
    nft = tb.get_extra_info("stats")["kernel_bypass"]["pid"]
    before = caps()
    rawtransport.drop_privileges()
    out = {{"before": before, "after": caps(), "nft": nft}}
    try:
        os.kill(nft, 0)
        out["nft_alive"] = True
    except ProcessLookupError:
        out["nft_alive"] = False
    out["bypass_active"] = tb.get_extra_info("stats")["kernel_bypass"]["active"]
    t2, _ = await rawtransport.create_raw_datagram_endpoint(Echo, local_addr=(a, 0))
    for key, kwargs in (("new_stack", {{"rx_mode": "recv"}}), ("new_bypass", {{"kernel_bypass": True}})):
        try:
            await rawtransport.create_raw_datagram_endpoint(Echo, local_addr=(a, 0), **kwargs)
            out[key] = None
        except OSError as exc:
            out[key] = outcome(exc)
    out["ports"] = [x.get_extra_info("sockname")[1] for x in (t, tb, t2)]
    print(json.dumps(out), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
"""


def test_drop_privileges_keeps_open_endpoints_and_refuses_new_privileged_ones(
    veth: VethPair,
) -> None:
    code = textwrap.dedent(_PROGRAM.format(root=str(ROOT), addr=veth.ip4_a))
    proc = veth.popen_a(
        sys.executable, "-c", code, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(ROOT)
    )
    try:
        assert proc.stdout is not None
        assert readable(proc.stdout, TIMEOUT), "the program said nothing"
        out = json.loads(proc.stdout.readline())
        raw, admin = 1 << 13, 1 << 12
        assert out["before"] & raw
        assert out["before"] & admin
        assert not out["after"] & (raw | admin)
        assert out["nft_alive"] is False
        assert out["bypass_active"] is False
        kind, code_, text = out["new_stack"]
        assert (kind, code_) == ("PermissionError", 1)
        assert "CAP_NET_RAW" in text
        assert out["new_bypass"] is not None
        peer = Peer.create(veth, 4)
        try:

            async def echo(port: int) -> bytes:
                peer.sock.sendto(b"no caps", (veth.ip4_a, port))
                data, _ = await asyncio.wait_for(peer.recv(), TIMEOUT)
                return data

            for port in out["ports"]:
                assert asyncio.run(echo(port)) == b"no caps"
        finally:
            peer.close()
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=TIMEOUT)
