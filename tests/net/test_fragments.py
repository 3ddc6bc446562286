"""Fragmented datagrams and GSO super-frames on the wire, raw endpoint against a kernel UDP socket.

The raw endpoint (port P) and a kernel UDP socket (port K) live side by side in namespace A. A peer
in namespace B sends to both: big datagrams through its kernel UDP socket (the kernel fragments
them), crafted fragment sequences through an ``AF_PACKET`` socket (built with scapy, the
independent oracle), and a GSO super-frame (``UDP_SEGMENT``). Each round ends with a marker datagram
injected on the same path after the frames under test, so "everything before the marker has been
processed" is a condition to wait for, not a sleep. What the kernel socket delivers is the
expectation; the raw endpoint must deliver the same.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import pytest

from tests.net.conformance import Recorder, open_endpoint
from tests.netns import VethPair, setns

TIMEOUT = 10.0
MARKER = b"marker"
SOL_UDP = 17
UDP_SEGMENT = 103


def _ips(veth: VethPair, family: int) -> tuple[str, str]:
    return (veth.ip4_a, veth.ip4_b) if family == 4 else (veth.ip6_a, veth.ip6_b)


class Side:
    """The raw endpoint and the kernel socket in A, and what each has delivered."""

    def __init__(self, veth: VethPair, family: int) -> None:
        self.veth, self.family = veth, family
        self.raw: Any = None
        self.proto: Recorder | None = None
        self.kernel: socket.socket | None = None

    async def open(self, **kw: Any) -> None:
        a, _ = _ips(self.veth, self.family)
        self.raw, self.proto = await open_endpoint("raw", Recorder, local_addr=(a, 0), **kw)
        af = socket.AF_INET if self.family == 4 else socket.AF_INET6
        self.kernel = socket.socket(af, socket.SOCK_DGRAM)
        self.kernel.bind((a, 0))
        self.kernel.setblocking(False)

    @property
    def ports(self) -> tuple[int, int]:
        assert self.kernel is not None
        return int(self.raw.get_extra_info("sockname")[1]), int(self.kernel.getsockname()[1])

    async def until_marker(self) -> tuple[list[bytes], list[bytes]]:
        """What each side delivered before the marker (which must arrive on both)."""
        assert self.proto is not None
        assert self.kernel is not None
        loop = asyncio.get_running_loop()
        raw: list[bytes] = []
        while True:
            data, _ = await asyncio.wait_for(self.proto.data.get(), TIMEOUT)
            if data == MARKER:
                break
            raw.append(data)
        kern: list[bytes] = []
        while True:
            data = await asyncio.wait_for(loop.sock_recv(self.kernel, 70000), TIMEOUT)
            if data == MARKER:
                break
            kern.append(data)
        return raw, kern

    def stats(self) -> dict[str, Any]:
        return dict(self.raw.get_extra_info("stats"))

    async def close(self) -> None:
        if self.kernel is not None:
            self.kernel.close()
        if self.raw is not None and self.proto is not None:
            self.raw.close()
            await asyncio.wait_for(self.proto.lost, TIMEOUT)


def run_in_a(veth: VethPair, main: Any) -> Any:
    with setns(veth.ns_a):
        return asyncio.run(asyncio.wait_for(main(), 60))


# ---------------------------------------------------------------------------------- big datagrams
@pytest.mark.parametrize("family", [4, 6])
def test_kernel_fragmented_datagrams_delivered_whole(veth: VethPair, family: int) -> None:
    biggest = 65507 if family == 4 else 65527
    payloads = [bytes(random.Random(n).randbytes(n)) for n in (3000, biggest)]

    async def main() -> Any:
        side = Side(veth, family)
        await side.open()
        try:
            a, b = _ips(veth, family)
            with setns(veth.ns_b):
                peer = socket.socket(
                    socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM
                )
            with peer:
                peer.bind((b, 0))
                for port in side.ports:
                    for p in payloads:
                        peer.sendto(p, (a, port))
                    peer.sendto(MARKER, (a, port))
                raw, kern = await side.until_marker()
            return raw, kern, side.stats()
        finally:
            await side.close()

    raw, kern, stats = run_in_a(veth, main)
    assert kern == payloads
    assert raw == kern
    r = stats["reassembly"]
    assert r["fragments"] == r["datagrams"] + r["merged"] + r["pending"]
    if family == 4:
        # The filter cannot match the port of a non-first fragment (it has no UDP header), so those
        # sent to the kernel socket's port reach the reassembler too, and wait there without their
        # first fragment until they expire: held, never delivered.
        assert r["datagrams"] == 2
        assert r["pending"] == r["merged"]
    else:
        # The filter passes every IPv6 Fragment header (it cannot reach the UDP header behind it):
        # the kernel socket's two datagrams are reassembled too, then dropped by the stack: no
        # endpoint has their port.
        assert r["datagrams"] == 4
        assert r["pending"] == 0
        assert stats["stack"]["dropped"]["no_socket"] == 2
    assert stats["dropped"] == {}
    assert not any(k.startswith("reassembly_") for k in stats["stack"]["dropped"])


# --------------------------------------------------------------------------- crafted fragments
# Shapes over a 128-byte UDP datagram: (offset, length, more) in arrival order; what is missing is
# then sent in order. The kernel's verdict is the expectation; EXPECTED records it as we read
# ip_frag_queue()/inet_frag_queue_insert(), so a kernel change is noticed too.
SHAPES: dict[str, list[tuple[int, int, bool]]] = {
    "clean_shuffled": [(64, 32, True), (0, 32, True), (96, 32, False), (32, 32, True)],
    "exact_duplicates": [(0, 64, True), (0, 64, True), (64, 64, False), (64, 64, False)],
    "overlap_tail": [(0, 32, True), (16, 32, True)],
    "overlap_front": [(32, 32, True), (16, 32, True)],
    "superset": [(32, 16, True), (16, 48, True)],
    "inside_one_run": [(0, 32, True), (32, 32, True), (16, 32, True)],
    "across_touching_runs": [(32, 32, True), (0, 32, True), (16, 32, True)],
    "inside_middle_fragment": [(96, 32, False), (16, 48, True), (32, 16, True)],
    "two_different_lasts": [(0, 32, True), (96, 32, False), (96, 24, False)],
    "empty_last": [(0, 32, True), (64, 0, False)],
}
V4_ONLY = {"trimmed_to_8": [(0, 37, True), (32, 96, False)]}
V6_ONLY = {"misaligned_dropped": [(0, 37, True), (32, 96, False)]}
DELIVERED = {"clean_shuffled", "exact_duplicates", "inside_one_run", "inside_middle_fragment"}
DELIVERED |= {"trimmed_to_8"}


def _segment(family: int, src: str, dst: str, dport: int, payload: bytes) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    ip: Any = IP(src=src, dst=dst) if family == 4 else IPv6(src=src, dst=dst)
    return bytes(ip / UDP(sport=40000, dport=dport) / payload)[20 if family == 4 else 40 :]


def _frame(
    veth: VethPair, family: int, ident: int, offset: int, data: bytes, more: bool, nh: int = 17
) -> bytes:
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    eth = Ether(src=veth.mac_b, dst=veth.mac_a)
    a, b = _ips(veth, family)
    if family == 4:
        ip = IP(src=b, dst=a, id=ident, flags="MF" if more else 0, frag=offset // 8, proto=17)
        return bytes(eth / ip / Raw(data))
    fh = IPv6ExtHdrFragment(nh=nh, offset=offset // 8, m=int(more), id=ident)
    return bytes(eth / IPv6(src=b, dst=a) / fh / Raw(data))


def _shape_frames(
    veth: VethPair, family: int, ident: int, seg: bytes, shape: list[tuple[int, int, bool]]
) -> list[bytes]:
    frames = [_frame(veth, family, ident, o, seg[o : o + n], m) for o, n, m in shape]
    covered: set[int] = set()
    for o, n, _ in shape:
        covered |= set(range(o, o + n))
    frames += [
        _frame(veth, family, ident, o, seg[o : o + 8], o + 8 < len(seg))
        for o in range(0, len(seg), 8)
        if not covered >= set(range(o, o + 8))
    ]
    return frames


def _marker(veth: VethPair, family: int, dport: int, payload: bytes = MARKER) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    a, b = _ips(veth, family)
    ip: Any = IP(src=b, dst=a) if family == 4 else IPv6(src=b, dst=a)
    return bytes(
        Ether(src=veth.mac_b, dst=veth.mac_a) / ip / UDP(sport=40000, dport=dport) / payload
    )


def _inject(veth: VethPair, frames: list[bytes]) -> None:
    with setns(veth.ns_b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with s:
        s.bind((veth.if_b, 0))
        for f in frames:
            s.send(f)


@pytest.mark.parametrize("family", [4, 6])
def test_crafted_fragments_match_the_kernel(veth: VethPair, family: int) -> None:
    shapes = {**SHAPES, **(V4_ONLY if family == 4 else V6_ONLY)}
    a, b = _ips(veth, family)

    async def main() -> Any:
        side = Side(veth, family)
        await side.open()
        try:
            frames: list[bytes] = []
            # Idents differ between the two ports' rounds: a queue one round leaves behind (after a
            # discard, say) must not take in the other round's fragments.
            for pi, port in enumerate(side.ports):
                for i, (name, shape) in enumerate(sorted(shapes.items())):
                    seg = _segment(family, b, a, port, name.encode().ljust(120, b"."))
                    assert len(seg) == 128
                    frames += _shape_frames(veth, family, 1000 + 100 * pi + i, seg, shape)
                # A reassembled datagram whose UDP checksum is wrong: both drop it.
                bad = bytearray(_segment(family, b, a, port, b"bad_checksum".ljust(120, b".")))
                bad[100] ^= 0xFF
                frames += _shape_frames(veth, family, 2000 + pi, bytes(bad), [(0, 64, True)])
                if family == 6:
                    # A first fragment without the UDP header behind a destination options header.
                    dest = bytes([17, 0, 1, 4, 0, 0, 0, 0])
                    seg = dest + _segment(family, b, a, port, b"tiny_first".ljust(112, b"."))
                    frames.append(_frame(veth, family, 3000 + pi, 0, seg[:8], True, nh=60))
                    frames.append(_frame(veth, family, 3000 + pi, 8, seg[8:], False, nh=60))
            _inject(veth, frames + [_marker(veth, family, p) for p in side.ports])
            raw, kern = await side.until_marker()
            return raw, kern, side.stats()
        finally:
            await side.close()

    raw, kern, stats = run_in_a(veth, main)
    names = sorted(d.rstrip(b".").decode() for d in kern)
    assert names == sorted(DELIVERED & set(shapes)), "the kernel's verdicts changed"
    assert sorted(raw) == sorted(kern)
    # The reassembler is the stack's (shared by its endpoints, as the kernel's ip_defrag() is):
    # its drops are counted there; the UDP checks of a whole datagram are the endpoint's.
    dropped = stats["stack"]["dropped"]
    assert dropped["reassembly_overlap"] >= 4
    assert dropped["reassembly_bad_end"] >= 1
    assert dropped["reassembly_empty_fragment"] >= 1
    assert stats["dropped"]["udp_bad_checksum"] == 1
    if family == 6:
        # Over IPv6 the filter passes the kernel port's fragments too (see above): twice the
        # reassembler's drops, and the kernel port's bad datagram is the stack's, for no socket.
        assert dropped["reassembly_tiny_first"] == 2
        assert dropped["reassembly_misaligned"] == 2
        assert dropped["no_socket"] >= 1


# --------------------------------------------------------------- where the kernel held firm
PACED = b"paced"


@pytest.mark.parametrize("family", [4, 6])
def test_fragment_edge_cases_match_the_kernel(veth: VethPair, family: int) -> None:
    """Issue 14, item 6, each against a kernel socket fed the same frames:

    (a) a 32000-byte datagram in 8-byte fragments and a 59200-byte one in 16-byte fragments are
    delivered (the kernel has no cap per datagram; its 4 MiB per family holds them);
    (b) IPv4: a fragment ending past 65515, then a datagram under the same id: nothing is delivered
    (the queue holds until the datagram's end disagrees; ip_frag_reasm() judges the size whole);
    (c) IPv6: a first fragment whose destination options say discard, then a clean first fragment
    and the rest: nothing is delivered (the clean one is a duplicate; the options are judged whole).

    The tiny fragments go in chunks, each followed by a datagram to the raw endpoint that it must
    receive before the next chunk, so the ring never overflows while the injector holds the loop.
    """
    a, b = _ips(veth, family)

    async def main() -> Any:
        side = Side(veth, family)
        await side.open()
        assert side.kernel is not None
        # The kernel charges a reassembled datagram its fragments' truesize: room for it.
        side.kernel.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
        try:
            frames: list[bytes] = []
            for pi, port in enumerate(side.ports):
                ident = 4000 + 100 * pi
                for j, (total, size) in enumerate(((32000, 8), (59200, 16))):
                    seg = _segment(family, b, a, port, bytes([0x61 + j]) * (total - 8))
                    frames += [
                        _frame(veth, family, ident + j, o, seg[o : o + size], o + size < total)
                        for o in range(0, total, size)
                    ]
                seg = _segment(family, b, a, port, b"poisoned".ljust(120, b"."))
                if family == 4:
                    frames.append(_frame(veth, family, ident + 2, 65000, bytes(600), True))
                    frames += _shape_frames(veth, family, ident + 2, seg, [(0, 64, True)])
                else:
                    discard = bytes([17, 0, 0x5E, 4, 0, 0, 0, 0])  # unknown option: discard
                    padn = bytes([17, 0, 1, 4, 0, 0, 0, 0])
                    bad, clean = discard + seg, padn + seg
                    frames += [
                        _frame(veth, family, ident + 2, 0, bad[:64], True, nh=60),
                        _frame(veth, family, ident + 2, 0, clean[:64], True, nh=60),
                        _frame(veth, family, ident + 2, 64, clean[64:], False, nh=60),
                    ]
            paced = _marker(veth, family, side.ports[0], PACED)
            assert side.proto is not None
            early: list[bytes] = []
            for i in range(0, len(frames), 500):
                _inject(veth, [*frames[i : i + 500], paced])
                while (
                    data := (await asyncio.wait_for(side.proto.data.get(), TIMEOUT))[0]
                ) != PACED:
                    early.append(data)
            _inject(veth, [_marker(veth, family, p) for p in side.ports])
            raw, kern = await side.until_marker()
            return early + raw, kern, side.stats()
        finally:
            await side.close()

    raw, kern, stats = run_in_a(veth, main)
    sizes = sorted(len(d) for d in kern)
    assert sizes == [31992, 59192], "the kernel's verdicts changed"
    assert sorted(raw) == sorted(kern)
    dropped = stats["stack"]["dropped"]
    if family == 4:
        assert dropped["reassembly_bad_end"] >= 3
    else:
        # Both ports' datagrams reach the reassembler over IPv6 (see above); a datagram led by
        # extension headers is judged by the stack before any endpoint is looked up.
        assert dropped["reassembly_duplicate"] == 2
        assert dropped["ipv6_option"] == 2


# ---------------------------------------------------------------------------------------- GSO
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("rx_mode", ["recv", "ring"])
def test_gso_super_frame_never_delivered_concatenated(
    veth: VethPair, family: int, rx_mode: str
) -> None:
    """A 5000-byte send with UDP_SEGMENT=1000: the kernel socket gets five datagrams; the raw
    endpoint (no PACKET_VNET_HDR yet, so no segment size) drops the one 5042/5062-byte frame it
    sees and counts it ``gso_unsplit``."""
    payload = bytes(random.Random(7).randbytes(5000))

    async def main() -> Any:
        side = Side(veth, family)
        await side.open(rx_mode=rx_mode)
        try:
            a, b = _ips(veth, family)
            with setns(veth.ns_b):
                peer = socket.socket(
                    socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM
                )
            with peer:
                peer.bind((b, 0))
                peer.setsockopt(SOL_UDP, UDP_SEGMENT, 1000)
                for port in side.ports:
                    peer.sendto(payload, (a, port))
                    peer.sendto(MARKER, (a, port))  # not over gso_size: an ordinary datagram
                raw, kern = await side.until_marker()
            return raw, kern, side.stats()
        finally:
            await side.close()

    raw, kern, stats = run_in_a(veth, main)
    assert kern == [payload[i : i + 1000] for i in range(0, 5000, 1000)]
    assert raw == []
    assert stats["dropped"]["gso_unsplit"] == 1


@pytest.mark.parametrize("family", [4, 6])
def test_split_gso_udp_matches_the_kernel_segments(veth: VethPair, family: int) -> None:
    """What ``PACKET_VNET_HDR`` would give the raw path, split by ``split_gso_udp``: the same five
    datagrams the kernel socket receives, each with checksums that verify."""
    from rawtransport.packet import parse_udp
    from rawtransport.reassembly import (
        VIRTIO_NET_HDR_GSO_UDP_L4,
        parse_vnet_header,
        split_gso_udp,
    )

    payload = bytes(random.Random(8).randbytes(5000))
    a, b = _ips(veth, family)
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with setns(veth.ns_a):
        tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        kernel = socket.socket(af, socket.SOCK_DGRAM)
    with setns(veth.ns_b):
        peer = socket.socket(af, socket.SOCK_DGRAM)
    with tap, kernel, peer:
        tap.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR: before bind
        tap.bind((veth.if_a, 3))  # ETH_P_ALL
        tap.settimeout(TIMEOUT)
        kernel.bind((a, 0))
        kernel.settimeout(TIMEOUT)
        peer.bind((b, 0))
        peer.setsockopt(SOL_UDP, UDP_SEGMENT, 1000)
        peer.sendto(payload, (a, kernel.getsockname()[1]))
        kern = [kernel.recv(70000) for _ in range(5)]
        while True:
            data = tap.recv(70000)
            vnet, frame = parse_vnet_header(data), data[10:]
            if vnet.gso_type == VIRTIO_NET_HDR_GSO_UDP_L4:
                break
    assert vnet.gso_size == 1000
    assert vnet.hdr_len == (42 if family == 4 else 62)
    segments = split_gso_udp(frame, vnet.gso_size)
    got = [parse_udp(s) for s in segments]  # verifies every checksum
    assert [d.payload for d in got] == kern == [payload[i : i + 1000] for i in range(0, 5000, 1000)]
