"""The endpoint's classic-BPF receive filter, built with :mod:`rawtransport.bpf`.

The filter is a *prefilter*: user space still makes every check the kernel's IP and UDP layers make;
the filter only has to never reject a frame the kernel would have delivered to the endpoint's socket,
and to reject as much of everything else as is cheap (RAWPATH.md, "Security").

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

from dataclasses import dataclass
from typing import Final

from rawtransport.bpf import (
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    SKF_AD_PKTTYPE,
    SKF_AD_VLAN_TAG_PRESENT,
    Item,
    Program,
    assemble,
    ja,
    jeq,
    jset,
    label,
    ld,
    ld_anc,
    ldb,
    ldh,
    ldh_ind,
    ldx_msh,
    ret,
)

__all__ = ["drop_all", "endpoint_filter"]

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


def _l3(spec: _Spec, base: int, p: str) -> list[Item]:
    """The clauses for one link-header length; A holds the ethertype on entry."""
    dispatch: list[tuple[int, str]] = []
    if spec.want4:
        dispatch.append((ETH_P_IP, p + "ip4"))
    if spec.want6 or spec.nd:
        dispatch.append((ETH_P_IPV6, p + "ip6"))
    if spec.arp:
        dispatch.append((ETH_P_ARP, p + "arp"))
    items: list[Item] = [
        jeq(ethertype, target, "reject" if i == len(dispatch) - 1 else None)
        for i, (ethertype, target) in enumerate(dispatch)
    ]

    if spec.want4:
        # IPv4 (RFC 791): dst at 16, protocol at 9, src at 12, flags+fragment offset at 6.
        items.append(label(p + "ip4"))
        if spec.local_ip is not None:
            items += [ld(base + 16), jeq(_words(spec.local_ip)[0], None, "reject")]
        items += [ldb(base + 9), jeq(_IPPROTO_UDP, None, "reject")]
        if spec.remote_ip is not None:
            items += [ld(base + 12), jeq(_words(spec.remote_ip)[0], None, "reject")]
        items.append(ldh(base + 6))
        if spec.allow_fragments:
            # A non-first fragment carries no UDP header to match: pass it to the reassembler.
            items.append(jset(0x1FFF, "accept"))
        else:
            # Fragment offset (0x1fff) or more-fragments (0x2000): the kernel would reassemble
            # (ip_defrag via ip_local_deliver); without reassembly, keep fragments out entirely.
            items.append(jset(0x3FFF, "reject"))
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
            items += [ldb(base + 6), jeq(_IPPROTO_UDP, p + "udp6")]
            if spec.allow_fragments:
                items.append(jeq(_IPV6_FRAGMENT, "accept"))
            else:
                items.append(jeq(_IPV6_FRAGMENT, p + "atomic6"))
            # Extension headers: walking a chain is not expressible without loops, and a chain of
            # any length is legitimate (the kernel delivered 20 destination-options headers, seen).
            # Pass the frame, already matched on address, to user space's full parser instead of
            # dropping traffic the kernel would deliver.
            items += [jeq(nh, "accept") for nh in _IPV6_PASSED_EXTENSIONS]
            items.append(ja("reject"))
            if not spec.allow_fragments:
                # An atomic fragment (offset 0, M clear) is processed in isolation and delivered
                # even without reassembly (RFC 6946; ipv6_frag_rcv()): let it through.
                items += [label(p + "atomic6"), ldh(base + 42), jset(0xFFF9, "reject", "accept")]
            items.append(label(p + "udp6"))
            if spec.local_port is not None:
                items += [ldh(base + 42), jeq(spec.local_port, None, "reject")]
            if spec.remote_port is not None:
                items += [ldh(base + 40), jeq(spec.remote_port, None, "reject")]
            items.append(ja("accept"))
        if spec.nd:
            items.append(label(p + "nd"))
            # RFC 4861 §7.1.2: a neighbour advertisement with a hop limit other than 255 came from
            # off-link and is invalid (ndisc_rcv() drops it too).
            items += [ldb(base + 7), jeq(255, None, "reject")]
            items += [ldb(base + 40), jeq(_ND_NEIGHBOR_ADVERT, None, "reject")]
            if spec.nd_for is not None:
                items += _match_words(base + 24, spec.nd_for, "reject")
            items.append(ja("accept"))

    if spec.arp:
        # RFC 826, Ethernet/IPv4: htype 1 + ptype 0x0800 at 0; hlen 6 + plen 4 at 4; op at 6;
        # target protocol address at 24.
        items += [
            label(p + "arp"),
            ld(base),
            jeq(0x00010800, None, "reject"),
            ldh(base + 4),
            jeq(0x0604, None, "reject"),
            ldh(base + 6),
            jeq(2, None, "reject"),
        ]
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
    if not isinstance(snaplen, int) or not 1 <= snaplen <= _U32:
        raise ValueError(f"snaplen must be 1..{_U32}, not {snaplen!r}")
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
    items += _l3(spec, 14, "u_")
    if accept_vlan:
        items += [label("tagged"), ldh(16), *_l3(spec, 18, "t_")]
    items += [label("accept"), ret(snaplen), label("reject"), ret(0)]
    return assemble(items)
