"""Classic-BPF receive filters, built with :mod:`rawtransport.bpf`: an endpoint's and a stack's.

The filters are *prefilters*: user space still makes every check the kernel's IP and UDP layers
make; a filter only has to never reject a frame the kernel would have delivered to the socket, and
to reject as much of everything else as is cheap (RAWPATH.md, "Security").

:func:`endpoint_filter` is the filter of one endpoint's own packet socket. :func:`stack_filter` is
the filter of one packet socket shared by many endpoints: it accepts what any of their endpoint
filters would, through a binary search over their ports, so that its cost per frame grows with the
logarithm of the number of endpoints, and its size about linearly.

Example, ``endpoint_filter(family=4, local_ip=bytes([198, 18, 0, 1]), local_port=5353,
accept_vlan=False)``::

    ld type
    jeq #0x3 jt 15 jf 0
    jeq #0x4 jt 14 jf 0
    ld vlan_avail
    jeq #0x1 jt 12 jf 0
    ldh [12]
    jeq #0x800 jt 0 jf 10
    ld [30]
    jeq #0xc6120001 jt 0 jf 8
    ldb [23]
    jeq #0x11 jt 0 jf 6
    ldh [20]
    jset #0x3fff jt 4 jf 0
    ldx 4*([14]&0xf)
    ldh [x + 16]
    jeq #0x14e9 jt 0 jf 1
    ret #262144
    ret #0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import Final

from rawtransport.bpf import (
    BPF_JA,
    BPF_JMP,
    BPF_MAXINSNS,
    BPF_RET,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    SKF_AD_PKTTYPE,
    SKF_AD_VLAN_TAG_PRESENT,
    Instruction,
    Item,
    Jump,
    Label,
    Program,
    assemble,
    ja,
    jeq,
    jge,
    jset,
    label,
    ld,
    ld_anc,
    ld_ind,
    ldb,
    ldh,
    ldh_ind,
    ldx_imm,
    ldx_msh,
    ret,
)

__all__ = ["FilterEntry", "drop_all", "endpoint_filter", "stack_filter"]

_U32: Final = 0xFFFFFFFF

# ----------------------------------------------------------------------------- the filters
ETH_P_IP: Final = 0x0800
ETH_P_ARP: Final = 0x0806
ETH_P_IPV6: Final = 0x86DD
ETH_P_8021Q: Final = 0x8100
ETH_P_8021AD: Final = 0x88A8
_IPPROTO_UDP: Final = 17
_IPPROTO_ICMPV6: Final = 58
# IPv6 extension headers that may precede UDP in legitimate traffic (RFC 8200 §4.1 order):
# hop-by-hop, routing, destination options. The fragment header (44) is handled separately.
_IPV6_PASSED_EXTENSIONS: Final = (0, 43, 60)
_IPV6_FRAGMENT: Final = 44
_ND_NEIGHBOR_ADVERT: Final = 136


def drop_all() -> Program:
    """``ret #0``: a filter that keeps nothing (for send-only and guard sockets)."""
    return Program((ret(0),))


def _words(addr: bytes) -> list[int]:
    return [int.from_bytes(addr[i : i + 4], "big") for i in range(0, len(addr), 4)]


def _match_words(offset: int, addr: bytes, fail: str) -> list[Item]:
    items: list[Item] = []
    for i, word in enumerate(_words(addr)):
        items += [ld(offset + 4 * i), jeq(word, None, fail)]
    return items


def _check_addr(name: str, value: bytes | None, size: int) -> None:
    if value is None:
        return
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, not {len(value)}")


def _check_port(name: str, value: int | None) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} {value} outside 0..65535")


def _check_snaplen(snaplen: int) -> None:
    if not isinstance(snaplen, int) or not 1 <= snaplen <= _U32:
        raise ValueError(f"snaplen must be 1..{_U32}, not {snaplen!r}")


@dataclass(frozen=True, slots=True)
class _Spec:
    want4: bool
    want6: bool
    local_ip: bytes | None
    local_port: int | None
    remote_ip: bytes | None
    remote_port: int | None
    allow_fragments: bool
    arp: bool
    arp_for: bytes | None
    nd: bool
    nd_for: bytes | None


# Clauses shared by both filters. Each takes the offset of the network header (``base``: 14, or 18
# behind an in-band VLAN tag) and the prefix ``p`` of its labels, one per link-header length.
def _dispatch(cases: Sequence[tuple[int, str]]) -> list[Item]:
    """Jump on the ethertype in A to each case's label; reject any other."""
    if not cases:
        return [ja("reject")]
    return [
        jeq(ethertype, target, "reject" if i == len(cases) - 1 else None)
        for i, (ethertype, target) in enumerate(cases)
    ]


def _ipv4_fragments(base: int, allow_fragments: bool, later: str) -> list[Item]:
    """Send a non-first IPv4 fragment to ``later`` (or reject every fragment); others fall through."""
    if allow_fragments:
        # A non-first fragment carries no UDP header to match: pass it to the reassembler.
        return [ldh(base + 6), jset(0x1FFF, later)]
    # Fragment offset (0x1fff) or more-fragments (0x2000): the kernel would reassemble
    # (ip_defrag via ip_local_deliver); without reassembly, keep fragments out entirely.
    return [ldh(base + 6), jset(0x3FFF, "reject")]


def _ipv6_next_header(
    base: int, p: str, allow_fragments: bool, passed: str, icmpv6: str | None = None
) -> list[Item]:
    """Dispatch on the first IPv6 next header: UDP falls through to the port, past ``p + "udp6"``.

    Fragments (with ``allow_fragments``; else atomic ones only) and the extension headers user space
    walks go to ``passed``, which checks the address; ICMPv6 goes to ``icmpv6`` when given.
    """
    items: list[Item] = [ldb(base + 6), jeq(_IPPROTO_UDP, p + "udp6")]
    if icmpv6 is not None:
        items.append(jeq(_IPPROTO_ICMPV6, icmpv6))
    items.append(jeq(_IPV6_FRAGMENT, passed if allow_fragments else p + "atomic6"))
    # Extension headers: walking a chain is not expressible without loops, and a chain of any
    # length is legitimate (the kernel delivered 20 destination-options headers, seen). Pass the
    # frame, matched on address, to user space's full parser instead of dropping traffic the
    # kernel would deliver.
    items += [jeq(nh, passed) for nh in _IPV6_PASSED_EXTENSIONS]
    items.append(ja("reject"))
    if not allow_fragments:
        # An atomic fragment (offset 0, M clear) is processed in isolation and delivered even
        # without reassembly (RFC 6946; ipv6_frag_rcv()): let it through.
        items += [label(p + "atomic6"), ldh(base + 42), jset(0xFFF9, "reject", passed)]
    items.append(label(p + "udp6"))
    return items


def _neighbour_advert(base: int, p: str) -> list[Item]:
    """At ``p + "nd"``: reject all but a neighbour advertisement; the target check follows."""
    # RFC 4861 §7.1.2: a neighbour advertisement with a hop limit other than 255 came from off-link
    # and is invalid (ndisc_rcv() drops it too).
    return [
        label(p + "nd"),
        ldb(base + 7),
        jeq(255, None, "reject"),
        ldb(base + 40),
        jeq(_ND_NEIGHBOR_ADVERT, None, "reject"),
    ]


def _arp_reply(base: int, p: str) -> list[Item]:
    """At ``p + "arp"``: reject all but an Ethernet/IPv4 ARP reply; the target check follows."""
    # RFC 826, Ethernet/IPv4: htype 1 + ptype 0x0800 at 0; hlen 6 + plen 4 at 4; op at 6; target
    # protocol address at 24.
    return [
        label(p + "arp"),
        ld(base),
        jeq(0x00010800, None, "reject"),
        ldh(base + 4),
        jeq(0x0604, None, "reject"),
        ldh(base + 6),
        jeq(2, None, "reject"),
    ]


def _link(
    accept_vlan: bool,
    l3: Callable[[int, str], list[Item]],
    snaplen: int,
    shared: Sequence[Item] = (),
) -> list[Item]:
    """A whole filter: the leading rejects, the link layer, ``l3`` per link-header length, verdicts.

    ``l3(base, prefix)`` gives the clauses for the network header at ``base``; A holds the
    ethertype on entry. They end in jumps to ``accept``, ``reject`` or into ``shared``, code that
    both link-header lengths use, placed after them.
    """
    items: list[Item] = [
        ld_anc(SKF_AD_PKTTYPE),
        jeq(PACKET_OTHERHOST, "reject"),
        jeq(PACKET_OUTGOING, "reject"),
    ]
    if not accept_vlan:
        items += [ld_anc(SKF_AD_VLAN_TAG_PRESENT), jeq(1, "reject")]
    items.append(ldh(12))
    if accept_vlan:
        items += [jeq(ETH_P_8021Q, "tagged"), jeq(ETH_P_8021AD, "tagged")]
    items += l3(14, "u_")
    if accept_vlan:
        items += [label("tagged"), ldh(16), *l3(18, "t_")]
    return [*items, *shared, label("accept"), ret(snaplen), label("reject"), ret(0)]


def _l3(spec: _Spec, base: int, p: str) -> list[Item]:
    """The endpoint filter's clauses for one link-header length; A holds the ethertype on entry."""
    cases: list[tuple[int, str]] = []
    if spec.want4:
        cases.append((ETH_P_IP, p + "ip4"))
    if spec.want6 or spec.nd:
        cases.append((ETH_P_IPV6, p + "ip6"))
    if spec.arp:
        cases.append((ETH_P_ARP, p + "arp"))
    items = _dispatch(cases)

    if spec.want4:
        # IPv4 (RFC 791): dst at 16, protocol at 9, src at 12, flags+fragment offset at 6.
        items.append(label(p + "ip4"))
        if spec.local_ip is not None:
            items += [ld(base + 16), jeq(_words(spec.local_ip)[0], None, "reject")]
        items += [ldb(base + 9), jeq(_IPPROTO_UDP, None, "reject")]
        if spec.remote_ip is not None:
            items += [ld(base + 12), jeq(_words(spec.remote_ip)[0], None, "reject")]
        items += _ipv4_fragments(base, spec.allow_fragments, "accept")
        if spec.local_port is not None or spec.remote_port is not None:
            items.append(ldx_msh(base))  # X = IHL*4, options included
            if spec.local_port is not None:
                items += [ldh_ind(base + 2), jeq(spec.local_port, None, "reject")]
            if spec.remote_port is not None:
                items += [ldh_ind(base), jeq(spec.remote_port, None, "reject")]
        items.append(ja("accept"))

    if spec.want6 or spec.nd:
        # IPv6 (RFC 8200): next header at 6, hop limit at 7, src at 8, dst at 24, payload at 40.
        items.append(label(p + "ip6"))
        udp_path = p + "ip6udp" if spec.want6 else "reject"
        if spec.nd:
            items += [ldb(base + 6), jeq(_IPPROTO_ICMPV6, p + "nd", udp_path)]
        if spec.want6:
            items.append(label(p + "ip6udp"))
            if spec.local_ip is not None:
                items += _match_words(base + 24, spec.local_ip, "reject")
            if spec.remote_ip is not None:
                items += _match_words(base + 8, spec.remote_ip, "reject")
            items += _ipv6_next_header(base, p, spec.allow_fragments, "accept")
            if spec.local_port is not None:
                items += [ldh(base + 42), jeq(spec.local_port, None, "reject")]
            if spec.remote_port is not None:
                items += [ldh(base + 40), jeq(spec.remote_port, None, "reject")]
            items.append(ja("accept"))
        if spec.nd:
            items += _neighbour_advert(base, p)
            if spec.nd_for is not None:
                items += _match_words(base + 24, spec.nd_for, "reject")
            items.append(ja("accept"))

    if spec.arp:
        items += _arp_reply(base, p)
        if spec.arp_for is not None:
            items += [ld(base + 24), jeq(_words(spec.arp_for)[0], None, "reject")]
        items.append(ja("accept"))
    return items


def endpoint_filter(
    *,
    family: int,
    local_ip: bytes | None,
    local_port: int | None,
    remote_ip: bytes | None = None,
    remote_port: int | None = None,
    accept_vlan: bool = True,
    allow_fragments: bool = False,
    arp_for: bytes | None = None,
    nd_for: bytes | None = None,
    neighbour_replies: bool = False,
    snaplen: int = 262144,
) -> Program:
    """The receive filter of one UDP endpoint: ``ret #snaplen`` for its frames, else ``ret #0``.

    Accepted:

    - UDP over IPv4 (``family=4``) or IPv6 (``family=6``; ``0`` = both, for a dual-stack wildcard
      endpoint, which then takes no addresses) whose destination address is ``local_ip`` (``None``:
      any) and destination port ``local_port`` (``None``: any), and, for a connected endpoint, whose
      source is ``remote_ip``/``remote_port``.
    - IPv4 fragments only with ``allow_fragments`` (non-first fragments are passed on address and
      protocol alone, having no UDP header); otherwise ``(frag_off & 0x3fff) != 0`` is rejected.
      IPv6 fragment headers likewise.
    - IPv6 packets to the address whose first header is hop-by-hop, routing or destination options:
      passed to user space, which walks the chain (see the comment in the code for why).
    - ARP replies (op 2, Ethernet/IPv4) whose target protocol address is ``arp_for``, and ICMPv6
      neighbour advertisements (type 136, hop limit 255) whose IPv6 destination is ``nd_for``, for
      the neighbour resolver. ``neighbour_replies=True`` accepts such replies for any target address
      (ARP when the family includes IPv4, ND when it includes IPv6).

    Rejected first, for every clause: ``PACKET_OTHERHOST`` and ``PACKET_OUTGOING`` frames (ancillary
    ``ld type``), which ``ip_rcv()`` and the UDP socket would never see.

    VLANs: on receive the kernel moves an 802.1Q/802.1ad tag out of the packet bytes into metadata
    (``skb_vlan_untag()`` in ``__netif_receive_skb_core()``) before packet taps run, so the filter
    normally sees an untagged frame with ``vlan_avail`` set. ``accept_vlan=False`` rejects those
    (``ld vlan_avail``) and in-band tags: on a device with no VLAN upper the kernel drops tagged
    frames, and on a parent of a VLAN device it avoids a second copy of what the VLAN device
    delivers. ``accept_vlan=True`` lets tagged frames through to user space (whose parser and engine
    decide, and see the tag in ``PACKET_AUXDATA``) and also matches frames with one tag still in the
    bytes (an inner QinQ tag, or a device that does not strip), with all offsets moved by 4.
    """
    if family not in (0, 4, 6):
        raise ValueError(f"family must be 4, 6 or 0 (both), not {family!r}")
    if family == 0 and (local_ip is not None or remote_ip is not None):
        raise ValueError("a dual-stack (family=0) filter matches no specific address")
    size = 4 if family == 4 else 16
    _check_addr("local_ip", local_ip, size)
    _check_addr("remote_ip", remote_ip, size)
    _check_addr("arp_for", arp_for, 4)
    _check_addr("nd_for", nd_for, 16)
    _check_port("local_port", local_port)
    _check_port("remote_port", remote_port)
    _check_snaplen(snaplen)
    spec = _Spec(
        want4=family in (0, 4),
        want6=family in (0, 6),
        local_ip=None if local_ip is None else bytes(local_ip),
        local_port=local_port,
        remote_ip=None if remote_ip is None else bytes(remote_ip),
        remote_port=remote_port,
        allow_fragments=allow_fragments,
        arp=arp_for is not None or (neighbour_replies and family in (0, 4)),
        arp_for=None if arp_for is None else bytes(arp_for),
        nd=nd_for is not None or (neighbour_replies and family in (0, 6)),
        nd_for=None if nd_for is None else bytes(nd_for),
    )
    return assemble(_link(accept_vlan, lambda base, p: _l3(spec, base, p), snaplen))


# ----------------------------------------------------------------------- the stack's filter
@dataclass(frozen=True, slots=True)
class FilterEntry:
    """What one endpoint on a shared packet socket receives, for :func:`stack_filter`.

    ``family`` is 4 or 6, or 0 for a dual-stack IPv6 wildcard socket (it takes IPv4 and IPv6 and
    has no address); ``local_ip`` the bound address (4 or 16 bytes) or ``None`` for the wildcard;
    ``local_port`` the bound port, 1..65535. The arguments are checked as ``endpoint_filter``
    checks them (``ValueError``, ``TypeError``).
    """

    family: int
    local_ip: bytes | None
    local_port: int

    def __post_init__(self) -> None:
        if type(self.family) is not int or self.family not in (0, 4, 6):
            raise ValueError(f"family must be 4, 6 or 0 (both), not {self.family!r}")
        if self.family == 0 and self.local_ip is not None:
            raise ValueError("a dual-stack (family=0) entry has no specific address")
        _check_addr("local_ip", self.local_ip, 4 if self.family == 4 else 16)
        _check_port("local_port", self.local_port)
        if self.local_port == 0:
            raise ValueError("local_port must be 1..65535: a bound socket has a port")
        if self.local_ip is not None:
            # Hashable and immutable, like the rest of the entry (a bytearray would be neither).
            object.__setattr__(self, "local_ip", bytes(self.local_ip))


class _Names:
    """Fresh labels for generated code; ``~`` keeps them apart from the fixed ones."""

    def __init__(self) -> None:
        self._count = 0

    def __call__(self, hint: str) -> str:
        self._count += 1
        return f"~{hint}{self._count}"


# The bottom of a search tests up to this many keys with one ``jeq`` each: about 1.25 instructions
# a key in all, where ``jge`` nodes all the way down to single keys would take 2 (and the limit is
# 4096). It costs at most 3 compares more than the search's own ``log2(n)``.
_RUN: Final = 4


def _search(keys: Sequence[int], targets: Sequence[str], miss: str, names: _Names) -> list[Item]:
    """Jump to ``targets[i]`` when A is ``keys[i]`` (keys sorted and distinct), else to ``miss``.

    A balanced binary search with ``jge`` down to runs of at most ``_RUN`` keys tested with ``jeq``:
    ``ceil(log2(len(keys) / _RUN)) + _RUN`` compares at most. Jumps may be long; :func:`_relax`
    brings them within reach.
    """
    if len(keys) <= _RUN:
        items: list[Item] = [jeq(k, t) for k, t in zip(keys[:-1], targets[:-1], strict=True)]
        return [*items, jeq(keys[-1], targets[-1], miss)]
    mid = len(keys) // 2
    upper = names("ge")
    return [
        jge(keys[mid], upper),
        *_search(keys[:mid], targets[:mid], miss, names),
        label(upper),
        *_search(keys[mid:], targets[mid:], miss, names),
    ]


def _match_set(
    offset: int, addrs: Iterable[bytes], hit: str, miss: str, names: _Names
) -> list[Item]:
    """Jump to ``hit`` when the address at ``[x + offset]`` is one of ``addrs``, else to ``miss``.

    A search (:func:`_search`) on the address's first 32-bit word, then on the next word among the
    addresses that share the first, and so on: an IPv6 address costs at most four searches however
    many addresses there are, and addresses in one /64 share its two compares.
    """
    return _trie(offset, sorted({tuple(_words(a)) for a in addrs}), hit, miss, names)


def _trie(
    offset: int, keys: list[tuple[int, ...]], hit: str, miss: str, names: _Names
) -> list[Item]:
    """:func:`_match_set` on sorted word tuples, from the word at ``[x + offset]`` on."""
    groups = [(head, [key[1:] for key in group]) for head, group in groupby(keys, lambda k: k[0])]
    heads = [head for head, _ in groups]
    if len(keys[0]) == 1:
        return [ld_ind(offset), *_search(heads, [hit] * len(heads), miss, names)]
    subtries = [names("w") for _ in groups]
    items: list[Item] = [ld_ind(offset), *_search(heads, subtries, miss, names)]
    for subtrie, (_, rest) in zip(subtries, groups, strict=True):
        items += [label(subtrie), *_trie(offset + 4, rest, hit, miss, names)]
    return items


# Where the shared checks load from, relative to X = the link offset (0, or 4 behind an in-band
# tag): the ethertype, the IPv4 and IPv6 destination, the ARP target protocol address.
_X_ETHERTYPE: Final = 12
_X_DST4: Final = 14 + 16
_X_DST6: Final = 14 + 24
_X_ARP_TARGET: Final = 14 + 24
_PORTS: Final = "ports"


@dataclass(slots=True)
class _Blocks:
    """The stack filter's shared checks, each emitted once, after the port search.

    Every block is entered with X = the link offset and loads relative to it, so one block serves
    untagged and tagged frames alike. Family blocks come first: they jump to address blocks.
    """

    names: _Names
    family_items: list[Item] = field(default_factory=list)
    address_items: list[Item] = field(default_factory=list)
    labels: dict[object, str] = field(default_factory=dict)

    def addresses(self, offset: int, addrs: Iterable[bytes]) -> str:
        """The label that accepts when the address at ``[x + offset]`` is one of ``addrs``."""
        key = (offset, frozenset(addrs))
        if not key[1]:
            return "reject"
        if key not in self.labels:
            name = self.labels[key] = self.names("addr")
            self.address_items += [
                label(name),
                *_match_set(offset, key[1], "accept", "reject", self.names),
            ]
        return self.labels[key]

    def family(self, ipv4: str, ipv6: str) -> str:
        """The label that goes on to ``ipv4`` or ``ipv6`` by the frame's family."""
        if ipv4 == ipv6:
            return ipv4
        key = ("family", ipv4, ipv6)
        if key not in self.labels:
            name = self.labels[key] = self.names("fam")
            self.family_items += [
                label(name),
                ldh_ind(_X_ETHERTYPE),
                jeq(ETH_P_IPV6, ipv6, ipv4),
            ]
        return self.labels[key]


@dataclass(frozen=True, slots=True)
class _Union:
    """What the stack filter's per-link clauses need: which paths, and where each goes next."""

    want4: bool
    want6: bool
    allow_fragments: bool
    addr4: str  # checks "the destination is one of the IPv4 entries' addresses" (or accept)
    addr6: str
    arp: str | None  # checks the ARP target (or accept); None: no ARP clause
    nd: str | None  # checks the neighbour advertisement's destination (or accept); None: no clause


def _union_l3(u: _Union, base: int, p: str) -> list[Item]:
    """The stack filter's clauses for one link-header length; A holds the ethertype on entry.

    They leave X = the link offset on every path (the IPv4 port load, which needs X for the header
    length, sets it back) and UDP frames with A = the destination port at ``ports``: what comes
    after is shared by both link-header lengths, so a VLAN-accepting filter is barely larger.
    """
    link = base - 14
    # X starts at 0 (bpf_convert_filter() clears A and X first), so untagged clauses need no ldx.
    items: list[Item] = [ldx_imm(link)] if link else []
    cases: list[tuple[int, str]] = []
    if u.want4:
        cases.append((ETH_P_IP, p + "ip4"))
    if u.want6 or u.nd is not None:
        cases.append((ETH_P_IPV6, p + "ip6"))
    if u.arp is not None:
        cases.append((ETH_P_ARP, p + "arp"))
    items += _dispatch(cases)
    if u.want4:
        items += [
            label(p + "ip4"),
            ldb(base + 9),
            jeq(_IPPROTO_UDP, None, "reject"),
            *_ipv4_fragments(base, u.allow_fragments, u.addr4),
            ldx_msh(base),  # X = IHL*4, options included
            ldh_ind(base + 2),
            ldx_imm(link),
            ja(_PORTS),
        ]
    if u.want6 or u.nd is not None:
        items.append(label(p + "ip6"))
        if u.want6:
            nd = None if u.nd is None else p + "nd"
            items += _ipv6_next_header(base, p, u.allow_fragments, u.addr6, nd)
            items += [ldh(base + 42), ja(_PORTS)]
        else:
            items += [ldb(base + 6), jeq(_IPPROTO_ICMPV6, p + "nd", "reject")]
        if u.nd is not None:
            items += [*_neighbour_advert(base, p), ja(u.nd)]
    if u.arp is not None:
        items += [*_arp_reply(base, p), ja(u.arp)]
    return items


def _by_port(entries: Iterable[FilterEntry]) -> dict[int, set[bytes] | None]:
    """Port → the addresses its entries are bound to, or ``None`` when one of them is a wildcard."""
    table: dict[int, set[bytes] | None] = {}
    for entry in entries:
        if entry.local_ip is None:
            table[entry.local_port] = None
        elif (bound := table.setdefault(entry.local_port, set())) is not None:
            bound.add(entry.local_ip)
    return table


def _is_ret(item: Item | None) -> bool:
    return isinstance(item, Instruction) and item.code & 0x07 == BPF_RET


def _is_ja(item: Item) -> bool:
    return isinstance(item, Jump) and item.code == BPF_JMP | BPF_JA


def _open_after(item: Item) -> bool:
    """Whether code placed right after ``item`` can be reached through it."""
    if isinstance(item, Label):
        return True  # jumped to
    if isinstance(item, Jump):
        return not _is_ja(item) and not (isinstance(item.jt, str) and isinstance(item.jf, str))
    return not _is_ret(item)


def _retarget(item: Item, old: str, new: str) -> Jump:
    assert isinstance(item, Jump)
    return replace(
        item, jt=new if item.jt == old else item.jt, jf=new if item.jf == old else item.jf
    )


# A conditional jump reaches 255 instructions past the next (u8 jt/jf in struct sock_filter); a
# jump at pc can land at pc + 256 at the farthest.
_REACH: Final = 256


def _relax(items: Sequence[Item], names: _Names) -> list[Item]:
    """Bring every conditional jump within reach with ``ja`` trampolines (``ja`` has 32 bits).

    One forward pass. A conditional jump to a label not yet placed is pending until the label is;
    before the first pending jump would run out of reach, an island of trampolines is placed, one
    per pending target: a copy of the target's ``ret`` when it is one, else ``ja target``. Pending
    jumps are pointed at them. An island goes where nothing falls into it when there is such a
    place within half a reach (after a ``ret``, a ``ja``, or a jump with two targets), else behind a
    ``ja`` over it. Also drops ``ja`` to the next instruction, as :func:`~rawtransport.bpf.assemble`
    would, so that the count of instructions is the program's.
    """
    rets: dict[str, Instruction] = {}  # label -> the ret it labels, copied as its trampoline
    following: Item | None = None
    for item in reversed(items):
        if not isinstance(item, Label):
            following = item
        elif _is_ret(following):
            assert isinstance(following, Instruction)
            rets[item.name] = following

    out: list[Item] = []
    pending: dict[str, list[int]] = {}  # target -> indexes in out of the jumps to it
    deadline: dict[str, int] = {}  # target -> the farthest pc its earliest jump reaches
    pc = 0

    def island(free: bool) -> None:
        nonlocal pc
        order = sorted(deadline, key=deadline.__getitem__)
        # Targets jumped to in the last quarter reach may be placed in reach yet: leave them, if
        # a later island could still serve them all.
        soon = [t for t in order if deadline[t] < pc + 3 * _REACH // 4]
        rest = order[len(soon) :]
        if not soon or (
            rest and pc + 1 + len(soon) + len(rest) + 3 > min(deadline[t] for t in rest)
        ):
            soon = order
        skip = None if free else names("skip")
        if skip is not None:
            out.append(ja(skip))
            pc += 1
        for target in soon:
            trampoline = names("tramp")
            out.extend((label(trampoline), rets.get(target, ja(target))))
            pc += 1
            for index in pending.pop(target):
                out[index] = _retarget(out[index], target, trampoline)
            del deadline[target]
        if skip is not None:
            out.append(label(skip))

    for i, item in enumerate(items):
        if isinstance(item, Label):
            pending.pop(item.name, None)
            deadline.pop(item.name, None)
            out.append(item)
            continue
        if _is_ja(item) and _jumps_to_next(items, i):
            continue
        if deadline:
            first = min(deadline.values())
            free = bool(out) and not _open_after(out[-1])
            # Placed now, an island ends by pc + len(deadline); put off, it may have 2 more
            # targets and start a place later.
            if pc + len(deadline) + 3 > first or (free and first - pc < _REACH // 2):
                island(free)
        if isinstance(item, Jump) and not _is_ja(item):
            for target in {item.jt, item.jf}:
                if isinstance(target, str):
                    pending.setdefault(target, []).append(len(out))
                    deadline.setdefault(target, pc + _REACH)
                elif target:
                    raise ValueError(f"relative jump offset {target} cannot be relocated")
        out.append(item)
        pc += 1
    return out


def _jumps_to_next(items: Sequence[Item], i: int) -> bool:
    """Whether ``items[i]``, a ``ja``, jumps over nothing but labels."""
    target = items[i]
    assert isinstance(target, Jump)
    for item in items[i + 1 :]:
        if not isinstance(item, Label):
            return False
        if item.name == target.jt:
            return True
    return False


def stack_filter(
    entries: Iterable[FilterEntry],
    *,
    allow_fragments: bool = True,
    arp_for: Iterable[bytes] = (),
    nd_for: Iterable[bytes] = (),
    neighbour_replies4: bool = False,
    neighbour_replies6: bool = False,
    accept_vlan: bool = False,
    snaplen: int = 262144,
) -> Program:
    """The receive filter of a packet socket shared by ``entries``: their union, as one program.

    It accepts every frame that :func:`endpoint_filter` built for any one entry (``family``,
    ``local_ip``, ``local_port``; the same ``allow_fragments`` and ``accept_vlan``; the ARP and ND
    arguments below) would, and rejects the rest. That is:

    - UDP over IPv4 and IPv6 whose destination port is an entry's of that family (``family=0``
      entries count for both) and, when every such entry on the port is bound to an address, whose
      destination is one of their addresses. A wildcard entry on a port takes the port whatever
      the address, for its family only: the union, no looser. IPv4 options and IPv6 extension
      headers are handled as ``endpoint_filter`` does.
    - Fragments, with ``allow_fragments`` (else they are rejected, IPv6 atomic fragments aside), and
      IPv6 packets whose first header is hop-by-hop, routing or destination options: these may
      carry no port, so they are accepted to any bound address of an entry of that family, or to
      any address when there is a wildcard entry of the family.
    - ARP replies whose target is one of ``arp_for`` (any, with ``neighbour_replies4``) and
      neighbour advertisements (hop limit 255) to one of ``nd_for`` (any, with
      ``neighbour_replies6``).

    The same leading rejects as ``endpoint_filter``: ``PACKET_OTHERHOST``, ``PACKET_OUTGOING``, and
    VLAN-tagged frames unless ``accept_vlan`` (then also one in-band tag). An entry has no remote
    address, so frames from anyone to a connected endpoint's address and port pass: user space
    matches the rest. No entries and no ARP or ND: :func:`drop_all`.

    Cost: the port test is a balanced binary search over the sorted ports (``jge``, then ``jeq``
    on runs of at most 4), and each address set (of a port, or of a family for fragments) is a
    search on 32-bit words; each set is emitted once, shared by the ports that have it and by both
    link-header lengths. A frame costs ``O(log(ports) + log(addresses))`` instructions: under 50 for
    2000 ports with one address set per family. The size is about 1.25 instructions a port plus
    the address sets: 2000 distinct ports take about 2,700. Conditional jumps reach 255
    instructions (``u8`` offsets); longer ones go through ``ja`` trampolines (32-bit offsets)
    placed in islands where possible after a ``ret`` or ``ja``. Raises ``ValueError`` when the
    program would be over the kernel's ``BPF_MAXINSNS`` (4096, checked when the filter is attached:
    ``bpf_check_basics_ok()``, ``sk_chk_filter()`` in older kernels), saying how many entries were
    asked for.
    """
    entries = list(entries)
    for entry in entries:
        if not isinstance(entry, FilterEntry):
            raise TypeError(f"entries must be FilterEntry, not {type(entry).__name__}")
    arp_targets = list(arp_for)
    nd_targets = list(nd_for)
    for addr in arp_targets:
        _check_addr("arp_for", addr, 4)
    for addr in nd_targets:
        _check_addr("nd_for", addr, 16)
    _check_snaplen(snaplen)

    names = _Names()
    blocks = _Blocks(names)
    by_family = {f: [e for e in entries if e.family in (0, f)] for f in (4, 6)}
    offsets = {4: _X_DST4, 6: _X_DST6}

    def wanted(family: int) -> str:
        """Where a frame of the family that may carry no port goes (fragments, extensions)."""
        family_entries = by_family[family]
        if any(e.local_ip is None for e in family_entries):
            return "accept"
        bound = [e.local_ip for e in family_entries if e.local_ip is not None]
        return blocks.addresses(offsets[family], bound)

    def replies(any_target: bool, offset: int, targets: list[bytes]) -> str | None:
        if any_target:
            return "accept"
        return blocks.addresses(offset, map(bytes, targets)) if targets else None

    union = _Union(
        want4=bool(by_family[4]),
        want6=bool(by_family[6]),
        allow_fragments=allow_fragments,
        addr4=wanted(4),
        addr6=wanted(6),
        arp=replies(neighbour_replies4, _X_ARP_TARGET, arp_targets),
        nd=replies(neighbour_replies6, _X_DST6, nd_targets),
    )
    if not (entries or union.arp or union.nd):
        return drop_all()

    tables = {f: _by_port(by_family[f]) for f in (4, 6)}

    def target(family: int, port: int) -> str:
        if port not in tables[family]:
            return "reject"
        bound = tables[family][port]
        return "accept" if bound is None else blocks.addresses(offsets[family], bound)

    ports = sorted(tables[4].keys() | tables[6].keys())
    targets = [blocks.family(target(4, port), target(6, port)) for port in ports]
    search = [label(_PORTS), *_search(ports, targets, "reject", names)] if ports else []
    shared = [*search, *blocks.family_items, *blocks.address_items]
    items = _relax(
        _link(accept_vlan, lambda base, p: _union_l3(union, base, p), snaplen, shared), names
    )
    size = sum(not isinstance(item, Label) for item in items)
    if size > BPF_MAXINSNS:
        raise ValueError(
            f"stack_filter: {len(entries)} entries ({len(ports)} distinct ports, "
            f"{len(blocks.labels)} shared checks) need {size} "
            f"instructions, over the kernel's limit of BPF_MAXINSNS = {BPF_MAXINSNS} "
            "(bpf_check_basics_ok()); a port or an IPv4 address takes about 1.3, an IPv6 "
            "address up to 5"
        )
    return assemble(items)
