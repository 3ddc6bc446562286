"""One raw UDP endpoint's protocol logic, sans I/O.

The engine is what the kernel's IP and UDP layers were for a UDP socket: it turns frames read from an
``AF_PACKET`` socket into datagrams (making every receive check the kernel would have made, and counting
each drop by reason), and turns datagrams into Ethernet frames (header construction, checksums,
fragmentation, next-hop resolution by ARP/ND). It is shaped like aioquic's ``QuicConnection``:

- :meth:`UdpEngine.receive_frame` takes a frame, its link metadata and ``now``;
- :meth:`UdpEngine.send_datagram` takes a payload, a destination, the kernel's route for it and ``now``;
- :meth:`UdpEngine.events` and :meth:`UdpEngine.frames_to_send` drain what the caller must act on;
- :meth:`UdpEngine.get_timer` / :meth:`UdpEngine.handle_timer` drive neighbour retransmits and expiry.

Nothing here touches a socket, a clock or an event loop; the boundary (``endpoint.py``) does.
"""

from __future__ import annotations

import errno
import ipaddress
from collections import deque
from dataclasses import dataclass, field

from rawtransport.engine_types import (
    ALWAYS_JOINED,
    ARPHRD_ETHER,
    ARPHRD_LOOPBACK,
    CSUM_VOUCHED,
    LBCAST4,
    MAX_UDP4_PAYLOAD,
    MAX_UDP6_PAYLOAD,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    TP_STATUS_CSUM_VALID,
    TP_STATUS_CSUMNOTREADY,
    TP_STATUS_VLAN_VALID,
    V4MAPPED_PREFIX,
    V6_LOOPBACK,
    ZERO4,
    DatagramReceived,
    EndpointConfig,
    ErrorReceived,
    Event,
    FrameMeta,
    OutgoingFrame,
    ipv6_text,
    v4_loopback,
    v4_martian_source,
)
from rawtransport.errors import MalformedPacketError
from rawtransport.neighbour import NeighbourCache
from rawtransport.packet import (
    ARP,
    BROADCAST_MAC,
    ETH_P_ARP,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    NeighborAdvertisement,
    build_arp_request,
    build_ipv4_fragments,
    build_ipv6_fragments,
    build_neighbor_solicitation,
    build_udp,
    build_udp_fast,
    multicast_mac,
    parse_frame,
    parse_udp,
)
from rawtransport.packet_fast import parse_udp_fast
from rawtransport.reassembly import Reassembler, udp_datagram
from rawtransport.route import LocalAddresses, Route, RouteKind

# The values are defined in engine_types and re-exported here, where callers have always found them.
__all__ = [
    "ARPHRD_ETHER",
    "ARPHRD_LOOPBACK",
    "PACKET_BROADCAST",
    "PACKET_HOST",
    "PACKET_MULTICAST",
    "PACKET_OTHERHOST",
    "PACKET_OUTGOING",
    "TP_STATUS_CSUMNOTREADY",
    "TP_STATUS_CSUM_VALID",
    "TP_STATUS_VLAN_VALID",
    "DatagramReceived",
    "Event",
    "EndpointConfig",
    "ErrorReceived",
    "FrameMeta",
    "OutgoingFrame",
    "UdpEngine",
]

_ZERO_MAC = bytes(6)
_ADDR_CACHE_MAX = 4096


@dataclass(slots=True)
class _Pending:
    """Frames built while the next hop's MAC is unknown; the destination MAC is patched in on release."""

    frames: list[bytearray]
    ifindex: int
    size: int


@dataclass
class _Counters:
    received: int = 0
    delivered: int = 0
    sent: int = 0
    sent_by_kernel: int = 0
    events: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


class UdpEngine:
    """The sans-IO UDP/IP engine of one endpoint. See the module docstring."""

    def __init__(
        self,
        config: EndpointConfig,
        local_addresses: LocalAddresses,
        *,
        neighbours: NeighbourCache[_Pending] | None = None,
    ) -> None:
        if config.family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {config.family!r}")
        self.config = config
        self._local = local_addresses
        self._neigh: NeighbourCache[_Pending] = (
            neighbours if neighbours is not None else NeighbourCache()
        )
        self._events: deque[Event] = deque()
        self._out: deque[OutgoingFrame] = deque()
        self._counters = _Counters()
        self._ident = 0
        self._ident6 = 0
        self._addr_cache: dict[tuple[bytes, int, int], tuple[str, int] | tuple[str, int, int, int]]
        self._addr_cache = {}
        # Interfaces' own (mac, addresses) are needed to answer "is this ARP reply for us": the
        # boundary passes them with every route, and we remember the MAC of each interface we used.
        self._if_macs: dict[int, bytes] = {}
        # The source address last used on each (interface, family), for ARP/NS requests.
        self._last_sources: dict[tuple[int, int], bytes] = {}
        self._rx_limit: dict[int, int] = {}
        self._reasm = Reassembler() if config.reassemble else None

    # ----------------------------------------------------------------------------------- state in
    def set_local_addresses(self, local_addresses: LocalAddresses) -> None:
        """Replace the snapshot of the host's addresses (after a netlink change)."""
        self._local = local_addresses

    def set_link_mtus(self, mtus: dict[int, int]) -> None:
        """Tell the engine each interface's MTU, to recognise unsplit GSO super-frames on receive."""
        # Link header + one VLAN tag of slack above the MTU; anything longer did not come off a wire
        # as one frame (RAWPATH.md trap 2: a UDP_SEGMENT send reaches taps as one super-frame).
        self._rx_limit = {i: mtu + 18 for i, mtu in mtus.items()}

    def forget_interface(self, ifindex: int) -> None:
        """The interface went away: give up resolutions through it."""
        for failed in self._neigh.forget(ifindex):
            self._fail_pending(failed.dropped)
        self._if_macs.pop(ifindex, None)

    # ------------------------------------------------------------------------------------ receive
    def receive_frame(
        self, frame: bytes | bytearray | memoryview, meta: FrameMeta, now: float
    ) -> None:
        """Check one frame as the kernel would have and queue the datagram or reply it carries.

        Never raises for anything in ``frame``: bad frames are dropped and counted by reason.
        """
        c = self._counters
        c.received += 1
        # packet_rcv()/tpacket_rcv() deliver these to taps; the IP stack never sees them as ours.
        if meta.pkttype == PACKET_OUTGOING:
            c.drop("outgoing")
            return
        if meta.pkttype == PACKET_OTHERHOST:
            c.drop("otherhost")
            return
        if meta.truncated:
            c.drop("truncated")
            return
        if meta.hatype not in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
            c.drop("unsupported_link")
            return
        # A tag the device stripped into metadata, on a device with no VLAN upper: vlan_do_receive()
        # finds no VLAN device and the frame is dropped before ip_rcv().
        if meta.status & TP_STATUS_VLAN_VALID:
            c.drop("vlan_no_device")
            return
        if len(frame) > self._rx_limit.get(meta.ifindex, 65600):
            c.drop("gso_unsplit")
            return
        if len(frame) >= 14:
            ethertype = (frame[12] << 8) | frame[13]
            if ethertype == ETH_P_ARP or (
                ethertype == ETH_P_IPV6 and len(frame) >= 21 and frame[20] == IPPROTO_ICMPV6
            ):
                self._receive_neighbour(frame, meta, now)
                return
        verify = not (meta.status & CSUM_VOUCHED)
        try:
            d = parse_udp_fast(frame, verify) or parse_udp(frame, verify_udp_checksum=verify)
        except MalformedPacketError as exc:
            if self._reasm is not None and exc.reason in _FRAGMENT_REASONS:
                # Off the hot path: only frames the parser refused as fragments get here.
                self._receive_fragment(frame, meta, now)
                return
            c.drop(exc.reason)
            return
        if d.vlan_id is not None:
            c.drop("vlan_no_device")
            return
        reason = self._check_addresses(d.family, d.src, d.dst, d.src_port, d.dst_port, meta)
        if reason is not None:
            c.drop(reason)
            return
        c.delivered += 1
        self._events.append(DatagramReceived(d.payload, self._peer_tuple(d.src, d.src_port, meta)))

    def _receive_fragment(
        self, frame: bytes | bytearray | memoryview, meta: FrameMeta, now: float
    ) -> None:
        """Hand a fragment to the reassembler; check and deliver the datagram it completes.

        The reassembler counts the frames it holds, merges or drops (``stats()["reassembly"]``); a
        completed datagram then goes through the UDP checks (checksum always verified: the status
        the kernel gave each fragment says nothing about the whole) and the address checks.
        """
        assert self._reasm is not None
        r = self._reasm.receive(frame, now, meta.ifindex)
        if r is None:
            return
        c = self._counters
        try:
            sport, dport, payload = udp_datagram(r)
        except MalformedPacketError as exc:
            c.drop(exc.reason)
            return
        reason = self._check_addresses(r.family, r.src, r.dst, sport, dport, meta)
        if reason is not None:
            c.drop(reason)
            return
        c.delivered += 1
        self._events.append(DatagramReceived(payload, self._peer_tuple(r.src, sport, meta)))

    def _check_addresses(
        self, family: int, src: bytes, dst: bytes, sport: int, dport: int, meta: FrameMeta
    ) -> str | None:
        """The address checks of ip_rcv_core/ip_route_input_slow/ip6_rcv_core and the socket lookup."""
        cfg = self.config
        loopback_dev = meta.hatype == ARPHRD_LOOPBACK
        if dport != cfg.local_port:
            return "wrong_port"
        brd_input = False
        if family == 4:
            if cfg.family == 6 and not cfg.dual_stack:
                return "wrong_family"
            # ip_route_input_slow(): "if (ipv4_is_lbcast(daddr) || (saddr == 0 && daddr == 0))
            # goto brd_input" comes before the martian checks: DHCP's 0.0.0.0 -> 255.255.255.255.
            brd_input = src == ZERO4 and dst in (LBCAST4, ZERO4)
            if brd_input:
                pass
            elif v4_martian_source(src):
                return "martian_source"
            if not loopback_dev and (v4_loopback(src) or v4_loopback(dst)):
                # ip_route_input_slow(): 127/8 on a non-loopback device is martian (route_localnet=0).
                return "martian_source" if v4_loopback(src) else "martian_destination"
            if dst == ZERO4 and not brd_input:
                return "martian_destination"
            if not loopback_dev and self._local.is_local(src):
                # fib_validate_source(): our own address as source from the wire.
                return "martian_source"
        else:
            if cfg.family == 4:
                return "wrong_family"
            if src[0] == 0xFF:
                # ip6_rcv_core(): multicast source (RFC 4291 2.7).
                return "martian_source"
            if not loopback_dev and V6_LOOPBACK in (src, dst):
                # ip6_rcv_core(): ::1 must never arrive from a wire (RFC 4291 2.5.3).
                return "martian_source" if src == V6_LOOPBACK else "martian_destination"
            if dst[0] == 0xFF and (dst[1] & 0x0F) in (0, 1) and not loopback_dev:
                # ip6_rcv_core(): reserved-scope and interface-local multicast from a wire.
                return "martian_destination"
        # The socket lookup (__udp4_lib_lookup/__udp6_lib_lookup): bound address, then connection.
        local = cfg.local_ip
        if family == 4 and cfg.family == 6:
            if local is not None:
                return "wrong_address"  # only a wildcard dual-stack socket takes IPv4
        elif local is not None:
            if dst != local:
                return "wrong_address"
        elif not (
            brd_input
            or self._local.is_local(dst)
            or (family == 4 and self._local.is_broadcast(dst))
            or dst in ALWAYS_JOINED
        ):
            return "not_local"
        if cfg.remote_ip is not None:
            remote = cfg.remote_ip
            if family == 4 and cfg.family == 6:
                remote = remote[12:] if remote[:12] == V4MAPPED_PREFIX else b""
            if src != remote or sport != cfg.remote_port:
                return "wrong_peer"
        return None

    def _peer_tuple(
        self, src: bytes, port: int, meta: FrameMeta
    ) -> tuple[str, int] | tuple[str, int, int, int]:
        key = (src, port, meta.ifindex)
        addr = self._addr_cache.get(key)
        if addr is None:
            if self.config.family == 4:
                addr = (str(ipaddress.IPv4Address(src)), port)
            else:
                if len(src) == 4:
                    src = V4MAPPED_PREFIX + src
                # recvfrom() fills sin6_scope_id only for link-local sources (ipv6_iface_scope_id()).
                scope = meta.ifindex if src[0] == 0xFE and (src[1] & 0xC0) == 0x80 else 0
                addr = (ipv6_text(src), port, 0, scope)
            if len(self._addr_cache) >= _ADDR_CACHE_MAX:
                self._addr_cache.clear()
            self._addr_cache[key] = addr
        return addr

    def _receive_neighbour(
        self, frame: bytes | bytearray | memoryview, meta: FrameMeta, now: float
    ) -> None:
        """ARP replies (arp_process()) and neighbour advertisements (ndisc_recv_na())."""
        c = self._counters
        try:
            parsed = parse_frame(frame)
        except MalformedPacketError as exc:
            c.drop(exc.reason)
            return
        own_mac = self._if_macs.get(meta.ifindex)
        sender_mac: bytes | None
        if isinstance(parsed.net, ARP):
            arp = parsed.net
            if arp.op != 2:
                c.drop("arp_not_reply")
                return
            if not self._local.is_local(arp.target_ip):
                c.drop("arp_not_for_us")
                return
            if self._local.is_local(arp.sender_ip) or arp.sender_mac == own_mac:
                c.drop("arp_from_self")
                return
            address, sender_mac = arp.sender_ip, arp.sender_mac
        elif isinstance(parsed.transport, NeighborAdvertisement):
            na = parsed.transport
            if not na.solicited:
                c.drop("nd_unsolicited")
                return
            sender_mac = na.target_lladdr or parsed.eth.src
            if self._local.is_local(na.target) or sender_mac == own_mac:
                c.drop("nd_from_self")
                return
            address = na.target
        else:
            # Another ICMPv6 message, or a UDP frame inside IPv6 with ICMPv6 as first next header is
            # impossible; either way it is not ours to deliver.
            c.drop("not_udp")
            return
        if sender_mac[0] & 1 or sender_mac == _ZERO_MAC:
            c.drop("neighbour_bad_mac")
            return
        released = self._neigh.handle_reply(meta.ifindex, address, sender_mac, now)
        for pending in released:
            self._release(pending, sender_mac)

    # --------------------------------------------------------------------------------------- send
    def send_datagram(
        self,
        data: bytes | bytearray | memoryview,
        addr: tuple[bytes, int],
        route: Route,
        now: float,
    ) -> None:
        """Build the frames for one datagram to ``addr`` (raw IP bytes, port) along ``route``.

        Raises the ``OSError`` the kernel's ``udp_sendmsg()`` would have raised; otherwise the frames
        are queued (now, or once the next hop is resolved).
        """
        dst, dport = addr
        size = len(data)
        v4 = len(dst) == 4
        if size > (MAX_UDP4_PAYLOAD if v4 else MAX_UDP6_PAYLOAD):
            raise OSError(errno.EMSGSIZE, "Message too long")
        if route.kind is _UNICAST and not route.noarp:
            # The per-datagram fast path: a unicast next hop whose MAC is confirmed, a datagram
            # that fits the MTU. One header build, one frame, no intermediate copies.
            mac = self._neigh.reachable(route.ifindex, route.next_hop, now)
            if mac is not None and size + (28 if v4 else 48) <= route.mtu:
                frame = build_udp_fast(mac, route.src_mac, route.source, dst,
                                       self.config.local_port, dport, data, self.config.ttl)  # fmt: skip
                self._out.append(OutgoingFrame(frame, route.ifindex, size))
                self._counters.sent += 1
                return
        self._send_slow(data, dst, dport, size, route, now)

    def _send_slow(
        self,
        data: bytes | bytearray | memoryview,
        dst: bytes,
        dport: int,
        size: int,
        route: Route,
        now: float,
    ) -> None:
        """Everything but the fast path: broadcast/multicast/local, resolution, fragmentation."""
        if route.kind is RouteKind.BROADCAST and not self.config.allow_broadcast:
            # udp_sendmsg(): RTCF_BROADCAST without SO_BROADCAST.
            raise PermissionError(errno.EACCES, "Permission denied")
        self._if_macs[route.ifindex] = route.src_mac
        ttl = self.config.ttl
        if route.kind is RouteKind.MULTICAST:
            dst_mac: bytes | None = multicast_mac(dst)
            ttl = self.config.multicast_ttl
        elif route.kind is RouteKind.BROADCAST:
            dst_mac = BROADCAST_MAC
        elif route.noarp or route.kind is RouteKind.LOCAL:
            dst_mac = _ZERO_MAC
        else:
            dst_mac = None
        src_mac = route.src_mac if not (route.noarp or route.kind is RouteKind.LOCAL) else _ZERO_MAC
        if dst_mac is None:
            # Ask first with an empty placeholder: when the MAC is known the frames are built once,
            # with it; when not, the queued placeholder is filled in afterwards.
            pending = _Pending([], route.ifindex, size)
            mac = self._neigh.resolve(route.ifindex, route.next_hop, pending, now)
            if self._neigh.has_requests:  # a new resolution, or a stale entry's re-probe
                self._queue_neighbour_requests(route)
            if mac is None:
                built = self._build(data, route, dst, dport, _ZERO_MAC, src_mac, ttl)
                pending.frames = [bytearray(f) for f in built]
                return
            dst_mac = mac
        frames = self._build(data, route, dst, dport, dst_mac, src_mac, ttl)
        last = len(frames) - 1
        for i, f in enumerate(frames):
            self._out.append(OutgoingFrame(f, route.ifindex, size if i == last else 0))
        self._counters.sent += 1

    def _build(
        self,
        data: bytes | bytearray | memoryview,
        route: Route,
        dst: bytes,
        dport: int,
        dst_mac: bytes,
        src_mac: bytes,
        ttl: int,
    ) -> list[bytes]:
        sport = self.config.local_port
        src = route.source
        if len(dst) == 4:
            self._ident = (self._ident + 1) & 0xFFFF
            if len(data) + 28 > route.mtu:
                # ip_fragment(): the kernel fragments locally (IP_PMTUDISC_WANT is UDP's default).
                return build_ipv4_fragments(
                    dst_mac,
                    src_mac,
                    src,
                    dst,
                    sport,
                    dport,
                    data,
                    ttl=ttl,
                    ident=self._ident,
                    mtu=route.mtu,
                )
            return [build_udp(dst_mac, src_mac, src, dst, sport, dport, data, ttl=ttl, ident=0)]
        if len(data) + 48 > route.mtu:
            # ip6_fragment(): a UDP socket fragments at the source (IPV6_PMTUDISC_WANT).
            self._ident6 = (self._ident6 + 1) & 0xFFFFFFFF
            return build_ipv6_fragments(
                dst_mac,
                src_mac,
                src,
                dst,
                sport,
                dport,
                data,
                mtu=route.mtu,
                ident=self._ident6,
                hop_limit=ttl,
            )
        return [build_udp(dst_mac, src_mac, src, dst, sport, dport, data, hop_limit=ttl)]

    def _release(self, pending: _Pending, mac: bytes) -> None:
        last = len(pending.frames) - 1
        for i, f in enumerate(pending.frames):
            f[0:6] = mac
            self._out.append(
                OutgoingFrame(bytes(f), pending.ifindex, pending.size if i == last else 0)
            )
        self._counters.sent += 1

    def _queue_neighbour_requests(self, route: Route | None = None) -> None:
        for req in self._neigh.requests_to_send():
            src_mac = self._if_macs.get(req.ifindex)
            source = self._request_source(req.ifindex, req.address, route)
            if src_mac is None or source is None:
                self._counters.drop("neighbour_no_source")
                continue
            if len(req.address) == 4:
                frame = build_arp_request(src_mac, source, req.address)
                if req.unicast_mac is not None:
                    frame = req.unicast_mac + frame[6:]
            else:
                frame = build_neighbor_solicitation(src_mac, source, req.address)
                if req.unicast_mac is not None:
                    frame = req.unicast_mac + frame[6:]
            self._out.append(OutgoingFrame(frame, req.ifindex, 0))

    def _request_source(self, ifindex: int, target: bytes, route: Route | None) -> bytes | None:
        # arp_solicit(): prefer the source of the datagram that triggered the request, else any
        # address of the interface in the same family.
        if route is not None and route.ifindex == ifindex and len(route.source) == len(target):
            self._last_sources[(ifindex, len(target))] = route.source
            return route.source
        return self._last_sources.get((ifindex, len(target)))

    # ------------------------------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` must run, or ``None``."""
        when = self._neigh.get_timer()
        if self._reasm is not None:
            expiry = self._reasm.get_timer()
            if expiry is not None and (when is None or expiry < when):
                when = expiry
        return when

    def handle_timer(self, now: float) -> None:
        """Retransmit neighbour requests, give up on failed ones, expire stale fragments."""
        if self._reasm is not None:
            self._reasm.handle_timer(now)
        for failed in self._neigh.handle_timer(now):
            self._fail_pending(failed.dropped)
        self._queue_neighbour_requests()

    def _fail_pending(self, dropped: tuple[_Pending, ...]) -> None:
        if not dropped:
            return
        self._counters.drop("neighbour_failed", len(dropped))
        if self.config.remote_ip is not None:
            # arp_error_report() -> ICMP host unreachable to ourselves -> sk_err on a connected socket.
            self._events.append(ErrorReceived(OSError(errno.EHOSTUNREACH, "No route to host")))

    # -------------------------------------------------------------------------------------- drain
    def events(self) -> list[Event]:
        """Take the queued events (received datagrams and errors), oldest first."""
        out = list(self._events)
        self._events.clear()
        return out

    def next_event(self) -> Event | None:
        """Take the oldest queued event, or ``None``."""
        return self._events.popleft() if self._events else None

    def frames_to_send(self) -> list[OutgoingFrame]:
        """Take the frames to write, oldest first."""
        out = list(self._out)
        self._out.clear()
        return out

    @property
    def pending_resolution(self) -> int:
        """Datagrams waiting for their next hop's MAC (they leave, or fail, when it resolves)."""
        return self._neigh.pending

    @property
    def has_output(self) -> bool:
        """True when :meth:`frames_to_send` would return something."""
        return bool(self._out)

    def stats(self) -> dict[str, object]:
        """Counters: frames received, datagrams delivered and sent, drops by reason, neighbour stats.

        Fragments the reassembler dropped are in ``dropped`` too (one per frame). With
        ``r = stats["reassembly"]``: ``received == delivered + dropped_total + r["pending"] +
        r["merged"]`` (a reassembled datagram counts as its first frame; ``merged`` the others).
        """
        c = self._counters
        dropped = dict(c.dropped)
        reassembly: dict[str, object] = {}
        if self._reasm is not None:
            reassembly = self._reasm.stats()
            for reason, n in self._reasm.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + n
        return {
            "received": c.received,
            "delivered": c.delivered,
            "sent": c.sent,
            "sent_by_kernel": c.sent_by_kernel,
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            **c.events,
            "neighbour": dict(self._neigh.stats),
            "reassembly": reassembly,
        }

    def count_event(self, name: str) -> None:
        """Count something that is not a drop (e.g. ``tx_enobufs``: a full device queue, retried)."""
        self._counters.events[name] = self._counters.events.get(name, 0) + 1

    def count_sent_by_kernel(self) -> None:
        """Record a datagram the boundary handed to the kernel's UDP path instead (see endpoint)."""
        self._counters.sent += 1
        self._counters.sent_by_kernel += 1

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Record a drop the boundary saw (e.g. a GSO frame it could not split)."""
        self._counters.drop(reason, n)


_UNICAST = RouteKind.UNICAST
_FRAGMENT_REASONS = frozenset(("ipv4_fragment", "ipv6_fragment"))
