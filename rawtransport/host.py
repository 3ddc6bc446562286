"""What the kernel keeps once per network namespace for all its UDP sockets, sans I/O.

A :class:`Host` is shared by every endpoint (:class:`~rawtransport.engine.UdpEngine`) of one raw
stack, as the kernel shares these between its sockets:

- the **socket table** (``udp_table``): which endpoint a datagram is for, looked up by destination
  address and port, then connected peer and bound device, with the kernel's precedence
  (``compute_score()`` in net/ipv4/udp.c and net/ipv6/udp.c: the most specific socket wins);
- the **neighbour table** (ARP/ND): one resolution per next hop whichever endpoint asked, datagrams
  of every endpoint queued on it (each released to, or failed on, the endpoint that sent it);
- the **reassembly queues** (``ip_defrag()``/``ipv6_frag_rcv()`` work before the socket lookup);
- the snapshot of the host's addresses and each link's MTU.

:meth:`Host.receive_frame` takes every frame a shared receiver reads: a UDP frame goes to its
endpoint's :meth:`~rawtransport.engine.UdpEngine.receive_frame`, which makes every check and counts
every drop in that endpoint's counters exactly as if it had its own packet socket; neighbour replies,
fragments and frames no endpoint claims are handled and counted here (:meth:`Host.stats`).

Nothing here touches a socket, a clock or an event loop.
"""

from __future__ import annotations

import errno
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rawtransport.datapath import ACCEL
from rawtransport.engine_types import (
    ARPHRD_ETHER,
    ARPHRD_LOOPBACK,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    TP_STATUS_VLAN_VALID,
    V4MAPPED_PREFIX,
    ErrorReceived,
    FrameMeta,
    OutgoingFrame,
)
from rawtransport.errors import MalformedPacketError
from rawtransport.neighbour import NeighbourCache, ResolutionFailed
from rawtransport.packet import (
    ARP,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    IPv6,
    NeighborAdvertisement,
    NeighborSolicitation,
    build_arp_request,
    build_neighbor_solicitation,
    parse_frame,
    parse_udp,
)
from rawtransport.packet_types import NEXTHDR_FRAGMENT
from rawtransport.reassembly import Reassembled, Reassembler, udp_datagram
from rawtransport.route import LocalAddresses, Route

if TYPE_CHECKING:
    from rawtransport.engine import UdpEngine

__all__ = ["Host", "Pending", "peek_udp"]

_ZERO_MAC = bytes(6)
_IPV6_FRAGMENT = NEXTHDR_FRAGMENT
#: :func:`peek_udp`'s answer for an IPv4 or IPv6 fragment.
FRAGMENT = "fragment"
#: The codec's reasons for a frame that is a fragment (ip_is_fragment(), an IPv6 Fragment header).
FRAGMENT_REASONS = frozenset(("ipv4_fragment", "ipv6_fragment"))


#: ``net.ipv4.neigh.default.unres_qlen_bytes`` (and IPv6's): bytes queued per unresolved neighbour.
UNRES_QLEN_BYTES = 212992


def truesize(pending: Pending) -> int:
    """What a queued datagram costs against :data:`UNRES_QLEN_BYTES`: its frames and roughly what
    the kernel's ``skb->truesize`` adds (the ``sk_buff`` and ``skb_shared_info``, ~768 bytes)."""
    return pending.size + 768


@dataclass(slots=True)
class Pending:
    """Frames built while the next hop's MAC is unknown; the destination MAC is patched in on release.

    ``owner`` is the endpoint that sent the datagram: it is released to (or failed on) that one.
    """

    frames: list[bytearray]
    ifindex: int
    size: int
    owner: UdpEngine | None = None


@dataclass
class Counters:
    """One endpoint's (or the host's own) counters."""

    received: int = 0
    delivered: int = 0
    sent: int = 0
    sent_by_kernel: int = 0
    events: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` frames or datagrams dropped for ``reason``."""
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def event(self, name: str) -> None:
        """Count something that is not a drop."""
        self.events[name] = self.events.get(name, 0) + 1


def peek_py(frame: bytes | bytearray | memoryview) -> tuple[bytes, bytes, int, int] | str | None:
    """The socket-lookup key of an untagged Ethernet UDP frame, read without any check.

    ``(src, dst, sport, dport)`` (4- or 16-byte addresses), :data:`FRAGMENT` for an IPv4 fragment
    or an IPv6 packet whose first header is a Fragment header, or ``None`` for anything else
    (ARP, ICMPv6, IPv6 extension headers, a frame too short to hold the fields). The endpoint the
    key selects then makes every check; a wrong key only means the frame is checked (and dropped)
    by the wrong endpoint's rules, which drop it all the same.
    """
    n = len(frame)
    if n < 42:
        return None
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype == ETH_P_IP:
        if frame[23] != IPPROTO_UDP:
            return None
        if (frame[20] & 0x3F) or frame[21]:  # ip_is_fragment(): MF or a fragment offset
            return FRAGMENT
        off = 14 + ((frame[14] & 0x0F) << 2)
        if off + 8 > n:
            return None
        return (
            bytes(frame[26:30]),
            bytes(frame[30:34]),
            (frame[off] << 8) | frame[off + 1],
            (frame[off + 2] << 8) | frame[off + 3],
        )
    if ethertype == ETH_P_IPV6 and n >= 62:
        nexthdr = frame[20]
        if nexthdr == IPPROTO_UDP:
            return (
                bytes(frame[22:38]),
                bytes(frame[38:54]),
                (frame[54] << 8) | frame[55],
                (frame[56] << 8) | frame[57],
            )
        if nexthdr == _IPV6_FRAGMENT:
            return FRAGMENT
    return None


# The compiled twin of peek_py() (tests/test_datapath.py holds them to the same answers).
peek_udp = ACCEL.peek_udp if ACCEL is not None else peek_py


class Host:
    """The state the kernel shares between sockets, for the endpoints of one raw stack."""

    def __init__(
        self,
        local_addresses: LocalAddresses | None = None,
        *,
        neighbours: NeighbourCache[Pending] | None = None,
        reassemble: bool = True,
    ) -> None:
        self.local = local_addresses if local_addresses is not None else LocalAddresses()
        self.neigh: NeighbourCache[Pending] = (
            neighbours
            if neighbours is not None
            else NeighbourCache(
                # The kernel bounds what waits for a neighbour by bytes (unres_qlen_bytes,
                # 212992 by default), not by count: 277 small datagrams, 145 of 1400 bytes.
                max_pending_per_address=4096,
                max_pending_total=8192,
                max_pending_bytes_per_address=UNRES_QLEN_BYTES,
                weigh=truesize,
            )
        )
        self.reasm = Reassembler() if reassemble else None
        self.reasm_fanout = Reassembler() if reassemble else None
        self._reasms = tuple(r for r in (self.reasm, self.reasm_fanout) if r is not None)
        #: Frames read by a shared receiver, and what happened to those no endpoint took.
        self.counters = Counters()
        # Link header + one VLAN tag of slack above the MTU; anything longer did not come off a wire
        # as one frame (a UDP_SEGMENT send reaches packet taps as one GSO super-frame).
        self.rx_limit: dict[int, int] = {}
        # Each interface's own MAC (from the routes used), to recognise our own ARP replies.
        self.if_macs: dict[int, bytes] = {}
        # The source address last used on each (interface, address length), for ARP/NS requests.
        self._last_sources: dict[tuple[int, int], bytes] = {}
        # Frames the host itself sends (retransmitted ARP/ND requests), for the stack to write.
        self.out: deque[OutgoingFrame] = deque()
        # The socket table: port -> endpoints bound to it (more than one with distinct addresses,
        # connected peers or devices).
        self._table: dict[int, list[UdpEngine]] = {}
        # Endpoints that got events or frames from shared work (a neighbour reply released their
        # datagrams, a resolution failed, a datagram was delivered): the stack flushes them.
        self._touched: dict[UdpEngine, None] = {}
        #: The compiled receive path's view of this host (``_datapath.FastHost``), or ``None`` on
        #: the pure path. Its table holds a port while exactly one endpoint is bound to it and
        #: that endpoint has a fast entry (:meth:`set_fast`); ``RawStack.read_ready`` walks the
        #: ring with it.
        self.fast: Any = ACCEL.FastHost() if ACCEL is not None else None
        self._fast_entries: dict[UdpEngine, Any] = {}
        self._sync_local()
        # The compiled send path's templates (``_datapath.FastSender``, one per endpoint), all
        # cleared when a route, address, link or neighbour entry may have changed.
        self._senders: weakref.WeakSet[Any] = weakref.WeakSet()

    # ------------------------------------------------------------------------------ state in
    def set_local_addresses(self, local_addresses: LocalAddresses) -> None:
        """Replace the snapshot of the host's addresses (after a netlink change)."""
        self.local = local_addresses
        self._sync_local()

    def _sync_local(self) -> None:
        if self.fast is not None:
            self.fast.set_local(*self.local.local_view())

    def set_link_mtus(self, mtus: dict[int, int]) -> None:
        """Each interface's MTU, to recognise unsplit GSO super-frames on receive."""
        self.rx_limit = {i: mtu + 18 for i, mtu in mtus.items()}
        if self.fast is not None:
            self.fast.rx_limit = dict(self.rx_limit)

    def forget_interface(self, ifindex: int) -> None:
        """The interface went away: give up resolutions through it."""
        self.invalidate_tx()
        self._fail(self.neigh.forget(ifindex))
        self.if_macs.pop(ifindex, None)

    def add_sender(self, sender: Any) -> None:
        """Keep a ``_datapath.FastSender`` in step: :meth:`invalidate_tx` clears it."""
        self._senders.add(sender)

    def invalidate_tx(self) -> None:
        """Something a send template was built from may have changed (a route, an address, a
        link, a neighbour entry): forget every template; the next datagram to each destination
        takes the Python path and makes a new one."""
        for sender in self._senders:
            sender.clear()

    # -------------------------------------------------------------------------- socket table
    def register(self, engine: UdpEngine) -> None:
        """Add an endpoint to the socket table (its port, address and peer are in its config)."""
        self._table.setdefault(engine.config.local_port, []).append(engine)
        self._sync_fast(engine.config.local_port)

    def unregister(self, engine: UdpEngine) -> None:
        """Remove an endpoint; frames for it are counted as ``no_socket`` from now on."""
        port = engine.config.local_port
        engines = self._table.get(port)
        if engines is not None and engine in engines:
            engines.remove(engine)
            if not engines:
                del self._table[port]
        self._touched.pop(engine, None)
        self._fast_entries.pop(engine, None)
        self._sync_fast(port)

    def set_fast(self, engine: UdpEngine, entry: Any) -> None:
        """Give ``engine`` a ``_datapath.FastEntry`` (``None``: take it away). The compiled path
        delivers to it directly while it alone is bound to its port and not ``reuse_port``;
        otherwise every frame goes through :meth:`receive_frame` as before."""
        if entry is None:
            self._fast_entries.pop(engine, None)
        else:
            self._fast_entries[engine] = entry
        self._sync_fast(engine.config.local_port)

    def _sync_fast(self, port: int) -> None:
        if self.fast is None:
            return
        engines = self._table.get(port)
        entry = None
        if engines is not None and len(engines) == 1 and not engines[0].config.reuse_port:
            entry = self._fast_entries.get(engines[0])
        if entry is None:
            self.fast.entries.pop(port, None)
        else:
            self.fast.entries[port] = entry

    @property
    def endpoints(self) -> int:
        """How many endpoints are registered."""
        return sum(len(x) for x in self._table.values())

    def lookup(
        self, src: bytes, dst: bytes, sport: int, dport: int, ifindex: int, fanout: bool = False
    ) -> UdpEngine | None:
        """The endpoint a datagram is for, as ``__udp4_lib_lookup()``/``__udp6_lib_lookup()``.

        Every field an endpoint is bound or connected to must match; the highest
        ``compute_score()`` wins: an IPv4 socket before a dual-stack IPv6 one for IPv4, and +4 for
        each of bound address, connected address, connected port and bound device. Among equals
        (``SO_REUSEPORT``) a hash of the flow picks one, so a flow always reaches the same one.

        ``fanout``: the frame came through a ``PACKET_FANOUT`` receiver, which only
        ``reuse_port`` endpoints have; it is for one of them (and a frame from the shared
        receiver for one of the others), so no datagram is delivered twice.
        """
        engines = self._table.get(dport)
        if engines is None:
            return None
        if len(engines) == 1:
            e = engines[0]
            if e.config.reuse_port is not fanout:
                return None
            return e if e.score(src, dst, sport, ifindex) >= 0 else None
        best: list[UdpEngine] = []
        top = -1
        for e in engines:
            if e.config.reuse_port is not fanout:
                continue
            score = e.score(src, dst, sport, ifindex)
            if score > top:
                top, best = score, [e]
            elif score == top and score >= 0:
                best.append(e)
        if top < 0:
            return None
        if len(best) == 1:
            return best[0]
        return best[hash((src, sport)) % len(best)]

    # ------------------------------------------------------------------------------- receive
    def receive_frame(
        self,
        frame: bytes | bytearray | memoryview,
        meta: FrameMeta,
        now: float,
        fanout: bool = False,
    ) -> None:
        """Take one frame a shared receiver read (``fanout``: a ``reuse_port`` endpoint's
        ``PACKET_FANOUT`` receiver, see :meth:`lookup`); never raises for anything in ``frame``."""
        c = self.counters
        c.received += 1
        key = peek_udp(frame)
        if type(key) is tuple:
            engine = self.lookup(key[0], key[1], key[2], key[3], meta.ifindex, fanout)
            if engine is not None:
                engine.receive_frame(frame, meta, now)
                self._touched[engine] = None
                return
        self._receive_other(frame, meta, now, fanout)

    def _receive_other(
        self, frame: bytes | bytearray | memoryview, meta: FrameMeta, now: float, fanout: bool
    ) -> None:
        """Link checks, neighbour replies, fragments, and a named reason for everything else."""
        c = self.counters
        reason = link_drop(meta, len(frame), self.rx_limit)
        if reason is not None:
            c.drop(reason)
            return
        if is_neighbour_frame(frame):
            self.receive_neighbour(frame, meta, now, c)
            return
        # A fragment, an IPv6 extension-header chain, or something malformed: the parser the
        # endpoint uses finds the UDP header, or says it is a fragment (after the IP header
        # checks, as the engine's path hands fragments over), or names the reason. An endpoint
        # then checks the frame again, checksum included.
        try:
            d = parse_udp(frame, verify_udp_checksum=False)
        except MalformedPacketError as exc:
            reasm = self.reasm_fanout if fanout else self.reasm
            if reasm is not None and exc.reason in FRAGMENT_REASONS:
                # Fanout receivers reassemble apart: a group member gets all of a datagram's
                # fragments (fanout hashes fragments by address alone), and every process's
                # shared receiver sees them too; each whole datagram is delivered once.
                r = reasm.receive(frame, now, meta.ifindex)
                if r is not None:
                    self._deliver_reassembled(r, meta, fanout)
                return
            c.drop(exc.reason)
            return
        engine = self.lookup(d.src, d.dst, d.src_port, d.dst_port, meta.ifindex, fanout)
        if engine is None:
            c.drop("no_socket")
            return
        engine.receive_frame(frame, meta, now)
        self._touched[engine] = None

    def _deliver_reassembled(self, r: Reassembled, meta: FrameMeta, fanout: bool) -> None:
        # Looked up by the ports as they stand, unchecked: the endpoint makes the UDP checks and
        # counts their drops, as it would for a datagram that came in one frame.
        data = r.payload
        if r.proto == IPPROTO_UDP and len(data) >= 4:
            sport = (data[0] << 8) | data[1]
            dport = (data[2] << 8) | data[3]
            engine = self.lookup(r.src, r.dst, sport, dport, meta.ifindex, fanout)
            if engine is not None:
                engine.receive_reassembled(r, meta)
                self._touched[engine] = None
                return
        try:
            udp_datagram(r)  # an extension-header chain, or a reason to name
        except MalformedPacketError as exc:
            self.counters.drop(exc.reason)
            return
        self.counters.drop("no_socket")

    def receive_neighbour(
        self, frame: bytes | bytearray | memoryview, meta: FrameMeta, now: float, c: Counters
    ) -> None:
        """ARP and neighbour discovery (``arp_process()``, ``ndisc_recv_na()``/``ndisc_recv_ns()``);
        drops are counted in ``c``. Replies resolve; datagrams a reply releases go to the endpoints
        that sent them. A neighbour's request to us or its gratuitous announcement is a claim
        (:meth:`~rawtransport.neighbour.NeighbourCache.handle_claim`): verified, then learnt."""
        try:
            parsed = parse_frame(frame)
        except MalformedPacketError as exc:
            c.drop(exc.reason)
            return
        own_mac = self.if_macs.get(meta.ifindex)
        sender_mac: bytes | None
        claim = False
        if isinstance(parsed.net, ARP):
            arp = parsed.net
            # A gratuitous ARP (RFC 5227 3: request or reply, sender = target) announces the
            # sender's own address; anything else must be for one of ours.
            gratuitous = arp.sender_ip == arp.target_ip
            if not gratuitous and not self.local.is_local(arp.target_ip):
                c.drop("arp_not_for_us")
                return
            if self.local.is_local(arp.sender_ip) or arp.sender_mac == own_mac:
                c.drop("arp_from_self")
                return
            address, sender_mac = arp.sender_ip, arp.sender_mac
            claim = arp.op == 1 or gratuitous  # the kernel answers the requests; we only listen
        elif isinstance(parsed.transport, NeighborAdvertisement):
            na = parsed.transport
            sender_mac = na.target_lladdr
            if not na.solicited:
                # An unsolicited advertisement with the override flag announces a new address
                # (RFC 4861 7.2.6); without it, it overrides nothing.
                if not na.override or sender_mac is None:
                    c.drop("nd_unsolicited")
                    return
                claim = True
            if sender_mac is None:
                # RFC 4861 7.2.5: without a target link-layer address option an NA updates no
                # INCOMPLETE entry (ndisc_recv_na() finds no lladdr and neigh_update() keeps the
                # entry as it is); it confirms one whose address we know (a unicast probe's answer).
                sender_mac = self.neigh.lookup(meta.ifindex, na.target, now)
                if sender_mac is None:
                    c.drop("nd_no_target_lladdr")
                    return
            if self.local.is_local(na.target) or sender_mac == own_mac:
                c.drop("nd_from_self")
                return
            address = na.target
        elif isinstance(parsed.transport, NeighborSolicitation):
            ns = parsed.transport
            assert isinstance(parsed.net, IPv6)
            if not self.local.is_local(ns.target):
                c.drop("nd_not_for_us")
                return
            if ns.source_lladdr is None:
                c.drop("nd_no_source_lladdr")  # DAD (from ::), or a unicast probe: no claim
                return
            address, sender_mac = parsed.net.src, ns.source_lladdr
            if self.local.is_local(address) or sender_mac == own_mac:
                c.drop("nd_from_self")
                return
            claim = True
        else:
            # Another ICMPv6 message, or a UDP frame inside IPv6 with ICMPv6 as first next header is
            # impossible; either way it is not ours to deliver.
            c.drop("not_udp")
            return
        if sender_mac[0] & 1 or sender_mac == _ZERO_MAC:
            c.drop("neighbour_bad_mac")
            return
        if claim:
            self.neigh.handle_claim(meta.ifindex, address, sender_mac, now)
            self.queue_requests(self.out, self.counters, None)  # the old MAC's re-probe, if any
            return
        self.invalidate_tx()
        for pending in self.neigh.handle_reply(meta.ifindex, address, sender_mac, now):
            owner = pending.owner
            if owner is not None:
                owner.release(pending, sender_mac)
                self._touched[owner] = None

    # ---------------------------------------------------------------------------------- send
    def queue_requests(self, out: deque[OutgoingFrame], c: Counters, route: Route | None) -> None:
        """Build the ARP/NS requests the neighbour table wants sent into ``out``."""
        for req in self.neigh.requests_to_send():
            src_mac = self.if_macs.get(req.ifindex)
            source = self._request_source(req.ifindex, req.address, route)
            if src_mac is None or source is None:
                c.drop("neighbour_no_source")
                continue
            if len(req.address) == 4:
                frame = build_arp_request(src_mac, source, req.address)
            else:
                frame = build_neighbor_solicitation(src_mac, source, req.address)
            if req.unicast_mac is not None:
                frame = req.unicast_mac + frame[6:]
            out.append(OutgoingFrame(frame, req.ifindex, 0))

    def _request_source(self, ifindex: int, target: bytes, route: Route | None) -> bytes | None:
        # arp_solicit(): prefer the source of the datagram that triggered the request, else any
        # address of the interface in the same family.
        if route is not None and route.ifindex == ifindex and len(route.source) == len(target):
            self._last_sources[(ifindex, len(target))] = route.source
            return route.source
        return self._last_sources.get((ifindex, len(target)))

    # -------------------------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` must run, or ``None``."""
        when = self.neigh.get_timer()
        for reasm in self._reasms:
            expiry = reasm.get_timer()
            if expiry is not None and (when is None or expiry < when):
                when = expiry
        return when

    def handle_timer(self, now: float) -> None:
        """Retransmit neighbour requests (into :attr:`out`), fail unanswered ones, expire
        fragments."""
        for reasm in (self.reasm, self.reasm_fanout):
            if reasm is not None:
                reasm.handle_timer(now)
        self.invalidate_tx()
        self._fail(self.neigh.handle_timer(now))
        self.queue_requests(self.out, self.counters, None)

    def _fail(self, failed: Iterable[ResolutionFailed[Pending]]) -> None:
        for f in failed:
            for pending in f.dropped:
                if pending.owner is not None:
                    pending.owner.fail(pending)
                    self._touched[pending.owner] = None

    # -------------------------------------------------------------------------------- output
    def take_touched(self) -> list[UdpEngine]:
        """The endpoints with new events or frames from shared work, each once, and forget them."""
        if not self._touched:
            return []
        out = list(self._touched)
        self._touched.clear()
        return out

    def frames_read(self) -> int:
        """Frames read so far (the Python path's and the compiled path's)."""
        return self.counters.received + (self.fast.taken if self.fast is not None else 0)

    def stats(self) -> dict[str, object]:
        """The stack-wide view: frames read, drops of frames no endpoint took (by reason), the
        neighbour table's and the reassembler's counters, and the number of endpoints."""
        c = self.counters
        dropped = dict(c.dropped)
        reassembly: dict[str, object] = {}
        if self.reasm is not None:
            reassembly = self.reasm.stats()
        for reasm in (self.reasm, self.reasm_fanout):
            for reason, n in (reasm.dropped if reasm is not None else {}).items():
                dropped[reason] = dropped.get(reason, 0) + n
        return {
            "received": self.frames_read(),
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            **c.events,
            "endpoints": self.endpoints,
            "neighbour": dict(self.neigh.stats),
            "reassembly": reassembly,
        }


def link_drop(meta: FrameMeta, size: int, rx_limit: dict[int, int]) -> str | None:
    """The link layer's reason to drop a frame of ``size`` bytes before IP sees it, or ``None``."""
    # packet_rcv()/tpacket_rcv() deliver these to taps; the IP stack never sees them as ours.
    if meta.pkttype == PACKET_OUTGOING:
        return "outgoing"
    if meta.pkttype == PACKET_OTHERHOST:
        return "otherhost"
    if meta.truncated:
        return "truncated"
    if meta.hatype not in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
        return "unsupported_link"
    # A tag the device stripped into metadata, on a device with no VLAN upper: vlan_do_receive()
    # finds no VLAN device and the frame is dropped before ip_rcv().
    if meta.status & TP_STATUS_VLAN_VALID:
        return "vlan_no_device"
    # Link header + a VLAN tag of slack above the MTU (set_link_mtus()): anything longer did not
    # come off a wire as one frame — a UDP_SEGMENT send reaches packet taps as one super-frame.
    if size > rx_limit.get(meta.ifindex, 65600):
        return "gso_unsplit"
    return None


def is_neighbour_frame(frame: bytes | bytearray | memoryview) -> bool:
    """ARP, or IPv6 whose first next header is ICMPv6 (a neighbour advertisement, perhaps)."""
    if len(frame) < 14:
        return False
    ethertype = (frame[12] << 8) | frame[13]
    return ethertype == ETH_P_ARP or (
        ethertype == ETH_P_IPV6 and len(frame) >= 21 and frame[20] == IPPROTO_ICMPV6
    )


def host_unreachable() -> ErrorReceived:
    """arp_error_report() -> ICMP host unreachable to ourselves -> sk_err on a connected socket."""
    return ErrorReceived(OSError(errno.EHOSTUNREACH, "No route to host"))


def mapped_remote(remote: bytes, family: int, socket_family: int) -> bytes:
    """A dual-stack socket's connected peer as an IPv4 address for an IPv4 frame (else b"")."""
    if family == 4 and socket_family == 6:
        return remote[12:] if remote[:12] == V4MAPPED_PREFIX else b""
    return remote
