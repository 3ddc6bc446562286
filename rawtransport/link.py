"""The AF_PACKET boundary: opening, filtering, binding, reading and writing packet sockets.

Order matters (tools/testing/selftests/net/psock_*.c do the same): a packet socket is opened with protocol 0 so
nothing is queued on it, the classic-BPF filter is attached, and only then is it bound to a protocol,
which is the moment frames start arriving. Outgoing frames are ignored in the kernel
(``PACKET_IGNORE_OUTGOING``) and ``PACKET_AUXDATA`` carries the checksum status of each frame.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from typing import Final

from rawtransport.bpf import Program
from rawtransport.bpf_filter import drop_all
from rawtransport.engine_types import FrameMeta, untag_priority
from rawtransport.ring import frame_meta

__all__ = [
    "ETH_P_ALL",
    "PacketReceiver",
    "PacketSender",
    "SocketReader",
    "attach_filter",
    "bind_ll",
    "open_packet_socket",
    "privilege_error",
]

SOL_PACKET: Final = 263
PACKET_AUXDATA: Final = 8
PACKET_STATISTICS: Final = 6
PACKET_QDISC_BYPASS: Final = 20
PACKET_IGNORE_OUTGOING: Final = 23
SO_ATTACH_FILTER: Final = 26
SO_LOCK_FILTER: Final = 44
ETH_P_ALL: Final = 0x0003

# struct tpacket_auxdata { u32 tp_status, tp_len, tp_snaplen; u16 tp_mac, tp_net, tp_vlan_tci,
# tp_vlan_tpid; }
_AUXDATA = struct.Struct("=IIIHHHH")
_TPACKET_STATS = struct.Struct("=II")
# struct sockaddr_ll { u16 family; be16 protocol; int ifindex; u16 hatype; u8 pkttype, halen; u8 addr[8] }
_SOCKADDR_LL = struct.Struct("=HHiHBB8s")
_AUX_SPACE = socket.CMSG_SPACE(_AUXDATA.size)

_libc = ctypes.CDLL(None, use_errno=True)


def privilege_error(exc: OSError) -> PermissionError:
    """The PermissionError raised when a packet socket cannot be opened, saying how to fix it."""
    return PermissionError(
        errno.EPERM,
        "opening an AF_PACKET socket needs CAP_NET_RAW: run as root, or grant the capability to a "
        "dedicated interpreter or service (e.g. systemd AmbientCapabilities=CAP_NET_RAW, or "
        "`setcap cap_net_raw+ep` on a copy of python that only this program uses); "
        f"the kernel said: {exc.strerror}",
    )


def open_packet_socket() -> socket.socket:
    """A non-blocking ``AF_PACKET``/``SOCK_RAW`` socket with protocol 0: it receives nothing yet."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError as exc:
        raise privilege_error(exc) from None
    sock.setblocking(False)
    return sock


def attach_filter(sock: socket.socket, program: Program) -> None:
    """Attach a classic-BPF program (``SO_ATTACH_FILTER``); replaces any previous one atomically."""
    code = program.pack()
    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } with native padding.
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def bind_ll(sock: socket.socket, ifindex: int, protocol: int) -> None:
    """Bind a packet socket to ``protocol`` on ``ifindex`` (0: every interface)."""
    # Python's AF_PACKET bind() takes an interface *name* and cannot express ifindex 0 ("every
    # interface"), so bind through libc with a sockaddr_ll.
    addr = _SOCKADDR_LL.pack(socket.AF_PACKET, socket.htons(protocol), ifindex, 0, 0, 0, b"")
    if _libc.bind(sock.fileno(), addr, len(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, errno.errorcode.get(err, "bind") + ": binding the packet socket")


class SocketReader:
    """Reads frames with their ``PACKET_AUXDATA`` from a packet socket's receive queue.

    One preallocated buffer: the payload is copied out once, by the parser, not per read.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray(65536 + 64)
        self._view = memoryview(self._buf)
        self._names: dict[str, int] = {}

    def _ifindex(self, name: str) -> int:
        idx = self._names.get(name)
        if idx is None:
            try:
                idx = socket.if_nametoindex(name)
            except OSError:
                idx = 0
            if len(self._names) > 256:
                self._names.clear()
            self._names[name] = idx
        return idx

    def recv(self) -> tuple[memoryview, FrameMeta]:
        """Read one frame (``BlockingIOError`` when none is queued); the view is valid until the next."""
        n, anc, flags, addr = self.sock.recvmsg_into([self._buf], _AUX_SPACE, socket.MSG_TRUNC)
        status = 0
        truncated = n > len(self._buf) or bool(flags & socket.MSG_TRUNC)
        for level, kind, data in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
                status, tp_len, snaplen, _mac, _net, tci, _tpid = _AUXDATA.unpack_from(data)
                status = untag_priority(status, tci)
                truncated = truncated or snaplen < tp_len
        ifname, _proto, pkttype, hatype = addr[0], addr[1], addr[2], addr[3]
        meta = frame_meta(self._ifindex(ifname), pkttype, status, hatype, truncated)
        return self._view[: min(n, len(self._buf))], meta


class PacketReceiver:
    """The receiving packet socket of an endpoint: filtered, bound to ETH_P_ALL on one or all links."""

    def __init__(self, program: Program, *, ifindex: int = 0, rcvbuf: int | None = None) -> None:
        self.sock = sock = open_packet_socket()
        try:
            attach_filter(sock, program)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                self.ignores_outgoing = True
            except OSError:  # kernels before 4.20: the engine drops PACKET_OUTGOING instead
                self.ignores_outgoing = False
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            bind_ll(sock, ifindex, ETH_P_ALL)
        except BaseException:
            sock.close()
            raise
        self._reader = SocketReader(sock)
        self.kernel_drops = 0
        self.kernel_packets = 0

    def fileno(self) -> int:
        """The socket's descriptor, for ``add_reader`` / ``wait_readable``."""
        return self.sock.fileno()

    def set_filter(self, program: Program) -> None:
        """Swap the filter without letting unfiltered frames in (SO_ATTACH_FILTER is atomic)."""
        attach_filter(self.sock, program)

    def recv(self) -> tuple[memoryview, FrameMeta]:
        """Read one frame (``BlockingIOError`` when none is queued).

        The returned view points into a buffer reused by the next call: parse it before reading again.
        """
        return self._reader.recv()

    def statistics(self) -> tuple[int, int]:
        """Accumulated (packets, drops) from ``PACKET_STATISTICS``, which the kernel clears on read."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
        packets, drops = _TPACKET_STATS.unpack(raw)
        self.kernel_packets += packets
        self.kernel_drops += drops
        return self.kernel_packets, self.kernel_drops

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class PacketSender:
    """A send-only packet socket bound to one interface with protocol 0, so it never receives.

    ``send()`` on a bound socket costs one syscall; sending through an unbound socket with an address
    would make CPython resolve the interface name with an extra ioctl per datagram.

    CAP_NET_RAW is checked only when a packet socket is created. A process that dropped it after
    opening its endpoint cannot open a sender for an interface it had not used yet: then ``fallback``
    (the endpoint's receiving socket, already open) sends with an explicit address instead.
    """

    def __init__(
        self, ifindex: int, *, qdisc_bypass: bool = False, fallback: socket.socket | None = None
    ) -> None:
        self.ifindex = ifindex
        self._address: tuple[str, int] | None = None
        try:
            self.sock = sock = open_packet_socket()
        except PermissionError:
            if fallback is None:
                raise
            self.sock = fallback
            self._address = (socket.if_indextoname(ifindex), 0)
            return
        try:
            # A send-only socket should never queue anything: a drop-all filter makes that explicit.
            attach_filter(sock, drop_all())
            if qdisc_bypass:
                sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            bind_ll(sock, ifindex, 0)
        except BaseException:
            sock.close()
            raise

    @property
    def bound(self) -> bool:
        """True when ``send()`` is a plain ``send(2)`` on a socket bound to the interface (not the
        ``fallback`` with an explicit address): the compiled send path writes to it directly."""
        return self._address is None

    def send(self, frame: bytes) -> None:
        """Write one frame; raises ``BlockingIOError`` when the socket's send buffer is full."""
        if self._address is None:
            self.sock.send(frame)
        else:
            self.sock.sendto(frame, self._address)

    def close(self) -> None:
        """Close the socket (not a borrowed fallback: its owner closes that)."""
        if self._address is None:
            self.sock.close()
