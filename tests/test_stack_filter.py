"""The stack's filter: the union of its endpoints' filters, checked against them in the interpreter.

``stack_filter(entries)`` must accept a frame exactly when ``endpoint_filter`` built for one of the
entries would (with the same fragment, VLAN and neighbour arguments, derived from the entries as
``rawtransport/stack.py`` derives them); the interpreter :func:`rawtransport.bpf.run` is the
oracle for both. It is no looser than that union: an entry has no remote address, so the union of
*unconnected* endpoint filters is what it is compared with.
"""

from __future__ import annotations

import math
import random
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawtransport.bpf import BPF_JA, BPF_JMP, BPF_MAXINSNS, BPF_RET, Program, RawInstruction, run
from rawtransport.bpf_filter import FilterEntry, _Tail, drop_all, endpoint_filter, stack_filter
from tests.test_bpf import (
    A4,
    A6,
    B4,
    B6,
    FULL,
    MAC_A,
    MAC_B,
    OTHER4,
    OTHER6,
    PEER_PORT,
    PORT,
    accepts,
    arp,
    eth,
    icmpv6,
    ip,
    ipv4,
    ipv6,
    neighbour_advert,
    udp,
    udp4,
    udp6,
)

# Few ports and addresses, so that entries share ports and addresses, and frames hit them.
PORTS = [PORT, PORT + 1, PORT + 2, PORT + 3]
ADDRS4 = [A4, B4]
ADDRS6 = [A6, B6]
SNODE, ALL_NODES = ip("ff02::1:ff00:1"), ip("ff02::1")  # a solicited-node group, all-nodes
BINDINGS: dict[int, list[bytes | None]] = {0: [None], 4: [None, *ADDRS4], 6: [None, *ADDRS6]}


def stack_arguments(entries: list[FilterEntry]) -> dict[str, object]:
    """The neighbour arguments ``rawtransport/stack.py`` gives: bound addresses, any for wildcards."""
    return {
        "arp_for": sorted({e.local_ip for e in entries if e.family == 4 and e.local_ip}),
        "nd_for": sorted({e.local_ip for e in entries if e.family == 6 and e.local_ip}),
        "neighbour_replies4": any(e.local_ip is None and e.family in (0, 4) for e in entries),
        "neighbour_replies6": any(e.local_ip is None and e.family in (0, 6) for e in entries),
    }


def own_filter(entry: FilterEntry, *, allow_fragments: bool, accept_vlan: bool) -> Program:
    """The entry's endpoint filter, as ``rawtransport/endpoint.py`` builds it for an endpoint."""
    return endpoint_filter(
        family=entry.family,
        local_ip=entry.local_ip,
        local_port=entry.local_port,
        accept_vlan=accept_vlan,
        allow_fragments=allow_fragments,
        arp_for=entry.local_ip if entry.family == 4 else None,
        nd_for=entry.local_ip if entry.family == 6 else None,
        neighbour_replies=entry.local_ip is None,
    )


@st.composite
def filter_entries(draw: st.DrawFn) -> FilterEntry:
    family = draw(st.sampled_from([0, 4, 6]))
    return FilterEntry(
        family, draw(st.sampled_from(BINDINGS[family])), draw(st.sampled_from(PORTS))
    )


def _fragment_header(offset_flags: int) -> bytes:
    """An IPv6 fragment header (next header UDP) and a UDP header behind it."""
    return bytes([17, 0]) + offset_flags.to_bytes(2, "big") + bytes(4) + udp(PEER_PORT, PORT, b"x")


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """UDP to ports in and out of ``PORTS`` and addresses in and out, fragments, IPv6 extension
    headers, ARP, neighbour discovery, other protocols, in-band tags, cut frames and garbage."""
    dport = draw(st.sampled_from([*PORTS, PORT + 4, 0]))
    kind = draw(st.sampled_from(["udp4", "udp6", "ext6", "arp", "nd", "icmp6", "garbage"]))
    if kind == "udp4":
        packet = ipv4(
            B4,
            draw(st.sampled_from([*ADDRS4, OTHER4])),
            udp(PEER_PORT, dport, b"data"),
            proto=draw(st.sampled_from([17, 17, 6])),
            frag=draw(st.sampled_from([0, 0, 0x4000, 0x2000, 0x00B9, 0x20B9])),
            options=draw(st.sampled_from([b"", b"\x01" * 4])),
        )
        frame = eth(0x0800, packet)
    elif kind in ("udp6", "ext6"):
        payload = udp(PEER_PORT, dport, b"data")
        nh = 17
        if kind == "ext6":
            nh = draw(st.sampled_from([0, 43, 60, 44, 6, 59]))
            if nh == 44:
                payload = _fragment_header(draw(st.sampled_from([0, 1, 8, 0xFFF8, 9])))
            else:
                payload = bytes([17, 0]) + bytes(6) + payload
        frame = eth(0x86DD, ipv6(B6, draw(st.sampled_from([*ADDRS6, OTHER6])), payload, nh=nh))
    elif kind == "arp":
        target = draw(st.sampled_from([*ADDRS4, OTHER4]))
        sender = draw(st.sampled_from([OTHER4, target]))  # the second: gratuitous
        op = draw(st.sampled_from([1, 2, 2, 3]))
        frame = eth(0x0806, arp(op, MAC_B, sender, MAC_A, target))
    elif kind in ("nd", "icmp6"):
        target = draw(st.sampled_from([*ADDRS6, OTHER6]))
        body = neighbour_advert(B6) if kind == "nd" else icmpv6(135, bytes(4) + target)
        dst = draw(st.sampled_from([*ADDRS6, OTHER6, SNODE, ALL_NODES]))
        frame = eth(0x86DD, ipv6(B6, dst, body, nh=58, hlim=draw(st.sampled_from([255, 64]))))
    else:
        frame = draw(st.binary(max_size=90))
    tags = draw(st.sampled_from([(), (), (), ((0x8100, 5),), ((0x88A8, 1), (0x8100, 2))]))
    if tags and len(frame) >= 14:
        tag_bytes = b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in tags)
        frame = frame[:12] + tag_bytes + frame[12:]
    if draw(st.integers(0, 4)) == 0:
        frame = frame[: draw(st.integers(0, len(frame)))]
    return frame


@given(
    st.one_of(
        st.lists(filter_entries(), min_size=1, max_size=60),
        # One entry a port, the usual case, which stack_filter reads by a path of its own.
        st.lists(filter_entries(), min_size=1, max_size=4, unique_by=lambda e: e.local_port),
    ),
    st.lists(frames(), min_size=1, max_size=8),
    st.booleans(),
    st.booleans(),
    st.sampled_from([0, 0, 1, 2, 3, 4]),
    st.sampled_from([False, False, True]),
)
def test_stack_filter_is_the_union_of_the_endpoint_filters(
    entries: list[FilterEntry],
    frame_list: list[bytes],
    allow_fragments: bool,
    accept_vlan: bool,
    pkttype: int,
    offloaded: bool,
) -> None:
    program = stack_filter(
        entries,
        allow_fragments=allow_fragments,
        accept_vlan=accept_vlan,
        **stack_arguments(entries),  # type: ignore[arg-type]
    )
    singles = [
        own_filter(e, allow_fragments=allow_fragments, accept_vlan=accept_vlan)
        for e in set(entries)
    ]
    ctx = {"pkttype": pkttype, "vlan_tag_present": offloaded}
    for frame in frame_list:
        union = any(accepts(single, frame, **ctx) for single in singles)
        # Never rejects what an entry's own filter takes; takes nothing none of them takes.
        assert accepts(program, frame, **ctx) is union


@given(st.lists(filter_entries(), min_size=1, max_size=60), st.sampled_from([PORT + 4, 1, 65535]))
def test_a_port_no_entry_has_is_rejected(entries: list[FilterEntry], dport: int) -> None:
    program = stack_filter(entries, **stack_arguments(entries))  # type: ignore[arg-type]
    for dst in (*ADDRS4, OTHER4):
        assert not accepts(program, udp4(dst=dst, dport=dport))
    for dst6 in (*ADDRS6, OTHER6):
        assert not accepts(program, udp6(dst=dst6, dport=dport))


@given(
    st.lists(st.sampled_from(ADDRS4), max_size=2),
    st.lists(st.sampled_from(ADDRS6), max_size=2),
    st.booleans(),
    st.booleans(),
)
def test_neighbour_replies(
    arp_for: list[bytes], nd_for: list[bytes], any4: bool, any6: bool
) -> None:
    # No entries: only the resolver's replies, to the listed targets or to any.
    program = stack_filter(
        [], arp_for=arp_for, nd_for=nd_for, neighbour_replies4=any4, neighbour_replies6=any6
    )
    # Requests to those targets too (claims), and gratuitous ARP whenever ARP is taken at all.
    sender = ip("198.18.7.9")
    for target in (*ADDRS4, OTHER4):
        expected = any4 or target in arp_for
        assert accepts(program, eth(0x0806, arp(2, MAC_B, sender, MAC_A, target))) is expected
        assert accepts(program, eth(0x0806, arp(1, MAC_B, sender, MAC_A, target))) is expected
        assert not accepts(program, eth(0x0806, arp(3, MAC_B, sender, MAC_A, target)))
        assert not accepts(program, udp4(dst=target))
    garp = eth(0x0806, arp(1, MAC_B, OTHER4, bytes(6), OTHER4))
    assert accepts(program, garp) is bool(any4 or arp_for)
    # Advertisements to those destinations and solicitations for those targets; unsolicited
    # advertisements to all-nodes whenever neighbour discovery is taken at all.
    for addr in (*ADDRS6, OTHER6):
        advert = neighbour_advert(B6)
        solicit = icmpv6(135, bytes(4) + addr)
        expected = any6 or addr in nd_for
        assert accepts(program, eth(0x86DD, ipv6(B6, addr, advert, nh=58, hlim=255))) is expected
        assert not accepts(program, eth(0x86DD, ipv6(B6, addr, advert, nh=58, hlim=254)))
        assert accepts(program, eth(0x86DD, ipv6(B6, SNODE, solicit, nh=58, hlim=255))) is expected
        assert not accepts(program, udp6(dst=addr))
    all_nodes = eth(0x86DD, ipv6(B6, ALL_NODES, neighbour_advert(B6), nh=58, hlim=255))
    assert accepts(program, all_nodes) is bool(any6 or nd_for)


def test_no_entries_rejects_everything() -> None:
    assert stack_filter([]) == drop_all()
    assert stack_filter(iter(()), allow_fragments=True, accept_vlan=True) == drop_all()


def test_shared_port_takes_the_union_per_family() -> None:
    program = stack_filter(
        [FilterEntry(4, A4, PORT), FilterEntry(4, B4, PORT), FilterEntry(6, None, PORT)]
    )
    assert accepts(program, udp4(dst=A4))
    assert accepts(program, udp4(dst=B4))
    # The IPv6 wildcard on the port does not open it to every IPv4 address.
    assert not accepts(program, udp4(dst=OTHER4))
    assert accepts(program, udp6(dst=OTHER6))
    # A dual-stack wildcard does.
    dual = stack_filter([FilterEntry(4, A4, PORT), FilterEntry(0, None, PORT)])
    assert accepts(dual, udp4(dst=OTHER4))
    assert accepts(dual, udp6(dst=OTHER6))


def test_fragments_and_extension_headers_go_by_address() -> None:
    program = stack_filter([FilterEntry(4, A4, PORT), FilterEntry(6, A6, PORT + 1)])
    later = udp4(dst=A4, dport=1, frag=0x00B9)  # no UDP header in it: matched on address
    assert accepts(program, later)
    assert not accepts(program, udp4(dst=B4, dport=PORT, frag=0x00B9))
    assert not accepts(stack_filter([FilterEntry(4, A4, PORT)], allow_fragments=False), later)
    chain = bytes([17, 0]) + bytes(6) + udp(PEER_PORT, 1, b"x")
    assert accepts(program, eth(0x86DD, ipv6(B6, A6, chain, nh=60)))
    assert not accepts(program, eth(0x86DD, ipv6(B6, B6, chain, nh=60)))
    wildcard6 = stack_filter([FilterEntry(4, A4, PORT), FilterEntry(6, None, PORT + 1)])
    assert accepts(wildcard6, eth(0x86DD, ipv6(B6, OTHER6, chain, nh=60)))


def test_filter_entry_checks_its_arguments() -> None:
    assert FilterEntry(4, bytearray(A4), PORT).local_ip == A4  # type: ignore[arg-type]
    for args, error in [
        ((5, None, PORT), ValueError),
        ((0, A6, PORT), ValueError),
        ((4, A6, PORT), ValueError),
        ((6, A4, PORT), ValueError),
        ((4, "198.18.7.1", PORT), TypeError),
        ((4, None, 0), ValueError),
        ((4, None, 65536), ValueError),
        ((4, None, True), TypeError),
    ]:
        with pytest.raises(error):
            FilterEntry(*args)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        stack_filter([(4, None, PORT)])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        stack_filter([], arp_for=[A6])
    with pytest.raises(ValueError):
        stack_filter([], nd_for=[A4])
    with pytest.raises(ValueError):
        stack_filter([FilterEntry(4, None, PORT)], snaplen=0)
    assert run(stack_filter([FilterEntry(4, None, PORT)], snaplen=40), udp4()) == 40


# ------------------------------------------------------------------------------ thousands
def longest_path(program: Program) -> int:
    """The most instructions any frame can execute: the longest path through the (forward-only)
    jump graph, an upper bound on :func:`~rawtransport.bpf.run`'s steps for every input."""
    insns = program.instructions
    cost = [0] * len(insns)
    for pc in reversed(range(len(insns))):
        insn = insns[pc]
        if insn.code & 0x07 == BPF_RET:
            cost[pc] = 1
        elif insn.code == BPF_JMP | BPF_JA:
            cost[pc] = 1 + cost[pc + 1 + insn.k]
        elif insn.code & 0x07 == BPF_JMP:
            cost[pc] = 1 + max(cost[pc + 1 + insn.jt], cost[pc + 1 + insn.jf])
        else:
            cost[pc] = 1 + cost[pc + 1]
    return cost[0]


def many_entries(n: int, seed: int = 7) -> list[FilterEntry]:
    """``n`` entries on distinct ports: IPv4, IPv6 and dual-stack, bound to one of a host's few
    addresses or wildcard."""
    rng = random.Random(seed)
    entries = []
    for port in rng.sample(range(1, 65536), n):
        family = rng.choice([0, 4, 4, 6, 6])
        entries.append(FilterEntry(family, rng.choice(BINDINGS[family]), port))
    return entries


def own_frames(entry: FilterEntry) -> list[bytes]:
    frames = []
    if entry.family in (0, 4):
        frames.append(udp4(dst=entry.local_ip or OTHER4, dport=entry.local_port))
    if entry.family in (0, 6):
        frames.append(udp6(dst=entry.local_ip or OTHER6, dport=entry.local_port))
    return frames


@pytest.mark.parametrize("n", [1000, 2000])
@pytest.mark.parametrize("accept_vlan", [False, True])
def test_thousands_of_entries_fit_and_cost_a_logarithm(n: int, accept_vlan: bool) -> None:
    entries = many_entries(n)
    program = stack_filter(entries, accept_vlan=accept_vlan, **stack_arguments(entries))  # type: ignore[arg-type]
    assert len(program) <= BPF_MAXINSNS
    assert len(program) < 1.45 * n  # about 1.3 instructions a port
    # The program is far longer than a conditional jump reaches: trampolines carried some.
    assert any(i.code == BPF_JMP | BPF_JA and i.k > 255 for i in program.instructions)
    ports = {e.local_port for e in entries}
    for entry in entries:
        for frame in own_frames(entry):
            assert run(program, frame) == len(frame), entry
    absent = next(p for p in range(1, 65536) if p not in ports)
    assert not accepts(program, udp4(dst=A4, dport=absent))
    assert not accepts(program, udp6(dst=A6, dport=absent))
    wrong4 = next(e for e in entries if e.family == 4 and e.local_ip == A4)
    assert not accepts(program, udp4(dst=B4, dport=wrong4.local_port))
    # Every path, for every frame: a search of log2(n/4) levels (a jge, at most one trampoline
    # each), 4 jeq, the family and address checks, and the prologue.
    steps = longest_path(program)
    assert steps < 80
    assert steps < 32 + 2 * math.log2(n)


def test_cost_grows_logarithmically() -> None:
    steps = {n: longest_path(stack_filter(many_entries(n))) for n in (16, 128, 1024, 2048)}
    # From 16 to 2048 ports, 7 doublings: about two instructions each (a jge and a trampoline).
    assert steps[2048] - steps[16] <= 2 * 7 + 2, steps
    assert steps[2048] - steps[1024] <= 3, steps


def test_too_many_entries_is_a_clear_error() -> None:
    entries = [FilterEntry(0, None, port) for port in range(1, 4001)]
    with pytest.raises(ValueError, match=r"4000 entries .* over the kernel's limit"):
        stack_filter(entries)
    # A port shared by many bound entries: their addresses are searched as the ports are.
    shared = [FilterEntry(4, bytes([10, 0, i // 256, i % 256]), PORT) for i in range(2000)]
    program = stack_filter(shared)
    assert accepts(program, udp4(dst=bytes([10, 0, 7, 207])))
    assert not accepts(program, udp4(dst=bytes([10, 0, 7, 208])))
    assert not accepts(program, udp4(dst=bytes([10, 0, 7, 207]), dport=PORT + 1))
    assert longest_path(program) < 50  # the addresses are searched too


def test_kernel_accepts_the_largest_programs() -> None:
    # SO_ATTACH_FILTER on an ordinary UDP socket needs no privilege and runs the kernel's checks
    # (bpf_check_basics_ok(): length; bpf_check_classic(): opcodes, jumps in range, a final ret).
    from rawtransport.link import attach_filter

    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        pytest.skip(f"no UDP socket here: {exc}")
    with sock:
        entries = many_entries(2000)
        for accept_vlan in (False, True):
            program = stack_filter(entries, accept_vlan=accept_vlan, **stack_arguments(entries))  # type: ignore[arg-type]
            attach_filter(sock, program)
        attach_filter(sock, stack_filter([FilterEntry(0, None, p) for p in range(1, 2900)]))


def test_snaplen_and_listing() -> None:
    program = stack_filter([FilterEntry(4, A4, PORT), FilterEntry(6, None, PORT)])
    assert run(program, udp4()) == len(udp4())
    assert program.instructions[-2].k == FULL
    # A port with one entry per family: the search's jeq, then the family, then the address.
    assert "ldh [x + 12]" in program.text
    assert "ld [x + 30]" in program.text


# ----------------------------------------------------------------------------- trampolines
LD_WORD0 = (0x20, 0, 0, 0)  # ld [0]: A = the packet's first 32-bit word, the key searched


def emit(tail: _Tail, *insns: RawInstruction) -> int:
    """Put ``insns`` (in program order) in front of ``tail``; return them as a target."""
    for code, jt, jf, k in reversed(insns):
        tail.fields += (k, jf, jt, code)
    return tail.mark()


def searched(tail: _Tail) -> Program:
    """``ld [0]`` and then the tail, which begins with the search emitted last."""
    return Program.from_fields([*LD_WORD0, *reversed(tail.fields)])


def verdict(program: Program, key: int) -> int:
    """The ``ret`` of ``program`` for a packet whose first word is ``key``, long enough that the
    length does not cut it short."""
    return run(program, key.to_bytes(4, "big") + bytes(400))


@given(st.integers(1, 700), st.integers(1, 200), st.integers(0, 2**32))
def test_search_keeps_every_jump_in_reach_and_the_meaning(n: int, targets: int, seed: int) -> None:
    # Up to 700 keys, each to one of up to 200 targets emitted before the search, most of them
    # far beyond 255: what the trampolines and the ja after a far jge must bring within reach
    # without changing any verdict.
    rng = random.Random(seed)
    tail = _Tail()
    miss = tail.ret(0)
    pool = []
    for value in range(1, targets + 1):
        if rng.random() < 0.5:  # a ret: copied as its own trampoline
            pool.append(tail.ret(value))
        else:  # reached through a ja; the filler runs before the verdict
            filler = [(0x00, 0, 0, 0)] * rng.choice([0, 0, 0, 3, 20])  # ld #0
            pool.append(emit(tail, *filler, (0x00, 0, 0, value), (0x16, 0, 0, 0)))  # ld, ret a
    keys = sorted(rng.sample(range(65536), n))
    chosen = [rng.randrange(targets) for _ in keys]
    tail.search(keys, [pool[i] for i in chosen], miss)
    program = searched(tail)  # from_fields checks every jt/jf fits in 8 bits and lands inside
    for j in rng.sample(range(n), min(n, 150)):
        assert verdict(program, keys[j]) == chosen[j] + 1
    for key in set(range(0, 65536, 997)) - set(keys):
        assert verdict(program, key) == 0


def test_search_with_hundreds_of_far_targets_at_once() -> None:
    # 300 keys, each to its own target placed before the search (so after it in the program):
    # most runs of jeq need a trampoline for each of their targets, and the lower halves of the
    # top nodes grow past the reach of their jge.
    tail = _Tail()
    miss = tail.ret(0)
    pool = [emit(tail, (0x00, 0, 0, i + 1), (0x16, 0, 0, 0)) for i in range(300)]
    tail.search(list(range(300)), pool, miss)
    program = searched(tail)
    for i in range(300):
        assert verdict(program, i) == i + 1
    assert verdict(program, 300) == 0
    far = [
        pc for pc, insn in enumerate(program.raw) if insn[0] == BPF_JMP | BPF_JA and insn[3] > 255
    ]
    assert any(program.raw[pc - 1][:3] == (0x35, 0, 1) for pc in far)  # jge #k jt 0 jf 1; ja
    # Each frame: ld, a jge per level and a ja on the top ones, 4 jeq, a trampoline, ld, ret.
    assert longest_path(program) <= 1 + 2 * math.ceil(math.log2(300 / 4)) + 4 + 1 + 2


def random_entries(rng: random.Random, n: int) -> list[FilterEntry]:
    """``n`` entries on ports that are distinct or shared (a narrow range), to a few addresses of
    the host or to many."""
    ports = rng.choice([range(1, 65536), range(5000, 5000 + max(1, n // 3))])
    pool4 = [rng.randbytes(4) for _ in range(rng.choice([2, 40]))]
    pool6 = [rng.randbytes(16) for _ in range(rng.choice([2, 40]))]
    entries = []
    for _ in range(n):
        family = rng.choice([0, 4, 4, 6, 6])
        bound = (
            None
            if family == 0 or rng.random() < 0.2
            else rng.choice(pool4 if family == 4 else pool6)
        )
        entries.append(FilterEntry(family, bound, rng.choice(ports)))
    return entries


def expected_udp(entries: list[FilterEntry], family: int, dst: bytes, dport: int) -> bool:
    """The union, for an unfragmented UDP frame: an entry of the family on the port, bound to
    ``dst`` or to any address."""
    return any(
        e.family in (0, family) and e.local_port == dport and e.local_ip in (None, dst)
        for e in entries
    )


def test_random_entry_sets_mean_their_union_and_pass_the_kernel() -> None:
    # SO_ATTACH_FILTER on an ordinary UDP socket needs no privilege and runs the kernel's checks
    # (bpf_check_basics_ok(): length; bpf_check_classic(): opcodes, jumps in range, a final ret).
    # A socket for each program: the one replaced is freed only after an RCU grace period, and
    # until then it counts against the socket's option memory (ENOMEM).
    from rawtransport.link import attach_filter

    rng = random.Random(11)
    for _ in range(40):
        entries = random_entries(rng, rng.choice([1, 3, 30, 300, 1000, 2000]))
        program = stack_filter(
            entries,
            allow_fragments=rng.random() < 0.5,
            accept_vlan=rng.random() < 0.5,
            **stack_arguments(entries),  # type: ignore[arg-type]
        )
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as exc:
            pytest.skip(f"no UDP socket here: {exc}")
        with sock:
            attach_filter(sock, program)
        for entry in rng.sample(entries, min(len(entries), 30)):
            for family in (4, 6) if entry.family == 0 else (entry.family,):
                other = OTHER4 if family == 4 else OTHER6
                for dst in {entry.local_ip or other, other}:
                    frame = (udp4 if family == 4 else udp6)(dst, entry.local_port)
                    expected = expected_udp(entries, family, dst, entry.local_port)
                    assert accepts(program, frame) is expected


def _destination(frame: bytes) -> tuple[int, bytes | None] | None:
    """(family, destination) of an IP frame that a wildcard's address check applies to (UDP,
    fragments, extension headers; not ARP or ICMPv6), None for others; a cut destination is None."""
    off = 12
    while frame[off : off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    ethertype = frame[off : off + 2]
    base = off + 2
    if ethertype == b"\x08\x00":
        dst = frame[base + 16 : base + 20]
        return 4, dst if len(dst) == 4 else None
    if ethertype == b"\x86\xdd" and frame[base + 6 : base + 7] != b"\x3a":
        dst = frame[base + 24 : base + 40]
        return 6, dst if len(dst) == 16 else None
    return None


@given(
    st.lists(filter_entries(), min_size=1, max_size=12),
    st.lists(frames(), min_size=1, max_size=30),
    st.sets(st.sampled_from([*ADDRS4, OTHER4])),
    st.sets(st.sampled_from([*ADDRS6, OTHER6])),
    st.sampled_from([None, 1]),
    st.sampled_from([1, 2]),
    st.booleans(),
)
def test_wildcard_entries_take_only_the_local_destinations(
    entries: list[FilterEntry],
    frame_list: list[bytes],
    local4: set[bytes],
    local6: set[bytes],
    loopback: int | None,
    ifindex: int,
    accept_vlan: bool,
) -> None:
    """Issue 14, item 7: with the host's addresses given, a wildcard entry takes a datagram (or a
    fragment, or an extension-header chain) only to one of them, or on the loopback device; what
    a bound entry takes, and neighbour traffic, are as before."""
    program = stack_filter(
        entries,
        accept_vlan=accept_vlan,
        local4=local4,
        local6=local6,
        loopback=loopback,
        **stack_arguments(entries),  # type: ignore[arg-type]
    )
    singles = [
        (e, own_filter(e, allow_fragments=True, accept_vlan=accept_vlan)) for e in set(entries)
    ]
    # The entries' bound addresses are local too (stack_filter adds them).
    wild = {f: {*local, *(e.local_ip for e in entries if e.family == f and e.local_ip)}
            for f, local in ((4, local4), (6, local6))}  # fmt: skip

    def allowed(entry: FilterEntry, where: tuple[int, bytes | None] | None) -> bool:
        if entry.local_ip is not None or where is None or ifindex == loopback:
            return True
        family, dst = where
        return dst is not None and dst in wild[family]

    for frame in frame_list:
        where = _destination(frame) if len(frame) >= 14 else None
        union = any(accepts(p, frame, ifindex=ifindex) and allowed(e, where) for e, p in singles)
        assert accepts(program, frame, ifindex=ifindex) is union


def test_wildcard_without_local_addresses_takes_only_loopback_frames() -> None:
    entries = [FilterEntry(4, None, PORT)]
    program = stack_filter(entries, local4=(), loopback=1)
    assert not accepts(program, udp4(dst=A4, dport=PORT), ifindex=2)
    assert accepts(program, udp4(dst=A4, dport=PORT), ifindex=1)
    with pytest.raises(ValueError, match="loopback"):
        stack_filter(entries, local4=(), loopback=0)
    with pytest.raises(ValueError, match="local6"):
        stack_filter(entries, local6=[A4])
