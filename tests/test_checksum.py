"""The Internet checksum helpers against worked examples and a word-by-word RFC 1071 adder."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rawtransport.checksum import (
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum_v4,
    pseudo_header_sum_v6,
    udp_checksum,
    verify_udp_checksum,
)

SRC4 = bytes([198, 18, 0, 1])
DST4 = bytes([198, 18, 0, 2])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")


def reference_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 section 4.1, literally: 16-bit words with end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def udp_segment(payload: bytes, sport: int = 1234, dport: int = 5678, field: int = 0) -> bytes:
    length = 8 + len(payload)
    return (
        sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
        + length.to_bytes(2, "big")
        + field.to_bytes(2, "big")
        + payload
    )


def with_field(segment: bytes, field: int) -> bytes:
    return segment[:6] + field.to_bytes(2, "big") + segment[8:]


# RFC 1071 section 3 works an example: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
# The IPv4 header example is the classic one from RFC 1071-era references (checksum b861).
@pytest.mark.parametrize(
    ("data", "expected_sum"),
    [
        (bytes.fromhex("0001f203f4f5f6f7"), 0xDDF2),
        (b"", 0),
        (b"\x00\x00\x00", 0),
        (b"\xff\xff", 0xFFFF),
        (b"\xff\xff\xff\xff", 0xFFFF),  # a non-zero multiple of 0xFFFF folds to 0xFFFF, not 0
        (b"\x00\x01\xff\xfe", 0xFFFF),
        (b"\x01", 0x0100),  # odd length: the last byte is a high byte, padded with zero
        (b"\x12\x34\x56", 0x1234 + 0x5600),
    ],
)
def test_ones_complement_sum_examples(data: bytes, expected_sum: int) -> None:
    assert ones_complement_sum(data) == expected_sum
    assert reference_sum(data) == expected_sum


def test_internet_checksum_of_ipv4_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    filled = header[:10] + b"\xb8\x61" + header[12:]
    assert internet_checksum(filled) == 0
    # Memoryview and bytearray inputs give the same result.
    assert internet_checksum(memoryview(header)) == internet_checksum(bytearray(header)) == 0xB861


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
@example(b"", 0)
@example(b"", 0xFFFF)
@example(b"\xff\xff", 0xFFFF)
@example(b"\x00" * 7, 0)
def test_ones_complement_sum_matches_rfc1071_adder(data: bytes, initial: int) -> None:
    assert ones_complement_sum(data, initial) == reference_sum(data, initial)
    assert internet_checksum(data, initial) == (~reference_sum(data, initial) & 0xFFFF)


def test_ones_complement_sum_rejects_negative_initial() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        ones_complement_sum(b"", -1)


def test_pseudo_header_sums() -> None:
    # RFC 768: src, dst, zero, protocol, UDP length.
    v4 = SRC4 + DST4 + bytes([0, 17]) + (13).to_bytes(2, "big")
    assert pseudo_header_sum_v4(SRC4, DST4, 17, 13) == reference_sum(v4)
    # RFC 8200 8.1: src, dst, 32-bit length, 3 zero bytes, next header.
    v6 = SRC6 + DST6 + (70000).to_bytes(4, "big") + bytes([0, 0, 0, 17])
    assert pseudo_header_sum_v6(SRC6, DST6, 17, 70000) == reference_sum(v6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: pseudo_header_sum_v4(SRC4, DST6, 17, 8),
        lambda: pseudo_header_sum_v4(SRC4, DST4, 256, 8),
        lambda: pseudo_header_sum_v4(SRC4, DST4, 17, 0x10000),
        lambda: pseudo_header_sum_v6(SRC6, DST4, 17, 8),
        lambda: pseudo_header_sum_v6(SRC6, DST6, 17, 1 << 32),
        lambda: udp_checksum(SRC4, DST4, b"\x00" * 7),
        lambda: udp_checksum(b"\x00" * 5, b"\x00" * 5, b"\x00" * 8),
        lambda: udp_checksum(SRC4, DST6, b"\x00" * 8),
        lambda: udp_checksum(SRC4, DST4, b"\x00" * 0x10000),
    ],
)
def test_caller_mistakes_raise_value_error(call: object) -> None:
    assert callable(call)
    with pytest.raises(ValueError):
        call()


def test_udp_checksum_known_values() -> None:
    # Cross-checked with scapy (tests/test_packet_scapy.py does it for random inputs).
    assert udp_checksum(SRC4, DST4, udp_segment(b"hello")) == 0x14DA
    assert udp_checksum(SRC6, DST6, udp_segment(b"hello")) == 0x458D


@given(
    st.binary(max_size=64), st.integers(0, 0xFFFF), st.sampled_from([(SRC4, DST4), (SRC6, DST6)])
)
def test_udp_checksum_ignores_field_and_verifies(
    payload: bytes, junk: int, addrs: tuple[bytes, bytes]
) -> None:
    src, dst = addrs
    seg = udp_segment(payload)
    ck = udp_checksum(src, dst, seg)
    assert ck != 0
    # The field's contents do not matter (documented: ignored).
    assert udp_checksum(src, dst, with_field(seg, junk)) == ck
    filled = with_field(seg, ck)
    assert verify_udp_checksum(src, dst, filled)
    # Independent check: the RFC 1071 sum over pseudo-header + segment is all ones.
    pseudo = src + dst + (17).to_bytes(2, "big") + len(seg).to_bytes(2, "big")
    assert reference_sum(pseudo + filled) == 0xFFFF
    if ck != 0xFFFF:
        assert not verify_udp_checksum(src, dst, with_field(seg, ck ^ 0x0100 or 1))


def _payload_summing_to_zero(src: bytes, dst: bytes) -> bytes:
    """Two payload bytes that make the computed UDP checksum 0 (sum all ones)."""
    seg = udp_segment(b"\x00\x00")
    pseudo = src + dst + (17).to_bytes(2, "big") + len(seg).to_bytes(2, "big")
    partial = reference_sum(pseudo + seg)
    return (0xFFFF - partial).to_bytes(2, "big")


@pytest.mark.parametrize(("src", "dst"), [(SRC4, DST4), (SRC6, DST6)])
def test_computed_zero_is_sent_as_ffff(src: bytes, dst: bytes) -> None:
    seg = udp_segment(_payload_summing_to_zero(src, dst))
    assert udp_checksum(src, dst, seg) == 0xFFFF  # RFC 768
    assert verify_udp_checksum(src, dst, with_field(seg, 0xFFFF))


def test_zero_field_means_none_over_ipv4_only() -> None:
    seg = udp_segment(b"payload")
    assert verify_udp_checksum(SRC4, DST4, seg)  # RFC 768: no checksum
    assert not verify_udp_checksum(SRC6, DST6, seg)  # RFC 8200 8.1: mandatory
    assert not verify_udp_checksum(SRC4, DST4, b"\x00" * 7)


@given(st.binary(min_size=1, max_size=40), st.data())
def test_single_bit_flip_fails_verification(payload: bytes, data: st.DataObject) -> None:
    seg = udp_segment(payload)
    seg = with_field(seg, udp_checksum(SRC6, DST6, seg))
    bit = data.draw(st.integers(0, len(seg) * 8 - 1))
    flipped = bytearray(seg)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    # Changing one word by +-2**k can never be a multiple of 0xFFFF, so the sum breaks; the only
    # escape is the checksum field itself becoming zero, which IPv6 rejects anyway.
    assert not verify_udp_checksum(SRC6, DST6, bytes(flipped))
