"""Classic-BPF receive filters, built with :mod:`rawtransport.bpf`: an endpoint's and a stack's.

The filters are *prefilters*: user space still makes every check the kernel's IP and UDP layers
make; a filter only has to never reject a frame the kernel would have delivered to the socket, and
to reject as much of everything else as is cheap (docs/kernel-checks.md).

:func:`endpoint_filter` is the filter of one endpoint's own packet socket. :func:`stack_filter` is
the filter of one packet socket shared by many endpoints: it accepts what any of their endpoint
filters would, through a binary search over their ports, so that its cost per frame grows with the
logarithm of the number of endpoints, and its size about linearly.

Example, ``endpoint_filter(family=4, local_ip=bytes([198, 18, 0, 1]), local_port=5353,
accept_vlan=False)``::

    ld type
    jeq #0x3 jt 18 jf 0
    jeq #0x4 jt 17 jf 0
    ld vlan_avail
    jeq #0x0 jt 3 jf 0
    ld vlan_tci
    and #0xfff
    jeq #0x0 jt 0 jf 12
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

import struct
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, groupby, repeat
from typing import Final, TypeAlias

from rawtransport.bpf import (
    BPF_ABS,
    BPF_H,
    BPF_IND,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_MAXINSNS,
    BPF_RET,
    BPF_W,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    SKF_AD_IFINDEX,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    SKF_AD_VLAN_TAG,
    SKF_AD_VLAN_TAG_PRESENT,
    Item,
    Program,
    and_,
    assemble,
    ja,
    jeq,
    jeq_x,
    jset,
    label,
    ld,
    ld_anc,
    ldb,
    ldh,
    ldh_ind,
    ldx_imm,
    ldx_msh,
    ret,
    tax,
)
from rawtransport.engine_types import VLAN_VID_MASK
from rawtransport.packet_types import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_UDP,
)

__all__ = ["FilterEntry", "drop_all", "endpoint_filter", "stack_filter"]

_U32: Final = 0xFFFFFFFF

# ----------------------------------------------------------------------------- the filters
_IPPROTO_ICMPV6: Final = 58
# IPv6 extension headers that may precede UDP in legitimate traffic (RFC 8200 §4.1 order):
# hop-by-hop, routing, destination options. The fragment header (44) is handled separately.
_IPV6_PASSED_EXTENSIONS: Final = (0, 43, 60)
_IPV6_FRAGMENT: Final = 44
_ND_NEIGHBOR_SOLICIT: Final = 135
_ND_NEIGHBOR_ADVERT: Final = 136
# ff02::1, where an unsolicited neighbour advertisement goes (RFC 4861 7.2.6).
_ALL_NODES: Final = bytes.fromhex("ff020000000000000000000000000001")


def drop_all() -> Program:
    """``ret #0``: a filter that keeps nothing (for send-only and guard sockets)."""
    return Program((ret(0),))


_WORDS: Final = {4: struct.Struct("!I").unpack, 16: struct.Struct("!4I").unpack}


def _words(addr: bytes) -> tuple[int, ...]:
    """An IPv4 or IPv6 address as its 32-bit big-endian words."""
    return _WORDS[len(addr)](addr)


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
    items: list[Item] = [ldb(base + 6), jeq(IPPROTO_UDP, p + "udp6")]
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


def _neighbour_discovery(base: int, p: str) -> list[Item]:
    """At ``p + "nd"``: reject all but neighbour discovery from on-link (hop limit 255).

    A solicitation goes on to ``p + "ns"``, where its target check follows; an advertisement to
    all-nodes (unsolicited, RFC 4861 7.2.6: a claim) is accepted; any other advertisement falls
    through to its destination check.
    """
    # RFC 4861 7.1.1/7.1.2: a message with a hop limit other than 255 came from off-link and is
    # invalid (ndisc_rcv() drops it too).
    return [
        label(p + "nd"),
        ldb(base + 7),
        jeq(255, None, "reject"),
        ldb(base + 40),
        jeq(_ND_NEIGHBOR_SOLICIT, p + "ns"),
        jeq(_ND_NEIGHBOR_ADVERT, None, "reject"),
        *_match_words(base + 24, _ALL_NODES, p + "na"),
        ja("accept"),
        label(p + "na"),
    ]


def _arp(base: int, p: str) -> list[Item]:
    """At ``p + "arp"``: reject all but an Ethernet/IPv4 ARP request or reply; accept a gratuitous
    one (sender = target, RFC 5227 3: a claim). The target check follows, with X clobbered."""
    # RFC 826, Ethernet/IPv4: htype 1 + ptype 0x0800 at 0; hlen 6 + plen 4 at 4; op at 6; sender
    # protocol address at 14, target protocol address at 24.
    return [
        label(p + "arp"),
        ld(base),
        jeq(0x00010800, None, "reject"),
        ldh(base + 4),
        jeq(0x0604, None, "reject"),
        ldh(base + 6),
        jeq(2, p + "arpop"),
        jeq(1, None, "reject"),
        label(p + "arpop"),
        ld(base + 14),
        tax(),
        ld(base + 24),
        jeq_x("accept"),
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
        # A tag in metadata: only a priority tag (VLAN id 0) passes, which
        # __netif_receive_skb_core() clears before delivering the frame as untagged.
        items += [
            ld_anc(SKF_AD_VLAN_TAG_PRESENT),
            jeq(0, "untagged"),
            ld_anc(SKF_AD_VLAN_TAG),
            and_(VLAN_VID_MASK),
            jeq(0, None, "reject"),
            label("untagged"),
        ]
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
        items += [ldb(base + 9), jeq(IPPROTO_UDP, None, "reject")]
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
            # An advertisement to the address, or a solicitation for it (a claim).
            items += _neighbour_discovery(base, p)
            if spec.nd_for is not None:
                items += _match_words(base + 24, spec.nd_for, "reject")
            items += [ja("accept"), label(p + "ns")]
            if spec.nd_for is not None:
                items += _match_words(base + 48, spec.nd_for, "reject")
            items.append(ja("accept"))

    if spec.arp:
        items += _arp(base, p)
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
    - ARP requests and replies (Ethernet/IPv4) whose target protocol address is ``arp_for``, and
      ICMPv6 neighbour advertisements (hop limit 255) whose IPv6 destination is ``nd_for`` and
      solicitations whose target is ``nd_for``, for the neighbour resolver (replies resolve,
      requests are claims); with either, the claims any neighbour broadcasts: gratuitous ARP
      (sender = target, RFC 5227 3) and advertisements to all-nodes (RFC 4861 7.2.6).
      ``neighbour_replies=True`` accepts these for any target address (ARP when the family
      includes IPv4, ND when it includes IPv6).

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


# Where the shared checks load from, relative to X = the link offset (0, or 4 behind an in-band
# tag): the ethertype, the IPv4 and IPv6 destination, the ARP target protocol address.
_X_ETHERTYPE: Final = 12
_X_DST4: Final = 14 + 16
_X_DST6: Final = 14 + 24
_X_ARP_TARGET: Final = 14 + 24
_X_NS_TARGET: Final = 14 + 48
_PORTS: Final = "ports"


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
    ns: str | None  # checks the neighbour solicitation's target (or accept); with nd


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
            jeq(IPPROTO_UDP, None, "reject"),
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
            assert u.ns is not None
            items += [*_neighbour_discovery(base, p), ja(u.nd), label(p + "ns"), ja(u.ns)]
    if u.arp is not None:
        # The gratuitous-ARP test used X: the tail's loads need the link offset back.
        items += [*_arp(base, p), ldx_imm(link), ja(u.arp)]
    return items


# ------------------------------------------------------------------ the stack filter's tail
# The opcodes of the generated part, as rawtransport.bpf's builders make them.
_JEQ: Final = BPF_JMP | BPF_JEQ | BPF_K
_JGE: Final = BPF_JMP | BPF_JGE | BPF_K
_JA: Final = BPF_JMP | BPF_JA
_RET: Final = BPF_RET | BPF_K
_LD_ABS: Final = BPF_LD | BPF_W | BPF_ABS
_LD_IND: Final = BPF_LD | BPF_W | BPF_IND
_LDH_IND: Final = BPF_LD | BPF_H | BPF_IND
# A conditional jump lands at most 255 instructions past the next one (u8 jt/jf in struct
# sock_filter); ja has a 32-bit offset.
_REACH: Final = 255
# The bottom of a search tests up to this many keys with one ``jeq`` each: about 1.25 instructions
# a key in all, where ``jge`` nodes all the way down to single keys would take 2 (and the limit is
# 4096). It costs at most 3 compares more than the search's own ``log2(n)``.
_RUN: Final = 4


# The steps of _shape() other than runs of keys (a positive count of keys).
_UPPER_DONE: Final = 0
_NODE: Final = -1


@lru_cache(maxsize=256)
def _shape(n: int) -> tuple[int, ...]:
    """The steps of emitting a search of ``n`` keys backwards, from the last key down.

    A positive step is a run of that many keys, the ones below those already emitted;
    ``_UPPER_DONE``: a node's upper half is done, and the next key down is the node's; ``_NODE``:
    the node itself, its lower half done too. The steps do not depend on where the keys are, so a
    search is built of the cached shapes of its halves.
    """
    if n <= _RUN:
        return (n,)
    return (*_shape(n - (n >> 1)), _UPPER_DONE, *_shape(n >> 1), _NODE)


class _Tail:
    """The stack filter's code after its header, emitted backwards: last instruction first.

    Classic BPF only jumps forward (``bpf_check_classic()`` wants every jump to land inside the
    program, past itself), so in code emitted from the end every target is placed before the jumps
    to it, and a jump's offset is known when it is emitted: no labels, no fixups, no relaxation
    pass. A target is named by its index counted from the end; a jump at index ``i`` to index ``t``
    has the offset ``i - t - 1``. :attr:`fields` holds each instruction as four ints in reverse,
    ``k, jf, jt, code``, so that the list reversed is the program's fields in order, as
    :meth:`~rawtransport.bpf.Program.from_fields` takes them.

    A target more than 255 instructions away from a conditional jump is reached through a
    trampoline: a copy of the target when it is a ``ret``, else a ``ja`` to it. Trampolines go
    right after a *closed* unit, one whose last instruction jumps on both outcomes (a search's run
    of ``jeq``, an address or family check), so that nothing falls into them, and each serves every
    jump to its target emitted later (placed earlier) that it is in reach of. The other long jumps
    are the search's ``jge`` to its upper half, which go through a ``ja`` right after them when the
    lower half has grown past reach.
    """

    __slots__ = ("fields", "near", "rets")

    def __init__(self) -> None:
        self.fields: list[int] = []
        # Target -> the index of its nearest copy (itself or its latest trampoline): as code is
        # only ever added in front, the latest copy is the nearest to every jump still to come.
        self.near: dict[int, int] = {}
        self.rets: dict[int, int] = {}  # target that is a ``ret #k`` -> k

    def __len__(self) -> int:
        return len(self.fields) >> 2

    def ret(self, k: int) -> int:
        """Emit ``ret #k``; return it as a target."""
        self.fields += (k, 0, 0, _RET)
        target = len(self) - 1
        self.rets[target] = k
        self.near[target] = target
        return target

    def mark(self) -> int:
        """The instruction emitted last, where the block just emitted begins, as a target."""
        target = len(self) - 1
        self.near[target] = target
        return target

    def trampoline(self, target: int) -> None:
        """Emit a trampoline to ``target``: the nearest copy of it from now on."""
        pc = len(self)
        k = self.rets.get(target)
        self.fields += (pc - target - 1, 0, 0, _JA) if k is None else (k, 0, 0, _RET)
        self.near[target] = pc

    def within_reach(self, targets: Sequence[int], span: int) -> None:
        """Place trampolines so that a closed unit of ``span`` instructions, emitted next, reaches
        each of ``targets`` with conditional jumps."""
        # At worst a trampoline for each target comes first, and the unit's first instruction
        # lands len(targets) + span - 1 past here: a target nearer than 256 before it is kept.
        limit = len(self) + len(targets) + span - 1 - (_REACH + 1)
        near = self.near
        for target in targets:
            if near[target] < limit:
                self.trampoline(target)

    def search(self, keys: Sequence[int], targets: Sequence[int], miss: int) -> int:
        """Jump to ``targets[i]`` when A is ``keys[i]`` (keys sorted and distinct), else to
        ``miss``; return the search as a target.

        A balanced binary search with ``jge`` down to runs of at most ``_RUN`` keys tested with
        ``jeq``: ``ceil(log2(len(keys) / _RUN)) + _RUN`` compares at most, and one ``ja`` more on
        the way to the upper half of each of the few top nodes whose lower half is past reach.
        """
        # The hot loop of the stack filter's build: a loop over the search's shape (no recursion),
        # names bound locally, the next index kept in pc, runs of 3 and 4 written out (halving
        # leaves those in all but the smallest searches).
        near, trampoline, extend = self.near, self.trampoline, self.fields.extend
        jeq, jge, ja, reach = _JEQ, _JGE, _JA, _REACH
        uppers: list[tuple[int, int]] = []  # per open node: where its upper half begins, its key
        pc = len(self)
        hi = len(keys)  # the keys from hi on are emitted
        for step in _shape(len(keys)):
            if step == _UPPER_DONE:
                uppers.append((pc - 1, hi))
            elif step == _NODE:
                upper, mid = uppers.pop()
                offset = pc - upper - 1
                if offset <= reach:
                    extend((keys[mid], 0, offset, jge))
                    pc += 1
                else:
                    # jge #key jt 0 jf 1, then ja upper: the lower half follows the ja.
                    extend((offset, 0, 0, ja, keys[mid], 1, 0, jge))
                    pc += 2
            else:
                # A run of jeq, the last (emitted first) with both outcomes: a closed unit. Its
                # first jeq lands at pc + size - 1, or further behind at most size + 1 trampolines
                # for its targets and the miss: within_reach(), inlined.
                size = step
                lo = hi - size
                limit = pc + 2 * size - (reach + 1)
                run = targets[lo:hi]
                if near[miss] < limit:
                    trampoline(miss)
                    pc += 1
                for target in run:
                    if near[target] < limit:
                        trampoline(target)
                        pc += 1
                last = pc - 1  # jeq at pc jumps to t with offset pc - near[t] - 1
                if size == 4:
                    a, b, c, d = run
                    k0, k1, k2, k3 = keys[lo:hi]
                    # fmt: off
                    extend((
                        k3, last - near[miss], last - near[d], jeq,
                        k2, 0, pc - near[c], jeq,
                        k1, 0, pc + 1 - near[b], jeq,
                        k0, 0, pc + 2 - near[a], jeq,
                    ))
                    # fmt: on
                elif size == 3:
                    a, b, c = run
                    k0, k1, k2 = keys[lo:hi]
                    # fmt: off
                    extend((
                        k2, last - near[miss], last - near[c], jeq,
                        k1, 0, pc - near[b], jeq,
                        k0, 0, pc + 1 - near[a], jeq,
                    ))
                    # fmt: on
                else:  # a run of 1 or 2, in the smallest searches
                    extend((keys[hi - 1], last - near[miss], last - near[run[-1]], jeq))
                    if size == 2:
                        extend((keys[lo], 0, pc - near[run[0]], jeq))
                pc += size
                hi = lo
        return self.mark()

    def address(self, offset: int, words: Sequence[int], hit: int, miss: int) -> int:
        """Jump to ``hit`` when the address at ``[x + offset]`` is ``words`` (its 32-bit words),
        else to ``miss``; return the check as a target."""
        # ld [x + offset + 4 i]; jeq #word jt next jf miss, for each word; the last to hit.
        self.within_reach((hit, miss), 2 * len(words))
        fields, near = self.fields, self.near
        pc = len(self)
        i = len(words) - 1
        fields += (
            words[i],
            pc - near[miss] - 1,
            pc - near[hit] - 1,
            _JEQ,
            offset + 4 * i,
            0,
            0,
            _LD_IND,
        )
        while i:
            i -= 1
            pc += 2
            fields += (words[i], pc - near[miss] - 1, 0, _JEQ, offset + 4 * i, 0, 0, _LD_IND)
        return self.mark()

    def addresses(self, offset: int, keys: list[tuple[int, ...]], hit: int, miss: int) -> int:
        """Jump to ``hit`` when the address at ``[x + offset]`` is one of ``keys`` (sorted and
        distinct tuples of its 32-bit words), else to ``miss``; return the check as a target.

        A search on the first word, then on the next word among the addresses that share the first,
        and so on: an IPv6 address costs at most four searches however many addresses there are,
        and addresses in one /64 share its two compares.
        """
        if len(keys) == 1:
            return self.address(offset, keys[0], hit, miss)
        if len(keys[0]) == 1:
            self.search([key[0] for key in keys], [hit] * len(keys), miss)
        else:
            groups = [(head, [key[1:] for key in group]) for head, group in groupby(keys, _head)]
            # In the program, each group's search on the next word follows this word's search.
            nexts = [self.addresses(offset + 4, rest, hit, miss) for _, rest in reversed(groups)]
            nexts.reverse()
            self.search([head for head, _ in groups], nexts, miss)
        self.fields += (offset, 0, 0, _LD_IND)
        return self.mark()

    def on_device(self, ifindex: int, hit: int, miss: int) -> int:
        """Jump to ``hit`` when the frame came in on ``ifindex`` (``ld ifidx``), else to ``miss``;
        return the check as a target."""
        self.within_reach((hit, miss), 1)
        pc = len(self)
        near = self.near
        anc = (SKF_AD_OFF + SKF_AD_IFINDEX) & _U32
        self.fields += (ifindex, pc - near[miss] - 1, pc - near[hit] - 1, _JEQ, anc, 0, 0, _LD_ABS)
        return self.mark()

    def family(self, ipv4: int, ipv6: int) -> int:
        """Go on to ``ipv4`` or ``ipv6`` by the frame's ethertype; return the check as a target."""
        self.within_reach((ipv4, ipv6), 1)
        pc = len(self)
        jt, jf = pc - self.near[ipv6] - 1, pc - self.near[ipv4] - 1
        self.fields += (ETH_P_IPV6, jf, jt, _JEQ, _X_ETHERTYPE, 0, 0, _LDH_IND)
        return self.mark()


def _head(key: tuple[int, ...]) -> int:
    return key[0]


# The header's jumps to the tail's address checks, by the name the header gives them.
_STUB_ADDR4: Final = "~addr4"
_STUB_ADDR6: Final = "~addr6"
_STUB_ARP: Final = "~arp"
_STUB_ND: Final = "~nd"
_STUB_NS: Final = "~ns"


@lru_cache(maxsize=64)
def _header(
    want4: bool,
    want6: bool,
    allow_fragments: bool,
    addr4: str,
    addr6: str,
    arp: str | None,
    nd: str | None,
    ns: str | None,
    accept_vlan: bool,
    snaplen: int,
) -> tuple[tuple[int, ...], tuple[tuple[int, str], ...]]:
    """The stack filter's head, for a :class:`_Union` whose jumps to the tail are stubs' names.

    The same for every set of entries with the same paths, so it is assembled once: the code
    through both link-header lengths, one ``ja`` stub for each address check in the tail (ports
    are reached by falling off the end, where the tail's search begins), then its own ``accept``
    and ``reject``. Returns its fields, as :meth:`~rawtransport.bpf.Program.from_fields` takes them,
    and ``(index, name)`` of each stub, whose ``ja`` offset the caller sets.
    """
    union = _Union(want4, want6, allow_fragments, addr4, addr6, arp, nd, ns)
    names = [name for name in (addr4, addr6, arp, nd, ns) if name and name[0] == "~"]
    stubs = [item for name in names for item in (label(name), ja(0))]

    def l3(base: int, p: str) -> list[Item]:
        return _union_l3(union, base, p)

    # A stand-in for the tail's first instruction, so that the jumps to it assemble.
    items = [*_link(accept_vlan, l3, snaplen, stubs), label(_PORTS), ret(0)]
    code = assemble(items).raw[:-1]
    first = len(code) - 2 - len(names)  # the stubs come right before accept and reject
    return tuple(chain.from_iterable(code)), tuple(
        (first + i, name) for i, name in enumerate(names)
    )


# What a family's entries on a port are bound to: one address, several, or None when one of them is
# a wildcard; _NO_ENTRY when the family has no entry on the port.
_Bound: TypeAlias = bytes | frozenset[bytes] | None
_NO_ENTRY: Final = b""


def _bound(addrs: set[bytes]) -> _Bound:
    """``addrs`` (not empty) as a :data:`_Bound`: one address as itself, so that it keys the same
    check whichever way it was found."""
    return next(iter(addrs)) if len(addrs) == 1 else frozenset(addrs)


def _entry_bounds(signature: bytes | int) -> tuple[_Bound, _Bound]:
    """The (IPv4, IPv6) bounds of a port with one entry, from the entry's signature: its address,
    whose length tells its family, or the family of a wildcard."""
    if isinstance(signature, bytes):
        return (signature, _NO_ENTRY) if len(signature) == 4 else (_NO_ENTRY, signature)
    return {0: (None, None), 4: (None, _NO_ENTRY), 6: (_NO_ENTRY, None)}[signature]


def _table(entries: list[FilterEntry], family: int) -> dict[int, _Bound]:
    """Port -> what the family's entries (dual-stack ones included) on it are bound to."""
    merged: dict[int, set[bytes] | None] = {}
    for entry in entries:
        if entry.family not in (0, family):
            continue
        port, addr = entry.local_port, entry.local_ip
        if addr is None:
            merged[port] = None
        elif port not in merged:
            merged[port] = {addr}
        elif (bound := merged[port]) is not None:
            bound.add(addr)
    return {port: None if bound is None else _bound(bound) for port, bound in merged.items()}


def _union_of(bounds: Iterable[_Bound]) -> _Bound:
    """What all of a family's entries are bound to, from their ports' bounds (some not empty)."""
    addrs: set[bytes] = set()
    for bound in bounds:
        if bound is None:
            return None
        if isinstance(bound, frozenset):
            addrs |= bound
        elif bound:
            addrs.add(bound)
    return _bound(addrs)


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
    local4: Iterable[bytes] | None = None,
    local6: Iterable[bytes] | None = None,
    loopback: int | None = None,
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
    - ARP requests and replies whose target is one of ``arp_for`` (any, with
      ``neighbour_replies4``), neighbour advertisements (hop limit 255) to one of ``nd_for`` and
      solicitations for one of them (any, with ``neighbour_replies6``), and, with any of these,
      gratuitous ARP and advertisements to all-nodes, as :func:`endpoint_filter` takes them.

    Wildcard entries: ``local4`` and ``local6``, when given, are the destinations a wildcard entry
    of that family takes (the host's own, broadcast and always-joined addresses, as the engine's
    socket lookup takes them; the entries' bound addresses are added), so that datagrams to other
    addresses on its port never leave the kernel; ``None`` (the default) takes any. Frames that came in on ``loopback`` (an ifindex)
    take any destination all the same: only local traffic runs there, to prefixes (127/8) that no
    list of addresses covers.

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
    instructions (``u8`` offsets); longer ones go through ``ja`` (32-bit offsets), see
    :class:`_Tail`. Raises ``ValueError`` when the program would be over the kernel's
    ``BPF_MAXINSNS`` (4096, checked when the filter is attached: ``bpf_check_basics_ok()``,
    ``sk_chk_filter()`` in older kernels), saying how many entries were asked for.

    Building takes under a microsecond a port, about 0.2 ms for 200 and 1.7 ms for 2000 (it is
    rebuilt on the event loop whenever an endpoint opens or closes, and the loop must not stall):
    the head, the same for all entry sets with the same paths, is assembled once and cached; the
    rest is emitted backwards as plain ints, its offsets known as it goes (:class:`_Tail`), and
    the program validated once, by :meth:`~rawtransport.bpf.Program.from_fields`.
    """
    entries = list(entries)
    if not all(map(isinstance, entries, repeat(FilterEntry))):
        wrong = next(entry for entry in entries if not isinstance(entry, FilterEntry))
        raise TypeError(f"entries must be FilterEntry, not {type(wrong).__name__}")
    arp_targets = list(arp_for)
    nd_targets = list(nd_for)
    for addr in arp_targets:
        _check_addr("arp_for", addr, 4)
    for addr in nd_targets:
        _check_addr("nd_for", addr, 16)
    wild: dict[int, _Bound] = {_X_DST4: None, _X_DST6: None}
    for offset, given, family in ((_X_DST4, local4, 4), (_X_DST6, local6, 6)):
        if given is not None:
            addrs = {bytes(addr) for addr in given}
            for addr in addrs:
                _check_addr(f"local{family}", addr, 4 if family == 4 else 16)
            # An address an entry is bound to is local too: a port a wildcard shares with bound
            # entries takes theirs as well, whatever the list says.
            addrs.update(e.local_ip for e in entries if e.family == family and e.local_ip)
            wild[offset] = _bound(addrs) if addrs else frozenset()
    if loopback is not None and (type(loopback) is not int or loopback < 1):
        raise ValueError(f"loopback must be an ifindex (>= 1), not {loopback!r}")
    _check_snaplen(snaplen)
    if not (entries or arp_targets or nd_targets or neighbour_replies4 or neighbour_replies6):
        return drop_all()

    # A port's signature picks its target: when it has one entry (the usual case, each port an
    # endpoint's, found in a few passes in C), the entry's address, or its family for a wildcard;
    # else the port's (IPv4, IPv6) bounds.
    ports: list[int]
    signatures: Sequence[Hashable]
    distinct: dict[Hashable, tuple[_Bound, _Bound]]  # signature -> its (IPv4, IPv6) bounds
    one_each = {entry.local_port: entry.local_ip or entry.family for entry in entries}
    if len(one_each) == len(entries):
        ports = sorted(one_each)
        entry_signatures = list(map(one_each.__getitem__, ports))
        signatures = entry_signatures
        distinct = {sig: _entry_bounds(sig) for sig in dict.fromkeys(entry_signatures)}
    else:
        table4, table6 = _table(entries, 4), _table(entries, 6)
        ports = sorted(table4.keys() | table6.keys())
        bounds = [(table4.get(port, _NO_ENTRY), table6.get(port, _NO_ENTRY)) for port in ports]
        signatures = bounds
        distinct = {sig: sig for sig in dict.fromkeys(bounds)}
    bounds4 = [ip4 for ip4, _ in distinct.values() if ip4 != _NO_ENTRY]
    bounds6 = [ip6 for _, ip6 in distinct.values() if ip6 != _NO_ENTRY]

    # Program order: header, port search, family checks, address checks, accept, reject. The tail
    # is emitted from its end, each part before the parts that jump to it.
    tail = _Tail()
    reject = tail.ret(0)
    accept = tail.ret(snaplen)
    checks: dict[tuple[int, _Bound], int] = {}  # (offset, None): a wildcard's, as given

    def check(offset: int, bound: _Bound) -> int:
        """The check that accepts when the address at ``[x + offset]`` is one of ``bound``
        (``None``: a wildcard's, one of the family's local addresses if given)."""
        if bound is None:
            local = wild[offset]
            if local is None:
                return accept
            found = checks.get((offset, None))
            if found is None:
                found = check(offset, local) if local else reject
                if loopback is not None:
                    found = tail.on_device(loopback, accept, found)
                checks[offset, None] = found
            return found
        if not bound:
            return reject
        found = checks.get((offset, bound))
        if found is None:
            if isinstance(bound, bytes):
                found = tail.address(offset, _words(bound), accept, reject)
            else:
                found = tail.addresses(offset, sorted(map(_words, bound)), accept, reject)
            checks[offset, bound] = found
        return found

    def replies(any_target: bool, offset: int, targets: list[bytes]) -> int | None:
        if any_target:
            return accept
        return check(offset, _bound(set(map(bytes, targets)))) if targets else None

    # Where a frame that may carry no port goes (fragments, extension headers), by family.
    stub_targets = {
        _STUB_ADDR4: check(_X_DST4, _union_of(bounds4)) if bounds4 else reject,
        _STUB_ADDR6: check(_X_DST6, _union_of(bounds6)) if bounds6 else reject,
        _STUB_ARP: replies(neighbour_replies4, _X_ARP_TARGET, arp_targets),
        _STUB_ND: replies(neighbour_replies6, _X_DST6, nd_targets),
        _STUB_NS: replies(neighbour_replies6, _X_NS_TARGET, nd_targets),
    }
    # Distinct signatures have distinct address checks (or accept or reject), so distinct targets.
    resolved = [
        (sig, check(_X_DST4, ip4), check(_X_DST6, ip6)) for sig, (ip4, ip6) in distinct.items()
    ]
    targets = {sig: ip4 if ip4 == ip6 else tail.family(ip4, ip6) for sig, ip4, ip6 in resolved}
    if ports:
        tail.search(ports, list(map(targets.__getitem__, signatures)), reject)

    def name(stub: str) -> str | None:
        """How the header names a target in the tail."""
        target = stub_targets[stub]
        if target is None:
            return None
        return "accept" if target == accept else "reject" if target == reject else stub

    header, stubs = _header(
        bool(bounds4),
        bool(bounds6),
        allow_fragments,
        name(_STUB_ADDR4) or "reject",
        name(_STUB_ADDR6) or "reject",
        name(_STUB_ARP),
        name(_STUB_ND),
        name(_STUB_NS),
        accept_vlan,
        snaplen,
    )
    size = (len(header) >> 2) + len(tail)
    if size > BPF_MAXINSNS:
        raise ValueError(
            f"stack_filter: {len(entries)} entries ({len(ports)} distinct ports, "
            f"{len(checks)} address checks) need {size} "
            f"instructions, over the kernel's limit of BPF_MAXINSNS = {BPF_MAXINSNS} "
            "(bpf_check_basics_ok()); a port or an IPv4 address takes about 1.3, an IPv6 "
            "address up to 5"
        )
    fields = list(header)
    for pc, stub in stubs:
        target = stub_targets[stub]
        assert target is not None
        # The ja's k: the target is at size - 1 - target in the program.
        fields[4 * pc + 3] = size - 1 - target - pc - 1
    fields += reversed(tail.fields)
    return Program.from_fields(fields)
