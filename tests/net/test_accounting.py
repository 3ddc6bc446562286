"""The accounting invariant under a matching flood, with the event loop still serving other tasks.

Every frame the in-kernel filter lets through is counted by the kernel (``PACKET_STATISTICS``:
``tp_packets`` counts it, ``tp_drops`` too when the queue or ring was full). Each of those the
loop's raw stack read ends exactly one way: taken by the endpoint (then delivered, or dropped and
counted by reason), or handed to the neighbour resolver (counted there). So, once everything has
been read::

    injected == kernel_packets == delivered + dropped_total + neighbour frames + kernel_drops

The flood mixes valid datagrams, datagrams the engine must drop (bad UDP or IP header checksum,
martian source) and unsolicited ARP replies, all of which pass the filter. It comes in two waves:
one while the loop is busy (so the kernel's queue overflows and ``kernel_drops`` is exercised) and
one from another thread while the loop runs, during which a ticker task must keep running and no
loop iteration may deliver more than the transport's read budget.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import rawtransport
from rawtransport import stack_loop
from tests.net.conformance import neighbour_frames
from tests.net.test_differential import accounted, stack_accounted
from tests.netns import VethPair, setns
from tests.test_receive_checks import ether, v4frame

TIMEOUT = 20.0
WAVE = 3000  # frames per wave


class Counting(asyncio.DatagramProtocol):
    """Counts datagrams, remembering the most delivered between two ticks of the ticker."""

    def __init__(self) -> None:
        self.n = 0
        self.since_tick = 0
        self.max_burst = 0
        self.errors: list[Exception] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.n += 1
        self.since_tick += 1
        self.max_burst = max(self.max_burst, self.since_tick)

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


@dataclass
class Flood:
    """The frames of one wave, cycling through the kinds; ``sent`` counts them by kind."""

    frames: list[tuple[str, bytes]]
    sent: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, veth: VethPair, port: int, n: int) -> Flood:
        a4, b4 = socket.inet_aton(veth.ip4_a), socket.inet_aton(veth.ip4_b)
        mac_a = bytes.fromhex(veth.mac_a.replace(":", ""))
        mac_b = bytes.fromhex(veth.mac_b.replace(":", ""))
        eth = {"dst": mac_a, "src": mac_b}
        frames = []
        for i in range(n):
            udp = {"sport": 1024 + i % 5000, "dport": port}
            kind = ("valid", "valid", "valid", "bad_udp", "bad_ip", "martian", "arp")[i % 7]
            if kind == "valid":
                f = v4frame(b"%d" % i, src=b4, dst=a4, udp_kw=udp, eth_kw=eth)
            elif kind == "bad_udp":
                f = v4frame(b"%d" % i, src=b4, dst=a4, udp_kw={**udp, "csum": "bad"}, eth_kw=eth)
            elif kind == "bad_ip":
                f = v4frame(b"%d" % i, src=b4, dst=a4, udp_kw=udp, eth_kw=eth, hcsum="bad")
            elif kind == "martian":
                lo = bytes([127, 0, 0, 1])
                f = v4frame(b"%d" % i, src=lo, dst=a4, udp_kw=udp, eth_kw=eth)
            else:
                # An ARP reply nobody asked for (the filter passes replies for our address).
                sender = bytes([0x02, 0xAA, 0, 0, i >> 8 & 0xFF, i & 0xFF])
                body = b"\x00\x01\x08\x00\x06\x04\x00\x02" + sender + b4 + mac_a + a4
                f = ether(body, 0x0806, dst=mac_a, src=sender)
            frames.append((kind, f))
        return cls(frames)

    def send(self, sock: socket.socket, halfway: Callable[[], object] | None = None) -> None:
        """Send the wave; ``halfway`` (if given) is called once half of it is out."""
        for i, (kind, frame) in enumerate(self.frames):
            if i == len(self.frames) // 2 and halfway is not None:
                halfway()
            sock.send(frame)
            self.sent[kind] = self.sent.get(kind, 0) + 1


@pytest.mark.parametrize("rx_mode", ["ring", "recv"])
def test_every_frame_is_accounted_for_and_the_loop_keeps_running(
    veth: VethPair, rx_mode: str
) -> None:
    with setns(veth.ns_b):
        injector = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    injector.bind((veth.if_b, 0))

    async def main() -> tuple[dict[str, Any], Counting, Flood, Flood, int, int, bool]:
        loop = asyncio.get_running_loop()
        loop_errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Counting, local_addr=(veth.ip4_a, 0), rx_mode=rx_mode, rcvbuf=65536
        )
        assert isinstance(t, rawtransport.RawDatagramTransport)
        port = t.get_extra_info("sockname")[1]
        busy = Flood.build(veth, port, WAVE)
        live = Flood.build(veth, port, WAVE)
        # Wave 1: the loop is busy in this coroutine while the kernel queues (and drops).
        busy.send(injector)
        # Wave 2: from another thread, while a ticker task shares the loop with the reader.
        ticks_during = 0
        stop = False
        flooding = threading.Event()
        done = threading.Event()
        # Set by a tick that came after the reader delivered some of wave 2: the loop served the
        # ticker while the reader had frames. The flood waits for it halfway (a bounded wait), so
        # that how the threads are scheduled cannot decide whether a tick falls inside the flood.
        interleaved = threading.Event()
        start = [0]

        async def ticker() -> None:
            nonlocal ticks_during
            p.since_tick = p.max_burst = 0  # measured from here on: one loop iteration per tick
            while not stop:
                if flooding.is_set() and not done.is_set():
                    ticks_during += 1
                    if p.n > start[0]:
                        interleaved.set()
                p.since_tick = 0
                await asyncio.sleep(0)

        def flood() -> None:
            start[0] = p.n
            flooding.set()
            live.send(injector, halfway=lambda: interleaved.wait(TIMEOUT))
            done.set()

        tick_task = asyncio.create_task(ticker())
        thread = threading.Thread(target=flood)
        thread.start()
        async with asyncio.timeout(TIMEOUT):
            while not done.is_set():
                await asyncio.sleep(0.001)
        thread.join()
        total = len(busy.frames) + len(live.frames)

        def settled() -> bool:
            s = t.get_extra_info("stats")
            read = s["stack"]["received"]
            return bool(s["kernel_packets"] >= total and read + s["kernel_drops"] >= total)

        async with asyncio.timeout(TIMEOUT):
            while not settled():
                await asyncio.sleep(0.005)
        stop = True
        await tick_task
        stats = t.get_extra_info("stats")
        budget = stack_loop.READ_BUDGET
        t.close()
        assert loop_errors == []
        return stats, p, busy, live, ticks_during, budget, interleaved.is_set()

    with setns(veth.ns_a):
        stats, proto, busy, live, ticks, budget, interleaved_seen = asyncio.run(main())
    injector.close()

    injected = len(busy.frames) + len(live.frames)
    stack = stats["stack"]
    neighbour = stats["neighbour"]
    taken_by_neighbour = neighbour_frames(neighbour)
    dropped = stats["dropped"]
    # The kernel saw exactly what was injected, and the loop's stack read all it kept.
    assert stats["kernel_packets"] == injected
    assert stack["received"] + stats["kernel_drops"] == injected
    # Every frame read ended one way, and each way is counted: the datagrams in the endpoint,
    # the ARP replies in the stack's neighbour table, nothing else at the stack.
    assert stack["received"] == stats["received"] + taken_by_neighbour
    assert stack["received"] == stack_accounted([stats])
    assert stack["dropped_total"] == 0, stack
    assert stats["received"] == stats["delivered"] + stats["dropped_total"]
    assert stats["received"] == accounted(stats)
    assert stats["dropped_total"] == sum(dropped.values())
    assert proto.n == stats["delivered"]
    assert proto.errors == []
    # Each drop is under the reason its kind of frame earns, and no more than were sent of it.
    sent = {k: busy.sent.get(k, 0) + live.sent.get(k, 0) for k in ("valid", "bad_udp", "bad_ip",
                                                                   "martian", "arp")}  # fmt: skip
    assert set(dropped) <= {"udp_bad_checksum", "ipv4_bad_checksum", "martian_source"}, dropped
    assert dropped.get("udp_bad_checksum", 0) <= sent["bad_udp"]
    assert dropped.get("ipv4_bad_checksum", 0) <= sent["bad_ip"]
    assert dropped.get("martian_source", 0) <= sent["martian"]
    assert taken_by_neighbour == neighbour["unsolicited"] <= sent["arp"]
    assert stats["delivered"] <= sent["valid"]
    # With nothing lost in the kernel, the split is exact.
    if stats["kernel_drops"] == 0:
        assert stats["delivered"] == sent["valid"]
        assert neighbour["unsolicited"] == sent["arp"]
    # Wave 1 overflowed a 64 KiB queue while the loop was busy: the kernel's drops are counted.
    assert rx_mode == "ring" or stats["kernel_drops"] > 0
    # The loop kept serving another task during wave 2, and no iteration read past the budget.
    assert ticks > 0
    assert interleaved_seen
    assert proto.max_burst <= budget
