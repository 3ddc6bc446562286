"""Classic BPF: a small assembler, a reference interpreter and the endpoint's socket filter.

The receive path opens an ``AF_PACKET`` socket, which sees every frame on the link. A classic-BPF
program attached with ``SO_ATTACH_FILTER`` keeps everything but our own traffic in the kernel, so
other processes' datagrams never reach user space (RAWPATH.md, "Security") and the parser is spared
the bulk.

This module is pure: it builds programs as values (``Program.pack()`` gives the ``struct
sock_filter`` array, ``Program.text`` a bpf_asm-style listing) and runs them with :func:`run`, an
interpreter with the kernel's semantics for the operations used here, so the generated filters are
testable without privileges. The filter is a *prefilter*: user space still makes every check the
kernel's IP and UDP layers make; the filter only has to never reject a frame the kernel would have
delivered to the endpoint's socket, and to reject as much of everything else as is cheap.

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

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias

# The opcode constants (BPF_LD, BPF_H, BPF_ABS …) are public module attributes too; __all__ lists
# the API proper.
__all__ = [
    "BPF_MAXINSNS",
    "Instruction",
    "Item",
    "Jump",
    "Label",
    "Program",
    "alu",
    "and_",
    "assemble",
    "drop_all",
    "endpoint_filter",
    "ja",
    "jeq",
    "jge",
    "jgt",
    "jset",
    "label",
    "ld",
    "ld_anc",
    "ld_imm",
    "ld_ind",
    "ld_len",
    "ldb",
    "ldb_ind",
    "ldh",
    "ldh_ind",
    "ldx_imm",
    "ldx_msh",
    "ret",
    "ret_a",
    "run",
    "tax",
    "txa",
]

# Instruction classes, sizes, modes and operations (include/uapi/linux/bpf_common.h, filter.h).
BPF_LD: Final = 0x00
BPF_LDX: Final = 0x01
BPF_ALU: Final = 0x04
BPF_JMP: Final = 0x05
BPF_RET: Final = 0x06
BPF_MISC: Final = 0x07
BPF_W: Final = 0x00
BPF_H: Final = 0x08
BPF_B: Final = 0x10
BPF_IMM: Final = 0x00
BPF_ABS: Final = 0x20
BPF_IND: Final = 0x40
BPF_LEN: Final = 0x80
BPF_MSH: Final = 0xA0
BPF_ADD: Final = 0x00
BPF_SUB: Final = 0x10
BPF_OR: Final = 0x40
BPF_AND: Final = 0x50
BPF_LSH: Final = 0x60
BPF_RSH: Final = 0x70
BPF_JA: Final = 0x00
BPF_JEQ: Final = 0x10
BPF_JGT: Final = 0x20
BPF_JGE: Final = 0x30
BPF_JSET: Final = 0x40
BPF_K: Final = 0x00
BPF_X: Final = 0x08
BPF_A: Final = 0x10
BPF_TAX: Final = 0x00
BPF_TXA: Final = 0x80
BPF_MAXINSNS: Final = 4096

# Ancillary loads: ``ld [SKF_AD_OFF + n]`` reads skb metadata instead of packet bytes.
SKF_AD_OFF: Final = -0x1000
SKF_AD_PKTTYPE: Final = 4
SKF_AD_VLAN_TAG_PRESENT: Final = 48
_ANC_NAMES: Final = {SKF_AD_PKTTYPE: "type", SKF_AD_VLAN_TAG_PRESENT: "vlan_avail"}

# linux/if_packet.h packet types, as the ancillary ``type`` load reports them.
PACKET_OTHERHOST: Final = 3
PACKET_OUTGOING: Final = 4

_U32: Final = 0xFFFFFFFF
_SOCK_FILTER: Final = struct.Struct("=HBBI")  # struct sock_filter, native byte order
_SIZES: Final = {BPF_W: (4, ""), BPF_H: (2, "h"), BPF_B: (1, "b")}
_ALU_NAMES: Final = {
    BPF_ADD: "add",
    BPF_SUB: "sub",
    BPF_OR: "or",
    BPF_AND: "and",
    BPF_LSH: "lsh",
    BPF_RSH: "rsh",
}
_JMP_NAMES: Final = {BPF_JEQ: "jeq", BPF_JGT: "jgt", BPF_JGE: "jge", BPF_JSET: "jset"}


def _cls(code: int) -> int:
    return code & 0x07


def _size(code: int) -> int:
    return code & 0x18


def _mode(code: int) -> int:
    return code & 0xE0


def _op(code: int) -> int:
    return code & 0xF0


def _src(code: int) -> int:
    return code & 0x08


def _signed(k: int) -> int:
    return k - (1 << 32) if k & 0x80000000 else k


@dataclass(frozen=True, slots=True)
class Instruction:
    """One ``struct sock_filter``: opcode, jump-if-true/jump-if-false offsets, the constant ``k``.

    Jump offsets are relative to the next instruction, as in the kernel. ``k`` is stored unsigned
    (ancillary offsets such as ``SKF_AD_OFF + 4`` become ``0xfffff004``).
    """

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFFFF:
            raise ValueError(f"opcode {self.code:#x} out of range")
        if not (0 <= self.jt <= 255 and 0 <= self.jf <= 255):
            raise ValueError(f"jump offsets ({self.jt}, {self.jf}) outside 0..255")
        if not 0 <= self.k <= _U32:
            raise ValueError(f"k {self.k:#x} outside 32 bits")

    def pack(self) -> bytes:
        """The 8-byte ``struct sock_filter``: u16 code, u8 jt, u8 jf, u32 k, native-endian."""
        return _SOCK_FILTER.pack(self.code, self.jt, self.jf, self.k)

    @property
    def text(self) -> str:
        """The instruction in bpf_asm style, jumps resolved to relative offsets.

        For example ``ldh [12]``, ``jeq #0x800 jt 1 jf 0``, ``ret #262144``.
        """
        code, k = self.code, self.k
        cls = _cls(code)
        if cls == BPF_LD:
            return "ld" + _load_operand(code, k)
        if cls == BPF_LDX:
            if _mode(code) == BPF_MSH:
                return f"ldx 4*([{k}]&0xf)"
            if _mode(code) == BPF_LEN:
                return "ldx #len"
            return f"ldx #{k:#x}"
        if cls == BPF_ALU:
            name = _ALU_NAMES.get(_op(code), f"alu{_op(code):#x}")
            return f"{name} x" if _src(code) == BPF_X else f"{name} #{k:#x}"
        if cls == BPF_JMP:
            if _op(code) == BPF_JA:
                return f"ja {k}"
            name = _JMP_NAMES.get(_op(code), f"jmp{_op(code):#x}")
            operand = "x" if _src(code) == BPF_X else f"#{k:#x}"
            return f"{name} {operand} jt {self.jt} jf {self.jf}"
        if cls == BPF_RET:
            return "ret a" if code & 0x18 == BPF_A else f"ret #{k}"
        if cls == BPF_MISC:
            return "txa" if code & 0xF8 == BPF_TXA else "tax"
        return f".code {code:#x}, {self.jt}, {self.jf}, {k:#x}"


def _load_operand(code: int, k: int) -> str:
    suffix = _SIZES.get(_size(code), (0, "?"))[1]
    mode = _mode(code)
    if mode == BPF_ABS:
        off = _signed(k)
        if off < 0 and off - SKF_AD_OFF in _ANC_NAMES:
            return f"{suffix} {_ANC_NAMES[off - SKF_AD_OFF]}"
        return f"{suffix} [{off}]"
    if mode == BPF_IND:
        return f"{suffix} [x + {_signed(k)}]"
    if mode == BPF_LEN:
        return " #len"
    return f"{suffix} #{k:#x}"


@dataclass(frozen=True, slots=True)
class Label:
    """A jump target in an instruction list given to :func:`assemble`."""

    name: str


@dataclass(frozen=True, slots=True)
class Jump:
    """A jump whose targets are labels (or relative offsets; ``None`` = the next instruction)."""

    code: int
    k: int
    jt: str | int | None
    jf: str | int | None = None


Item: TypeAlias = Instruction | Label | Jump


@dataclass(frozen=True, slots=True)
class Program:
    """A validated classic-BPF program, ready for ``SO_ATTACH_FILTER``.

    Validation follows the kernel's ``bpf_check_classic()``: 1 to ``BPF_MAXINSNS`` instructions,
    every jump lands inside the program, and the last instruction is a ``ret``.
    """

    instructions: tuple[Instruction, ...]

    def __post_init__(self) -> None:
        n = len(self.instructions)
        if not 1 <= n <= BPF_MAXINSNS:
            raise ValueError(f"a program has 1..{BPF_MAXINSNS} instructions, not {n}")
        for pc, insn in enumerate(self.instructions):
            if _cls(insn.code) != BPF_JMP:
                continue
            if _op(insn.code) == BPF_JA:
                if insn.k >= n - pc - 1:
                    raise ValueError(f"instruction {pc}: ja {insn.k} jumps past the end")
            elif pc + 1 + max(insn.jt, insn.jf) >= n:
                raise ValueError(f"instruction {pc}: jump past the end")
        if _cls(self.instructions[-1].code) != BPF_RET:
            raise ValueError("the last instruction must be a ret")

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def sock_fprog_len(self) -> int:
        """The ``len`` field of ``struct sock_fprog``: the number of instructions."""
        return len(self.instructions)

    @property
    def text(self) -> str:
        """bpf_asm-style listing, one line per instruction, jumps resolved to relative offsets."""
        return "\n".join(insn.text for insn in self.instructions)

    def pack(self) -> bytes:
        """The ``struct sock_filter`` array that ``struct sock_fprog.filter`` points to."""
        return b"".join(insn.pack() for insn in self.instructions)


def _drop_jumps_to_next(items: list[Item]) -> list[Item]:
    """Remove ``ja L`` when only labels separate it from ``L`` (a generated no-op)."""
    out: list[Item] = []
    for i, item in enumerate(items):
        if isinstance(item, Jump) and _op(item.code) == BPF_JA and isinstance(item.jt, str):
            j = i + 1
            while j < len(items) and isinstance(items[j], Label):
                if items[j] == Label(item.jt):
                    break
                j += 1
            else:
                out.append(item)
                continue
            continue
        out.append(item)
    return out


def assemble(items: Iterable[Item]) -> Program:
    """Resolve labels to relative jumps and build a :class:`Program`.

    Raises ``ValueError`` for an unknown or duplicate label, a backward jump, or a conditional jump
    farther than 255 instructions (the ``u8`` offset of ``struct sock_filter``).
    """
    items = _drop_jumps_to_next(list(items))
    where: dict[str, int] = {}
    pc = 0
    for item in items:
        if isinstance(item, Label):
            if item.name in where:
                raise ValueError(f"duplicate label {item.name!r}")
            where[item.name] = pc
        else:
            pc += 1

    def offset(target: str | int | None, pc: int) -> int:
        if target is None:
            return 0
        if isinstance(target, int):
            return target
        if target not in where:
            raise ValueError(f"unknown label {target!r}")
        rel = where[target] - pc - 1
        if rel < 0:
            raise ValueError(f"backward jump to {target!r}: classic BPF only jumps forward")
        return rel

    out: list[Instruction] = []
    for item in items:
        if isinstance(item, Label):
            continue
        pc = len(out)
        if isinstance(item, Jump):
            if _op(item.code) == BPF_JA:
                out.append(Instruction(item.code, 0, 0, offset(item.jt, pc)))
                continue
            jt, jf = offset(item.jt, pc), offset(item.jf, pc)
            if jt > 255 or jf > 255:
                raise ValueError(f"instruction {pc}: jump of {max(jt, jf)} exceeds 255")
            out.append(Instruction(item.code, jt, jf, item.k))
        else:
            out.append(item)
    return Program(tuple(out))


# ------------------------------------------------------------------------------------ builders
def label(name: str) -> Label:
    """A jump target."""
    return Label(name)


def ld(k: int) -> Instruction:
    """``ld [k]``: A = 32-bit big-endian word at offset k."""
    return Instruction(BPF_LD | BPF_W | BPF_ABS, 0, 0, k)


def ldh(k: int) -> Instruction:
    """``ldh [k]``: A = 16-bit big-endian half-word at offset k."""
    return Instruction(BPF_LD | BPF_H | BPF_ABS, 0, 0, k)


def ldb(k: int) -> Instruction:
    """``ldb [k]``: A = byte at offset k."""
    return Instruction(BPF_LD | BPF_B | BPF_ABS, 0, 0, k)


def ld_ind(k: int) -> Instruction:
    """``ld [x + k]``."""
    return Instruction(BPF_LD | BPF_W | BPF_IND, 0, 0, k & _U32)


def ldh_ind(k: int) -> Instruction:
    """``ldh [x + k]``."""
    return Instruction(BPF_LD | BPF_H | BPF_IND, 0, 0, k & _U32)


def ldb_ind(k: int) -> Instruction:
    """``ldb [x + k]``."""
    return Instruction(BPF_LD | BPF_B | BPF_IND, 0, 0, k & _U32)


def ld_imm(k: int) -> Instruction:
    """``ld #k``."""
    return Instruction(BPF_LD | BPF_IMM, 0, 0, k)


def ld_len() -> Instruction:
    """``ld #len``: A = packet length."""
    return Instruction(BPF_LD | BPF_W | BPF_LEN, 0, 0, 0)


def ld_anc(anc: int) -> Instruction:
    """Ancillary load (``ld type``, ``ld vlan_avail``): A = skb metadata ``SKF_AD_OFF + anc``."""
    return Instruction(BPF_LD | BPF_W | BPF_ABS, 0, 0, (SKF_AD_OFF + anc) & _U32)


def ldx_imm(k: int) -> Instruction:
    """``ldx #k``."""
    return Instruction(BPF_LDX | BPF_W | BPF_IMM, 0, 0, k)


def ldx_msh(k: int) -> Instruction:
    """``ldx 4*([k]&0xf)``: X = IPv4 header length from the IHL nibble at offset k."""
    return Instruction(BPF_LDX | BPF_B | BPF_MSH, 0, 0, k)


def alu(op: int, k: int | None) -> Instruction:
    """ALU instruction ``op`` (``BPF_ADD``, ``BPF_AND`` …) on ``#k``, or on ``x`` when k is None."""
    if k is None:
        return Instruction(BPF_ALU | op | BPF_X)
    return Instruction(BPF_ALU | op | BPF_K, 0, 0, k)


def and_(k: int | None) -> Instruction:
    """``and #k`` (``and x`` when k is None)."""
    return alu(BPF_AND, k)


def tax() -> Instruction:
    """``tax``: X = A."""
    return Instruction(BPF_MISC | BPF_TAX)


def txa() -> Instruction:
    """``txa``: A = X."""
    return Instruction(BPF_MISC | BPF_TXA)


def _jump(op: int, k: int, jt: str | int | None, jf: str | int | None) -> Jump:
    return Jump(BPF_JMP | op | BPF_K, k, jt, jf)


def jeq(k: int, jt: str | int | None = None, jf: str | int | None = None) -> Jump:
    """``jeq #k, jt, jf`` (a target of ``None`` falls through to the next instruction)."""
    return _jump(BPF_JEQ, k, jt, jf)


def jgt(k: int, jt: str | int | None = None, jf: str | int | None = None) -> Jump:
    """``jgt #k, jt, jf``."""
    return _jump(BPF_JGT, k, jt, jf)


def jge(k: int, jt: str | int | None = None, jf: str | int | None = None) -> Jump:
    """``jge #k, jt, jf``."""
    return _jump(BPF_JGE, k, jt, jf)


def jset(k: int, jt: str | int | None = None, jf: str | int | None = None) -> Jump:
    """``jset #k, jt, jf``: jump to jt when ``A & k`` is non-zero."""
    return _jump(BPF_JSET, k, jt, jf)


def ja(target: str | int) -> Jump:
    """``ja target``: unconditional jump (32-bit offset)."""
    return Jump(BPF_JMP | BPF_JA, 0, target, None)


def ret(k: int) -> Instruction:
    """``ret #k``: accept k bytes of the packet (0 drops it)."""
    return Instruction(BPF_RET | BPF_K, 0, 0, k)


def ret_a() -> Instruction:
    """``ret a``: accept A bytes."""
    return Instruction(BPF_RET | BPF_A)


# --------------------------------------------------------------------------------- interpreter
def run(
    program: Program, packet: bytes, *, pkttype: int = 0, vlan_tag_present: bool = False
) -> int:
    """Run ``program`` over ``packet`` as the kernel would; return the accepted length (0 = drop).

    The kernel truncates a packet to the filter's return value, so the result is
    ``min(ret, len(packet))``. A load past the end of the packet ends the program with 0, as in
    the kernel's ``bpf_skb_load_helper``. ``pkttype`` and ``vlan_tag_present`` are what the
    ancillary loads ``ld type`` and ``ld vlan_avail`` see. Raises ``ValueError`` for operations it
    does not implement.
    """
    insns = program.instructions
    a = x = 0
    n = len(packet)
    pc = 0
    while True:
        insn = insns[pc]
        code, k = insn.code, insn.k
        cls = _cls(code)
        pc += 1
        if cls == BPF_LD:
            mode = _mode(code)
            if mode in (BPF_ABS, BPF_IND):
                off = _signed(k) if mode == BPF_ABS else (x + _signed(k)) & _U32
                if mode == BPF_ABS and off < 0:
                    anc = off - SKF_AD_OFF
                    if anc == SKF_AD_PKTTYPE:
                        a = pkttype
                    elif anc == SKF_AD_VLAN_TAG_PRESENT:
                        a = int(vlan_tag_present)
                    else:
                        raise ValueError(f"unsupported negative load offset {off}")
                    continue
                width = _SIZES[_size(code)][0] if _size(code) in _SIZES else 0
                if width == 0:
                    raise ValueError(f"bad load size in opcode {code:#x}")
                if off + width > n:
                    return 0
                a = int.from_bytes(packet[off : off + width], "big")
            elif mode == BPF_IMM:
                a = k
            elif mode == BPF_LEN:
                a = n
            else:
                raise ValueError(f"unsupported load opcode {code:#x}")
        elif cls == BPF_LDX:
            mode = _mode(code)
            if mode == BPF_MSH:
                if k >= n:
                    return 0
                x = 4 * (packet[k] & 0x0F)
            elif mode == BPF_IMM:
                x = k
            elif mode == BPF_LEN:
                x = n
            else:
                raise ValueError(f"unsupported ldx opcode {code:#x}")
        elif cls == BPF_ALU:
            operand = x if _src(code) == BPF_X else k
            op = _op(code)
            if op == BPF_ADD:
                a = (a + operand) & _U32
            elif op == BPF_SUB:
                a = (a - operand) & _U32
            elif op == BPF_AND:
                a &= operand
            elif op == BPF_OR:
                a |= operand
            elif op == BPF_LSH:
                # Classic shifts are 32-bit; the kernel's converted program masks the count.
                a = (a << (operand & 31)) & _U32
            elif op == BPF_RSH:
                a >>= operand & 31
            else:
                raise ValueError(f"unsupported alu opcode {code:#x}")
        elif cls == BPF_JMP:
            op = _op(code)
            if op == BPF_JA:
                pc += k
                continue
            operand = x if _src(code) == BPF_X else k
            if op == BPF_JEQ:
                taken = a == operand
            elif op == BPF_JGT:
                taken = a > operand
            elif op == BPF_JGE:
                taken = a >= operand
            elif op == BPF_JSET:
                taken = bool(a & operand)
            else:
                raise ValueError(f"unsupported jump opcode {code:#x}")
            pc += insn.jt if taken else insn.jf
        elif cls == BPF_RET:
            value = a if code & 0x18 == BPF_A else k
            return min(value, n)
        elif cls == BPF_MISC:
            if code & 0xF8 == BPF_TXA:
                a = x
            else:
                x = a
        else:
            raise ValueError(f"unsupported opcode {code:#x}")


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
            # Extension headers: walking a chain is not expressible without loops, and a chain of
            # any length is legitimate (the kernel delivered 20 destination-options headers, seen).
            # Pass the frame, already matched on address, to user space's full parser instead of
            # dropping traffic the kernel would deliver.
            items += [jeq(nh, "accept") for nh in _IPV6_PASSED_EXTENSIONS]
            items.append(ja("reject"))
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
