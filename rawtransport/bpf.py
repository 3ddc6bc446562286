"""Classic BPF: a small assembler, a reference interpreter and the endpoint's socket filter.

The receive path opens an ``AF_PACKET`` socket, which sees every frame on the link. A classic-BPF
program attached with ``SO_ATTACH_FILTER`` keeps everything but our own traffic in the kernel, so
other processes' datagrams never reach user space (docs/kernel-checks.md) and the parser is spared
the bulk.

This module is pure: it builds programs as values (``Program.pack()`` gives the ``struct
sock_filter`` array, ``Program.text`` a bpf_asm-style listing) and runs them with :func:`run`, an
interpreter with the kernel's semantics for the operations used here, so the generated filters are
testable without privileges. The filter is a *prefilter*: user space still makes every check the
kernel's IP and UDP layers make; the filter only has to never reject a frame the kernel would have
delivered to the endpoint's socket, and to reject as much of everything else as is cheap.

The endpoint's filter generator lives in :mod:`rawtransport.bpf_filter`.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
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
    "RawInstruction",
    "alu",
    "and_",
    "assemble",
    "ja",
    "jeq",
    "jeq_x",
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
SKF_AD_IFINDEX: Final = 8  # the receiving device's ifindex (skb->dev->ifindex)
SKF_AD_VLAN_TAG: Final = 44  # the tag's TCI (skb->vlan_tci), 0 without one
SKF_AD_VLAN_TAG_PRESENT: Final = 48
_ANC_NAMES: Final = {
    SKF_AD_PKTTYPE: "type",
    SKF_AD_IFINDEX: "ifidx",
    SKF_AD_VLAN_TAG: "vlan_tci",
    SKF_AD_VLAN_TAG_PRESENT: "vlan_avail",
}

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


RawInstruction: TypeAlias = tuple[int, int, int, int]
"""One instruction as plain ints, ``(code, jt, jf, k)``."""

# The byte of a packed struct sock_filter that holds the low byte of its u16 opcode, which has the
# class, size, mode and operation bits.
_CODE_LOW: Final = 0 if sys.byteorder == "little" else 1
# The low bytes of the ``ja`` opcodes (BPF_JMP | BPF_JA, with or without the BPF_X bit).
_JA_CODES: Final = re.compile(rb"[\x05\x0d]")


# Fields are packed this many instructions at a time, with formats compiled once: a format as long
# as the program would be compiled anew for most lengths (struct caches few), at twice the cost.
_CHUNK: Final = 64


@lru_cache(maxsize=_CHUNK)
def _chunk_struct(n: int) -> struct.Struct:
    return struct.Struct("=" + "HBBI" * n)  # struct sock_filter, native byte order


def _pack(fields: Sequence[int]) -> bytes:
    """The ``struct sock_filter`` array of ``fields`` (a multiple of 4 of them), each field's
    range checked (``struct.error``)."""
    step = 4 * _CHUNK
    whole = _chunk_struct(_CHUNK)
    parts = [whole.pack(*fields[i : i + step]) for i in range(0, len(fields) - step + 1, step)]
    if rest := len(fields) % step:
        parts.append(_chunk_struct(rest // 4).pack(*fields[-rest:]))
    return b"".join(parts)


# How far a conditional jump may go from each of the last 255 instructions but the very last: from
# the one before it, 0 (to the last), and so on.
_ROOM: Final = bytes(range(254, -1, -1))


def _all_within(offsets: bytes, room: bytes) -> bool:
    """Whether ``offsets[i] <= room[i]`` for every ``i`` (of equal lengths), in a few big-int
    operations rather than a Python loop: the validation of a program built on the event loop."""
    # As 16-bit lanes, 0x100 + room[i] - offsets[i] is 1..511 and borrows from no other lane; it
    # is 0x100 or more, its bit 8 set, exactly where offsets[i] <= room[i].
    n = len(offsets)
    lanes = bytearray(2 * n)
    lanes[0::2] = room
    lanes[1::2] = b"\x01" * n
    subtrahend = bytearray(2 * n)
    subtrahend[0::2] = offsets
    high = int.from_bytes(b"\x00\x01" * n, "little")
    diff = int.from_bytes(lanes, "little") - int.from_bytes(subtrahend, "little")
    return diff & high == high


class Program:
    """A validated classic-BPF program, ready for ``SO_ATTACH_FILTER``.

    Validation follows the kernel's ``bpf_check_classic()``: 1 to ``BPF_MAXINSNS`` instructions,
    every jump lands inside the program, and the last instruction is a ``ret``. Programs are
    immutable and compare (and hash) by their instructions.

    ``Program(instructions)`` takes :class:`Instruction` values; :meth:`from_fields` and
    :meth:`from_raw` take plain ints, for generators that build thousands of instructions on the
    event loop and cannot afford an object each. A program keeps its ``struct sock_filter`` array
    (:meth:`pack`); the :attr:`raw` tuples and the :attr:`instructions` are made from it when first
    read.
    """

    __slots__ = ("_instructions", "_packed", "_raw")
    _packed: bytes
    _raw: tuple[RawInstruction, ...] | None
    _instructions: tuple[Instruction, ...] | None

    def __init__(self, instructions: Iterable[Instruction]) -> None:
        insns = tuple(instructions)
        # Each Instruction checked its own fields.
        self._set(b"".join([insn.pack() for insn in insns]), None, insns)

    @classmethod
    def from_fields(cls, fields: Sequence[int]) -> Program:
        """A program of the instructions' fields in a row: ``code, jt, jf, k, code, jt, …``.

        Validated as ``Program()`` validates. Each field's range (u16, u8, u8, u32) is checked by
        packing the ``struct sock_filter`` array in one call; one out of range raises
        ``ValueError`` as :class:`Instruction` does.
        """
        n, extra = divmod(len(fields), 4)
        if extra:
            raise ValueError(f"{len(fields)} fields: an instruction has 4 (code, jt, jf, k)")
        if not 1 <= n <= BPF_MAXINSNS:
            raise ValueError(f"a program has 1..{BPF_MAXINSNS} instructions, not {n}")
        try:
            packed = _pack(fields)
        except struct.error as exc:
            for i in range(0, len(fields), 4):
                Instruction(*fields[i : i + 4])  # raises the field's own error
            raise ValueError(f"malformed instruction fields: {exc}") from None
        program = cls.__new__(cls)
        program._set(packed, None, None)
        return program

    @classmethod
    def from_raw(cls, raw: Iterable[RawInstruction]) -> Program:
        """A program of ``(code, jt, jf, k)`` tuples, validated as :meth:`from_fields` does."""
        return cls.from_fields(list(chain.from_iterable(raw)))

    def _set(
        self,
        packed: bytes,
        raw: tuple[RawInstruction, ...] | None,
        instructions: tuple[Instruction, ...] | None,
    ) -> None:
        """Check the jumps and the last instruction of ``packed``, and keep it."""
        n = len(packed) // 8
        if not 1 <= n <= BPF_MAXINSNS:
            raise ValueError(f"a program has 1..{BPF_MAXINSNS} instructions, not {n}")
        codes = packed[_CODE_LOW::8]
        words = memoryview(packed).cast("I")
        last = n - 1
        # pc + 1 + offset must be an instruction (bpf_check_classic()). A ja has 32 bits of
        # offset, to check wherever it is; a conditional jump 8, so that only one of the last 256
        # instructions can overshoot.
        for match in _JA_CODES.finditer(codes):
            pc = match.start()
            if pc + words[2 * pc + 1] >= last:
                raise ValueError(f"instruction {pc}: ja {words[2 * pc + 1]} jumps past the end")
        start = max(0, last - 255)
        jts = packed[8 * start + 2 : 8 * last : 8]  # the last instruction is a ret: checked below
        jfs = packed[8 * start + 3 : 8 * last : 8]
        # The other instructions' jt and jf are 0 as the builders make them, so that checking
        # every instruction's clears them all at once; else look at the jumps alone.
        if not _all_within(jts + jfs, 2 * _ROOM[len(_ROOM) - (last - start) :]):
            for pc, code, jt, jf in zip(
                range(start, last), codes[start:last], jts, jfs, strict=True
            ):
                if code & 0x07 == BPF_JMP and code & 0xF0 != BPF_JA and pc + max(jt, jf) >= last:
                    raise ValueError(f"instruction {pc}: jump past the end")
        if codes[-1] & 0x07 != BPF_RET:
            raise ValueError("the last instruction must be a ret")
        object.__setattr__(self, "_packed", packed)
        object.__setattr__(self, "_raw", raw)
        object.__setattr__(self, "_instructions", instructions)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Program is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Program is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Program):
            return NotImplemented
        return self._packed == other._packed

    def __hash__(self) -> int:
        return hash(self._packed)

    def __repr__(self) -> str:
        return f"Program(instructions={self.instructions!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Copies and pickles are rebuilt through the validation, not by setting the slots.
        return (Program.from_raw, (self.raw,))

    def __len__(self) -> int:
        return len(self._packed) // 8

    @property
    def raw(self) -> tuple[RawInstruction, ...]:
        """The instructions as ``(code, jt, jf, k)`` tuples."""
        if self._raw is None:
            raw = tuple(_SOCK_FILTER.iter_unpack(self._packed))
            object.__setattr__(self, "_raw", raw)
            return raw
        return self._raw

    @property
    def instructions(self) -> tuple[Instruction, ...]:
        """The instructions, as :class:`Instruction` values."""
        if self._instructions is None:
            insns = tuple(Instruction(*insn) for insn in self.raw)
            object.__setattr__(self, "_instructions", insns)
            return insns
        return self._instructions

    @property
    def sock_fprog_len(self) -> int:
        """The ``len`` field of ``struct sock_fprog``: the number of instructions."""
        return len(self)

    @property
    def text(self) -> str:
        """bpf_asm-style listing, one line per instruction, jumps resolved to relative offsets."""
        return "\n".join(insn.text for insn in self.instructions)

    def pack(self) -> bytes:
        """The ``struct sock_filter`` array that ``struct sock_fprog.filter`` points to."""
        return self._packed


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


def jeq_x(jt: str | int | None = None, jf: str | int | None = None) -> Jump:
    """``jeq x, jt, jf``: jump to jt when A equals X."""
    return Jump(BPF_JMP | BPF_JEQ | BPF_X, 0, jt, jf)


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
    program: Program,
    packet: bytes,
    *,
    pkttype: int = 0,
    vlan_tag_present: bool = False,
    vlan_tci: int = 0,
    ifindex: int = 0,
) -> int:
    """Run ``program`` over ``packet`` as the kernel would; return the accepted length (0 = drop).

    The kernel truncates a packet to the filter's return value, so the result is
    ``min(ret, len(packet))``. A load past the end of the packet ends the program with 0, as in
    the kernel's ``bpf_skb_load_helper``. ``pkttype``, ``vlan_tag_present``, ``vlan_tci`` and
    ``ifindex`` are what the ancillary loads ``ld type``, ``ld vlan_avail``, ``ld vlan_tci`` and
    ``ld ifidx`` see. Raises ``ValueError`` for operations it
    does not implement.
    """
    insns = program.raw
    a = x = 0
    n = len(packet)
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
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
                    elif anc == SKF_AD_IFINDEX:
                        a = ifindex
                    elif anc == SKF_AD_VLAN_TAG_PRESENT:
                        a = int(vlan_tag_present)
                    elif anc == SKF_AD_VLAN_TAG:
                        a = vlan_tci if vlan_tag_present else 0
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
            pc += jt if taken else jf
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
