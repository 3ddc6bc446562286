"""What the drop-in must show: a raw echo server a kernel peer cannot tell from a kernel one.

- ARP / ND really happen on the wire (tcpdump in the peer's namespace sees our requests);
- the peer's kernel accepts every frame we build (no UdpInCsumErrors) and our host answers nothing
  with ICMP port-unreachable;
- ``loop.create_raw_datagram_endpoint`` exists on the stdlib loop and on uvloop;
- loopback works; missing CAP_NET_RAW is a PermissionError that says what to do;
- the converted example program works as its stdlib twin does.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uvloop

import rawtransport
from tests.net.conformance import Peer, Recorder, a_ip
from tests.netns import VethPair, setns, tcpdump_b, udp_echo_peer_b

ROOT = Path(__file__).resolve().parents[2]


def snmp_counter(veth: VethPair, table: str, name: str) -> int:
    """A counter from /proc/net/snmp (or snmp6) as namespace B's kernel keeps it."""
    if table == "Udp6":
        text = veth.run_b("cat", "/proc/net/snmp6").stdout
        for line in text.splitlines():
            key, value = line.split()
            if key == f"Udp6{name}":
                return int(value)
        raise KeyError(name)
    lines = [ln.split() for ln in veth.run_b("cat", "/proc/net/snmp").stdout.splitlines()]
    for header, values in itertools.pairwise(lines):
        if header[0] == f"{table}:" and values[0] == f"{table}:":
            return int(values[header.index(name)])
    raise KeyError(name)


def run(loop_kind: str, coro: Any) -> Any:
    return uvloop.run(coro) if loop_kind == "uvloop" else asyncio.run(coro)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("family", [4, 6])
def test_echo_answers_a_kernel_peer_after_a_cold_cache(
    veth: VethPair, family: int, loop_kind: str
) -> None:
    table = "Udp" if family == 4 else "Udp6"
    capture = tcpdump_b(veth, "arp or icmp or icmp6")
    before = snmp_counter(veth, table, "InDatagrams")
    n = 50

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        # The method the package adds to the running loop (stdlib or uvloop).
        t, p = await loop.create_raw_datagram_endpoint(  # type: ignore[attr-defined]
            lambda: Recorder(echo=True), local_addr=(a_ip(veth, family), 0)
        )
        port = t.get_extra_info("sockname")[1]
        peer = Peer.create(veth, family)
        for i in range(n):
            payload = b"%d" % i * (i + 1)
            peer.sock.sendto(payload, (a_ip(veth, family), port))
            data, addr = await peer.recv()
            assert data == payload
            assert addr[:2] == (a_ip(veth, family), port)
        stats: dict[str, Any] = t.get_extra_info("stats")
        t.close()
        await asyncio.wait_for(p.lost, 5)
        peer.close()
        return stats

    with setns(veth.ns_a):
        stats = run(loop_kind, main())
    if family == 4:
        wanted = f"who-has {veth.ip4_b} tell {veth.ip4_a}"
    else:
        # Our neighbour solicitation, to the solicited-node group.
        wanted = f"{veth.mac_a} > 33:33:ff"

    def asked(lines: list[str]) -> bool:
        return any(wanted in ln for ln in lines)

    capture.wait_for_lines(asked)
    lines = capture.stop()
    assert snmp_counter(veth, table, "InCsumErrors") == 0
    assert snmp_counter(veth, table, "InDatagrams") - before == n
    assert stats["delivered"] == n
    assert stats["sent"] == n
    assert stats["neighbour"]["replies_accepted"] == 1
    assert not [ln for ln in lines if "unreachable" in ln], lines


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback(veth: VethPair, host: str) -> None:
    family = socket.AF_INET if ":" not in host else socket.AF_INET6

    async def main() -> list[bytes]:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            lambda: Recorder(echo=True), local_addr=(host, 0)
        )
        port = t.get_extra_info("sockname")[1]
        client = socket.socket(family, socket.SOCK_DGRAM)
        client.settimeout(5)
        got = []
        for payload in (b"a", b"loop" * 100):
            client.sendto(payload, (host, port))
            data, addr = await asyncio.get_running_loop().run_in_executor(
                None, client.recvfrom, 65536
            )
            assert addr[1] == port
            got.append(data)
        client.close()
        t.close()
        await asyncio.wait_for(p.lost, 5)
        return got

    with setns(veth.ns_a):
        assert asyncio.run(main()) == [b"a", b"loop" * 100]


def test_without_cap_net_raw_the_error_says_how_to_grant_it() -> None:
    code = (
        "import asyncio, rawtransport\n"
        "async def main():\n"
        "    try:\n"
        "        await rawtransport.create_raw_datagram_endpoint(\n"
        "            asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0))\n"
        "    except PermissionError as exc:\n"
        "        print('PermissionError', exc)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.startswith("PermissionError"), out.stderr
    assert "CAP_NET_RAW" in out.stdout
    assert "setcap" in out.stdout or "AmbientCapabilities" in out.stdout


@pytest.mark.parametrize("family", [4, 6])
def test_converted_example_talks_to_a_kernel_echo_server(veth: VethPair, family: int) -> None:
    echo = udp_echo_peer_b(veth, family, 7777)
    host = veth.ip4_b if family == 4 else veth.ip6_b
    outputs = {}
    for name in ("udp_client_stdlib.py", "udp_client_raw.py"):
        outputs[name] = veth.run_a(
            sys.executable,
            str(ROOT / "examples" / name),
            host,
            "7777",
            "one",
            "two",
            timeout=30,
        ).stdout
    echo.terminate()
    echo.wait(timeout=5)
    assert outputs["udp_client_raw.py"] == outputs["udp_client_stdlib.py"] == "one\ntwo\n"


def test_examples_differ_by_the_method_name_only() -> None:
    std = (ROOT / "examples" / "udp_client_stdlib.py").read_text().splitlines()
    raw = (ROOT / "examples" / "udp_client_raw.py").read_text().splitlines()
    code = [
        (a, b)
        for a, b in zip(std, raw, strict=True)
        if a != b and not a.startswith(('"""', "python "))
    ]
    docs = [(a, b) for a, b in zip(std, raw, strict=True) if a != b and (a, b) not in code]
    assert code == [
        (
            "    transport, protocol = await loop.create_datagram_endpoint(",
            "    transport, protocol = await loop.create_raw_datagram_endpoint(",
        )
    ]
    assert len(docs) <= 2  # the docstring's first line and usage line name the file


@pytest.mark.parametrize("family", [4, 6])
def test_sendto_sends_the_bytes_of_any_buffer(veth: VethPair, family: int) -> None:
    """``sendto`` takes what ``socket.sendto`` takes: a multi-byte-item view is its bytes (an
    ``array('H')`` of 3 items is 6 bytes), a 2-D view all its rows; the kernel peer gets each
    datagram whole, with a valid checksum. A strided view is refused with ``BufferError`` as
    ``socket.sendto`` refuses it, and the transport stays open."""
    import array

    table = "Udp" if family == 4 else "Udp6"
    words = array.array("H", [1, 2, 3])
    strided = memoryview(b"a-b-c-d")[::2]
    rows = memoryview(b"abcdef").cast("B", (2, 3))
    expected = [words.tobytes(), b"abcdef", b"plain"]

    async def main() -> list[bytes]:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(a_ip(veth, family), 0)
        )
        peer = Peer.create(veth, family)
        try:
            got = []
            dest = (veth.ip4_b if family == 4 else veth.ip6_b, peer.port)
            with pytest.raises(BufferError):
                t.sendto(strided, dest)
            for data in (memoryview(words), rows, memoryview(bytearray(b"plain"))):
                t.sendto(data, dest)
                received, _ = await peer.recv()
                got.append(received)
            assert not t.is_closing()
        finally:
            peer.close()
            t.close()
            await asyncio.wait_for(p.lost, 5)
        return got

    before = snmp_counter(veth, table, "InCsumErrors")
    with setns(veth.ns_a):
        assert asyncio.run(main()) == expected
    assert snmp_counter(veth, table, "InCsumErrors") == before
