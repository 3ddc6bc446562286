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
from collections.abc import Callable
from typing import Any

from rawtransport.datapath import ACCEL
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
from rawtransport.host import (
    FRAGMENT_REASONS,
    Counters,
    Host,
    Pending,
    host_unreachable,
    is_neighbour_frame,
    link_drop,
    mapped_remote,
)
from rawtransport.neighbour import NeighbourCache
from rawtransport.packet import (
    BROADCAST_MAC,
    build_ipv4_fragments,
    build_ipv6_fragments,
    build_udp,
    build_udp_fast,
    multicast_mac,
    parse_udp,
)
from rawtransport.packet_fast import parse_udp_fast
from rawtransport.reassembly import Reassembled, udp_datagram
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


class UdpEngine:
    """The sans-IO UDP/IP engine of one endpoint. See the module docstring."""

    def __init__(
        self,
        config: EndpointConfig,
        local_addresses: LocalAddresses | None = None,
        *,
        neighbours: NeighbourCache[Pending] | None = None,
        host: Host | None = None,
    ) -> None:
        if config.family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {config.family!r}")
        self.config = config
        # Alone (no ``host``), the engine has a host of its own and drives its timers; in a raw
        # stack the host is shared and the stack drives them (host.py).
        self._owns_host = host is None
        if host is None:
            host = Host(local_addresses, neighbours=neighbours, reassemble=config.reassemble)
        elif local_addresses is not None:
            host.set_local_addresses(local_addresses)
        self._host = host
        self._events: deque[Event] = deque()
        self._out: deque[OutgoingFrame] = deque()
        self._counters = Counters()
        self._ident = 0
        self._ident6 = 0
        self._addr_cache: dict[tuple[bytes, int, int], tuple[str, int] | tuple[str, int, int, int]]
        self._addr_cache = {}
        # Datagrams of this endpoint queued in the (maybe shared) neighbour table.
        self._pending = 0
        # The compiled receive path's entry for this endpoint (set_fast_protocol()).
        self._fast: Any = None
        # The compiled send path's templates (fast_sender), and the frame and route of the last
        # datagram the send fast branch built (take_built()).
        self._sender: Any = None
        self._built: tuple[bytes, Route] | None = None
        if not self._owns_host:
            host.register(self)

    @property
    def host(self) -> Host:
        """The shared state (addresses, neighbour table, reassembly, socket table) in use."""
        return self._host

    # ----------------------------------------------------------------------------------- state in
    def set_local_addresses(self, local_addresses: LocalAddresses) -> None:
        """Replace the snapshot of the host's addresses (after a netlink change)."""
        self._host.set_local_addresses(local_addresses)

    def set_link_mtus(self, mtus: dict[int, int]) -> None:
        """Tell the engine each interface's MTU, to recognise unsplit GSO super-frames on receive."""
        self._host.set_link_mtus(mtus)

    def forget_interface(self, ifindex: int) -> None:
        """The interface went away: give up resolutions through it."""
        self._host.forget_interface(ifindex)

    def close(self) -> None:
        """Leave the host's socket table (frames for this endpoint are then ``no_socket``)."""
        if self._fast is not None:
            self._fast.protocol = None
        if not self._owns_host:
            self._host.unregister(self)

    def score(self, src: bytes, dst: bytes, sport: int, ifindex: int) -> int:
        """``compute_score()`` of this endpoint for a datagram (see :meth:`Host.lookup`); -1 when
        a field it is bound or connected to does not match."""
        cfg = self.config
        if len(dst) == 4:
            if cfg.family == 4:
                score = 2
            elif cfg.dual_stack:
                score = 1
            else:
                return -1
        elif cfg.family == 6:
            score = 0
        else:
            return -1
        if cfg.local_ip is not None:
            if dst != cfg.local_ip:
                return -1
            score += 4
        if cfg.remote_ip is not None:
            if src != mapped_remote(cfg.remote_ip, 4 if len(dst) == 4 else 6, cfg.family):
                return -1
            # A socket connected to port 0 matches any source port (inet_dport 0 in compute_score()).
            if cfg.remote_port and sport != cfg.remote_port:
                return -1
            score += 8
        if cfg.ifindex:
            if ifindex != cfg.ifindex:
                return -1
            score += 4
        return score

    # ------------------------------------------------------------------------------------ receive
    def receive_frame(
        self, frame: bytes | bytearray | memoryview, meta: FrameMeta, now: float
    ) -> None:
        """Check one frame as the kernel would have and queue the datagram or reply it carries.

        Never raises for anything in ``frame``: bad frames are dropped and counted by reason.
        """
        c = self._counters
        c.received += 1
        reason = link_drop(meta, len(frame), self._host.rx_limit)
        if reason is not None:
            c.drop(reason)
            return
        if is_neighbour_frame(frame):
            self._host.receive_neighbour(frame, meta, now, c)
            return
        verify = not (meta.status & CSUM_VOUCHED)
        try:
            d = parse_udp_fast(frame, verify) or parse_udp(frame, verify_udp_checksum=verify)
        except MalformedPacketError as exc:
            if self._host.reasm is not None and exc.reason in FRAGMENT_REASONS:
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
        self._events.append(
            DatagramReceived(d.payload, self.peer_address(d.src, d.src_port, meta.ifindex))
        )

    def _receive_fragment(
        self, frame: bytes | bytearray | memoryview, meta: FrameMeta, now: float
    ) -> None:
        """Hand a fragment to the reassembler; check and deliver the datagram it completes.

        The reassembler counts the frames it holds, merges or drops (``stats()["reassembly"]``); a
        completed datagram then goes through the UDP checks (checksum always verified: the status
        the kernel gave each fragment says nothing about the whole) and the address checks.
        """
        assert self._host.reasm is not None
        r = self._host.reasm.receive(frame, now, meta.ifindex)
        if r is not None:
            self._deliver_reassembled(r, meta)

    def receive_reassembled(self, r: Reassembled, meta: FrameMeta) -> None:
        """A datagram the shared reassembler completed for this endpoint: counted as one frame
        received, and in ``reassembled`` (the host counted its fragments)."""
        self._counters.received += 1
        self._counters.event("reassembled")
        self._deliver_reassembled(r, meta)

    def _deliver_reassembled(self, r: Reassembled, meta: FrameMeta) -> None:
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
        self._events.append(
            DatagramReceived(payload, self.peer_address(r.src, sport, meta.ifindex))
        )

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
            if not loopback_dev and self._host.local.is_local(src):
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
            if not (
                self._host.local.is_local(dst)
                or (family == 4 and (self._host.local.is_broadcast(dst) or 224 <= dst[0] < 240))
                or (family == 6 and dst[0] == 0xFF)
            ):
                # ip_route_input_slow(): an address removed since bind() is no longer RTN_LOCAL,
                # and the kernel neither delivers to a socket bound to it nor forwards the datagram.
                return "not_local"
        elif not (
            brd_input
            or self._host.local.is_local(dst)
            or (family == 4 and self._host.local.is_broadcast(dst))
            or dst in ALWAYS_JOINED
        ):
            return "not_local"
        if cfg.remote_ip is not None:
            remote = mapped_remote(cfg.remote_ip, family, cfg.family)
            if src != remote or (cfg.remote_port and sport != cfg.remote_port):
                return "wrong_peer"
        return None

    def peer_address(
        self, src: bytes, port: int, ifindex: int
    ) -> tuple[str, int] | tuple[str, int, int, int]:
        """The address ``recvfrom()`` would give for a datagram from ``src`` (raw bytes) and
        ``port`` that came in on ``ifindex``: ``(host, port)``, or for an IPv6 socket ``(host,
        port, flowinfo, scope_id)``. Cached."""
        key = (src, port, ifindex)
        addr = self._addr_cache.get(key)
        if addr is None:
            if self.config.family == 4:
                addr = (str(ipaddress.IPv4Address(src)), port)
            else:
                if len(src) == 4:
                    src = V4MAPPED_PREFIX + src
                # recvfrom() fills sin6_scope_id only for link-local sources (ipv6_iface_scope_id()).
                scope = ifindex if src[0] == 0xFE and (src[1] & 0xC0) == 0x80 else 0
                addr = (ipv6_text(src), port, 0, scope)
            if len(self._addr_cache) >= _ADDR_CACHE_MAX:
                self._addr_cache.clear()
            self._addr_cache[key] = addr
        return addr

    def set_fast_protocol(
        self, protocol: object | None, report: Callable[[BaseException], object]
    ) -> None:
        """Let the host's compiled receive path call ``protocol.datagram_received(data, addr)``
        itself for the frames it can take for this endpoint (``None``: stop; every frame then
        queues a :class:`DatagramReceived` as before). Only while the caller would dispatch
        those events at once, in order (no event waiting): the compiled path delivers in ring
        order but ahead of anything queued. An exception from the protocol goes to ``report``.

        Frames it delivers count in :meth:`stats` as received and delivered. No-op on the pure
        path (and for an engine that owns its host, which no ring feeds).
        """
        host = self._host
        if host.fast is None or self._owns_host:
            return
        if self._fast is None:
            if protocol is None:
                return
            cfg = self.config
            self._fast = ACCEL.FastEntry(  # type: ignore[union-attr]
                cfg.family, cfg.local_ip, cfg.remote_ip, cfg.remote_port or 0, cfg.ifindex,
                self.peer_address, report,
            )  # fmt: skip
            host.set_fast(self, self._fast)
        self._fast.protocol = protocol

    @property
    def fast_sender(self) -> Any:
        """This endpoint's ``_datapath.FastSender`` (its send templates, kept in step by the
        host), or ``None`` on the pure path and for an engine that owns its host."""
        if self._sender is None and ACCEL is not None and not self._owns_host:
            self._sender = ACCEL.FastSender()
            self._host.add_sender(self._sender)
        return self._sender

    def take_built(self) -> tuple[bytes, Route] | None:
        """The frame and route of the datagram the last :meth:`send_datagram` built on its fast
        branch (a REACHABLE unicast next hop, one frame), or ``None``; forgotten once taken. The
        transport makes it the template of that destination once the frame has left."""
        built, self._built = self._built, None
        return built

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
        self._built = None
        dst, dport = addr
        size = len(data)
        v4 = len(dst) == 4
        if size > (MAX_UDP4_PAYLOAD if v4 else MAX_UDP6_PAYLOAD):
            raise OSError(errno.EMSGSIZE, "Message too long")
        if route.kind is _UNICAST and not route.noarp:
            # The per-datagram fast path: a unicast next hop whose MAC is confirmed, a datagram
            # that fits the MTU. One header build, one frame, no intermediate copies.
            mac = self._host.neigh.reachable(route.ifindex, route.next_hop, now)
            if mac is not None and size + (28 if v4 else 48) <= route.mtu:
                frame = build_udp_fast(mac, route.src_mac, route.source, dst,
                                       self.config.local_port, dport, data, self.config.ttl)  # fmt: skip
                self._out.append(OutgoingFrame(frame, route.ifindex, size))
                self._counters.sent += 1
                self._built = (frame, route)
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
        host = self._host
        host.if_macs[route.ifindex] = route.src_mac
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
            pending = Pending([], route.ifindex, size, self)
            held = host.neigh.pending
            mac = host.neigh.resolve(route.ifindex, route.next_hop, pending, now)
            if host.neigh.pending > held:
                self._pending += 1
            if host.neigh.has_requests:  # a new resolution, or a stale entry's re-probe
                host.invalidate_tx()
                host.queue_requests(self._out, self._counters, route)
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

    def release(self, pending: Pending, mac: bytes) -> None:
        """The next hop of a queued datagram resolved to ``mac``: its frames leave."""
        self._pending -= 1
        last = len(pending.frames) - 1
        for i, f in enumerate(pending.frames):
            f[0:6] = mac
            self._out.append(
                OutgoingFrame(bytes(f), pending.ifindex, pending.size if i == last else 0)
            )
        self._counters.sent += 1

    def fail(self, pending: Pending) -> None:
        """A queued datagram's next hop did not answer: drop it, and tell a connected socket."""
        self._pending -= 1
        self._counters.drop("neighbour_failed")
        if self.config.remote_ip is not None:
            self._events.append(host_unreachable())

    # ------------------------------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` must run, or ``None`` (always ``None`` in a raw
        stack, whose shared host has the timers)."""
        return self._host.get_timer() if self._owns_host else None

    def handle_timer(self, now: float) -> None:
        """Retransmit neighbour requests, give up on failed ones, expire stale fragments."""
        if not self._owns_host:
            return
        host = self._host
        host.handle_timer(now)
        self._out.extend(host.out)
        host.out.clear()
        host.take_touched()

    # -------------------------------------------------------------------------------------- drain
    def events(self) -> list[Event]:
        """Take the queued events (received datagrams and errors), oldest first."""
        out = list(self._events)
        self._events.clear()
        return out

    def frames_to_send(self) -> list[OutgoingFrame]:
        """Take the frames to write, oldest first."""
        out = list(self._out)
        self._out.clear()
        return out

    @property
    def pending_resolution(self) -> int:
        """Datagrams waiting for their next hop's MAC (they leave, or fail, when it resolves)."""
        return self._pending

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
        fast = self._fast.taken if self._fast is not None else 0
        dropped = dict(c.dropped)
        reassembly: dict[str, object] = {}
        reasm = self._host.reasm
        if reasm is not None:
            reassembly = reasm.stats()
            if self._owns_host:
                for reason, n in reasm.dropped.items():
                    dropped[reason] = dropped.get(reason, 0) + n
        fast_sent = self._sender.sent if self._sender is not None else 0
        return {
            "received": c.received + fast,
            "delivered": c.delivered + fast,
            "sent": c.sent + fast_sent,
            "sent_by_kernel": c.sent_by_kernel,
            # Of those, what the compiled paths took (rawtransport/_deliver.c, _send.c).
            "compiled_delivered": fast,
            "compiled_sent": fast_sent,
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            **c.events,
            "neighbour": dict(self._host.neigh.stats),
            "reassembly": reassembly,
        }

    def count_event(self, name: str) -> None:
        """Count something that is not a drop (e.g. ``tx_enobufs``: a full device queue, retried)."""
        self._counters.event(name)

    def count_sent_by_kernel(self) -> None:
        """Record a datagram the boundary handed to the kernel's UDP path instead (see endpoint)."""
        self._counters.sent += 1
        self._counters.sent_by_kernel += 1

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Record a drop the boundary saw (e.g. a GSO frame it could not split)."""
        self._counters.drop(reason, n)


_UNICAST = RouteKind.UNICAST
