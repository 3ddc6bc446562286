"""A real PACKET_MMAP ring in a namespace: datagrams from a kernel UDP socket in B read out of it in A.

Each test opens a :class:`RingReceiver` in namespace A behind the endpoint filter, with an ordinary
UDP socket bound beside it (as the endpoint's guard: no ICMP port-unreachable back to B), sends from a
kernel UDP socket in namespace B, and waits for frames with ``poll()`` on the ring's descriptor.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from rawtransport.bpf_filter import endpoint_filter
from rawtransport.engine import ARPHRD_ETHER, PACKET_HOST, TP_STATUS_CSUMNOTREADY, FrameMeta
from rawtransport.packet import parse_udp
from rawtransport.ring_setup import RingReceiver
from tests.netns import VethPair, readable, setns

PORT = 40_123
# The kernel vouches for the UDP checksum (TP_STATUS_CSUMNOTREADY, tpacket_rcv()): a veth sender leaves it half-done.
_VOUCHED = TP_STATUS_CSUMNOTREADY | 0x80


@contextlib.contextmanager
def _ring(pair: VethPair, **kw: int) -> Iterator[RingReceiver]:
    program = endpoint_filter(
        family=4, local_ip=socket.inet_aton(pair.ip4_a), local_port=PORT, accept_vlan=False
    )
    with setns(pair.ns_a):
        guard = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver = RingReceiver(program, ifindex=pair.ifindex_a, **kw)
    try:
        guard.bind((pair.ip4_a, PORT))
        yield receiver
    finally:
        receiver.close()
        guard.close()


@contextlib.contextmanager
def _sender(pair: VethPair) -> Iterator[socket.socket]:
    with setns(pair.ns_b):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((pair.ip4_b, 0))
        sock.connect((pair.ip4_a, PORT))
        yield sock
    finally:
        sock.close()


def _drain(
    receiver: RingReceiver, want: int, timeout: float = 5.0
) -> list[tuple[bytes, FrameMeta]]:
    """Read frames (copied out) until ``want`` arrived; wait on the descriptor, never sleep."""
    got: list[tuple[bytes, FrameMeta]] = []
    poller = select.poll()
    poller.register(receiver.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while len(got) < want:
        try:
            view, meta = receiver.recv()
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            poller.poll(max(1, int(left * 1000)))
            continue
        got.append((bytes(view), meta))
    return got


def _payloads(pair: VethPair, frames: list[tuple[bytes, FrameMeta]]) -> list[bytes]:
    out = []
    for frame, meta in frames:
        assert meta.ifindex == pair.ifindex_a
        assert meta.pkttype == PACKET_HOST
        assert meta.hatype == ARPHRD_ETHER
        assert not meta.truncated
        # Raises on a bad checksum: an un-vouched frame from a veth sender would fail here.
        d = parse_udp(frame, verify_udp_checksum=not meta.status & _VOUCHED)
        assert d.dst == socket.inet_aton(pair.ip4_a)
        assert d.dst_port == PORT
        out.append(d.payload)
    return out


def _prime(receiver: RingReceiver, tx: socket.socket) -> None:
    # The first datagram waits for ARP in B; once it is here, the rest go straight out.
    tx.send(b"prime")
    assert next(f for f, _ in _drain(receiver, 1)).endswith(b"prime")
    with pytest.raises(BlockingIOError):
        receiver.recv()


@pytest.mark.parametrize(
    ("version", "geometry"),
    [
        # 8 frames of 2 KiB: 300 datagrams lap the ring dozens of times.
        (2, {"block_size": 4096, "block_count": 4, "frame_size": 2048}),
        # Four one-page blocks, ~20 small packets each, handed over on a 2 ms timer when not full.
        (3, {"block_size": 4096, "block_count": 4, "frame_size": 2048, "block_timeout_ms": 2}),
    ],
)
def test_ring_receives_every_datagram_exactly(
    veth: VethPair, version: int, geometry: dict[str, int]
) -> None:
    with _ring(veth, version=version, **geometry) as rx, _sender(veth) as tx:
        _prime(rx, tx)
        sent = []
        burst = 6  # below the ring's capacity either way, so nothing may be dropped
        for i in range(0, 300, burst):
            batch = [f"datagram {n} ".encode() * (1 + n % 7) for n in range(i, i + burst)]
            for payload in batch:
                tx.send(payload)
            sent += batch
            got = _payloads(veth, _drain(rx, len(batch)))
            assert got == batch
        with pytest.raises(BlockingIOError):
            rx.recv()
        packets, drops = rx.statistics()
        assert (packets, drops) == (len(sent) + 1, 0)
        assert rx.ring_corrupt == {}


@pytest.mark.parametrize("version", [2, 3])
def test_csum_not_ready_is_reported(veth: VethPair, version: int) -> None:
    with _ring(veth, version=version, block_size=4096, block_count=2) as rx, _sender(veth) as tx:
        tx.send(b"x" * 100)
        ((frame, meta),) = _drain(rx, 1)
        # CHECKSUM_PARTIAL: seen as status 0x9 (USER | CSUMNOTREADY) over veth.
        assert meta.status & TP_STATUS_CSUMNOTREADY
        assert frame.endswith(b"x" * 100)


@pytest.mark.parametrize("version", [2, 3])
def test_full_ring_drops_and_statistics_accumulate(veth: VethPair, version: int) -> None:
    # V2: 2 frames. V3: 2 blocks of one page; after both fill and retire the queue freezes.
    kw = {"block_size": 4096, "block_count": 2, "frame_size": 2048}
    with _ring(veth, version=version, **kw) as rx, _sender(veth) as tx:
        _prime(rx, tx)
        assert rx.statistics() == (1, 0)
        n = 200
        for i in range(n):
            tx.send(b"%d" % i)
        # Whatever fitted is readable and in order; the rest were dropped and counted by the kernel.
        got = _payloads(veth, _drain(rx, n, timeout=1.0))
        assert 0 < len(got) < n
        assert got == [b"%d" % i for i in range(len(got))]
        packets, drops = rx.statistics()
        assert packets == 1 + n
        assert drops == n - len(got)
        # Clear-on-read in the kernel, accumulated here.
        assert rx.statistics() == (packets, drops)
        assert (rx.kernel_packets, rx.kernel_drops) == (packets, drops)
        if version == 3:
            assert rx.kernel_freezes >= 1
        # After the reader caught up, the ring takes new frames again.
        tx.send(b"after")
        assert _payloads(veth, _drain(rx, 1)) == [b"after"]


def test_frame_larger_than_a_v2_slot_arrives_whole_through_the_copy_path(veth: VethPair) -> None:
    # A 256-byte V2 slot holds 256 - 66 bytes of frame; PACKET_COPY_THRESH queues the whole frame
    # on the socket too (TP_STATUS_COPY), and recv() returns that instead of the clipped slot.
    with (
        _ring(veth, version=2, block_size=4096, block_count=2, frame_size=256) as rx,
        _sender(veth) as tx,
    ):
        tx.send(b"y" * 1000)
        tx.send(b"small")
        ((frame, meta), (small, _)) = _drain(rx, 2)
        assert not meta.truncated
        assert frame.endswith(b"y" * 1000)
        assert small.endswith(b"small")


def test_frame_larger_than_a_v3_block_is_marked_truncated(veth: VethPair) -> None:
    with (
        _ring(veth, version=3, block_size=4096, block_count=2, frame_size=256) as rx,
        _sender(veth) as tx,
    ):
        # Make the veth take a frame bigger than the block.
        veth.run_a("ip", "link", "set", veth.if_a, "mtu", "9000")
        veth.run_b("ip", "link", "set", veth.if_b, "mtu", "9000")
        tx.send(b"y" * 5000)
        ((frame, meta),) = _drain(rx, 1)
        assert meta.truncated
        assert len(frame) < 5000


@pytest.mark.parametrize("version", [2, 3])
def test_views_are_released_at_the_next_recv(veth: VethPair, version: int) -> None:
    with _ring(veth, version=version, block_size=4096, block_count=2) as rx, _sender(veth) as tx:
        tx.send(b"one")
        tx.send(b"two")
        view, _ = _drain_one(rx)
        assert bytes(view).endswith(b"one")
        second, _ = _drain_one(rx)
        with pytest.raises(ValueError, match="released"):
            bytes(view)
        assert bytes(second).endswith(b"two")


def _drain_one(rx: RingReceiver) -> tuple[memoryview, FrameMeta]:
    poller = select.poll()
    poller.register(rx.fileno(), select.POLLIN)
    deadline = time.monotonic() + 5
    while True:
        try:
            return rx.recv()
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame in the ring") from None
            poller.poll(max(1, int(left * 1000)))


@pytest.mark.parametrize("version", [2, 3])
def test_close_with_a_view_still_held(veth: VethPair, version: int) -> None:
    with _ring(veth, version=version, block_size=4096, block_count=2) as rx, _sender(veth) as tx:
        tx.send(b"kept")
        view, _ = _drain_one(rx)
        kept = view[-4:]  # a derived view keeps the mapping alive past close()
        rx.close()
        assert bytes(kept) == b"kept"
        with pytest.raises(OSError, match="closed"):
            rx.recv()
        rx.close()  # idempotent
        assert rx.sock.fileno() == -1
        kept.release()


def test_bad_geometry_is_refused_before_opening_anything() -> None:
    program = endpoint_filter(family=4, local_ip=None, local_port=PORT)
    with pytest.raises(ValueError, match="power-of-two"):
        RingReceiver(program, block_size=4096 * 3, block_count=1)
    with pytest.raises(ValueError, match="version"):
        RingReceiver(program, version=1)


# One datagram sender per CPU, in namespace B: a kernel UDP socket blasting ``count`` datagrams of
# ``tag`` + sequence number (from ``first``) as fast as it can, once told to go (so all start
# together).
_BLAST = r"""
import os, socket, sys
cpu, src, dst, port, first, count, tag = sys.argv[1:]
os.sched_setaffinity(0, {int(cpu)})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.connect((dst, int(port)))
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.readline()
pad = bytes(48)
for i in range(int(first), int(first) + int(count)):
    try:
        s.send(tag.encode() + i.to_bytes(4, "big") + pad)
    except OSError:
        pass  # ENOBUFS under the flood: that one is not sent
"""
_BLAST_FRAME = 14 + 20 + 8 + 1 + 4 + 48  # Ethernet, IPv4, UDP, tag, sequence number, padding
_PER_SENDER = 150_000
#: Bursts until one leaves a slot behind. Here about half did without the fix (17 of 33; the rest
#: drained cleanly), so five all miss it about one run in thirty; with the fix the first burst that
#: does ends the test.
_MAX_BURSTS = 5


def _start_blasters(
    pair: VethPair, cpus: list[int], tags: str, first: int
) -> list[subprocess.Popen[str]]:
    procs = [
        pair.popen_b(
            sys.executable,
            "-c",
            _BLAST,
            str(cpu),
            pair.ip4_b,
            pair.ip4_a,
            str(PORT),
            str(first),
            str(_PER_SENDER),
            tag,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for cpu, tag in zip(cpus, tags, strict=True)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert readable(proc.stdout, 10), "a sender did not start"
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return procs


def _take(view: memoryview, seen: set[bytes]) -> bytes:
    """Note a burst datagram's tag and sequence number (never twice); return the payload."""
    frame = bytes(view)
    if len(frame) == _BLAST_FRAME and frame[42:43] in (b"a", b"b"):
        ident = frame[42:47]
        assert ident not in seen, f"datagram {ident!r} delivered twice"
        seen.add(ident)
    return frame[42:]


def test_ring_recovers_from_slots_left_behind_after_an_overload_burst(
    veth: VethPair,
) -> None:
    """Two CPUs flood a small V2 ring read as an endpoint reads it (issue 14, item 1).

    Under this overload the kernel leaves slots behind (see ring._Resync): without recovery the
    walker ends the burst waiting at one with frames ready after it, while the socket stays
    readable, and a datagram sent afterwards is not delivered until the kernel laps the ring (on
    the 2-CPU VM this was written on, 10 of 10 runs failed so without it). With it, the datagram
    after the burst arrives within milliseconds and the socket goes quiet once drained.
    If a burst leaves no slot behind (a kernel that does not), the test still holds: it then shows
    that the ring delivers at once and never hands a datagram over twice.
    """
    cpus = sorted(os.sched_getaffinity(0))[:2]
    cpus += cpus[:1] * (2 - len(cpus))  # one CPU: both senders on it (the gap happens even so)
    # 256 slots of 2 KiB: each burst laps the ring hundreds of times.
    with (
        _ring(veth, version=2, block_size=1 << 16, block_count=8, frame_size=2048) as rx,
        _sender(veth) as tx,
    ):
        _prime(rx, tx)
        poller = select.poll()
        poller.register(rx.fileno(), select.POLLIN)
        seen: set[bytes] = set()
        delivered = 1  # the prime
        bursts = 0
        for burst in range(_MAX_BURSTS):
            bursts += 1
            procs = _start_blasters(veth, cpus, "ab", burst * _PER_SENDER)
            deadline = time.monotonic() + 60
            while any(proc.poll() is None for proc in procs):
                assert time.monotonic() < deadline, "the senders did not finish"
                try:
                    view, _ = rx.recv()
                except BlockingIOError:
                    poller.poll(10)
                    continue
                _take(view, seen)
                delivered += 1
            assert all(proc.returncode == 0 for proc in procs)
            # A datagram after the burst must come through promptly. Up to three are sent, in
            # case the kernel loses one under the flood's tail; a stranded ring would need far
            # more (the kernel must lap it) and delivers none of them.
            markers = [b"after burst %d, %d" % (burst, k) for k in range(3)]
            arrived = None
            for marker in markers:
                tx.send(marker)
                until = time.monotonic() + 2
                while arrived is None and (left := until - time.monotonic()) > 0:
                    try:
                        view, _ = rx.recv()
                    except BlockingIOError:
                        poller.poll(max(1, int(left * 1000)))
                        continue
                    delivered += 1
                    payload = _take(view, seen)
                    if payload.startswith(b"after burst %d," % burst):
                        arrived = payload
                if arrived is not None:
                    break
            assert arrived is not None, (
                f"no datagram delivered after burst {burst} (resyncs: {rx.ring_resyncs})"
            )
            # Drained, the socket goes quiet: no frame stranded, no readable-but-empty spin.
            quiet = time.monotonic() + 5
            while poller.poll(50):
                assert time.monotonic() < quiet, "the ring stays readable after draining it"
                with contextlib.suppress(BlockingIOError):
                    view, _ = rx.recv()
                    _take(view, seen)
                    delivered += 1
            if rx.ring_resyncs["resyncs"]:
                break  # the kernel left a slot behind and the walker recovered: shown
        packets, drops = rx.statistics()
        # A slot the kernel left behind may have taken its frame with it; never the other way.
        assert delivered + drops <= packets
        assert rx.ring_corrupt == {}
        # For the record (pytest -rP shows it): how often this kernel left slots behind.
        print(
            f"bursts {bursts}, ring_resyncs {rx.ring_resyncs}, kernel packets neither "
            f"delivered nor dropped {packets - drops - delivered}"
        )
