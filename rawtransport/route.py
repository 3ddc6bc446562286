"""Route, interface and address values, the route cache and the local-address snapshot.

Pure: no sockets, no clock. The values are what :mod:`rawtransport.netlink` reads from the kernel
(``RTM_GETROUTE``/``RTM_GETLINK``/``RTM_GETADDR``); the kernel stays the authority on routing and
source-address selection, this module only holds and caches its answers.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ARPHRD_ETHER",
    "ARPHRD_LOOPBACK",
    "ARPHRD_NONE",
    "IFA_F_DADFAILED",
    "IFA_F_DEPRECATED",
    "IFA_F_NODAD",
    "IFA_F_OPTIMISTIC",
    "IFA_F_PERMANENT",
    "IFA_F_SECONDARY",
    "IFA_F_TENTATIVE",
    "IFF_LOOPBACK",
    "IFF_LOWER_UP",
    "IFF_NOARP",
    "IFF_RUNNING",
    "IFF_UP",
    "LOOPBACK_IFINDEX",
    "AddressInfo",
    "LinkInfo",
    "LocalAddresses",
    "Route",
    "RouteCache",
    "RouteKey",
    "RouteKind",
]

# <linux/if.h> net_device_flags
IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_LOOPBACK = 0x8
IFF_POINTOPOINT = 0x10
IFF_RUNNING = 0x40
IFF_NOARP = 0x80
IFF_MULTICAST = 0x1000
IFF_LOWER_UP = 0x10000

# <linux/if_arp.h>
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE

# <linux/if_addr.h>
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_OPTIMISTIC = 0x04
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80

# <net/flow.h> LOOPBACK_IFINDEX: loopback_net_init() gives every namespace's "lo" ifindex 1.
LOOPBACK_IFINDEX = 1


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One network interface as ``RTM_NEWLINK`` describes it.

    ``mac`` is ``IFLA_ADDRESS`` (6 bytes on Ethernet, all-zero on loopback, empty on ``ARPHRD_NONE``
    devices such as tun); ``flags`` are the ``IFF_*`` bits of ``ifi_flags``; ``up`` is true when the
    device is administratively up and operationally running (``IFF_UP`` and ``IFF_RUNNING``, which
    dev_get_flags() sets only while netif_oper_up(): operstate UP or UNKNOWN, as on loopback).
    """

    ifindex: int
    name: str
    mac: bytes
    mtu: int
    flags: int
    arphrd: int
    up: bool

    @property
    def is_loopback(self) -> bool:
        """A loopback device: frames sent on it come straight back in."""
        return bool(self.flags & IFF_LOOPBACK) or self.arphrd == ARPHRD_LOOPBACK

    @property
    def noarp(self) -> bool:
        """No neighbour resolution on this link (``IFF_NOARP``, loopback, or no hardware address).

        neigh_create()/arp_constructor() give such devices NUD_NOARP entries: the kernel never asks.
        """
        return bool(self.flags & IFF_NOARP) or self.is_loopback or self.arphrd == ARPHRD_NONE


@dataclass(frozen=True, slots=True)
class AddressInfo:
    """One interface address as ``RTM_NEWADDR`` describes it.

    ``family`` is 4 or 6; ``address`` the local address (``IFA_LOCAL``, else ``IFA_ADDRESS``: on a
    point-to-point IPv4 link ``IFA_ADDRESS`` is the peer); ``flags`` the full ``IFA_F_*`` set (from
    ``IFA_FLAGS`` when the kernel sends it, it has more than the 8 bits of ``ifa_flags``);
    ``broadcast`` the explicit ``IFA_BROADCAST`` of an IPv4 address, if any.
    """

    ifindex: int
    family: int
    address: bytes
    prefixlen: int
    scope: int
    flags: int
    broadcast: bytes | None = None

    @property
    def tentative(self) -> bool:
        """Duplicate address detection has not finished (or failed): not yet usable.

        RFC 4862 section 5.4: a tentative address is not considered assigned to the interface;
        packets addressed to it are discarded. An optimistic address (RFC 4429) is usable.
        """
        if self.flags & IFA_F_DADFAILED:
            return True
        return bool(self.flags & IFA_F_TENTATIVE) and not self.flags & IFA_F_OPTIMISTIC


class RouteKind(enum.Enum):
    """What kind of destination a route leads to (the kernel's ``rtm_type``)."""

    UNICAST = 1  # RTN_UNICAST: a neighbour on the link or a gateway
    LOCAL = 2  # RTN_LOCAL: one of this host's own addresses, delivered through loopback
    BROADCAST = 3  # RTN_BROADCAST: limited or subnet-directed broadcast
    MULTICAST = 5  # RTN_MULTICAST


@dataclass(frozen=True, slots=True)
class Route:
    """The kernel's answer to "how do I send to ``destination``?" (``ip route get``).

    ``source`` is the source address to use (the caller's, or the kernel's preferred one);
    ``next_hop`` the gateway, or ``destination`` itself when it is on-link; ``mtu`` the route's MTU
    metric (path MTU) if set, else the egress link's MTU; ``src_mac`` the egress link's address;
    ``noarp`` true when no neighbour resolution is needed (loopback, ``IFF_NOARP`` link).
    """

    destination: bytes
    ifindex: int
    ifname: str
    source: bytes
    next_hop: bytes
    mtu: int
    src_mac: bytes
    kind: RouteKind
    noarp: bool


RouteKey = tuple[bytes, bytes | None, int | None]
"""A route cache key: (destination, source or None, output ifindex or None)."""


class RouteCache:
    """A bounded LRU cache of routes keyed by (destination, source or ``None``, oif or ``None``).

    The kernel's answer is only valid until the routing tables, addresses or links change: the
    owner calls :meth:`invalidate` whenever the rtnetlink monitor reports a change, which empties
    the cache and bumps :attr:`generation` (so a lookup started before the change can tell that
    its answer is stale: compare the generation before and after).
    """

    __slots__ = ("_entries", "generation", "maxsize")

    def __init__(self, maxsize: int = 1024) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError("maxsize must be an int")
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.generation = 0
        self._entries: OrderedDict[RouteKey, Route] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: RouteKey) -> Route | None:
        """The cached route for ``key`` (and mark it recently used), or ``None``."""
        route = self._entries.get(key)
        if route is not None:
            self._entries.move_to_end(key)
        return route

    def put(self, key: RouteKey, route: Route) -> None:
        """Cache ``route`` under ``key``, evicting the least recently used entry when full."""
        entries = self._entries
        entries[key] = route
        entries.move_to_end(key)
        if len(entries) > self.maxsize:
            entries.popitem(last=False)

    def invalidate(self) -> None:
        """Forget every route (something changed in the kernel) and start a new generation."""
        self._entries.clear()
        self.generation += 1


_LIMITED_BROADCAST = b"\xff\xff\xff\xff"


class LocalAddresses:
    """A snapshot of the host's addresses: is an address ours, is it a broadcast address?

    Built from ``Rtnl.addresses()``. It mirrors the routes fib_add_ifaddr() puts in the kernel's
    ``local`` table:

    - every address is local (``RTN_LOCAL``), except tentative IPv6 addresses (RFC 4862 5.4);
    - an IPv4 address on the loopback device makes its whole prefix local (fib_add_ifaddr() adds
      the prefix route as ``RTN_LOCAL`` on a loopback device: all of 127.0.0.0/8 answers);
    - an IPv4 prefix shorter than /31 has a subnet-directed broadcast (``prefix | ~mask``; RFC 3021
      gives /31 none), and an explicit ``IFA_BROADCAST`` is a broadcast address too;
    - 255.255.255.255 (the limited broadcast, RFC 919) is always a broadcast address.
    """

    __slots__ = ("_broadcast", "_by_ifindex", "_local", "_local_nets")

    def __init__(self, addresses: Iterable[AddressInfo] = ()) -> None:
        self._local: set[bytes] = set()
        self._broadcast: set[bytes] = {_LIMITED_BROADCAST}
        # (network, mask) as ints: is_local() runs per received frame (martian-source check).
        self._local_nets: list[tuple[int, int]] = []
        self._by_ifindex: dict[int, list[AddressInfo]] = {}
        for info in addresses:
            if not isinstance(info, AddressInfo):
                raise TypeError(f"expected AddressInfo, got {type(info).__name__}")
            self._by_ifindex.setdefault(info.ifindex, []).append(info)
            if info.family == 6:
                if not info.tentative:
                    self._local.add(info.address)
                continue
            self._local.add(info.address)
            if info.broadcast is not None and any(info.broadcast):
                # fib_add_ifaddr(): "Add broadcast address, if it is explicitly assigned."
                self._broadcast.add(info.broadcast)
            net = ipaddress.IPv4Network((info.address, info.prefixlen), strict=False)
            if info.ifindex == LOOPBACK_IFINDEX and info.prefixlen < 32:
                self._local_nets.append((int(net.network_address), int(net.netmask)))
            if info.prefixlen < 31 and not info.flags & IFA_F_SECONDARY:
                self._broadcast.add(net.broadcast_address.packed)

    def is_local(self, address: bytes) -> bool:
        """True if ``address`` (4 or 16 raw bytes) is one of this host's addresses."""
        if address in self._local:
            return True
        if len(address) == 4 and self._local_nets:
            value = int.from_bytes(address, "big")
            for network, mask in self._local_nets:
                if value & mask == network:
                    return True
        return False

    def local_view(self) -> tuple[list[bytes], list[tuple[int, int]]]:
        """What :meth:`is_local` consults: the addresses, and the IPv4 local nets as ``(network,
        netmask)`` ints (for the compiled receive path, :mod:`rawtransport.host`)."""
        return sorted(self._local), list(self._local_nets)

    def broadcast_addresses(self) -> list[bytes]:
        """The IPv4 broadcast addresses :meth:`is_broadcast` knows, sorted."""
        return sorted(self._broadcast)

    def is_broadcast(self, address: bytes) -> bool:
        """True for 255.255.255.255 and the subnet-directed broadcast of any local IPv4 prefix."""
        return len(address) == 4 and address in self._broadcast

    def owners(self, address: bytes) -> list[int]:
        """The interfaces that hold ``address`` (tentative ones included), in index order."""
        return sorted(
            i for i, infos in self._by_ifindex.items() if any(x.address == address for x in infos)
        )

    def on_interface(self, ifindex: int) -> list[AddressInfo]:
        """The addresses of interface ``ifindex``, in the kernel's order (primary first)."""
        return list(self._by_ifindex.get(ifindex, ()))

    def __contains__(self, address: object) -> bool:
        return isinstance(address, bytes) and self.is_local(address)
