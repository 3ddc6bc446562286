"""The synchronous I/O side of one raw UDP endpoint, shared by the asyncio and the anyio glue.

It owns the sockets — the guard UDP socket that holds the address and port, the filtered receiving
packet socket, the per-interface sending packet sockets, the rtnetlink client and monitor — and moves
bytes between them and the sans-IO :class:`~rawtransport.engine.UdpEngine`. It never blocks and never
waits: the event-loop glue calls :meth:`RawUdpEndpoint.read_ready` when the packet socket is readable,
:meth:`RawUdpEndpoint.write_frames` when there is something to send, and so on.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterable
from typing import Any

from rawtransport.addresses import parse_address
from rawtransport.bpf_filter import endpoint_filter
from rawtransport.datapath import DATAPATH
from rawtransport.engine import EndpointConfig, Event, OutgoingFrame, UdpEngine
from rawtransport.link import PacketSender
from rawtransport.netlink import Rtnl, RtnlMonitor
from rawtransport.nft import BypassSpec, NftBypass, NftError
from rawtransport.ring_setup import RX_MODES, Receiver, TxRing, open_receiver
from rawtransport.route import (
    LOOPBACK_IFINDEX,
    LinkInfo,
    LocalAddresses,
    Route,
    RouteCache,
    RouteKind,
)
from rawtransport.workers import close_in_background

# parse_address, open_receiver and RX_MODES are re-exported: callers found them here first.
__all__ = ["RX_MODES", "TX_MODES", "RawUdpEndpoint", "open_receiver", "parse_address"]

Sender = PacketSender | TxRing

#: ``tx_mode`` values: ``"ring"`` (a PACKET_TX_RING per interface, one ``send()`` per batch) or
#: ``"direct"`` (one ``send()`` per frame). See ``create_raw_datagram_endpoint`` for the trade-off.
TX_MODES = ("ring", "direct")
#: Slots per transmit ring (``None``: :data:`rawtransport.ring_setup.TX_DEFAULT_SLOTS`).
TX_RING_SLOTS: int | None = None
# Links whose frames are too large for a ring of sensible size (loopback's 64 KiB) send directly.
_TX_RING_MAX_MTU = 9216

# How often (seconds) the send path looks for routing/address changes when no loop callback has.
_NETLINK_CHECK_INTERVAL = 0.001
SO_BUSY_POLL = 46  # <asm-generic/socket.h>; not exported by Python's socket module
_ARPHRD_ETHER = 1
# The spin keeps other tasks waiting: bound it (a callback spins at most read_budget times this).
_MAX_SPIN_US = 10_000


def _family_number(family: int) -> int:
    return 4 if family == socket.AF_INET else 6


class RawUdpEndpoint:
    """Sockets + engine of one endpoint. Construct with :meth:`open`; close with :meth:`close`."""

    def __init__(
        self,
        guard: socket.socket,
        engine: UdpEngine,
        receiver: Receiver,
        rtnl: Rtnl,
        monitor: RtnlMonitor,
        *,
        interface: int | None,
        qdisc_bypass: bool,
        home_ifindex: int | None = None,
        tx_mode: str = "direct",
    ) -> None:
        if tx_mode not in TX_MODES:
            raise ValueError(f"tx_mode must be one of {TX_MODES}, not {tx_mode!r}")
        #: ``"ring"`` or ``"direct"``. With ``"ring"`` the glue batches: it collects the frames of a
        #: loop iteration and writes them with one :meth:`write_frames` call (one kick).
        self.tx_mode = tx_mode
        self.guard = guard
        self.engine = engine
        self.receiver = receiver
        self._rtnl = rtnl
        self._monitor = monitor
        self._oif = interface
        self._qdisc_bypass = qdisc_bypass
        self._senders: dict[int, Sender] = {}
        self._routes = RouteCache()
        self._addr_cache: dict[tuple[Any, ...], tuple[bytes, int]] = {}
        self._links: dict[int, LinkInfo] = {}
        self._netlink_checked = -1.0
        self.family = guard.family
        self.closed = False
        #: The interface the endpoint is tied to (``interface=``, or the one holding the bound
        #: address). If it vanishes the endpoint cannot work again: ``lost`` says why.
        self.home_ifindex = home_ifindex
        self.lost: OSError | None = None
        #: The nftables ingress drop of ``kernel_bypass`` (set by :meth:`open`), or None.
        self.bypass: NftBypass | None = None
        #: Microseconds :meth:`spin` polls the receiver for a frame before giving up (0: never).
        self.spin_us = 0
        self._refresh()

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def open(
        cls,
        guard: socket.socket,
        *,
        remote: tuple[bytes, int] | None = None,
        allow_broadcast: bool = False,
        interface: str | None = None,
        qdisc_bypass: bool = False,
        rcvbuf: int | None = None,
        rx_mode: str = "ring",
        kernel_bypass: bool = False,
        busy_poll: int | None = None,
        spin_us: int | None = None,
        tx_mode: str = "direct",
    ) -> RawUdpEndpoint:
        """Build the endpoint around a bound (and maybe connected) guard UDP socket.

        The guard is an ordinary UDP socket: it reserves the address and port (so the kernel picks
        ephemeral ports, reports EADDRINUSE, and sends no ICMP port-unreachable for our port) and, being
        connected when the endpoint is, receives the kernel's ICMP errors. A drop-all filter keeps
        every datagram off it.

        ``kernel_bypass``, ``busy_poll`` and ``spin_us``: see :meth:`_fast_path`. ``tx_mode``:
        ``"ring"`` (a ``PACKET_TX_RING`` per sending interface, a batch of frames per ``send()``)
        or ``"direct"`` (one ``send()`` per frame); see ``create_raw_datagram_endpoint``.
        """
        from rawtransport.bpf_filter import drop_all
        from rawtransport.link import attach_filter

        if tx_mode not in TX_MODES:
            raise ValueError(f"tx_mode must be one of {TX_MODES}, not {tx_mode!r}")
        family = guard.family
        local = guard.getsockname()
        local_ip = socket.inet_pton(family, local[0].split("%")[0])
        wildcard = local_ip == bytes(len(local_ip))
        fam = _family_number(family)
        dual = False
        if family == socket.AF_INET6 and wildcard:
            dual = not guard.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        attach_filter(guard, drop_all())
        rtnl = Rtnl()
        monitor = RtnlMonitor()
        try:
            ifindex = rtnl.link_by_name(interface).ifindex if interface is not None else None
            config = EndpointConfig(
                family=fam,
                local_port=local[1],
                local_ip=None if wildcard else local_ip,
                remote_ip=remote[0] if remote else None,
                remote_port=remote[1] if remote else None,
                allow_broadcast=allow_broadcast,
                dual_stack=dual,
            )
            program = endpoint_filter(
                family=0 if dual else fam,
                local_ip=config.local_ip,
                local_port=config.local_port,
                remote_ip=None if dual else config.remote_ip,
                remote_port=config.remote_port,
                # No VLAN device here: the kernel would drop tagged frames (vlan_do_receive()).
                accept_vlan=False,
                # Fragments carry the port only in the first one: let them all reach the
                # reassembler (engine.py), as ip_defrag() sees them all.
                allow_fragments=config.reassemble,
                # The resolver only ever asks from the bound address; a wildcard endpoint asks from
                # whichever address the route chose, so it takes replies to any of them.
                arp_for=config.local_ip if fam == 4 else None,
                nd_for=config.local_ip if fam == 6 else None,
                neighbour_replies=config.local_ip is None,
            )
            links = [rtnl.link(ifindex)] if ifindex is not None else rtnl.links()
            # Size ring slots for the wire; loopback's 64 KiB frames take the ring's copy path.
            wire = [x.mtu for x in links if not x.is_loopback] or [1500]
            receiver = open_receiver(
                program, rx_mode, ifindex=ifindex or 0, rcvbuf=rcvbuf, mtu=min(max(wire), 9216)
            )
            addresses = rtnl.addresses()
            home = ifindex
            if home is None and config.local_ip is not None:
                owners = [a.ifindex for a in addresses if a.address == config.local_ip]
                home = owners[0] if owners and owners[0] != LOOPBACK_IFINDEX else None
            engine = UdpEngine(config, LocalAddresses(addresses))
            endpoint = cls(
                guard,
                engine,
                receiver,
                rtnl,
                monitor,
                interface=ifindex,
                qdisc_bypass=qdisc_bypass,
                home_ifindex=home,
                tx_mode=tx_mode,
            )
        except BaseException:
            rtnl.close()
            monitor.close()
            raise
        try:
            endpoint._fast_path(kernel_bypass, busy_poll, spin_us, links)
        except BaseException:
            endpoint.close()
            raise
        return endpoint

    def _fast_path(
        self,
        kernel_bypass: bool,
        busy_poll: int | None,
        spin_us: int | None,
        links: list[LinkInfo],
    ) -> None:
        """The opt-in receive knobs, applied once the receiver is open (PERF.md points 3-4).

        ``kernel_bypass``: install an nftables netdev-ingress rule (:mod:`rawtransport.nft`) that
        drops the endpoint's datagrams after the packet socket has seen them and before the kernel's
        IP/UDP input runs; removed by :meth:`close`, and by the kernel if the process dies. Needs
        ``nft`` and CAP_NET_ADMIN (:class:`~rawtransport.nft.NftError` otherwise).

        ``busy_poll`` (µs): ``SO_BUSY_POLL`` on the receiving socket: a blocking wait on it polls the
        device queue (NAPI) first. Raising it above ``net.core.busy_read`` needs CAP_NET_ADMIN.

        ``spin_us`` (µs, at most 10 000): after each batch, the transport keeps polling the receiver
        this long for the next frame before going back to the event loop (:meth:`spin`).
        """
        if busy_poll is not None:
            if not isinstance(busy_poll, int) or isinstance(busy_poll, bool):
                raise TypeError(f"busy_poll must be an int, not {type(busy_poll).__name__}")
            if not 0 <= busy_poll <= 0x7FFFFFFF:
                raise ValueError(f"busy_poll {busy_poll} µs out of range")
            try:
                self.receiver.sock.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, busy_poll)
            except PermissionError as exc:
                raise PermissionError(
                    exc.errno,
                    "busy_poll above net.core.busy_read needs CAP_NET_ADMIN "
                    f"(sk_setsockopt(SO_BUSY_POLL)): {exc.strerror}",
                ) from None
        if spin_us is not None:
            if not isinstance(spin_us, int) or isinstance(spin_us, bool):
                raise TypeError(f"spin_us must be an int, not {type(spin_us).__name__}")
            if not 0 <= spin_us <= _MAX_SPIN_US:
                raise ValueError(f"spin_us must be within 0..{_MAX_SPIN_US}, not {spin_us}")
            self.spin_us = spin_us
        if kernel_bypass:
            cfg = self.engine.config
            spec = BypassSpec(
                family=0 if cfg.dual_stack else cfg.family,
                local_port=cfg.local_port,
                local_ip=cfg.local_ip,
                remote_ip=cfg.remote_ip,
                remote_port=cfg.remote_port,
            )
            self.bypass = NftBypass.install(
                spec,
                [link.name for link in links],
                non_ethernet={link.name for link in links if link.arphrd != _ARPHRD_ETHER},
            )

    # ------------------------------------------------------------------------------- netlink
    def _refresh(self) -> None:
        self._routes.invalidate()
        self.engine.set_local_addresses(LocalAddresses(self._rtnl.addresses()))
        links = {link.ifindex: link for link in self._rtnl.links()}
        for gone in self._links.keys() - links.keys():
            if gone == self.home_ifindex and self.lost is None:
                # packet_notifier(NETDEV_UNREGISTER) gives a bound packet socket ENETDOWN.
                self.lost = OSError(errno.ENETDOWN, f"Network is down: interface {gone} vanished")
            self.engine.forget_interface(gone)
            sender = self._senders.pop(gone, None)
            if sender is not None:
                sender.close()
        self._links = links
        self.engine.set_link_mtus({i: link.mtu for i, link in links.items()})
        if self.bypass is not None and self._oif is None:
            # kernel_bypass on every interface: cover the ones that appeared since (until then
            # their traffic takes the kernel's path, which is slower but still correct).
            try:
                self.bypass.add_interfaces(
                    [x.name for x in links.values()],
                    non_ethernet={x.name for x in links.values() if x.arphrd != _ARPHRD_ETHER},
                )
            except NftError:
                self.engine.count_event("bypass_add_failed")

    def netlink_fileno(self) -> int:
        """The rtnetlink monitor's descriptor: call :meth:`netlink_ready` when it is readable."""
        return self._monitor.fileno()

    def netlink_ready(self, now: float) -> None:
        """Apply routing, address and link changes the kernel announced."""
        self._netlink_checked = now
        if self._monitor.drain():
            self._refresh()

    def route(self, dst: bytes, now: float) -> Route:
        """The kernel's route to ``dst`` for this endpoint (cached until something changes)."""
        if now - self._netlink_checked >= _NETLINK_CHECK_INTERVAL:
            self.netlink_ready(now)
        cfg = self.engine.config
        key = (dst, cfg.local_ip if len(dst) == len(cfg.local_ip or b"") else None, self._oif)
        route = self._routes.get(key)
        if route is None:
            route = self._rtnl.route_get(dst, source=key[1], oif=self._oif)
            self._routes.put(key, route)
        return route

    # ---------------------------------------------------------------------------------- receive
    def read_ready(self, now: float, budget: int = 64) -> list[Event]:
        """Read up to ``budget`` frames into the engine; return the events they produced.

        ``BlockingIOError`` ends the batch quietly; other ``OSError`` from the socket is raised for the
        glue to report (``error_received``) after the events read so far are returned next call.
        """
        recv = self.receiver.recv
        receive_frame = self.engine.receive_frame
        for _ in range(budget):
            try:
                view, meta = recv()
            except (BlockingIOError, InterruptedError):
                break
            receive_frame(view, meta, now)
        return self.engine.events()

    def spin(self, now: float, budget: int) -> tuple[list[Event], int]:
        """Busy-poll the receiver for up to ``spin_us`` µs; read up to ``budget`` frames once one comes.

        Returns ``(events, frames read)``: as soon as a burst was read, so the glue can dispatch it
        at once, or ``([], 0)`` when ``spin_us`` passed with nothing (or ``spin_us`` is 0). This is
        the bounded spin of kernel-bypass stacks: it saves the sleep in ``epoll_wait`` and the wake-up
        when the next frame is microseconds away, at the price of a busy core. ``now`` is the loop's
        time when the spin started; events carry the time the frame was read.
        """
        if self.spin_us <= 0 or budget <= 0:
            return [], 0
        recv = self.receiver.recv
        clock = time.monotonic
        deadline = clock() + self.spin_us * 1e-6
        while True:
            try:
                view, meta = recv()
            except (BlockingIOError, InterruptedError):
                if clock() >= deadline:
                    return [], 0
                continue
            break
        now = clock()
        receive_frame = self.engine.receive_frame
        receive_frame(view, meta, now)
        n = 1
        while n < budget:
            try:
                view, meta = recv()
            except (BlockingIOError, InterruptedError):
                break
            receive_frame(view, meta, now)
            n += 1
        return self.engine.events(), n

    def guard_ready(self) -> OSError | None:
        """The guard socket is readable: only an ICMP error queued on it (sk_err) can make it so."""
        try:
            self.guard.recv(1)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return exc
        return None

    # ------------------------------------------------------------------------------------- send
    def send(self, data: bytes | bytearray | memoryview, addr: Any, now: float) -> None:
        """Hand one datagram to the engine; frames wait in ``engine.frames_to_send()``.

        Raises ``TypeError``/``OverflowError``/``socket.gaierror`` for a bad address and the
        ``OSError`` the kernel's UDP path would have raised (EINVAL for port 0, ENETUNREACH, EMSGSIZE,
        EACCES for a broadcast without ``allow_broadcast`` …).
        """
        dst, port = parse_address(addr, self.family, self._addr_cache)
        if port == 0:
            # udp_sendmsg(): "if (dport == 0) return -EINVAL"
            raise OSError(errno.EINVAL, "Invalid argument")
        if self.family == socket.AF_INET6 and dst[:12] == bytes(10) + b"\xff\xff":
            if not self.engine.config.dual_stack:
                raise OSError(errno.ENETUNREACH, "Network is unreachable")
            dst = dst[12:]
        route = self.route(dst, now)
        if route.kind is RouteKind.LOCAL and len(dst) == 4:
            # To one of this host's own IPv4 addresses: a frame injected on lo with a local (or
            # 127/8) source is a martian to ip_route_input_slow()/fib_validate_source() unless
            # accept_local/route_localnet are set, so no kernel socket would get it. The guard is a
            # kernel UDP socket with our address and port: the kernel path delivers it, and raw
            # endpoints on this host still see it on lo.
            self.guard.sendto(data, (socket.inet_ntop(socket.AF_INET, dst), port))
            self.engine.count_sent_by_kernel()
            return
        self.engine.send_datagram(data, (dst, port), route, now)

    def _sender(self, ifindex: int) -> Sender:
        sender = self._senders.get(ifindex)
        if sender is None:
            sender = self._senders[ifindex] = self._open_sender(ifindex)
        return sender

    def _open_sender(self, ifindex: int) -> Sender:
        link = self._links.get(ifindex)
        if (
            self.tx_mode == "ring"
            and link is not None
            and not link.is_loopback
            and link.mtu <= _TX_RING_MAX_MTU
        ):
            try:
                return TxRing(
                    ifindex, mtu=link.mtu, slots=TX_RING_SLOTS, qdisc_bypass=self._qdisc_bypass
                )
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    raise  # the interface is gone: as the direct sender would say
                # CAP_NET_RAW dropped after open (a new packet socket is refused), or no TX ring on
                # this kernel: frames still leave, one send() each.
                self.engine.count_event("tx_ring_unavailable")
        return PacketSender(ifindex, qdisc_bypass=self._qdisc_bypass, fallback=self.receiver.sock)

    def sender_fileno(self, ifindex: int) -> int:
        """The descriptor of the packet socket that sends on ``ifindex`` (for ``add_writer``)."""
        return self._sender(ifindex).sock.fileno()

    def write_frames(
        self, frames: Iterable[OutgoingFrame]
    ) -> tuple[list[OutgoingFrame], list[OSError], bool]:
        """Write frames in order until one cannot leave now.

        Returns ``(unsent, errors, congested)``: the frames to retry, the errors to report (a frame
        that got one is not retried, as a kernel socket's send would have failed), and whether the
        stop was ENOBUFS or a transmit ring full of frames still in flight — neither of which
        ``poll`` signals: retry after a pause. Otherwise the stop was EAGAIN (the sending socket's
        buffer is full): retry when it is writable.

        With ``tx_mode="ring"`` consecutive frames for one interface are copied into its transmit
        ring and leave with one ``send()`` (more only when they outnumber the ring's free slots).
        """
        errors: list[OSError] = []
        frames = list(frames)
        i = 0
        n = len(frames)
        while i < n:
            out = frames[i]
            sender = self._sender(out.ifindex)
            if isinstance(sender, TxRing):
                i, stop, congested = self._write_ring(sender, frames, i, errors)
                if stop:
                    return frames[i:], errors, congested
                continue
            try:
                sender.send(out.frame)
            except (BlockingIOError, InterruptedError):
                return frames[i:], errors, False
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.engine.count_event("tx_enobufs")
                    return frames[i:], errors, True
                self._send_error(exc, errors)
            i += 1
        return [], errors, False

    def _send_error(self, exc: OSError, errors: list[OSError]) -> None:
        if exc.errno in (errno.ENXIO, errno.ENODEV):
            # The device is gone (packet_snd() on an unregistered ifindex).
            self._refresh()
        errors.append(exc)

    def _write_ring(
        self, ring: TxRing, frames: list[OutgoingFrame], i: int, errors: list[OSError]
    ) -> tuple[int, bool, bool]:
        """Send ``frames[i:]`` for ``ring``'s interface through it; return ``(next, stop, congested)``.

        Nothing stays queued in the ring when this returns: frames a kick did not take are taken
        back and returned to the caller as unsent, so order and ownership stay with the caller.
        """
        ifindex = ring.ifindex
        n = len(frames)
        put = ring.put
        max_frame = ring.max_frame
        count = self.engine.count_event
        j = i  # frames[i:j] are queued in the ring
        while True:
            while j < n:
                out = frames[j]
                if out.ifindex != ifindex or len(out.frame) > max_frame or not put(out.frame):
                    break
                j += 1
            if j > i:
                count("tx_kicks")
                taken, rejected, exc = ring.kick()
                i += taken
                if rejected:
                    # TP_STATUS_WRONG_FORMAT: the kernel refused this frame (too long for the MTU,
                    # shorter than a link header ...) with the error the kick returned, as send()
                    # would have; the frames behind it are still queued.
                    count("tx_wrong_format")
                    errors.append(exc or OSError(errno.EINVAL, "frame refused by the TX ring"))
                    i += 1
                    continue
                if ring.queued:
                    # The kick stopped early: the slot it stopped on and all behind it are back
                    # to SEND_REQUEST (tpacket_snd()); take them back, unsent, in order.
                    queued = ring.unqueue()
                    if exc is None or isinstance(exc, (BlockingIOError, InterruptedError)):
                        return i, True, False  # send buffer full (a short count, or EAGAIN)
                    if exc.errno == errno.ENOBUFS:
                        count("tx_enobufs")
                        return i, True, True
                    # ENETDOWN, ENXIO ...: every queued frame fails with it, as its send() would.
                    for _ in range(queued):
                        self._send_error(exc, errors)
                    return i + queued, False, False
                j = i
                continue
            # Nothing queued, and frames[j] did not go in.
            if j >= n or frames[j].ifindex != ifindex:
                return j, False, False
            if len(frames[j].frame) > max_frame:
                # Longer than a slot (the MTU grew after the ring was made): send it on its own.
                try:
                    ring.send_direct(frames[j].frame)
                except (BlockingIOError, InterruptedError):
                    return j, True, False
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        count("tx_enobufs")
                        return j, True, True
                    self._send_error(exc, errors)
                i = j = j + 1
                continue
            # Every slot is still in flight (frames held in a qdisc). packet_poll() reports POLLOUT
            # whenever the send buffer has room, not when a slot frees, so this is retried after a
            # pause, like ENOBUFS, rather than on writability (which would spin).
            count("tx_ring_full")
            return j, True, True

    # ----------------------------------------------------------------------------------- misc
    def stats(self) -> dict[str, object]:
        """The engine's counters plus the kernel's ``PACKET_STATISTICS`` (accumulated), and
        ``"datapath"``: ``"compiled"`` or why the pure-Python one runs (:mod:`rawtransport.datapath`).

        With ``kernel_bypass``, also ``"kernel_bypass"``: whether the rule is in place (``active``),
        frames it kept from the kernel's IP stack (``dropped``), and the interfaces it covers.
        """
        stats = self.engine.stats()
        stats["datapath"] = DATAPATH
        packets, drops = self.receiver.statistics()
        stats["kernel_packets"] = packets
        stats["kernel_drops"] = drops
        if self.bypass is not None:
            stats["kernel_bypass"] = {
                "active": self.bypass.alive,
                "dropped": self.bypass.dropped(),
                "interfaces": list(self.bypass.interfaces),
            }
        return stats

    def close(self) -> None:
        """Close every socket the endpoint owns (the guard included)."""
        if self.closed:
            return
        self.closed = True
        # Packet sockets wait in synchronize_net() when closed: off the loop thread (workers.py).
        for sender in self._senders.values():
            close_in_background(sender.close)
        self._senders.clear()
        if self.bypass is not None:
            # Before the receiver: once the rule is gone the kernel takes our datagrams again and
            # the guard (still open) discards them, so none is answered with port-unreachable.
            self.bypass.close()
        close_in_background(self.receiver.close)
        self._monitor.close()
        self._rtnl.close()
        self.guard.close()
