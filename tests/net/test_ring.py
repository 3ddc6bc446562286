"""A real PACKET_MMAP ring in a namespace: datagrams from a kernel UDP socket in B read out of it in A.

Each test opens a :class:`RingReceiver` in namespace A behind the endpoint filter, with an ordinary
UDP socket bound beside it (as the endpoint's guard: no ICMP port-unreachable back to B), sends from a
kernel UDP socket in namespace B, and waits for frames with ``poll()`` on the ring's descriptor.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator

import pytest

from rawtransport.bpf_filter import endpoint_filter
from rawtransport.engine import ARPHRD_ETHER, PACKET_HOST, TP_STATUS_CSUMNOTREADY, FrameMeta
from rawtransport.packet import parse_udp
from rawtransport.ring_setup import RingReceiver
from tests.netns import VethPair, setns

PORT = 40_123
# The kernel vouches for the UDP checksum (RAWPATH.md trap 1): a veth sender leaves it half-done.
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
        # RAWPATH.md trap 1: seen as status 0x9 (USER | CSUMNOTREADY) over veth.
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
