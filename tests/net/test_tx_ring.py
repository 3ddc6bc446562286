"""The transmit ring in namespaces: bursts leave with one kick, in order, with flow control.

The raw endpoint lives in namespace A; the receiver is a kernel UDP socket in B (it verifies every
checksum, so a frame mangled in the ring would be dropped and show up as a missing datagram). Kicks
are counted by the endpoint (``stats["tx_kicks"]``) and, once, by strace on a subprocess.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rawtransport
import rawtransport.stack
from rawtransport.engine import OutgoingFrame
from tests.net.conformance import Peer, Recorder
from tests.netns import VethPair, setns

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0
SO_RCVBUFFORCE = 33


def in_a(veth: VethPair, main: Callable[[], Any]) -> Any:
    """Run ``main`` on a fresh asyncio loop with every socket it opens in namespace A."""
    with setns(veth.ns_a):
        return asyncio.run(asyncio.wait_for(main(), 60))


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Await a condition, yielding to the loop between looks (a condition wait, not a sleep)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


def big_peer(veth: VethPair) -> Peer:
    peer = Peer.create(veth, 4)
    # Room for every burst at the receiver (root may force it): the tests are about our side.
    peer.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    return peer


def receive_all(peer: Peer, n: int) -> list[bytes]:
    """Read ``n`` datagrams (blocking, with the peer's timeout): call once the sender is done."""
    return [peer.sock.recvfrom(4096)[0] for _ in range(n)]


async def warm(t: asyncio.DatagramTransport, peer: Peer) -> None:
    """Resolve the neighbour first, so a burst is only datagrams."""
    t.sendto(b"warm", (peer.sock.getsockname()[0], peer.port))
    data, _ = await peer.recv()
    assert data == b"warm"


def payloads(n: int, size: int = 64) -> list[bytes]:
    return [(b"%06d" % i).ljust(size, b".") for i in range(n)]


# ---------------------------------------------------------------------------------- batching
# (burst, kicks, bytes still queued when the callback returns). 64-byte datagrams, 512-slot
# rings, the default 64 KiB high-water mark: 400 datagrams are one deferred kick; 1500 cross the
# mark at the 1025th (65 600 bytes), which is written at once (3 ring loads: 512 + 512 + 1), and
# the last 475 (30 400 bytes) leave with one more kick at the end of the iteration.
BURSTS = [(400, 1, 400 * 64), (1500, 4, 475 * 64)]


@pytest.mark.parametrize("qdisc_bypass", [False, True])
@pytest.mark.parametrize(("n", "expected_kicks", "expected_queued"), BURSTS)
def test_a_burst_from_one_callback_leaves_with_one_kick(
    veth: VethPair, n: int, expected_kicks: int, expected_queued: int, qdisc_bypass: bool
) -> None:
    async def main() -> tuple[int, int, list[bytes]]:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(veth.ip4_a, 0), qdisc_bypass=qdisc_bypass, tx_mode="ring"
        )
        peer = big_peer(veth)
        await warm(t, peer)
        before = t.get_extra_info("stats")
        dest = (veth.ip4_b, peer.port)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def burst() -> None:
            for data in payloads(n):
                t.sendto(data, dest)
            done.set_result(t.get_write_buffer_size())

        loop.call_soon(burst)
        queued = await done
        await wait_until(lambda: t.get_write_buffer_size() == 0)
        after = t.get_extra_info("stats")
        got = receive_all(peer, n)
        t.close()
        await p.lost
        peer.close()
        assert "error" not in [c[0] for c in p.calls]
        return queued, after["tx_kicks"] - before["tx_kicks"], got

    queued, kicks, got = in_a(veth, main)
    assert got == payloads(n)  # every datagram, in order, checksums verified by the kernel
    assert (kicks, queued) == (expected_kicks, expected_queued)


def test_sends_from_separate_callbacks_make_separate_kicks(veth: VethPair) -> None:
    """The flush is per loop iteration: two callbacks, two kicks (not a timer that merges them)."""

    async def main() -> int:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(veth.ip4_a, 0), tx_mode="ring"
        )
        peer = big_peer(veth)
        await warm(t, peer)
        before = int(t.get_extra_info("stats")["tx_kicks"])
        for data in payloads(3):
            t.sendto(data, (veth.ip4_b, peer.port))
            await wait_until(lambda: t.get_write_buffer_size() == 0)
        kicks = int(t.get_extra_info("stats")["tx_kicks"]) - before
        assert receive_all(peer, 3) == payloads(3)
        t.close()
        await p.lost
        peer.close()
        return kicks

    assert in_a(veth, main) == 3


def test_direct_mode_sends_at_once_without_kicks(veth: VethPair) -> None:
    async def main() -> tuple[int, Any]:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(veth.ip4_a, 0), tx_mode="direct"
        )
        peer = big_peer(veth)
        await warm(t, peer)
        for data in payloads(50):
            t.sendto(data, (veth.ip4_b, peer.port))
        size = t.get_write_buffer_size()  # nothing deferred: every send() already happened
        assert receive_all(peer, 50) == payloads(50)
        stats = t.get_extra_info("stats")
        t.close()
        await p.lost
        peer.close()
        return size, stats.get("tx_kicks")

    assert in_a(veth, main) == (0, None)


def test_bad_tx_mode_is_a_value_error(veth: VethPair) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="tx_mode"):
            await rawtransport.create_raw_datagram_endpoint(
                Recorder, local_addr=(veth.ip4_a, 0), tx_mode="mmap"
            )

    in_a(veth, main)


# ------------------------------------------------------------------------------ flow control
def test_ring_full_is_backpressure_then_everything_arrives_in_order(
    veth: VethPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow qdisc with room to hold frames: each one keeps its ring slot SENDING until it leaves,
    # so a 16-slot ring fills long before the send buffer does.
    probe = veth.run_a(
        *("tc", "qdisc", "replace", "dev", veth.if_a, "root", "tbf"),
        *("rate", "2mbit", "burst", "1600", "limit", "200000"),
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"tbf qdisc not available: {probe.stderr.strip()}")
    monkeypatch.setattr(rawtransport.stack, "TX_RING_SLOTS", 16)
    n = 150

    async def main() -> tuple[dict[str, Any], list[tuple[Any, ...]], list[bytes]]:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(veth.ip4_a, 0), tx_mode="ring"
        )
        peer = big_peer(veth)
        await warm(t, peer)
        for data in payloads(n, 1000):
            t.sendto(data, (veth.ip4_b, peer.port))
        await wait_until(lambda: ("pause",) in p.calls)
        await wait_until(lambda: t.get_write_buffer_size() == 0, 30)
        stats = t.get_extra_info("stats")
        got = receive_all(peer, n)
        t.close()
        await p.lost
        peer.close()
        return stats, p.calls, got

    stats, calls, got = in_a(veth, main)
    kinds = [c[0] for c in calls]
    assert got == payloads(n, 1000)  # nothing accepted was lost or reordered
    assert stats["tx_ring_full"] > 0
    assert kinds.count("pause") == kinds.count("resume") >= 1
    assert "error" not in kinds


# ------------------------------------------------------------------------------ wrong format
@pytest.mark.parametrize("tx_mode", ["ring", "direct"])
def test_refused_frames_are_errors_and_counted_the_rest_leaves_in_order(
    veth: VethPair, tx_mode: str
) -> None:
    """A frame shorter than an Ethernet header (EINVAL) and one longer than the MTU (EMSGSIZE)
    among good ones: the kernel marks their slots TP_STATUS_WRONG_FORMAT; they are reported as
    send() would report them, and every good frame still leaves, in order."""

    async def main() -> tuple[list[int], dict[str, Any], list[bytes]]:
        t, p = await rawtransport.create_raw_datagram_endpoint(
            Recorder, local_addr=(veth.ip4_a, 0), tx_mode=tx_mode
        )
        assert isinstance(t, rawtransport.RawDatagramTransport)
        peer = big_peer(veth)
        await warm(t, peer)
        ep = t._ep  # white box: frames the engine would never build
        for data in payloads(4):
            ep.send(data, (veth.ip4_b, peer.port), asyncio.get_running_loop().time())
        good = ep.engine.frames_to_send()
        ifindex = good[0].ifindex
        short = OutgoingFrame(b"\x00" * 10, ifindex, 0)
        long = OutgoingFrame(good[0].frame[:14] + b"\x00" * 1600, ifindex, 0)
        frames = [good[0], short, good[1], good[2], long, good[3]]
        unsent, errors, congested = ep.write_frames(frames)
        assert (unsent, congested) == ([], False)
        stats = t.get_extra_info("stats")
        got = receive_all(peer, 4)
        t.close()
        await p.lost
        peer.close()
        return [int(e.errno or 0) for e in errors], stats, got

    codes, stats, got = in_a(veth, main)
    assert codes == [errno.EINVAL, errno.EMSGSIZE]
    assert got == payloads(4)
    if tx_mode == "ring":
        assert stats["tx_wrong_format"] == 2
        assert stats["tx_kicks"] >= 3  # the warm-up, then one kick per refusal to go on
    else:
        assert "tx_wrong_format" not in stats


# ------------------------------------------------------------------------------ syscalls
_CHILD = textwrap.dedent(
    """
    import asyncio, socket, sys
    import rawtransport

    async def main():
        dst, port, n, mode, ifname = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
        loop = asyncio.get_running_loop()
        t, _ = await rawtransport.create_raw_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("0.0.0.0", 0), tx_mode=mode
        )
        t.sendto(b"warm", (dst, port))
        fd = t._ep.sender_fileno(socket.if_nametoindex(ifname))
        print("READY", fd, flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        done = loop.create_future()

        def burst():
            for i in range(n):
                t.sendto(b"%06d" % i + b"." * 58, (dst, port))
            done.set_result(None)

        loop.call_soon(burst)
        await done
        while t.get_write_buffer_size():
            await asyncio.sleep(0.001)
        print("DONE", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        t.close()

    asyncio.run(main())
    """
)


_STRACE = ("strace", "-f", "-e", "trace=sendto,send,sendmsg,sendmmsg")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.parametrize(("tx_mode", "expected"), [("ring", 1), ("direct", 40)])
def test_strace_counts_one_send_syscall_for_a_burst(
    veth: VethPair, tmp_path: Path, tx_mode: str, expected: int
) -> None:
    n = 40
    if subprocess.run(["strace", "-V"], capture_output=True, check=False).returncode != 0:
        pytest.skip("strace is not installed")
    peer = big_peer(veth)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = veth.popen_a(
        *(sys.executable, "-c", _CHILD, veth.ip4_b, str(peer.port), str(n), tx_mode, veth.if_a),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    trace = tmp_path / "strace.out"
    tracer: subprocess.Popen[str] | None = None
    try:
        assert child.stdin is not None
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready[:1] == ["READY"], ready
        fd = int(ready[1])
        assert peer.sock.recvfrom(100)[0] == b"warm"
        tracer = subprocess.Popen(
            [*_STRACE, "-o", str(trace), "-p", str(child.pid)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tracer.stderr is not None
        # strace says "Process N attached" once it traces: only then may the burst start.
        deadline = time.monotonic() + TIMEOUT
        while "attached" not in tracer.stderr.readline():
            assert time.monotonic() < deadline, "strace did not attach"
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "DONE"
        got = receive_all(peer, n)
        _stop(tracer)
        child.stdin.write("quit\n")
        child.stdin.flush()
        child.wait(TIMEOUT)
    finally:
        if tracer is not None:
            _stop(tracer)
            assert tracer.stderr is not None
            tracer.stderr.close()
        _stop(child)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
        peer.close()
    assert got == [b"%06d" % i + b"." * 58 for i in range(n)]
    on_fd = [ln for ln in trace.read_text().splitlines() if re.search(rf"\bsend\w*\({fd}, ", ln)]
    assert len(on_fd) == expected, on_fd
    if tx_mode == "ring":
        assert ', "", 0, ' in on_fd[0]  # the kick: an empty send() on the ring socket
