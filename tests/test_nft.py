"""The nftables ruleset text of ``kernel_bypass`` (pure generation), without privileges.

The same text is installed in namespaces by ``tests/net/test_bypass.py``, where the kernel accepts it
and the rules are shown to drop exactly the endpoint's datagrams.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawtransport.nft import (
    INGRESS_PRIORITY,
    BypassSpec,
    Hook,
    NftBypass,
    NftError,
    chain_command,
    drop_rules,
    table_command,
    table_name,
    valid_ifname,
)

A4 = bytes([198, 18, 0, 1])
B4 = bytes([198, 18, 0, 2])
A6 = ipaddress.IPv6Address("2001:db8::1").packed
B6 = ipaddress.IPv6Address("2001:db8::2").packed
MAPPED_A4 = bytes(10) + b"\xff\xff" + A4
MAPPED_B4 = bytes(10) + b"\xff\xff" + B4


# ----------------------------------------------------------------------------------- names
def test_table_name_carries_pid_and_token() -> None:
    assert table_name(1234, 0xDEADBEEF) == "rawtransport_1234_deadbeef"
    assert table_name(1, 0) == "rawtransport_1_00000000"


@pytest.mark.parametrize(("pid", "token"), [(-1, 0), (1, -1), (1, 1 << 32)])
def test_table_name_rejects_bad_parts(pid: int, token: int) -> None:
    with pytest.raises(ValueError):
        table_name(pid, token)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("eth0", True),
        ("veth-1.100", True),
        ("a" * 15, True),
        ("lo", True),
        ("br_x@y+z", True),
        ("", False),
        ("a" * 16, False),
        ('ev"il', False),
        ("a b", False),
        ("x;y", False),
        ("a\\b", False),
        ("a/b", False),
        (".", False),
        ("..", False),
        ("é", False),
    ],
)
def test_valid_ifname(name: str, ok: bool) -> None:
    assert valid_ifname(name) is ok


# ------------------------------------------------------------------------------------ spec
@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"family": 5, "local_port": 1}, ValueError),
        ({"family": 4, "local_port": 0}, ValueError),
        ({"family": 4, "local_port": 65536}, ValueError),
        ({"family": 4, "local_port": True}, TypeError),
        ({"family": 4, "local_port": 1, "local_ip": b"\x01\x02\x03"}, ValueError),
        ({"family": 4, "local_port": 1, "local_ip": "198.18.0.1"}, TypeError),
        ({"family": 4, "local_port": 1, "local_ip": A6}, ValueError),
        ({"family": 6, "local_port": 1, "local_ip": A4}, ValueError),
        ({"family": 0, "local_port": 1, "remote_ip": B4, "remote_port": 1}, ValueError),
        ({"family": 4, "local_port": 1, "remote_ip": B4}, ValueError),
        ({"family": 4, "local_port": 1, "remote_port": 7}, ValueError),
        ({"family": 4, "local_port": 1, "remote_ip": B4, "remote_port": 65536}, ValueError),
        ({"family": 6, "local_port": 1, "local_ip": A6, "remote_ip": MAPPED_B4, "remote_port": 9},
         ValueError),
    ],
)  # fmt: skip
def test_spec_rejects_caller_mistakes(kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        BypassSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "families"),
    [
        (BypassSpec(4, 1), (4,)),
        (BypassSpec(6, 1), (6,)),
        (BypassSpec(0, 1), (4, 6)),
        (BypassSpec(0, 1, remote_ip=MAPPED_B4, remote_port=2), (4,)),
        (BypassSpec(0, 1, remote_ip=B6, remote_port=2), (6,)),
        (BypassSpec(6, 1, local_ip=MAPPED_A4), (4,)),
    ],
)
def test_spec_families(spec: BypassSpec, families: tuple[int, ...]) -> None:
    assert spec.families() == families


# ----------------------------------------------------------------------------------- rules
@pytest.mark.parametrize(
    ("spec", "ethernet", "rules"),
    [
        (
            BypassSpec(4, 5000, A4),
            True,
            ["ether type ip udp dport 5000 ip daddr 198.18.0.1 counter drop"],
        ),
        (
            BypassSpec(6, 53, A6),
            True,
            ["ether type ip6 udp dport 53 ip6 daddr 2001:db8::1 counter drop"],
        ),
        (
            BypassSpec(4, 5000, A4, B4, 7000),
            True,
            [
                "ether type ip udp dport 5000 ip daddr 198.18.0.1 ip saddr 198.18.0.2 "
                "udp sport 7000 counter drop"
            ],
        ),
        (
            BypassSpec(4, 5000),
            True,
            ["ether type ip udp dport 5000 fib daddr type local counter drop"],
        ),
        (
            BypassSpec(0, 5000),
            True,
            [
                "ether type ip udp dport 5000 fib daddr type local counter drop",
                "ether type ip6 udp dport 5000 fib daddr type local counter drop",
            ],
        ),
        (
            # A dual-stack socket connected to an IPv4 peer: its datagrams are IPv4 frames.
            BypassSpec(0, 5000, remote_ip=MAPPED_B4, remote_port=9),
            True,
            [
                "ether type ip udp dport 5000 fib daddr type local ip saddr 198.18.0.2 "
                "udp sport 9 counter drop"
            ],
        ),
        (
            BypassSpec(6, 5000, MAPPED_A4),
            True,
            ["ether type ip udp dport 5000 ip daddr 198.18.0.1 counter drop"],
        ),
        (
            BypassSpec(4, 5000, A4),
            False,
            ["meta protocol ip udp dport 5000 ip daddr 198.18.0.1 counter drop"],
        ),
        (
            BypassSpec(4, 5000, A4, drop_fragments=True),
            True,
            [
                "ether type ip udp dport 5000 ip daddr 198.18.0.1 counter drop",
                "ether type ip ip daddr 198.18.0.1 ip frag-off & 0x1fff != 0 counter drop",
            ],
        ),
        (
            BypassSpec(6, 5000, A6, B6, 1, drop_fragments=True),
            True,
            [
                "ether type ip6 udp dport 5000 ip6 daddr 2001:db8::1 ip6 saddr 2001:db8::2 "
                "udp sport 1 counter drop",
                "ether type ip6 ip6 daddr 2001:db8::1 ip6 saddr 2001:db8::2 frag frag-off != 0 "
                "counter drop",
            ],
        ),
        (
            # Fragments of a wildcard endpoint cannot be attributed to it: never dropped.
            BypassSpec(4, 5000, drop_fragments=True),
            True,
            ["ether type ip udp dport 5000 fib daddr type local counter drop"],
        ),
    ],
)
def test_drop_rules(spec: BypassSpec, ethernet: bool, rules: list[str]) -> None:
    assert drop_rules(spec, ethernet=ethernet) == rules


def test_table_command_is_one_owned_transaction() -> None:
    spec = BypassSpec(4, 5000, A4)
    text = table_command(
        "rawtransport_1_00000001",
        [Hook("ingress_0", "veth0"), Hook("ingress_1", "lo", False)],
        spec,
    )
    assert text == (
        "add table netdev rawtransport_1_00000001 { flags owner;"
        ' chain ingress_0 { type filter hook ingress device "veth0" priority -500; policy accept;'
        " ether type ip udp dport 5000 ip daddr 198.18.0.1 counter drop; };"
        ' chain ingress_1 { type filter hook ingress device "lo" priority -500; policy accept;'
        " meta protocol ip udp dport 5000 ip daddr 198.18.0.1 counter drop; }; }"
    )
    assert INGRESS_PRIORITY == -500


def test_table_command_without_owner_and_without_chains() -> None:
    text = table_command("t", [], BypassSpec(4, 1), owner=False)
    assert text == "add table netdev t { }"


def test_chain_command_never_redeclares_the_table() -> None:
    text = chain_command("t1", Hook("ingress_3", "eth1"), BypassSpec(0, 9))
    assert text == (
        'add chain netdev t1 ingress_3 { type filter hook ingress device "eth1" priority -500;'
        " policy accept; }; "
        "add rule netdev t1 ingress_3 ether type ip udp dport 9 fib daddr type local counter drop; "
        "add rule netdev t1 ingress_3 ether type ip6 udp dport 9 fib daddr type local counter drop"
    )
    # Re-declaring an owned table without "flags owner" is refused by nf_tables_updtable().
    assert "table netdev" not in text.replace("add chain netdev t1", "").replace(
        "add rule netdev t1", ""
    )


@pytest.mark.parametrize("device", ['x" ; flush ruleset ; "', "a b", "", "x" * 16])
def test_unsafe_device_names_are_refused(device: str) -> None:
    with pytest.raises(ValueError):
        table_command("t", [Hook("c", device)], BypassSpec(4, 1))
    with pytest.raises(ValueError):
        chain_command("t", Hook("c", device), BypassSpec(4, 1))


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "a;b", "x" * 65])
def test_bad_table_and_chain_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        table_command(name, [], BypassSpec(4, 1))
    with pytest.raises(ValueError):
        table_command("t", [Hook(name, "eth0")], BypassSpec(4, 1))
    with pytest.raises(ValueError):
        chain_command("t", Hook(name, "eth0"), BypassSpec(4, 1))


_v4 = st.binary(min_size=4, max_size=4)
_v6 = st.binary(min_size=16, max_size=16).filter(lambda b: b[:12] != bytes(10) + b"\xff\xff")
_port = st.integers(1, 65535)


@st.composite
def _specs(draw: st.DrawFn) -> BypassSpec:
    family = draw(st.sampled_from([4, 6]))
    addr = _v4 if family == 4 else _v6
    local = draw(st.none() | addr)
    remote = draw(st.none() | addr)
    return BypassSpec(
        family,
        draw(_port),
        local,
        remote,
        None if remote is None else draw(st.integers(0, 65535)),
        draw(st.booleans()),
    )


@given(_specs(), st.booleans())
def test_every_rule_is_scoped_to_the_endpoint(spec: BypassSpec, ethernet: bool) -> None:
    """Whatever the spec, each rule names the ether type, and the port or the bound address."""
    rules = drop_rules(spec, ethernet=ethernet)
    ip = "ip" if spec.family == 4 else "ip6"
    assert rules[0].startswith(("ether type " if ethernet else "meta protocol ") + ip + " ")
    assert f" udp dport {spec.local_port} " in rules[0]
    for rule in rules:
        assert rule.endswith(" counter drop")
        assert not set(rule) & set('\n;"{}')
        if spec.local_ip is not None:
            assert f"{ip} daddr {ipaddress.ip_address(spec.local_ip)} " in rule
        else:
            assert "fib daddr type local" in rule
        if spec.remote_ip is not None:
            assert f"{ip} saddr {ipaddress.ip_address(spec.remote_ip)}" in rule
    # Only a non-wildcard endpoint that asked for it drops (portless) non-first fragments.
    assert len(rules) == (2 if spec.drop_fragments and spec.local_ip is not None else 1)
    assert len(re.findall(r"udp dport", " ".join(rules))) == 1


# ----------------------------------------------------------------------------- the boundary
def test_missing_nft_says_install_nftables() -> None:
    with pytest.raises(NftError) as info:
        NftBypass.install(BypassSpec(4, 1), [], nft="/nonexistent/rawtransport-test/nft")
    assert "install nftables" in str(info.value)
    assert info.value.errno == 2
    assert isinstance(info.value, OSError)


def test_unsafe_interface_names_are_refused_before_running_nft() -> None:
    with pytest.raises(ValueError):
        NftBypass.install(BypassSpec(4, 1), ['bad"name'], nft="/nonexistent/rawtransport-test/nft")
