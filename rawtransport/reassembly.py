"""IPv4/IPv6 fragment reassembly and GSO super-frame splitting for the raw receive path.

Pure (bytes and ``now`` in, bytes out): no socket, clock or event loop.

A kernel UDP socket receives a datagram the peer sent in fragments because ``ip_local_deliver()``
(``ip_defrag()``, ``net/ipv4/ip_fragment.c``) and ``ipv6_frag_rcv()`` (``net/ipv6/reassembly.c``)
put it back together first. :class:`Reassembler` does that job with the kernel's defences:

- Queues are keyed like the kernel's: IPv4 by (source, destination, protocol, identification)
  (``struct ipq``, RFC 791), IPv6 by (source, destination, identification) plus the interface for
  link-local and multicast destinations (``struct frag_queue``, RFC 8200 4.5).
- Overlaps: ``inet_frag_queue_insert()`` semantics, exactly. A fragment lying wholly inside one
  run of fragments already held is a duplicate and ignored (RFC 5722 errata 3089); any other
  overlap discards the whole datagram (FragmentSmack, CVE-2018-5391; RFC 5722 for IPv6). The
  kernel's "runs" depend on arrival order (a fragment inserted before the tail starts a run of its
  own), and so do ours, so the same fragment sequence has the same outcome.
- A last fragment that ends before data already held, or a second last fragment with another end,
  or data past a known end, or an empty fragment discards the datagram (``ip_frag_queue()``).
- Non-last IPv4 fragments whose length is not a multiple of 8 are trimmed down to one, as
  ``ip_frag_queue()`` does; the same IPv6 fragment is dropped (RFC 8200 4.5, ``ip6_frag_queue()``),
  as is one ending past 65535 bytes. An IPv4 datagram that would exceed 65535 bytes is discarded
  when it completes (``ip_frag_reasm()``): until then a fragment ending past that limit holds the
  queue, and the fragments of a later datagram with the same identification join it and die with
  it, as in the kernel.
- The first IPv6 fragment must hold every header up to and including the UDP header (RFC 8200 4.5,
  RFC 7112, ``ipv6frag_thdr_truncated()``). An IPv4 first fragment always does: a non-last
  fragment carries at least 8 bytes once trimmed, or the datagram is discarded as empty.
- Mixing not-ECT with ECN-capable fragments discards the datagram (``ip_frag_ecn_table``,
  RFC 3168 5.3).
- Atomic IPv6 fragments (offset 0, M clear) are processed alone, never queued (RFC 6946).
- Memory: every held fragment is charged its length plus a fixed overhead (about what the kernel
  charges, ``skb->truesize``), per family; as in the kernel there is no cap per datagram (a
  32000-byte datagram in 8-byte fragments is delivered). A family over ``high_thresh`` (the kernel's
  ``ipfrag_high_thresh``, 4 MiB) has its oldest queues evicted until it is under ``low_thresh``
  (``ipfrag_low_thresh``, 3 MiB: the pre-4.17 evictor; today's kernel refuses new fragments
  instead, which lets one flood block all reassembly for 30 s). The number of queues is capped
  too, the oldest evicted first.
- Time: a queue lives ``ipfrag_time`` (30 s) for IPv4 and ``ip6frag_time`` (60 s) for IPv6 from
  its first fragment, as the kernel's queue timer, then expires (``reassembly_timeout``). We send
  no ICMP time-exceeded (an AF_PACKET reader is no IP stack).
- Not modelled: ``ipfrag_max_dist`` (the IPv4 "too far" reordering heuristic).

``tests/net/test_fragments.py`` checks these verdicts against a kernel UDP socket on Linux 6.18.

Every fragment taken in ends exactly one way: held (``pending``), dropped (counted in
:attr:`Reassembler.dropped` by reason, one per frame), or merged into a completed datagram (the
completed datagram then counts as one frame, ``merged`` the others). The UDP checks of a completed
datagram (:func:`udp_datagram`) always verify the checksum: whatever the kernel said about each
fragment's checksum does not vouch for the reassembled datagram's.

:func:`split_gso_udp` cuts a UDP GSO super-frame (``VIRTIO_NET_HDR_GSO_UDP_L4``, see
``PACKET_VNET_HDR``) into the datagrams a kernel socket would receive (``__udp_gso_segment()``).
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass

from rawtransport.checksum import udp_checksum, verify_udp_checksum
from rawtransport.errors import MalformedPacketError
from rawtransport.packet_fast import check_ipv4_header, check_ipv6_header
from rawtransport.packet_types import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_UDP,
    NEXTHDR_AUTH,
    NEXTHDR_DEST,
    NEXTHDR_FRAGMENT,
    NEXTHDR_HOP,
    NEXTHDR_NONE,
    NEXTHDR_ROUTING,
    check_ipv4_options,
    walk_ipv6_extensions,
)

__all__ = [
    "IP6FRAG_TIME",
    "IPFRAG_HIGH_THRESH",
    "IPFRAG_LOW_THRESH",
    "IPFRAG_TIME",
    "Fragment",
    "Reassembled",
    "Reassembler",
    "VIRTIO_NET_HDR_GSO_UDP_L4",
    "VnetHeader",
    "parse_fragment",
    "parse_vnet_header",
    "split_gso_udp",
    "udp_datagram",
]

Buffer = bytes | bytearray | memoryview

# The kernel's defaults (Documentation/networking/ip-sysctl.rst).
IPFRAG_HIGH_THRESH = 4 * 1024 * 1024
IPFRAG_LOW_THRESH = 3 * 1024 * 1024
IPFRAG_TIME = 30.0
IP6FRAG_TIME = 60.0
MAX_QUEUES = 1024
# What a held fragment costs beyond its data, and a queue. A fragment stands for the kernel's
# skb->truesize: SKB_TRUESIZE() is the data plus sk_buff and skb_shared_info (576 bytes on x86_64)
# plus the headers' room, so the family thresholds hold about as many fragments as the kernel's.
FRAGMENT_OVERHEAD = 640
QUEUE_OVERHEAD = 256

_IP4_FIXED = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_IPV6_MAXPLEN = 65535
_IPV4_MAX = 65535

# ipv6_ext_hdr(): the headers ipv6_skip_exthdr() skips (or stops at: no next header).
_IPV6_EXT_HEADERS = frozenset(
    (NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_AUTH, NEXTHDR_NONE, NEXTHDR_DEST)
)
# The upper-layer header a first fragment must hold whole (TCP, UDP, ICMPv6; one byte otherwise).
_UPPER_HEADER = {6: 20, IPPROTO_UDP: 8, 58: 8}

# inet_frag_queue_insert() results.
_OK, _DUP, _OVERLAP = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Fragment:
    """The IP layer of one received fragment, as :func:`parse_fragment` found it.

    ``data`` is the fragmentable part (IPv4: everything after the header; IPv6: everything after
    the Fragment header). ``proto`` is the IPv4 protocol or the Fragment header's next header.
    ``header_len`` is what precedes ``data`` in the reassembled packet: the IPv4 header with its
    options, or the IPv6 header with its unfragmentable extension headers. ``offset == 0`` and not
    ``more`` is a whole datagram (an IPv6 atomic fragment, or no fragment at all).
    """

    family: int
    src: bytes
    dst: bytes
    ident: int
    proto: int
    offset: int
    more: bool
    data: bytes
    ttl: int
    ecn: int
    header_len: int


@dataclass(frozen=True, slots=True)
class Reassembled:
    """A whole datagram's IP payload and the header facts the UDP checks need.

    ``proto`` is the header ``payload`` starts with: UDP, or for IPv6 possibly an extension header
    that followed the Fragment header (:func:`udp_datagram` walks it). ``ttl`` is the first
    fragment's TTL / hop limit; ``fragments`` how many frames it was made of.
    """

    family: int
    src: bytes
    dst: bytes
    proto: int
    payload: bytes
    ttl: int
    fragments: int


# ------------------------------------------------------------------------------------- parsing
def parse_fragment(frame: Buffer) -> Fragment:
    """Parse and check the Ethernet and IP layers of a frame carrying a UDP fragment.

    Makes the per-packet checks of ``ip_rcv_core()``/``ip6_rcv_core()`` (reusing the codec's) and
    raises :class:`MalformedPacketError` with the codec's reasons, plus ``reassembly_tiny_first``
    for an IPv6 first fragment without the whole UDP header. VLAN-tagged frames are refused
    (``vlan_no_device``), as the engine refuses them whole.
    """
    data = bytes(frame)
    if len(data) < 14:
        raise MalformedPacketError("eth_short", f"{len(data)} bytes")
    ethertype = (data[12] << 8) | data[13]
    if ethertype == ETH_P_IP:
        return _parse_ipv4(data, 14)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(data, 14)
    if ethertype in (ETH_P_8021Q, ETH_P_8021AD):
        raise MalformedPacketError("vlan_no_device", "tagged frame")
    raise MalformedPacketError("not_ip", f"ethertype {ethertype:#06x}")


def _parse_ipv4(data: bytes, off: int) -> Fragment:
    ihl, tot = check_ipv4_header(data, off, True)
    _, tos, _, ident, frag, ttl, proto, _, src, dst = _IP4_FIXED.unpack_from(data, off)
    # ip_rcv_options(): source-routed packets are dropped (accept_source_route = 0), fragments too.
    if ihl > 20 and check_ipv4_options(data[off + 20 : off + ihl]):
        raise MalformedPacketError("ipv4_source_route", "source route option")
    if proto != IPPROTO_UDP:
        raise MalformedPacketError("not_udp", f"protocol {proto}")
    return Fragment(
        4, src, dst, ident, proto, (frag & 0x1FFF) << 3, bool(frag & 0x2000),
        data[off + ihl : off + tot], ttl, tos & 3, ihl,
    )  # fmt: skip


def _parse_ipv6(data: bytes, off: int) -> Fragment:
    plen = check_ipv6_header(data, off)
    end = off + 40 + plen
    src, dst = data[off + 8 : off + 24], data[off + 24 : off + 40]
    hops, ecn = data[off + 7], (data[off + 1] >> 4) & 3
    nh, u, fragmented = walk_ipv6_extensions(
        data, off + 40, end, data[off + 6], collect=None, fragments_ok=True
    )
    if not fragmented:
        # No fragment header, or only atomic ones (RFC 6946): a whole datagram.
        return Fragment(6, src, dst, 0, nh, 0, False, data[u:end], hops, ecn, u - off)
    fo = (data[u - 6] << 8) | data[u - 5]
    ident = int.from_bytes(data[u - 4 : u], "big")
    offset = fo & 0xFFF8
    if offset == 0:
        _check_first_fragment(data, u, end, nh)
    # The Fragment header itself is not part of the reassembled packet (ip6_frag_reasm()).
    return Fragment(
        6, src, dst, ident, nh, offset, bool(fo & 1), data[u:end], hops, ecn, u - 8 - off
    )


def _check_first_fragment(data: bytes, u: int, end: int, nh: int) -> None:
    """RFC 8200 4.5 / RFC 7112: the first fragment carries every header through the upper-layer one.

    As ``ipv6frag_thdr_truncated()`` checks it: the headers behind the Fragment header are skipped
    (``ipv6_skip_exthdr()``), not judged, and only a chain that is read to its end and leaves the
    upper-layer header short is refused. What those headers say (options to discard, a hop-by-hop
    header out of place, another protocol than UDP) is judged once the datagram is whole
    (:func:`udp_datagram`, as ``ip6_input_finish()`` then does): until then such a first fragment
    holds its place in the queue, and a second first fragment is a duplicate of it.
    """
    off = u
    while nh in _IPV6_EXT_HEADERS:
        if nh == NEXTHDR_NONE or end - off < 2:
            return  # ipv6_skip_exthdr() gives up: not "truncated"
        if nh == NEXTHDR_FRAGMENT:
            if end - off < 4 or ((data[off + 2] << 8) | data[off + 3]) & 0xFFF8:
                return  # not a first fragment's header: not "truncated" either
            hlen = 8
        elif nh == NEXTHDR_AUTH:
            hlen = (data[off + 1] + 2) << 2
        else:
            hlen = (data[off + 1] + 1) << 3
        nh = data[off]
        off += hlen
    if off + _UPPER_HEADER.get(nh, 1) > end:
        raise MalformedPacketError("reassembly_tiny_first", f"{end - off} bytes of header {nh}")


def udp_datagram(r: Reassembled) -> tuple[int, int, bytes]:
    """The UDP checks of ``__udp4_lib_rcv()``/``__udp6_lib_rcv()`` on a whole datagram.

    Returns ``(source port, destination port, payload)``; raises :class:`MalformedPacketError`
    (``udp_short``, ``udp_length``, ``udp6_zero_checksum``, ``udp_bad_checksum``, ``not_udp`` or an
    extension-header reason). The checksum is always verified (a zero one is "none" over IPv4).
    """
    data, nh, u = r.payload, r.proto, 0
    if r.family == 6 and nh != IPPROTO_UDP:
        if nh == 0:
            raise MalformedPacketError("ipv6_hbh_not_first", "hop-by-hop header after a fragment")
        nh, u, _ = walk_ipv6_extensions(data, 0, len(data), nh, collect=None, fragments_ok=False)
    if nh != IPPROTO_UDP:
        raise MalformedPacketError("not_udp", f"protocol {nh}")
    avail = len(data) - u
    if avail < 8:
        raise MalformedPacketError("udp_short", f"{avail} bytes for the UDP header")
    sport, dport, ulen, csum = _UDP.unpack_from(data, u)
    if r.family == 4:
        if ulen < 8 or ulen > avail:
            raise MalformedPacketError("udp_length", f"UDP length {ulen}, {avail} available")
    else:
        if ulen > avail:
            raise MalformedPacketError("udp_length", f"UDP length {ulen}, {avail} available")
        if ulen == 0:  # RFC 2675 5, applied by the kernel to any packet.
            ulen = avail
        if ulen < 8:
            raise MalformedPacketError("udp_length", f"UDP length {ulen}")
        if not csum:
            raise MalformedPacketError("udp6_zero_checksum", "RFC 8200 8.1: checksum is mandatory")
    segment = data[u : u + ulen]
    if csum and not verify_udp_checksum(r.src, r.dst, segment):
        raise MalformedPacketError("udp_bad_checksum")
    return sport, dport, segment[8:]


# ------------------------------------------------------------------------------------- queues
class _Queue:
    """One datagram being reassembled (the kernel's ``inet_frag_queue``)."""

    __slots__ = (
        "count", "deadline", "ecn", "first", "frags", "last_in", "length", "meat", "mem", "runs",
    )  # fmt: skip

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        # Runs of fragments, as inet_frag_queue_insert() forms them: [start, end], sorted, disjoint.
        self.runs: list[list[int]] = []
        self.frags: dict[int, bytes] = {}
        self.first: Fragment | None = None
        self.last_in = False
        self.length = 0  # q.len: the end of the datagram, known or so far
        self.meat = 0  # bytes held
        self.mem = QUEUE_OVERHEAD
        self.count = 0
        self.ecn = 0  # bit per ECN codepoint seen (IPFRAG_ECN_*)

    def insert(self, offset: int, end: int) -> int:
        """``inet_frag_queue_insert()``: record [offset, end) or say it is a dup or an overlap."""
        runs = self.runs
        if not runs:
            runs.append([offset, end])
            return _OK
        tail = runs[-1]
        if tail[1] < end:
            # The common case: the fragment goes at the end; it may only touch the last run.
            if offset < tail[1]:
                return _OVERLAP
            if offset == tail[1]:
                tail[1] = end
            else:
                runs.append([offset, end])
            return _OK
        i = bisect_right(runs, offset, key=lambda run: run[0])
        if i and runs[i - 1][1] > offset:
            return _DUP if end <= runs[i - 1][1] else _OVERLAP
        if i < len(runs) and runs[i][0] < end:
            return _OVERLAP
        # Inserted before the tail: a run of its own, never merged (as the kernel's rb-tree insert).
        runs.insert(i, [offset, end])
        return _OK


class _Family:
    __slots__ = ("mem", "queues", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # Insertion order is creation order, and a queue's deadline is fixed at creation, so the
        # first queue always expires first.
        self.queues: dict[tuple[object, ...], _Queue] = {}
        self.mem = 0


class Reassembler:
    """Reassembles fragmented UDP datagrams within memory and time caps. See the module docstring.

    :meth:`receive` never raises for anything in a frame: each frame is held, merged into a
    datagram it returns, or dropped and counted in :attr:`dropped`.
    """

    def __init__(
        self,
        *,
        high_thresh: int = IPFRAG_HIGH_THRESH,
        low_thresh: int = IPFRAG_LOW_THRESH,
        timeout4: float = IPFRAG_TIME,
        timeout6: float = IP6FRAG_TIME,
        max_queues: int = MAX_QUEUES,
    ) -> None:
        if not 0 < low_thresh <= high_thresh:
            raise ValueError("need 0 < low_thresh <= high_thresh")
        if max_queues < 1 or timeout4 <= 0 or timeout6 <= 0:
            raise ValueError("max_queues must be >= 1 and timeouts positive")
        self.high_thresh = high_thresh
        self.low_thresh = low_thresh
        self.max_queues = max_queues
        self._families = {4: _Family(timeout4), 6: _Family(timeout6)}
        self.dropped: dict[str, int] = {}
        self.fragments = 0  # frames taken in
        self.datagrams = 0  # datagrams completed (atomic ones included)
        self.merged = 0  # frames folded into a completed datagram beyond its first

    # ----------------------------------------------------------------------------- counters
    def _drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    @property
    def pending(self) -> int:
        """Fragments held in incomplete datagrams."""
        return sum(q.count for f in self._families.values() for q in f.queues.values())

    @property
    def memory(self) -> int:
        """Bytes charged for held fragments, both families."""
        return sum(f.mem for f in self._families.values())

    def stats(self) -> dict[str, object]:
        """Counters: fragments in, datagrams out, merged, pending, queues, memory, drops by reason.

        Invariant: ``fragments == datagrams + merged + pending + sum(dropped.values())``.
        """
        return {
            "fragments": self.fragments,
            "datagrams": self.datagrams,
            "merged": self.merged,
            "pending": self.pending,
            "queues": sum(len(f.queues) for f in self._families.values()),
            "memory": self.memory,
            "dropped": dict(self.dropped),
        }

    # ------------------------------------------------------------------------------ receive
    def receive(self, frame: Buffer, now: float, ifindex: int = 0) -> Reassembled | None:
        """Take one frame; return the datagram it completes, if any. Never raises for the frame."""
        self.fragments += 1
        try:
            frag = parse_fragment(frame)
        except MalformedPacketError as exc:
            self._drop(exc.reason)
            return None
        return self._add(frag, now, ifindex)

    def _add(self, frag: Fragment, now: float, ifindex: int) -> Reassembled | None:
        offset, data = frag.offset, frag.data
        if offset == 0 and not frag.more:
            self.datagrams += 1
            return Reassembled(frag.family, frag.src, frag.dst, frag.proto, data, frag.ttl, 1)
        end = offset + len(data)
        if frag.family == 6:
            if end > _IPV6_MAXPLEN:
                # ip6_frag_queue(): parameter problem, the fragment alone is dropped.
                self._drop("reassembly_too_long")
                return None
            if frag.more and end & 7:
                self._drop("reassembly_misaligned")  # RFC 8200 4.5; ip6_frag_queue()
                return None
            dst = frag.dst
            scoped = dst[0] == 0xFF or (dst[0] == 0xFE and dst[1] & 0xC0 == 0x80)
            key: tuple[object, ...] = (frag.src, dst, frag.ident, ifindex if scoped else 0)
        else:
            if frag.more and end & 7:
                # ip_frag_queue(): a non-last fragment is trimmed to a multiple of 8 bytes.
                end &= ~7
                data = data[: end - offset]
            key = (frag.src, frag.dst, frag.proto, frag.ident)
        fam = self._families[frag.family]
        q = fam.queues.get(key)
        if q is not None and q.deadline <= now:
            # Its timer would have fired already: the kernel would have expired it.
            self._kill(fam, key, "reassembly_timeout", 0)
            q = None
        if q is None:
            while len(fam.queues) >= self.max_queues:
                self._kill(fam, next(iter(fam.queues)), "reassembly_evicted", 0)
            q = fam.queues[key] = _Queue(now + fam.timeout)
            fam.mem += q.mem
        # ip_frag_queue()/ip6_frag_queue(): the end must agree with what is known of the datagram.
        if not frag.more:
            if end < q.length or (q.last_in and end != q.length):
                self._kill(fam, key, "reassembly_bad_end", 1)
                return None
            q.last_in = True
            q.length = end
        elif end > q.length:
            if q.last_in:
                self._kill(fam, key, "reassembly_bad_end", 1)
                return None
            q.length = end
        if end == offset:
            self._kill(fam, key, "reassembly_empty_fragment", 1)
            return None
        verdict = q.insert(offset, end)
        if verdict == _DUP:
            self._drop("reassembly_duplicate")
            return None
        if verdict == _OVERLAP:
            self._kill(fam, key, "reassembly_overlap", 1)
            return None
        q.frags[offset] = data
        q.count += 1
        q.meat += end - offset
        q.ecn |= 1 << frag.ecn
        charge = end - offset + FRAGMENT_OVERHEAD
        q.mem += charge
        fam.mem += charge
        if offset == 0:
            q.first = frag
        if fam.mem > self.high_thresh:
            self._evict(fam, key)
        if q.first is not None and q.last_in and q.meat == q.length:
            return self._complete(fam, key, q)
        return None

    def _kill(self, fam: _Family, key: tuple[object, ...], reason: str, extra: int) -> None:
        """``inet_frag_kill()``: forget a queue, counting its fragments (and ``extra`` frames)."""
        q = fam.queues.pop(key)
        fam.mem -= q.mem
        self._drop(reason, q.count + extra)

    def _evict(self, fam: _Family, keep: tuple[object, ...]) -> None:
        for key in list(fam.queues):
            if fam.mem <= self.low_thresh:
                return
            if key != keep:
                self._kill(fam, key, "reassembly_evicted", 0)

    def _complete(self, fam: _Family, key: tuple[object, ...], q: _Queue) -> Reassembled | None:
        first = q.first
        assert first is not None
        # ip_frag_ecn_table: not-ECT (bit 0) mixed with any ECN-capable codepoint is invalid.
        if q.ecn & 1 and q.ecn != 1:
            self._kill(fam, key, "reassembly_ecn", 0)
            return None
        limit = _IPV4_MAX if first.family == 4 else _IPV6_MAXPLEN + 40
        if first.header_len + q.length > limit:
            self._kill(fam, key, "reassembly_too_long", 0)
            return None
        del fam.queues[key]
        fam.mem -= q.mem
        payload = b"".join(q.frags[off] for off in sorted(q.frags))
        self.datagrams += 1
        self.merged += q.count - 1
        return Reassembled(
            first.family, first.src, first.dst, first.proto, payload, first.ttl, q.count
        )

    # ------------------------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        """When the oldest incomplete datagram expires, or ``None``."""
        families = self._families
        if not families[4].queues and not families[6].queues:
            return None  # the usual case, asked after every batch of frames
        deadlines = [
            next(iter(f.queues.values())).deadline for f in self._families.values() if f.queues
        ]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Expire incomplete datagrams whose time is up (``ip_expire()``), counting their frames."""
        for fam in self._families.values():
            while fam.queues:
                key, q = next(iter(fam.queues.items()))
                if q.deadline > now:
                    break
                self._kill(fam, key, "reassembly_timeout", 0)


# ----------------------------------------------------------------------------------------- GSO
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
_VNET = struct.Struct("<BBHHHH")  # struct virtio_net_hdr, little-endian (virtio 1.0 / VNET_LE)


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """``struct virtio_net_hdr`` as ``PACKET_VNET_HDR`` puts it before each received frame."""

    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int


def parse_vnet_header(data: Buffer) -> VnetHeader:
    """Decode the 10-byte ``virtio_net_hdr`` (seen on Linux 6.18 for a 5000-byte ``UDP_SEGMENT=1000``
    send: flags 1 (NEEDS_CSUM), gso_type 5 (UDP_L4), hdr_len 42, gso_size 1000, csum 34/6)."""
    if len(data) < _VNET.size:
        raise MalformedPacketError("vnet_short", f"{len(data)} bytes")
    return VnetHeader(*_VNET.unpack_from(data))


def split_gso_udp(frame: Buffer, gso_size: int) -> list[bytes]:
    """Cut a UDP GSO super-frame into the frames ``__udp_gso_segment()`` would make.

    Each segment carries ``gso_size`` bytes of the payload (the last one the rest) behind a copy of
    the Ethernet and IP headers with the IP lengths fixed (IPv4: total length, identification
    incremented per segment as ``inet_gso_segment()`` does, header checksum), the UDP length set and
    a full UDP checksum computed (the super-frame's is only the pseudo-header part,
    ``CHECKSUM_PARTIAL``). Raises :class:`MalformedPacketError` for a frame that is not an untagged
    Ethernet UDP frame with consistent lengths, ``ValueError`` for ``gso_size < 1``.
    """
    if gso_size < 1:
        raise ValueError(f"gso_size must be >= 1, not {gso_size}")
    data = bytes(frame)
    if len(data) < 14:
        raise MalformedPacketError("eth_short", f"{len(data)} bytes")
    ethertype = (data[12] << 8) | data[13]
    if ethertype == ETH_P_IP:
        ihl, tot = check_ipv4_header(data, 14, True)
        if data[23] != IPPROTO_UDP:
            raise MalformedPacketError("not_udp", f"protocol {data[23]}")
        if (data[20] << 8 | data[21]) & 0x3FFF:
            raise MalformedPacketError("ipv4_fragment", "a GSO frame is never a fragment")
        u, end = 14 + ihl, 14 + tot
        src, dst = data[26:30], data[30:34]
    elif ethertype == ETH_P_IPV6:
        plen = check_ipv6_header(data, 14)
        end = 54 + plen
        nh, u, _ = walk_ipv6_extensions(data, 54, end, data[20], collect=None, fragments_ok=False)
        if nh != IPPROTO_UDP:
            raise MalformedPacketError("not_udp", f"next header {nh}")
        src, dst = data[22:38], data[38:54]
    else:
        raise MalformedPacketError("not_ip", f"ethertype {ethertype:#06x}")
    if end - u < 8:
        raise MalformedPacketError("udp_short", f"{end - u} bytes for the UDP header")
    sport, dport, ulen, _ = _UDP.unpack_from(data, u)
    if ulen != end - u and not (ethertype == ETH_P_IPV6 and ulen == 0):
        raise MalformedPacketError("udp_length", f"UDP length {ulen}, {end - u} in the frame")
    head = bytearray(data[:u])
    payload = data[u + 8 : end]
    out = []
    ident = (data[18] << 8) | data[19]
    for i, start in enumerate(range(0, max(len(payload), 1), gso_size)):
        chunk = payload[start : start + gso_size]
        seg_len = 8 + len(chunk)
        if ethertype == ETH_P_IP:
            struct.pack_into("!HH", head, 16, ihl + seg_len, (ident + i) & 0xFFFF)
            head[24:26] = b"\x00\x00"
            # RFC 1071: the complement of the header's sum (non-zero: the version nibble).
            hck = (-int.from_bytes(head[14 : 14 + ihl], "big")) % 0xFFFF
            head[24:26] = hck.to_bytes(2, "big")
        else:
            head[18:20] = (u - 54 + seg_len).to_bytes(2, "big")
        udp = _UDP.pack(sport, dport, seg_len, 0) + chunk
        csum = udp_checksum(src, dst, udp)
        out.append(bytes(head) + udp[:6] + csum.to_bytes(2, "big") + chunk)
    return out
