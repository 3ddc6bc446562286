"""Classic BPF: assembler, interpreter (kernel semantics) and endpoint filter, without privileges.

The frame builders here are reused by ``tests/net/test_filter.py``, which checks the same filters
against the kernel.
"""

from __future__ import annotations

import ipaddress
import pickle
import struct
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawtransport import bpf, bpf_filter
from rawtransport.bpf import (
    BPF_ADD,
    BPF_LSH,
    BPF_MAXINSNS,
    BPF_OR,
    BPF_RSH,
    BPF_SUB,
    Instruction,
    Jump,
    Program,
    alu,
    and_,
    assemble,
    ja,
    jeq,
    jge,
    jgt,
    jset,
    label,
    ld,
    ld_anc,
    ld_imm,
    ld_ind,
    ld_len,
    ldb,
    ldb_ind,
    ldh,
    ldh_ind,
    ldx_imm,
    ldx_msh,
    ret,
    ret_a,
    run,
    tax,
    txa,
)
from rawtransport.bpf_filter import drop_all, endpoint_filter

# ------------------------------------------------------------------------------ frame builders
MAC_A = bytes.fromhex("02727400000a")
MAC_B = bytes.fromhex("02727400000b")
BROADCAST = b"\xff" * 6


def ip(text: str) -> bytes:
    """Packed IPv4 or IPv6 address."""
    return ipaddress.ip_address(text).packed


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def eth(
    ethertype: int,
    payload: bytes,
    *,
    dst: bytes = MAC_A,
    src: bytes = MAC_B,
    tags: tuple[tuple[int, int], ...] = (),
) -> bytes:
    """An Ethernet frame, with in-band VLAN tags ``(tpid, tci)`` outermost first."""
    tag_bytes = b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in tags)
    return dst + src + tag_bytes + struct.pack("!H", ethertype) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header (checksum 0: "none" for IPv4) and payload."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(
    src: bytes,
    dst: bytes,
    payload: bytes,
    *,
    proto: int = 17,
    options: bytes = b"",
    frag: int = 0,
    ident: int = 1,
    ttl: int = 64,
) -> bytes:
    """An IPv4 packet with a correct header checksum; ``frag`` is the flags+offset field."""
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, frag, ttl, proto, 0, src, dst)
    head += options
    head = head[:10] + struct.pack("!H", _csum(head)) + head[12:]
    return head + payload


def ipv6(src: bytes, dst: bytes, payload: bytes, *, nh: int = 17, hlim: int = 64) -> bytes:
    """An IPv6 packet."""
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, hlim, src, dst) + payload


def arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes, *, hlen: int = 6) -> bytes:
    """An Ethernet/IPv4 ARP packet."""
    return struct.pack("!HHBBH", 1, 0x0800, hlen, 4, op) + sha + spa + tha + tpa


def icmpv6(kind: int, body: bytes) -> bytes:
    """An ICMPv6 message (checksum left 0: the filter does not look at it)."""
    return struct.pack("!BBH", kind, 0, 0) + body


def neighbour_advert(target: bytes) -> bytes:
    """ICMPv6 neighbour advertisement body (RFC 4861 §4.4): solicited+override flags, target."""
    return icmpv6(136, struct.pack("!I", 0x60000000) + target)


A4, B4, OTHER4 = ip("198.18.7.1"), ip("198.18.7.2"), ip("198.18.7.3")
A6, B6, OTHER6 = ip("2001:db8:7::1"), ip("2001:db8:7::2"), ip("2001:db8:7::3")
PORT, PEER_PORT = 5353, 40000
FULL = 262144


def udp4(dst: bytes = A4, dport: int = PORT, **kw: object) -> bytes:
    """An Ethernet/IPv4/UDP frame from B to ``dst``:``dport``."""
    src = kw.pop("src", B4)
    sport = kw.pop("sport", PEER_PORT)
    tags = kw.pop("tags", ())
    l2dst = kw.pop("l2dst", MAC_A)
    packet = ipv4(src, dst, udp(sport, dport, b"payload"), **kw)  # type: ignore[arg-type]
    return eth(0x0800, packet, tags=tags, dst=l2dst)  # type: ignore[arg-type]


def udp6(dst: bytes = A6, dport: int = PORT, *, src: bytes = B6, sport: int = PEER_PORT) -> bytes:
    """An Ethernet/IPv6/UDP frame."""
    return eth(0x86DD, ipv6(src, dst, udp(sport, dport, b"payload")))


def accepts(program: Program, frame: bytes, **kw: int | bool) -> bool:
    """Whether ``program`` keeps ``frame`` (whole: the accepted length is the frame's)."""
    n = run(program, frame, **kw)  # type: ignore[arg-type]
    assert n in (0, len(frame))
    return n > 0


# ------------------------------------------------------------------------------ instructions
def test_instruction_packs_as_struct_sock_filter() -> None:
    insn = Instruction(0x15, 1, 2, 0x800)
    assert insn.pack() == struct.pack("=HBBI", 0x15, 1, 2, 0x800)
    assert len(insn.pack()) == 8
    assert ret(0).pack() == struct.pack("=HBBI", 0x06, 0, 0, 0)


@pytest.mark.parametrize(
    ("code", "jt", "jf", "k"),
    [(-1, 0, 0, 0), (0x10000, 0, 0, 0), (0, 256, 0, 0), (0, 0, -1, 0), (0, 0, 0, 1 << 32)],
)
def test_instruction_rejects_out_of_range_fields(code: int, jt: int, jf: int, k: int) -> None:
    with pytest.raises(ValueError, match=r"range|outside"):
        Instruction(code, jt, jf, k)


def test_opcodes_match_linux_filter_h() -> None:
    # Values of the kernel's BPF_STMT/BPF_JUMP macros for common instructions (tcpdump -dd output).
    assert ldh(12).code == 0x28
    assert ld(30).code == 0x20
    assert ldb(23).code == 0x30
    assert ldh_ind(16).code == 0x48
    assert ld_ind(0).code == 0x40
    assert ldb_ind(0).code == 0x50
    assert ldx_msh(14).code == 0xB1
    assert jeq(0x800).code == 0x15
    assert jset(0x1FFF).code == 0x45
    assert jgt(1).code == 0x25
    assert jge(1).code == 0x35
    assert ja("x").code == 0x05
    assert ret(1).code == 0x06
    assert ret_a().code == 0x16
    assert and_(0xF).code == 0x54
    assert tax().code == 0x07
    assert txa().code == 0x87
    assert ld_anc(bpf.SKF_AD_PKTTYPE).k == 0xFFFFF004


def test_text_is_bpf_asm_style() -> None:
    program = assemble(
        [
            ldh(12),
            jeq(0x800, "v4", "drop"),
            label("v4"),
            ldx_msh(14),
            ldh_ind(16),
            and_(0xFF),
            ld_anc(bpf.SKF_AD_VLAN_TAG_PRESENT),
            ld_anc(bpf.SKF_AD_PKTTYPE),
            ld_imm(7),
            ld_len(),
            ldx_imm(3),
            alu(BPF_ADD, None),
            tax(),
            txa(),
            ja("keep"),
            label("keep"),
            ret(FULL),
            label("drop"),
            ret(0),
        ]
    )
    assert program.text.splitlines() == [
        "ldh [12]",
        "jeq #0x800 jt 0 jf 12",
        "ldx 4*([14]&0xf)",
        "ldh [x + 16]",
        "and #0xff",
        "ld vlan_avail",
        "ld type",
        "ld #0x7",
        "ld #len",
        "ldx #0x3",
        "add x",
        "tax",
        "txa",
        "ret #262144",
        "ret #0",
    ]
    assert assemble([ldx_imm(1), jgt(0, None, 0), ld_len(), ret_a()]).text.splitlines()[1] == (
        "jgt #0x0 jt 0 jf 0"
    )


def test_module_docstring_shows_the_generated_program() -> None:
    program = endpoint_filter(
        family=4, local_ip=bytes([198, 18, 0, 1]), local_port=5353, accept_vlan=False
    )
    assert bpf_filter.__doc__ is not None
    listing = "\n".join("    " + line for line in program.text.splitlines())
    assert listing in bpf_filter.__doc__


# ---------------------------------------------------------------------------------- assembly
def test_labels_resolve_to_relative_forward_jumps() -> None:
    program = assemble(
        [
            ldb(0),
            jeq(1, "one", None),
            jeq(2, "two", "zero"),
            label("one"),
            ret(1),
            label("two"),
            ret(2),
            label("zero"),
            ret(0),
        ]
    )
    assert [(i.jt, i.jf) for i in program.instructions[1:3]] == [(1, 0), (1, 2)]
    assert run(program, b"\x01") == 1
    assert run(program, b"\x02\x00") == 2
    assert run(program, b"\x05") == 0


def test_ja_to_the_next_instruction_is_elided() -> None:
    program = assemble([ja("next"), label("unused"), label("next"), ret(1)])
    assert program.instructions == (ret(1),)
    # A ja over something is kept, and a literal offset is taken as is.
    kept = assemble([ja("end"), ret(0), label("end"), ret(1)])
    assert kept.instructions[0] == Instruction(0x05, 0, 0, 1)
    assert kept.text.splitlines()[0] == "ja 1"
    assert assemble([Jump(0x05, 0, 1, None), ret(0), ret(1)]).instructions[0].k == 1


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([jeq(1, "nowhere"), ret(0)], "unknown label"),
        ([label("x"), label("x"), ret(0)], "duplicate"),
        ([label("back"), ldb(0), jeq(1, "back"), ret(0)], "backward"),
    ],
)
def test_assembly_errors(items: list[bpf.Item], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assemble(items)


@pytest.mark.parametrize(("filler", "ok"), [(254, True), (255, True), (256, False)])
def test_conditional_jumps_reach_at_most_255(filler: int, ok: bool) -> None:
    items: list[bpf.Item] = [ldb(0), jeq(1, "far"), *([ld_imm(0)] * filler), label("far"), ret(1)]
    if ok:
        program = assemble(items)
        assert program.instructions[1].jt == filler
        assert run(program, b"\x01") == 1
    else:
        with pytest.raises(ValueError, match="exceeds 255"):
            assemble(items)


def test_ja_reaches_farther_than_255() -> None:
    program = assemble([ja("far"), *([ret(0)] * 300), label("far"), ret(1)])
    assert program.instructions[0].k == 300
    assert run(program, b"x") == 1


@pytest.mark.parametrize(
    ("n", "ok"), [(0, False), (1, True), (BPF_MAXINSNS, True), (BPF_MAXINSNS + 1, False)]
)
def test_program_length_bounds(n: int, ok: bool) -> None:
    insns = (*([ld_imm(0)] * (n - 1)), ret(0)) if n else ()
    if ok:
        program = Program(insns)
        assert program.sock_fprog_len == n == len(program)
        assert len(program.pack()) == 8 * n
    else:
        with pytest.raises(ValueError, match="instructions"):
            Program(insns)


def fields_of(insns: Iterable[Instruction]) -> list[int]:
    return [field for i in insns for field in (i.code, i.jt, i.jf, i.k)]


def from_fields(insns: Iterable[Instruction]) -> Program:
    return Program.from_fields(fields_of(insns))


def from_raw(insns: Iterable[Instruction]) -> Program:
    return Program.from_raw((i.code, i.jt, i.jf, i.k) for i in insns)


BUILDERS = [Program, from_fields, from_raw]


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize(
    "insns",
    [
        (ld_imm(0),),  # does not end in ret
        (Instruction(0x15, 1, 0, 0), ret(0)),  # jt past the end
        (Instruction(0x15, 0, 1, 0), ret(0)),  # jf past the end
        (Instruction(0x05, 0, 0, 1), ret(0)),  # ja past the end
        (Instruction(0x0D, 0, 0, 1), ret(0)),  # ja, with the BPF_X bit, past the end
        # In a program longer than a conditional jump reaches: jt past the end from 256 before it.
        (Instruction(0x15, 0, 255, 0), *[ld_imm(0)] * 254, ret(0)),
        (*[ld_imm(0)] * 300, Instruction(0x15, 255, 0, 0), *[ld_imm(0)] * 254, ret(0)),
        (*[ld_imm(0)] * 300, Instruction(0x45, 0, 2, 0), ret(0), ret(1)),  # jset jf
    ],
)
def test_program_rejects_what_bpf_check_classic_rejects(
    insns: tuple[Instruction, ...], build: Callable[[Iterable[Instruction]], Program]
) -> None:
    with pytest.raises(ValueError, match=r"ret|past the end"):
        build(insns)


@pytest.mark.parametrize("build", BUILDERS)
def test_program_takes_the_farthest_jumps_in_range(
    build: Callable[[Iterable[Instruction]], Program],
) -> None:
    reach = (Instruction(0x15, 0, 255, 0), *[ld_imm(0)] * 255, ret(0))  # to the last
    assert len(build(reach)) == 257
    far = (*[ld_imm(0)] * 300, Instruction(0x05, 0, 0, 300), *[ld_imm(0)] * 300, ret(0))
    assert build(far).instructions[300].k == 300
    # jt and jf of an instruction that does not jump mean nothing: not checked, as the kernel does not.
    odd = (ld_imm(0), Instruction(0x00, 200, 7, 0), ret(0))
    assert build(odd).raw[1] == (0x00, 200, 7, 0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([0x06, 0, 0, 1 << 32], "k "),
        ([0x06, 0, 0, -1], "k "),
        ([0x06, 256, 0, 0], "jump offsets"),
        ([0x10000, 0, 0, 0], "opcode"),
        ([0x06, 0, 0], "4"),
        ([], "instructions"),
        ([0x06, 0, 0, 0] * (BPF_MAXINSNS + 1), "instructions"),
    ],
)
def test_program_from_fields_checks_every_field(fields: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Program.from_fields(fields)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 128, 129, BPF_MAXINSNS])
def test_program_from_fields_packs_any_length(n: int) -> None:
    insns = [*(ld_imm(i) for i in range(n - 1)), ret(n)]
    program = Program.from_fields(fields_of(insns))
    assert program == Program(insns)
    assert program.pack() == b"".join(insn.pack() for insn in insns)
    if n > 64:  # a field out of range past the first 64 instructions is found too
        with pytest.raises(ValueError, match="jump offsets"):
            Program.from_fields([*fields_of(insns[:-2]), 0x15, 256, 0, 0, *fields_of(insns[-1:])])


def test_programs_from_fields_are_programs_like_any() -> None:
    program = endpoint_filter(family=4, local_ip=A4, local_port=PORT)
    fields = fields_of(program.instructions)
    built = Program.from_fields(fields)
    assert built == program
    assert hash(built) == hash(program)
    assert built.pack() == program.pack()
    assert built.raw == program.raw == tuple(zip(*[iter(fields)] * 4, strict=True))
    assert built.instructions == program.instructions
    assert built.text == program.text
    assert repr(built) == repr(program)
    assert Program.from_raw(program.raw) == program
    assert built != Program.from_fields([0x06, 0, 0, 0])
    assert pickle.loads(pickle.dumps(built)) == built
    with pytest.raises(AttributeError):
        built._packed = b""
    with pytest.raises(AttributeError):
        del built._packed


# ------------------------------------------------------------------------------- interpreter
def test_loads_are_big_endian_and_out_of_bounds_drops() -> None:
    packet = bytes(range(1, 9))
    long = packet + bytes(0x1000)
    assert run(assemble([ld(0), alu(BPF_RSH, 16), ret_a()]), long) == 0x0102
    assert run(assemble([ldh(6), ret_a()]), long) == 0x0708
    assert run(assemble([ldb(7), ret_a()]), packet) == 8
    # Last byte readable; one past it ends the program with 0, whatever follows.
    assert run(assemble([ldb(7), ret(5)]), packet) == 5
    assert run(assemble([ldb(8), ret(5)]), packet) == 0
    assert run(assemble([ldh(7), ret(5)]), packet) == 0
    assert run(assemble([ld(5), ret(5)]), packet) == 0


def test_indirect_and_msh_loads() -> None:
    # IHL 6 at offset 0: X = 24; the half-word at X + 2 is read.
    packet = bytes([0x46]) + bytes(25) + b"\x12\x34"
    program = assemble(
        [ldx_msh(0), ldh_ind(2), jeq(0x1234, None, "no"), ret(1), label("no"), ret(0)]
    )
    assert run(program, packet) == 1
    assert run(program, packet[:-1]) == 0  # the indirect load runs off the end
    assert run(assemble([ldx_msh(5), ret(1)]), bytes(5)) == 0  # msh off the end
    assert run(assemble([ldx_imm(2), ldb_ind(1), ret_a()]), bytes([0, 0, 0, 9])) == 4
    assert run(assemble([ldx_imm(1), ld_ind(-1), ret_a()]), b"\x00\x00\x00\x03") == 3


def test_jumps_alu_and_return_values() -> None:
    def value(*items: bpf.Item, packet: bytes = bytes(100)) -> int:
        return run(assemble([*items, ret_a()]), packet)

    assert value(ld_imm(0xF0), and_(0x3C)) == 0x30
    assert value(ld_imm(0x10), alu(BPF_OR, 0x01)) == 0x11
    assert value(ld_imm(5), alu(BPF_SUB, 7), alu(BPF_ADD, 4)) == 2
    assert value(ld_imm(3), alu(BPF_LSH, 4), alu(BPF_RSH, 1)) == 24
    assert value(ld_imm(9), tax(), ld_imm(1), txa()) == 9
    assert value(ld_len()) == 100
    for jump, a, taken in [
        (jgt(5), 6, True),
        (jgt(5), 5, False),
        (jge(5), 5, True),
        (jge(5), 4, False),
        (jset(0x6), 4, True),
        (jset(0x6), 9, False),
    ]:
        program = assemble(
            [
                ld_imm(a),
                Jump(jump.code, jump.k, "yes", "no"),
                label("yes"),
                ret(1),
                label("no"),
                ret(2),
            ]
        )
        assert run(program, b"xx") == (1 if taken else 2), (jump, a)
    # ret is capped at the packet length: the kernel truncates to min(ret, len).
    assert run(assemble([ret(FULL)]), b"abc") == 3


def test_ancillary_loads() -> None:
    program = assemble([ld_anc(bpf.SKF_AD_PKTTYPE), ret_a()])
    assert run(program, bytes(10), pkttype=3) == 3
    vlan = assemble([ld_anc(bpf.SKF_AD_VLAN_TAG_PRESENT), ret_a()])
    assert run(vlan, bytes(10)) == 0
    assert run(vlan, bytes(10), vlan_tag_present=True) == 1
    with pytest.raises(ValueError, match="unsupported"):
        run(assemble([ld(0xFFFFF000), ret(0)]), bytes(10))  # SKF_AD_PROTOCOL: not implemented


@pytest.mark.parametrize(
    "code",
    [
        0x02,  # BPF_ST
        0x60,  # BPF_LD | BPF_MEM
        0x61,  # BPF_LDX | BPF_MEM
        0x38,  # BPF_LD | BPF_ABS with the reserved size 0x18
        0x24,  # BPF_ALU | BPF_MUL
        0x55,  # BPF_JMP | 0x50 (an eBPF-only jump)
    ],
)
def test_unsupported_opcodes_raise(code: int) -> None:
    with pytest.raises(ValueError, match=r"unsupported|bad load size"):
        run(Program((Instruction(code), ret(0))), bytes(8))


def test_ldx_len_and_raw_code_text() -> None:
    ldx_len = Instruction(0x81)  # BPF_LDX | BPF_W | BPF_LEN
    assert ldx_len.text == "ldx #len"
    assert run(Program((ldx_len, txa(), ret_a())), bytes(6)) == 6
    assert Instruction(0x02, 0, 0, 1).text == ".code 0x2, 0, 0, 0x1"


# -------------------------------------------------------------------------------- filters
def test_drop_all() -> None:
    assert drop_all().text == "ret #0"
    assert drop_all().pack() == struct.pack("=HBBI", 6, 0, 0, 0)


@given(st.binary(max_size=200), st.integers(0, 7), st.booleans())
def test_drop_all_keeps_nothing(frame: bytes, pkttype: int, vlan: bool) -> None:
    assert run(drop_all(), frame, pkttype=pkttype, vlan_tag_present=vlan) == 0


V4 = endpoint_filter(family=4, local_ip=A4, local_port=PORT)
V6 = endpoint_filter(family=6, local_ip=A6, local_port=PORT)

IPV4_CASES = [
    ("ours", udp4(), True),
    ("l2 broadcast", udp4(l2dst=BROADCAST), True),
    ("other port", udp4(dport=PORT + 1), False),
    ("other address", udp4(dst=OTHER4), False),
    ("tcp", eth(0x0800, ipv4(B4, A4, udp(PEER_PORT, PORT, b"x"), proto=6)), False),
    ("options", udp4(options=b"\x01\x01\x01\x00"), True),
    # Options whose bytes look like our port at the fixed no-options offset: a filter that ignored
    # IHL would take this frame for ours.
    (
        "options, other port",
        udp4(dport=PORT + 1, options=b"\x01\x01" + PORT.to_bytes(2, "big")),
        False,
    ),
    ("first fragment", udp4(frag=0x2000), False),
    ("later fragment", udp4(frag=0x00B9), False),
    ("DF set", udp4(frag=0x4000), True),
    ("802.1Q in band", udp4(tags=((0x8100, 5),)), True),
    ("802.1ad in band", udp4(tags=((0x88A8, 5),)), True),
    ("two tags in band", udp4(tags=((0x88A8, 5), (0x8100, 6))), False),
    ("802.1Q other port", udp4(dport=1, tags=((0x8100, 5),)), False),
    ("ipv6", udp6(), False),
    ("arp reply", eth(0x0806, arp(2, MAC_B, B4, MAC_A, A4)), False),
    ("truncated before port", udp4()[:36], False),
    ("empty", b"", False),
]


@pytest.mark.parametrize(("name", "frame", "expected"), IPV4_CASES, ids=[c[0] for c in IPV4_CASES])
def test_ipv4_endpoint_filter(name: str, frame: bytes, expected: bool) -> None:
    assert accepts(V4, frame) is expected


@pytest.mark.parametrize(
    ("pkttype", "expected"), [(0, True), (1, True), (2, True), (3, False), (4, False)]
)
def test_pkttype_otherhost_and_outgoing_are_rejected(pkttype: int, expected: bool) -> None:
    assert accepts(V4, udp4(), pkttype=pkttype) is expected
    assert accepts(V6, udp6(), pkttype=pkttype) is expected


def test_vlan_policy() -> None:
    strict = endpoint_filter(family=4, local_ip=A4, local_port=PORT, accept_vlan=False)
    assert accepts(strict, udp4())
    assert not accepts(strict, udp4(), vlan_tag_present=True, vlan_tci=5)
    assert not accepts(strict, udp4(), vlan_tag_present=True, vlan_tci=0xA005)
    # A priority tag (VLAN id 0, any priority) is cleared by the kernel: the frame is untagged.
    assert accepts(strict, udp4(), vlan_tag_present=True, vlan_tci=0)
    assert accepts(strict, udp4(), vlan_tag_present=True, vlan_tci=0xA000)
    assert not accepts(strict, udp4(tags=((0x8100, 5),)))
    assert accepts(V4, udp4(), vlan_tag_present=True)


def test_fragments_when_allowed() -> None:
    program = endpoint_filter(family=4, local_ip=A4, local_port=PORT, allow_fragments=True)
    assert accepts(program, udp4(frag=0x2000))  # first fragment: has our port
    assert not accepts(program, udp4(frag=0x2000, dport=PORT + 1))
    # A later fragment has no UDP header: matched on address and protocol alone.
    assert accepts(program, udp4(frag=0x00B9, dport=PORT + 1))
    assert not accepts(program, udp4(frag=0x00B9, dst=OTHER4))
    # A first fragment with more to come (M set): only with allow_fragments.
    ext = eth(0x86DD, ipv6(B6, A6, bytes([17, 0, 0, 1, 0, 0, 0, 1]), nh=44))
    assert accepts(
        endpoint_filter(family=6, local_ip=A6, local_port=PORT, allow_fragments=True), ext
    )
    assert not accepts(V6, ext)


def test_connected_filter_matches_the_source() -> None:
    program = endpoint_filter(
        family=4, local_ip=A4, local_port=PORT, remote_ip=B4, remote_port=PEER_PORT
    )
    assert accepts(program, udp4())
    assert not accepts(program, udp4(src=OTHER4))
    assert not accepts(program, udp4(sport=PEER_PORT + 1))
    program6 = endpoint_filter(
        family=6, local_ip=A6, local_port=PORT, remote_ip=B6, remote_port=PEER_PORT
    )
    assert accepts(program6, udp6())
    assert not accepts(program6, udp6(src=OTHER6))
    assert not accepts(program6, udp6(sport=1))


def test_wildcards() -> None:
    any_addr = endpoint_filter(family=4, local_ip=None, local_port=PORT)
    assert accepts(any_addr, udp4(dst=OTHER4))
    assert not accepts(any_addr, udp4(dport=1))
    any_port = endpoint_filter(family=6, local_ip=A6, local_port=None)
    assert accepts(any_port, udp6(dport=1))
    assert not accepts(any_port, udp6(dst=OTHER6))
    both = endpoint_filter(family=0, local_ip=None, local_port=PORT)
    assert accepts(both, udp4(dst=OTHER4))
    assert accepts(both, udp6(dst=OTHER6))
    assert not accepts(both, udp6(dport=1))


def test_ipv6_endpoint_filter() -> None:
    assert accepts(V6, udp6())
    assert not accepts(V6, udp6(dport=PORT + 1))
    assert not accepts(V6, udp6(dst=OTHER6))
    assert not accepts(V6, udp4())
    # Only the last word differs: every word of the address is compared.
    assert not accepts(V6, udp6(dst=A6[:-1] + b"\x02"))
    assert not accepts(V6, udp6(dst=b"\x00" + A6[1:]))
    assert not accepts(V6, eth(0x86DD, ipv6(B6, A6, icmpv6(128, b"ping"), nh=58)))
    assert not accepts(V6, eth(0x86DD, ipv6(B6, A6, neighbour_advert(A6), nh=58, hlim=255)))
    assert accepts(V6, eth(0x86DD, ipv6(B6, A6, udp(1, PORT, b"x")), tags=((0x8100, 1),)))


@pytest.mark.parametrize("nh", [0, 43, 60])
def test_ipv6_extension_headers_go_to_user_space(nh: int) -> None:
    # Destination options then UDP to another port: the filter cannot walk the chain, so it passes
    # the packet (already matched on address) to user space.
    chain = bytes([17, 0]) + bytes(6) + udp(PEER_PORT, PORT + 1, b"x")
    assert accepts(V6, eth(0x86DD, ipv6(B6, A6, chain, nh=nh)))
    assert not accepts(V6, eth(0x86DD, ipv6(B6, OTHER6, chain, nh=nh)))
    fragment = bytes([17, 0, 0, 1]) + bytes(4) + udp(PEER_PORT, PORT + 1, b"x")  # M set
    assert not accepts(V6, eth(0x86DD, ipv6(B6, A6, fragment, nh=44)))


def test_ipv6_atomic_fragment_is_delivered_without_reassembly() -> None:
    # RFC 6946: offset 0 and M clear is processed in isolation (ipv6_frag_rcv()); the kernel
    # delivers it, so the filter must pass it even when fragments are otherwise kept out.
    atomic = bytes([17, 0, 0, 0, 0, 0, 0, 9]) + udp(PEER_PORT, PORT, b"x")
    assert accepts(V6, eth(0x86DD, ipv6(B6, A6, atomic, nh=44)))
    assert not accepts(V6, eth(0x86DD, ipv6(B6, OTHER6, atomic, nh=44)))
    for frag_field in (0x0001, 0x0008, 0xFFF8):  # M set, offset 1, offset max
        nonatomic = bytes([17, 0]) + frag_field.to_bytes(2, "big") + atomic[4:]
        assert not accepts(V6, eth(0x86DD, ipv6(B6, A6, nonatomic, nh=44)))


def test_arp_clause() -> None:
    program = endpoint_filter(family=4, local_ip=A4, local_port=PORT, arp_for=A4)
    assert accepts(program, eth(0x0806, arp(2, MAC_B, B4, MAC_A, A4)))
    assert accepts(program, eth(0x0806, arp(2, MAC_B, B4, MAC_A, A4), tags=((0x8100, 3),)))
    assert accepts(program, eth(0x0806, arp(2, MAC_B, B4, MAC_A, A4), dst=BROADCAST))
    # A request to us, and a gratuitous announcement (sender = target) of anyone: claims.
    assert accepts(program, eth(0x0806, arp(1, MAC_B, B4, bytes(6), A4), dst=BROADCAST))
    assert accepts(program, eth(0x0806, arp(1, MAC_B, B4, bytes(6), B4), dst=BROADCAST))
    assert accepts(program, eth(0x0806, arp(2, MAC_B, B4, BROADCAST, B4), dst=BROADCAST))
    assert not accepts(program, eth(0x0806, arp(1, MAC_B, B4, bytes(6), OTHER4)))
    assert not accepts(program, eth(0x0806, arp(3, MAC_B, B4, MAC_A, A4)))
    assert not accepts(program, eth(0x0806, arp(2, MAC_B, B4, MAC_A, OTHER4)))
    assert not accepts(program, eth(0x0806, arp(2, MAC_B, B4, MAC_A, A4, hlen=8)[:28]))
    assert not accepts(program, eth(0x0806, arp(2, MAC_B, B4, MAC_A, A4))[:41])  # truncated
    assert accepts(program, udp4())
    assert not accepts(V4, eth(0x0806, arp(2, MAC_B, B4, MAC_A, A4)))


def test_neighbour_advert_clause() -> None:
    program = endpoint_filter(family=6, local_ip=A6, local_port=PORT, nd_for=A6)
    advert = neighbour_advert(B6)
    assert accepts(program, eth(0x86DD, ipv6(B6, A6, advert, nh=58, hlim=255)))
    assert not accepts(program, eth(0x86DD, ipv6(B6, A6, advert, nh=58, hlim=254)))
    assert not accepts(program, eth(0x86DD, ipv6(B6, OTHER6, advert, nh=58, hlim=255)))
    # A solicitation for our address (a claim), to its solicited-node group; an unsolicited
    # advertisement to all-nodes (a claim too); nothing else of either.
    solicited_node = ip("ff02::1:ff00:1")
    solicit = icmpv6(135, bytes(4) + A6)
    assert accepts(program, eth(0x86DD, ipv6(B6, solicited_node, solicit, nh=58, hlim=255)))
    assert not accepts(program, eth(0x86DD, ipv6(B6, solicited_node, solicit, nh=58, hlim=64)))
    other = icmpv6(135, bytes(4) + OTHER6)
    assert not accepts(program, eth(0x86DD, ipv6(B6, solicited_node, other, nh=58, hlim=255)))
    all_nodes = ip("ff02::1")
    assert accepts(program, eth(0x86DD, ipv6(B6, all_nodes, advert, nh=58, hlim=255)))
    assert not accepts(program, eth(0x86DD, ipv6(B6, all_nodes, advert, nh=58, hlim=254)))
    assert not accepts(program, eth(0x86DD, ipv6(B6, A6, icmpv6(134, bytes(20)), nh=58, hlim=255)))
    assert accepts(program, udp6())
    # An IPv4 endpoint can still take neighbour advertisements (nd_for given).
    mixed = endpoint_filter(family=4, local_ip=A4, local_port=PORT, nd_for=A6)
    assert accepts(mixed, eth(0x86DD, ipv6(B6, A6, advert, nh=58, hlim=255)))
    assert not accepts(mixed, udp6())


def test_neighbour_replies_for_any_target() -> None:
    program = endpoint_filter(family=0, local_ip=None, local_port=PORT, neighbour_replies=True)
    assert accepts(program, eth(0x0806, arp(2, MAC_B, B4, MAC_A, OTHER4)))
    assert accepts(program, eth(0x86DD, ipv6(B6, OTHER6, neighbour_advert(B6), nh=58, hlim=255)))
    only4 = endpoint_filter(family=4, local_ip=None, local_port=PORT, neighbour_replies=True)
    assert not accepts(only4, eth(0x86DD, ipv6(B6, OTHER6, neighbour_advert(B6), nh=58, hlim=255)))


def test_snaplen_is_the_accepted_length() -> None:
    program = endpoint_filter(family=4, local_ip=A4, local_port=PORT, snaplen=40)
    assert run(program, udp4()) == 40
    assert program.instructions[-2] == ret(40)
    assert program.instructions[-1] == ret(0)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"family": 5}, ValueError),
        ({"family": 4, "local_ip": A6}, ValueError),
        ({"family": 6, "local_ip": A4}, ValueError),
        ({"family": 0, "local_ip": A4}, ValueError),
        ({"family": 4, "local_ip": "198.18.7.1"}, TypeError),
        ({"family": 4, "local_port": 65536}, ValueError),
        ({"family": 4, "local_port": -1}, ValueError),
        ({"family": 4, "local_port": "53"}, TypeError),
        ({"family": 4, "remote_port": True}, TypeError),
        ({"family": 4, "arp_for": A6}, ValueError),
        ({"family": 6, "nd_for": A4}, ValueError),
        ({"family": 4, "snaplen": 0}, ValueError),
    ],
)
def test_endpoint_filter_argument_errors(kwargs: dict[str, object], error: type[Exception]) -> None:
    kwargs = {"local_ip": None, "local_port": PORT, **kwargs}
    with pytest.raises(error):
        endpoint_filter(**kwargs)  # type: ignore[arg-type]


def test_largest_filter_fits() -> None:
    program = endpoint_filter(
        family=6,
        local_ip=A6,
        local_port=PORT,
        remote_ip=B6,
        remote_port=PEER_PORT,
        allow_fragments=True,
        arp_for=A4,
        nd_for=A6,
    )
    assert len(program) < 255
    assert accepts(program, udp6())


# ------------------------------------------------------------------- model-based property
@st.composite
def udp4_frames(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    """A UDP/IPv4 frame and the facts the reference model needs about it."""
    facts: dict[str, object] = {
        "dst": draw(st.sampled_from([A4, OTHER4])),
        "src": draw(st.sampled_from([B4, OTHER4])),
        "dport": draw(st.sampled_from([PORT, PORT + 1, 0])),
        "sport": draw(st.sampled_from([PEER_PORT, 1])),
        "proto": draw(st.sampled_from([17, 6, 1])),
        "frag": draw(st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x20B9])),
        "options": draw(st.sampled_from([b"", b"\x01" * 4, b"\x01" * 8])),
        "tags": draw(
            st.sampled_from([(), ((0x8100, 1),), ((0x88A8, 1),), ((0x88A8, 1), (0x8100, 2))])
        ),
        "pkttype": draw(st.integers(0, 4)),
        "offloaded": draw(st.booleans()),
        # The offloaded tag's TCI: a priority tag (VLAN id 0) passes as untagged.
        "tci": draw(st.sampled_from([0, 0xA000, 5, 0xE0FF])),
    }
    packet = ipv4(
        facts["src"],  # type: ignore[arg-type]
        facts["dst"],  # type: ignore[arg-type]
        udp(facts["sport"], facts["dport"], b"data"),  # type: ignore[arg-type]
        proto=facts["proto"],  # type: ignore[arg-type]
        options=facts["options"],  # type: ignore[arg-type]
        frag=facts["frag"],  # type: ignore[arg-type]
    )
    return eth(0x0800, packet, tags=facts["tags"]), facts  # type: ignore[arg-type]


def _model(facts: dict[str, object], cfg: dict[str, object]) -> bool:
    """What the filter should decide, written plainly."""
    tags = facts["tags"]
    assert isinstance(tags, tuple)
    if facts["pkttype"] in (3, 4) or len(tags) > 1:
        return False
    tagged = facts["offloaded"] and facts["tci"] & 0x0FFF  # type: ignore[operator]
    if not cfg["accept_vlan"] and (tags or tagged):
        return False
    if cfg["local_ip"] is not None and facts["dst"] != cfg["local_ip"]:
        return False
    if facts["proto"] != 17:
        return False
    if cfg["remote_ip"] is not None and facts["src"] != cfg["remote_ip"]:
        return False
    frag = facts["frag"]
    assert isinstance(frag, int)
    if frag & 0x1FFF:
        return bool(cfg["allow_fragments"])
    if frag & 0x2000 and not cfg["allow_fragments"]:
        return False
    if cfg["local_port"] is not None and facts["dport"] != cfg["local_port"]:
        return False
    return cfg["remote_port"] is None or facts["sport"] == cfg["remote_port"]


@given(
    udp4_frames(),
    st.fixed_dictionaries(
        {
            "local_ip": st.sampled_from([A4, None]),
            "local_port": st.sampled_from([PORT, None]),
            "remote_ip": st.sampled_from([B4, None]),
            "remote_port": st.sampled_from([PEER_PORT, None]),
            "accept_vlan": st.booleans(),
            "allow_fragments": st.booleans(),
        }
    ),
)
def test_ipv4_filter_agrees_with_the_model(
    frame_facts: tuple[bytes, dict[str, object]], cfg: dict[str, object]
) -> None:
    frame, facts = frame_facts
    program = endpoint_filter(family=4, **cfg)  # type: ignore[arg-type]
    got = accepts(
        program,
        frame,
        pkttype=facts["pkttype"],  # type: ignore[arg-type]
        vlan_tag_present=facts["offloaded"],  # type: ignore[arg-type]
        vlan_tci=facts["tci"],  # type: ignore[arg-type]
    )
    assert got is _model(facts, cfg)


@given(st.binary(max_size=120), st.integers(0, 7), st.booleans())
def test_any_bytes_run_to_a_verdict(frame: bytes, pkttype: int, vlan: bool) -> None:
    for program in (
        V4,
        V6,
        endpoint_filter(family=0, local_ip=None, local_port=None, neighbour_replies=True),
    ):
        assert run(program, frame, pkttype=pkttype, vlan_tag_present=vlan) in (0, len(frame))


@given(st.integers(0, 200))
def test_every_prefix_of_an_accepted_frame_is_safe(cut: int) -> None:
    frame = udp4()
    # Cut before the destination port's end: a load runs off the end, so the kernel returns 0.
    verdict = run(V4, frame[:cut])
    assert verdict == (min(cut, len(frame)) if cut >= 38 else 0)
