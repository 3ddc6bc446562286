"""Unit tests of the ARP/ND resolver state machine (rawtransport.neighbour); no privileges."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rawtransport.neighbour import (
    NeighbourCache,
    NeighbourRequest,
    NeighbourState,
    ResolutionFailed,
)

IF = 2
A4 = bytes([198, 18, 0, 1])
B4 = bytes([198, 18, 0, 2])
C4 = bytes([198, 18, 0, 3])
A6 = bytes.fromhex("20010db8000000000000000000000001")
MAC1 = bytes.fromhex("020000000001")
MAC2 = bytes.fromhex("020000000002")
BAD_MACS = [
    bytes.fromhex("ffffffffffff"),  # broadcast
    bytes.fromhex("01005e000001"),  # IPv4 multicast
    bytes.fromhex("333300000001"),  # IPv6 multicast
    bytes(6),  # zero
    bytes.fromhex("0200000000"),  # 5 bytes
    bytes.fromhex("02000000000102"),  # 7 bytes
]

Cache = NeighbourCache[str]


def make(**kw: Any) -> Cache:
    return NeighbourCache[str](**kw)


def req(address: bytes, attempt: int, unicast: bytes | None = None) -> NeighbourRequest:
    return NeighbourRequest(IF, address, attempt, unicast)


def reachable(cache: Cache, address: bytes = A4, mac: bytes = MAC1, now: float = 0.0) -> None:
    """Resolve ``address`` through a request and its reply, at ``now``."""
    assert cache.resolve(IF, address, "warmup", now) is None
    cache.requests_to_send()
    assert cache.handle_reply(IF, address, mac, now) == ["warmup"]


# --------------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"max_entries": 0}, ValueError),
        ({"max_pending_per_address": 0}, ValueError),
        ({"max_pending_total": 0}, ValueError),
        ({"max_attempts": 0}, ValueError),
        ({"max_entries": 1.5}, TypeError),
        ({"max_attempts": True}, TypeError),
        ({"retransmit_interval": 0}, ValueError),
        ({"retransmit_interval": -1.0}, ValueError),
        ({"reachable_time": 0.0}, ValueError),
        ({"stale_time": float("inf")}, ValueError),
        ({"failed_hold": float("nan")}, ValueError),
        ({"failed_hold": -0.5}, ValueError),
        ({"retransmit_interval": "1"}, TypeError),
        ({"failed_hold": False}, TypeError),
    ],
)
def test_constructor_rejects(kwargs: dict[str, Any], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        make(**kwargs)


def test_constructor_accepts_zero_hold_and_stale() -> None:
    cache = make(failed_hold=0, stale_time=0)
    assert cache.failed_hold == 0.0
    assert cache.stale_time == 0.0
    assert len(cache) == 0
    assert cache.get_timer() is None


_CALLS: list[tuple[str, Callable[[Cache, int, Any], object]]] = [
    ("resolve", lambda c, i, a: c.resolve(i, a, "x", 0.0)),
    ("lookup", lambda c, i, a: c.lookup(i, a, 0.0)),
    ("handle_reply", lambda c, i, a: c.handle_reply(i, a, MAC1, 0.0)),
    ("seed", lambda c, i, a: c.seed(i, a, MAC1, 0.0)),
    ("state", lambda c, i, a: c.state(i, a, 0.0)),
    ("pending_for", lambda c, i, a: c.pending_for(i, a)),
]


@pytest.mark.parametrize(("name", "call"), _CALLS, ids=[n for n, _ in _CALLS])
@pytest.mark.parametrize(
    ("ifindex", "address", "exc"),
    [
        (IF, b"", ValueError),
        (IF, b"\xc6\x12\x00", ValueError),
        (IF, b"\xc6\x12\x00\x01\x00", ValueError),
        (IF, bytes(15), ValueError),
        (IF, bytes(17), ValueError),
        (IF, "198.18.0.1", TypeError),
        (IF, bytearray(A4), TypeError),
        (-1, A4, ValueError),
        ("2", A4, TypeError),
        (True, A4, TypeError),
    ],
)
def test_caller_mistakes_raise(
    name: str, call: Callable[[Cache, int, Any], object], ifindex: Any, address: Any, exc: type
) -> None:
    cache = make()
    with pytest.raises(exc):
        call(cache, ifindex, address)
    assert len(cache) == 0
    assert cache.pending == 0


@pytest.mark.parametrize("method", ["handle_reply", "seed"])
def test_mac_of_wrong_type_raises(method: str) -> None:
    cache = make()
    with pytest.raises(TypeError):
        getattr(cache, method)(IF, A4, "02:00:00:00:00:01", 0.0)


def test_forget_rejects_non_int() -> None:
    with pytest.raises(TypeError):
        make().forget("eth0")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        make().forget(True)


# ----------------------------------------------------------------------------- resolve / request
@pytest.mark.parametrize("address", [A4, A6], ids=["ipv4", "ipv6"])
def test_miss_queues_and_requests_once(address: bytes) -> None:
    cache = make()
    assert cache.resolve(IF, address, "d1", 10.0) is None
    assert cache.state(IF, address, 10.0) is NeighbourState.INCOMPLETE
    assert cache.get_timer() == 11.0
    assert cache.resolve(IF, address, "d2", 10.5) is None  # queued behind the same request
    assert cache.requests_to_send() == [NeighbourRequest(IF, address, 1, None)]
    assert cache.requests_to_send() == []  # drained
    assert cache.pending == 2
    assert cache.pending_for(IF, address) == 2
    assert cache.lookup(IF, address, 10.5) is None
    assert cache.stats["requests_sent"] == 1
    assert cache.get_timer() == 11.0  # the second resolve did not push the deadline


def test_retransmit_deadlines_and_failure_after_max_attempts() -> None:
    cache = make(retransmit_interval=0.25, max_attempts=3, failed_hold=2.0)
    cache.resolve(IF, A4, "d1", 100.0)
    cache.resolve(IF, A4, "d2", 100.1)
    steps: list[tuple[float, list[NeighbourRequest], list[ResolutionFailed[str]], float | None]] = [
        # (handle_timer at, requests then, failures, get_timer after)
        (100.0, [], [], 100.25),
        (100.2499, [], [], 100.25),  # early: nothing
        (100.25, [req(A4, 2)], [], 100.5),
        (100.5, [req(A4, 3)], [], 100.75),
        (100.75, [], [ResolutionFailed(IF, A4, ("d1", "d2"))], None),
        (101.0, [], [], None),
    ]
    assert cache.requests_to_send() == [req(A4, 1)]
    for at, requests, failures, timer in steps:
        assert cache.handle_timer(at) == failures, at
        assert cache.requests_to_send() == requests, at
        assert cache.get_timer() == timer, at
    assert cache.state(IF, A4, 101.0) is NeighbourState.FAILED
    assert cache.pending == 0
    assert cache.stats["resolution_failed"] == 1
    assert cache.stats["failed_items"] == 2
    assert cache.stats["requests_sent"] == 3


def test_late_timer_schedules_from_now() -> None:
    cache = make(retransmit_interval=1.0)
    cache.resolve(IF, A4, "d", 0.0)
    assert cache.handle_timer(5.0) == []  # the loop woke late
    assert cache.requests_to_send() == [req(A4, 2)]
    assert cache.get_timer() == 6.0


def test_one_attempt_fails_after_one_interval() -> None:
    cache = make(max_attempts=1, retransmit_interval=0.5)
    cache.resolve(IF, A4, "d", 0.0)
    assert cache.requests_to_send() == [req(A4, 1)]
    assert cache.handle_timer(0.5) == [ResolutionFailed(IF, A4, ("d",))]
    assert cache.requests_to_send() == []


def test_failure_withdraws_undrained_request() -> None:
    cache = make(max_attempts=2)
    cache.resolve(IF, A4, "d", 0.0)
    cache.handle_timer(1.0)  # attempt 2 queued, not drained
    assert cache.handle_timer(2.0) == [ResolutionFailed(IF, A4, ("d",))]
    assert cache.requests_to_send() == []


def test_several_failures_in_one_timer_in_deadline_order() -> None:
    cache = make(max_attempts=1)
    cache.resolve(IF, B4, "b", 0.2)
    cache.resolve(IF, A4, "a", 0.1)
    assert cache.handle_timer(10.0) == [
        ResolutionFailed(IF, A4, ("a",)),
        ResolutionFailed(IF, B4, ("b",)),
    ]


# ------------------------------------------------------------------------------------- replies
def test_reply_releases_fifo_and_makes_reachable() -> None:
    cache = make()
    for i in range(5):
        assert cache.resolve(IF, A4, f"d{i}", 0.0) is None
    cache.requests_to_send()
    assert cache.handle_reply(IF, A4, MAC1, 0.3) == ["d0", "d1", "d2", "d3", "d4"]
    assert cache.state(IF, A4, 0.3) is NeighbourState.REACHABLE
    assert cache.lookup(IF, A4, 0.3) == MAC1
    assert cache.resolve(IF, A4, "d5", 0.4) == MAC1
    assert cache.get_timer() is None
    assert cache.pending == 0
    assert cache.stats["replies_accepted"] == 1
    assert cache.handle_timer(100.0) == []  # the old retransmit deadline is gone


def test_reply_before_drain_withdraws_request() -> None:
    cache = make()
    cache.resolve(IF, A4, "d", 0.0)
    assert cache.handle_reply(IF, A4, MAC1, 0.0) == ["d"]
    assert cache.requests_to_send() == []


def test_first_reply_wins() -> None:
    cache = make()
    cache.resolve(IF, A4, "d", 0.0)
    assert cache.handle_reply(IF, A4, MAC1, 0.1) == ["d"]
    assert cache.handle_reply(IF, A4, MAC2, 0.2) == []
    assert cache.lookup(IF, A4, 0.2) == MAC1
    assert cache.stats["duplicate_reply"] == 1
    assert cache.stats["replies_accepted"] == 1


@pytest.mark.parametrize(
    ("setup", "ifindex", "address"),
    [
        ("empty", IF, A4),  # no entry at all (gratuitous ARP, a flood)
        ("incomplete", IF + 1, A4),  # asked on another interface
        ("incomplete", IF, B4),  # asked for another address
        ("stale", IF, A4),  # entry exists, no request outstanding
        ("failed", IF, A4),  # too late: already given up on
        ("expired", IF, A4),
    ],
)
def test_unsolicited_reply_changes_nothing(setup: str, ifindex: int, address: bytes) -> None:
    cache = make(reachable_time=10.0, stale_time=10.0, max_attempts=1, failed_hold=5.0)
    now = 0.0
    if setup == "incomplete":
        cache.resolve(IF, A4, "d", now)
    elif setup in ("stale", "expired"):
        reachable(cache)
        now = 15.0 if setup == "stale" else 25.0
    elif setup == "failed":
        cache.resolve(IF, A4, "d", now)
        assert cache.handle_timer(1.0) != []
        now = 2.0
    before = {
        (i, a): (cache.state(i, a, now), cache.lookup(i, a, now))
        for i in (IF, IF + 1)
        for a in (A4, B4)
    }
    length, timer = len(cache), cache.get_timer()
    assert cache.handle_reply(ifindex, address, MAC2, now) == []
    after = {
        (i, a): (cache.state(i, a, now), cache.lookup(i, a, now))
        for i in (IF, IF + 1)
        for a in (A4, B4)
    }
    assert after == before
    assert (len(cache), cache.get_timer()) == (length, timer)
    assert cache.stats["unsolicited"] == 1
    assert cache.stats["replies_accepted"] == (1 if setup in ("stale", "expired") else 0)


@pytest.mark.parametrize("mac", BAD_MACS, ids=lambda m: m.hex())
def test_bad_mac_reply_ignored(mac: bytes) -> None:
    cache = make()
    cache.resolve(IF, A4, "d", 0.0)
    assert cache.handle_reply(IF, A4, mac, 0.1) == []
    assert cache.stats["bad_mac"] == 1
    assert cache.state(IF, A4, 0.1) is NeighbourState.INCOMPLETE
    assert cache.handle_reply(IF, A4, MAC1, 0.2) == ["d"]  # the real answer still counts


@given(
    replies=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
            st.binary(min_size=6, max_size=6),
        ),
        max_size=200,
    )
)
def test_reply_flood_leaves_cache_unchanged(replies: list[tuple[int, bytes, bytes]]) -> None:
    cache = make(max_entries=4)
    reachable(cache, A4, MAC1)  # REACHABLE: later replies are not outstanding
    cache.resolve(IF, B4, "b", 0.0)  # INCOMPLETE on ifindex 2 (the flood uses other addresses)
    for ifindex, address, mac in replies:
        if (ifindex, address) == (IF, B4):
            continue
        assert cache.handle_reply(ifindex, address, mac, 1.0) == []
    assert len(cache) == 2
    assert cache.lookup(IF, A4, 1.0) == MAC1
    assert cache.state(IF, B4, 1.0) is NeighbourState.INCOMPLETE
    assert cache.pending == 1
    s = cache.stats
    assert s["unsolicited"] + s["duplicate_reply"] + s["bad_mac"] == len(
        [r for r in replies if r[:2] != (IF, B4)]
    )


# ----------------------------------------------------------------------- reachable, stale, probe
def test_reachable_then_stale_then_gone_at_exact_times() -> None:
    cache = make(reachable_time=30.0, stale_time=60.0)
    reachable(cache, now=100.0)
    table = [
        (129.999, NeighbourState.REACHABLE, MAC1),
        (130.0, NeighbourState.STALE, MAC1),
        (189.999, NeighbourState.STALE, MAC1),
        (190.0, None, None),
    ]
    for at, state, mac in table:
        assert cache.state(IF, A4, at) is state, at
        assert cache.lookup(IF, A4, at) == mac, at
    assert cache.get_timer() is None  # nothing to do for an idle entry


def test_stale_use_starts_unicast_probe_and_keeps_serving() -> None:
    cache = make(reachable_time=10.0, stale_time=100.0, retransmit_interval=1.0, max_attempts=2)
    reachable(cache)
    assert cache.resolve(IF, A4, "s1", 20.0) == MAC1  # STALE: used, probe starts
    assert cache.state(IF, A4, 20.0) is NeighbourState.PROBE
    assert cache.requests_to_send() == [req(A4, 1, MAC1)]
    assert cache.get_timer() == 21.0
    assert cache.resolve(IF, A4, "s2", 20.5) == MAC1  # still served, no second probe
    assert cache.lookup(IF, A4, 20.5) == MAC1
    assert cache.requests_to_send() == []
    assert cache.handle_timer(21.0) == []
    assert cache.requests_to_send() == [req(A4, 2, MAC1)]
    assert cache.pending == 0
    assert cache.stats["probes_started"] == 1
    # The neighbour answers from a new MAC: a solicited reply, so it is taken.
    assert cache.handle_reply(IF, A4, MAC2, 21.5) == []
    assert cache.state(IF, A4, 21.5) is NeighbourState.REACHABLE
    assert cache.lookup(IF, A4, 21.5) == MAC2
    assert cache.get_timer() is None


def test_probe_failure_reports_empty_failure_and_stops_serving() -> None:
    cache = make(reachable_time=10.0, max_attempts=2, failed_hold=3.0)
    reachable(cache)
    assert cache.resolve(IF, A4, "s", 15.0) == MAC1
    assert cache.requests_to_send() == [req(A4, 1, MAC1)]
    assert cache.handle_timer(16.0) == []
    assert cache.requests_to_send() == [req(A4, 2, MAC1)]
    assert cache.handle_timer(17.0) == [ResolutionFailed(IF, A4, ())]
    assert cache.requests_to_send() == []
    assert cache.lookup(IF, A4, 17.0) is None
    assert cache.state(IF, A4, 17.0) is NeighbourState.FAILED
    assert cache.stats["resolution_failed"] == 1
    assert cache.get_timer() is None


def test_expired_entry_is_resolved_afresh() -> None:
    cache = make(reachable_time=1.0, stale_time=1.0)
    reachable(cache)
    assert cache.resolve(IF, A4, "d", 2.0) is None
    assert cache.requests_to_send() == [req(A4, 1)]  # broadcast again, not a unicast probe
    assert len(cache) == 1
    assert cache.handle_reply(IF, A4, MAC2, 2.1) == ["d"]


def test_expired_entry_with_no_room_for_item_stays_idle() -> None:
    cache = make(reachable_time=1.0, stale_time=1.0, max_pending_total=1)
    reachable(cache, B4)
    cache.resolve(IF, A4, "a", 5.0)  # takes the only pending slot
    timer = cache.get_timer()
    assert cache.resolve(IF, B4, "b", 5.0) is None
    assert cache.stats["pending_overflow"] == 1
    assert cache.state(IF, B4, 5.0) is None
    assert cache.requests_to_send() == [req(A4, 1)]
    assert cache.get_timer() == timer


# --------------------------------------------------------------------------------- failed hold
def test_failed_hold_refuses_without_requests_and_reports_items() -> None:
    cache = make(max_attempts=1, retransmit_interval=1.0, failed_hold=2.0)
    cache.resolve(IF, A4, "d0", 0.0)
    assert cache.handle_timer(1.0) == [ResolutionFailed(IF, A4, ("d0",))]
    cache.requests_to_send()
    assert cache.resolve(IF, A4, "d1", 1.5) is None
    assert cache.resolve(IF, A4, "d2", 1.6) is None
    assert cache.requests_to_send() == []  # no request for a held address
    assert cache.get_timer() == 1.5  # reported as soon as possible
    assert cache.handle_timer(1.6) == [ResolutionFailed(IF, A4, ("d1", "d2"))]
    assert cache.stats["failed_hold"] == 2
    assert cache.get_timer() is None
    # At the end of the hold a send tries again.
    assert cache.state(IF, A4, 2.999) is NeighbourState.FAILED
    assert cache.state(IF, A4, 3.0) is None
    assert cache.resolve(IF, A4, "d3", 3.0) is None
    assert cache.requests_to_send() == [req(A4, 1)]
    assert cache.state(IF, A4, 3.0) is NeighbourState.INCOMPLETE


def test_zero_failed_hold_retries_at_once() -> None:
    cache = make(max_attempts=1, failed_hold=0.0)
    cache.resolve(IF, A4, "d0", 0.0)
    cache.handle_timer(1.0)
    cache.requests_to_send()
    assert cache.resolve(IF, A4, "d1", 1.0) is None
    assert cache.requests_to_send() == [req(A4, 1)]


def test_refused_item_still_reported_after_hold_ends() -> None:
    cache = make(max_attempts=1, failed_hold=1.0)
    cache.resolve(IF, A4, "d0", 0.0)
    cache.handle_timer(1.0)
    cache.resolve(IF, A4, "d1", 1.5)  # held
    assert cache.state(IF, A4, 5.0) is NeighbourState.FAILED  # items still to report
    assert cache.resolve(IF, A4, "d2", 5.0) is None  # joins them; no new request yet
    assert cache.handle_timer(5.0) == [ResolutionFailed(IF, A4, ("d1", "d2"))]
    assert cache.requests_to_send() == []


# ------------------------------------------------------------------------------------- bounds
def test_per_address_overflow_drops_newest() -> None:
    cache = make(max_pending_per_address=2)
    assert [cache.resolve(IF, A4, d, 0.0) for d in ("d0", "d1", "d2")] == [None] * 3
    assert cache.stats["pending_overflow"] == 1
    assert cache.pending_for(IF, A4) == 2
    assert cache.handle_reply(IF, A4, MAC1, 0.1) == ["d0", "d1"]


def test_total_overflow_refuses_new_resolution() -> None:
    cache = make(max_pending_total=2)
    cache.resolve(IF, A4, "a", 0.0)
    cache.resolve(IF, B4, "b", 0.0)
    assert cache.resolve(IF, C4, "c", 0.0) is None
    assert cache.resolve(IF, A4, "a2", 0.0) is None
    assert cache.stats["pending_overflow"] == 2
    assert cache.state(IF, C4, 0.0) is None  # no entry and no request for a dropped item
    assert [r.address for r in cache.requests_to_send()] == [A4, B4]
    assert cache.pending == 2


def test_eviction_is_lru_and_spares_pending() -> None:
    cache = make(max_entries=3)
    reachable(cache, A4)
    reachable(cache, B4, MAC2)
    cache.resolve(IF, C4, "c", 0.0)  # pending: never evicted
    assert cache.resolve(IF, A4, "use", 1.0) == MAC1  # A is now more recent than B
    new = bytes([198, 18, 0, 9])
    assert cache.resolve(IF, new, "n", 1.0) is None
    assert len(cache) == 3
    assert cache.stats["evicted"] == 1
    assert cache.lookup(IF, B4, 1.0) is None  # least recently used went
    assert cache.lookup(IF, A4, 1.0) == MAC1
    assert cache.state(IF, C4, 1.0) is NeighbourState.INCOMPLETE
    # lookup() does not refresh: B is gone, A untouched-by-lookup is now the LRU non-pending one.
    newer = bytes([198, 18, 0, 10])
    cache.lookup(IF, A4, 1.0)
    cache.seed(IF, newer, MAC2, 1.0)
    assert cache.lookup(IF, A4, 1.0) is None
    assert cache.stats["evicted"] == 2


def test_table_full_of_pending_refuses() -> None:
    cache = make(max_entries=2)
    cache.resolve(IF, A4, "a", 0.0)
    cache.resolve(IF, B4, "b", 0.0)
    assert cache.resolve(IF, C4, "c", 0.0) is None
    assert cache.seed(IF, C4, MAC1, 0.0) == []
    assert cache.stats["table_full"] == 2
    assert len(cache) == 2
    assert cache.state(IF, C4, 0.0) is None
    assert cache.stats["seeded"] == 0


def test_evicting_a_probe_withdraws_its_request() -> None:
    cache = make(max_entries=1, reachable_time=1.0)
    reachable(cache, A4)
    assert cache.resolve(IF, A4, "s", 2.0) == MAC1  # probe
    cache.resolve(IF, B4, "b", 2.0)  # evicts the probing entry
    assert cache.requests_to_send() == [req(B4, 1)]
    assert cache.get_timer() == 3.0
    assert cache.handle_timer(3.0) == []
    assert cache.requests_to_send() == [req(B4, 2)]


def test_timer_heap_stays_bounded() -> None:
    cache = make(reachable_time=1.0)
    reachable(cache, A4)
    for i in range(500):
        now = 2.0 * (i + 1)
        assert cache.resolve(IF, A4, "s", now) == MAC1  # probe: pushes a deadline
        assert cache.handle_reply(IF, A4, MAC1, now) == []  # cancels it
    # Cancelled deadlines are compacted away even when nobody asks for the timer in between.
    assert len(cache._heap) <= 2 * len(cache) + 65
    assert cache.get_timer() is None


# ----------------------------------------------------------------------------- seed and forget
def test_seed_new_entry_is_reachable() -> None:
    cache = make(reachable_time=5.0)
    assert cache.seed(IF, A4, MAC1, 0.0) == []
    assert cache.resolve(IF, A4, "d", 1.0) == MAC1
    assert cache.state(IF, A4, 5.0) is NeighbourState.STALE
    assert cache.stats["seeded"] == 1
    assert cache.requests_to_send() == []


@pytest.mark.parametrize("setup", ["incomplete", "probe", "held", "reachable"])
def test_seed_overrides_and_releases(setup: str) -> None:
    cache = make(reachable_time=1.0, max_attempts=1, failed_hold=10.0)
    expected: list[str] = []
    if setup == "incomplete":
        cache.resolve(IF, A4, "d0", 0.0)
        cache.resolve(IF, A4, "d1", 0.0)
        expected = ["d0", "d1"]
    elif setup == "probe":
        reachable(cache)
        cache.resolve(IF, A4, "s", 1.5)
    elif setup == "held":
        cache.resolve(IF, A4, "d0", 0.0)
        cache.handle_timer(1.0)
        cache.resolve(IF, A4, "d1", 1.5)
        expected = ["d1"]
    else:
        reachable(cache)
    assert cache.seed(IF, A4, MAC2, 1.5) == expected
    assert cache.lookup(IF, A4, 1.5) == MAC2
    assert cache.state(IF, A4, 1.5) is NeighbourState.REACHABLE
    assert cache.requests_to_send() == []  # an undrained request or probe is withdrawn
    assert cache.get_timer() is None
    assert cache.pending == 0


@pytest.mark.parametrize("mac", BAD_MACS, ids=lambda m: m.hex())
def test_seed_bad_mac_ignored(mac: bytes) -> None:
    cache = make()
    assert cache.seed(IF, A4, mac, 0.0) == []
    assert len(cache) == 0
    assert cache.stats["bad_mac"] == 1


def test_forget_one_interface() -> None:
    cache = make(max_attempts=1)
    cache.resolve(IF, A4, "a0", 0.0)
    cache.resolve(IF, A4, "a1", 0.0)
    reachable(cache, B4)
    cache.resolve(IF + 1, A4, "other", 0.0)
    assert cache.forget(IF) == [ResolutionFailed(IF, A4, ("a0", "a1"))]
    assert cache.requests_to_send() == [NeighbourRequest(IF + 1, A4, 1, None)]
    assert len(cache) == 1
    assert cache.lookup(IF, B4, 0.0) is None
    assert cache.stats["forgotten"] == 2
    assert cache.pending == 1
    assert cache.get_timer() == 1.0
    assert cache.handle_timer(1.0) == [ResolutionFailed(IF + 1, A4, ("other",))]


def test_forget_all() -> None:
    cache = make()
    cache.resolve(IF, A4, "a", 0.0)
    cache.resolve(IF + 1, B4, "b", 0.0)
    assert cache.forget() == [
        ResolutionFailed(IF, A4, ("a",)),
        ResolutionFailed(IF + 1, B4, ("b",)),
    ]
    assert len(cache) == 0
    assert cache.get_timer() is None
    assert cache.requests_to_send() == []
    assert cache.forget() == []


def test_stats_is_read_only_and_complete() -> None:
    cache = make()
    stats = cache.stats
    for name in (
        "requests_sent",
        "replies_accepted",
        "unsolicited",
        "pending_overflow",
        "resolution_failed",
        "evicted",
        "bad_mac",
        "table_full",
        "failed_hold",
    ):
        assert stats[name] == 0
    with pytest.raises(TypeError):
        stats["evicted"] = 1  # type: ignore[index]
    cache.resolve(IF, A4, "a", 0.0)
    cache.requests_to_send()
    assert stats["requests_sent"] == 1  # a live view


# ------------------------------------------------------------------------ model-based checking
KEYS = [(i, bytes([198, 18, 0, n])) for i in (1, 2) for n in (1, 2, 3)]
FLOOD_KEYS = [(1, bytes([198, 19, 0, 1])), (3, bytes([198, 18, 0, 1]))]
MACS = [MAC1, MAC2, bytes.fromhex("020000000003"), *BAD_MACS[:4]]
OUTSTANDING = (NeighbourState.INCOMPLETE, NeighbourState.PROBE)
USABLE = (NeighbourState.REACHABLE, NeighbourState.STALE, NeighbourState.PROBE)


class NeighbourMachine(RuleBasedStateMachine):
    """Drive a small cache at random and check it against a model of where each item went."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = NeighbourCache[int](
            max_entries=4,
            max_pending_per_address=3,
            max_pending_total=6,
            retransmit_interval=1.0,
            max_attempts=2,
            reachable_time=4.0,
            stale_time=4.0,
            failed_hold=1.5,
        )
        self.now = 0.0
        self.next_item = 0
        # item -> how it ended: "mac", "dropped", "released", "failed"; the rest wait in `queued`.
        self.outcome: dict[int, str] = {}
        self.queued: dict[tuple[int, bytes], list[int]] = {k: [] for k in KEYS}
        self.drained = 0

    def _snapshot(self) -> list[tuple[NeighbourState | None, bytes | None]]:
        keys = KEYS + FLOOD_KEYS
        return [(self.cache.state(*k, self.now), self.cache.lookup(*k, self.now)) for k in keys]

    def _end(self, items: list[int] | tuple[int, ...], how: str) -> None:
        for item in items:
            assert item not in self.outcome, f"item {item} ended twice"
            self.outcome[item] = how

    def _take(self, key: tuple[int, bytes], items: list[int] | tuple[int, ...], how: str) -> None:
        # Items leave a queue whole and in FIFO order.
        assert list(items) == self.queued[key], (key, items, self.queued[key])
        self.queued[key] = []
        self._end(items, how)

    @rule(dt=st.sampled_from([0.0, 0.25, 1.0, 1.5, 2.0, 4.0, 9.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def advance_to_timer(self) -> None:
        timer = self.cache.get_timer()
        if timer is not None and timer > self.now:
            self.now = timer

    @rule(key=st.sampled_from(KEYS))
    def resolve(self, key: tuple[int, bytes]) -> None:
        item = self.next_item
        self.next_item += 1
        before = self.cache.state(*key, self.now)
        mac_before = self.cache.lookup(*key, self.now)
        drops = self.cache.stats["pending_overflow"] + self.cache.stats["table_full"]
        mac = self.cache.resolve(*key, item, self.now)
        if mac is not None:
            assert before in USABLE
            assert mac == mac_before
            assert self.cache.state(*key, self.now) in (
                NeighbourState.REACHABLE,
                NeighbourState.PROBE,
            )
            self._end([item], "mac")
        elif self.cache.stats["pending_overflow"] + self.cache.stats["table_full"] == drops + 1:
            self._end([item], "dropped")
        else:
            assert before not in USABLE
            assert self.cache.state(*key, self.now) in (
                NeighbourState.INCOMPLETE,
                NeighbourState.FAILED,
            )
            self.queued[key].append(item)

    @rule(key=st.sampled_from(KEYS + FLOOD_KEYS), mac=st.sampled_from(MACS))
    def reply(self, key: tuple[int, bytes], mac: bytes) -> None:
        state = self.cache.state(*key, self.now)
        before, length = self._snapshot(), len(self.cache)
        released = self.cache.handle_reply(*key, mac, self.now)
        if state in OUTSTANDING and mac in MACS[:3]:
            self._take(key, released, "released")
            assert self.cache.lookup(*key, self.now) == mac
            assert self.cache.state(*key, self.now) is NeighbourState.REACHABLE
        else:
            assert released == []
            assert self._snapshot() == before
            assert len(self.cache) == length

    @rule(key=st.sampled_from(KEYS), mac=st.sampled_from(MACS))
    def seed(self, key: tuple[int, bytes], mac: bytes) -> None:
        before = self._snapshot()
        released = self.cache.seed(*key, mac, self.now)
        if self.cache.lookup(*key, self.now) == mac:
            self._take(key, released, "released")
        else:  # bad MAC, or no room in the table: nothing changed
            assert released == []
            assert self._snapshot() == before

    @rule()
    def timer(self) -> None:
        for failed in self.cache.handle_timer(self.now):
            key = (failed.ifindex, failed.address)
            self._take(key, failed.dropped, "failed")
            # FAILED, or already past its hold when items refused during the hold were reported.
            assert self.cache.state(*key, self.now) in (NeighbourState.FAILED, None)
            assert self.cache.lookup(*key, self.now) is None

    @rule()
    def drain(self) -> None:
        requests = self.cache.requests_to_send()
        self.drained += len(requests)
        assert len({(r.ifindex, r.address) for r in requests}) == len(requests)
        for r in requests:
            state = self.cache.state(r.ifindex, r.address, self.now)
            assert state in OUTSTANDING
            assert 1 <= r.attempt <= self.cache.max_attempts
            if state is NeighbourState.PROBE:
                assert r.unicast_mac == self.cache.lookup(r.ifindex, r.address, self.now)
            else:
                assert r.unicast_mac is None
        assert self.cache.stats["requests_sent"] == self.drained

    @rule(ifindex=st.sampled_from([None, 1, 2]))
    def forget(self, ifindex: int | None) -> None:
        for failed in self.cache.forget(ifindex):
            assert ifindex is None or failed.ifindex == ifindex
            self._take((failed.ifindex, failed.address), failed.dropped, "failed")
        for key in KEYS:
            if ifindex is None or key[0] == ifindex:
                assert self.cache.state(*key, self.now) is None
                assert self.queued[key] == []

    @invariant()
    def bounded(self) -> None:
        cache = self.cache
        assert len(cache) <= cache.max_entries
        assert cache.pending <= cache.max_pending_total
        assert cache.pending == sum(len(q) for q in self.queued.values())
        for key, items in self.queued.items():
            assert cache.pending_for(*key) == len(items) <= cache.max_pending_per_address

    @invariant()
    def accounted(self) -> None:
        queued = [i for q in self.queued.values() for i in q]
        assert len(queued) == len(set(queued))
        assert not set(queued) & self.outcome.keys()
        assert len(queued) + len(self.outcome) == self.next_item

    @invariant()
    def timer_iff_work(self) -> None:
        probing = any(self.cache.state(*k, self.now) is NeighbourState.PROBE for k in KEYS)
        busy = self.cache.pending > 0 or probing
        assert (self.cache.get_timer() is None) == (not busy)

    def teardown(self) -> None:
        # Liveness: with no more sends, every queued item ends (released or failed) in bounded time.
        for _ in range(50):
            timer = self.cache.get_timer()
            if timer is None:
                break
            self.now = max(self.now, timer)
            self.timer()
            self.drain()
        assert self.cache.get_timer() is None
        assert all(q == [] for q in self.queued.values())
        assert len(self.outcome) == self.next_item


TestNeighbourMachine = NeighbourMachine.TestCase


def test_reachable_is_the_side_effect_free_fast_path() -> None:
    cache: NeighbourCache[str] = NeighbourCache(reachable_time=30.0, stale_time=60.0)
    ip = bytes([198, 18, 0, 2])
    mac = bytes.fromhex("020000000002")
    assert cache.reachable(2, ip, 0.0) is None  # unknown
    assert cache.resolve(2, ip, "first", 0.0) is None
    assert cache.reachable(2, ip, 0.1) is None  # INCOMPLETE
    assert cache.handle_reply(2, ip, mac, 0.5) == ["first"]
    assert cache.reachable(2, ip, 30.4) == mac  # REACHABLE until confirmed + reachable_time
    assert cache.reachable(2, ip, 30.5) is None  # STALE: resolve() must see it (it re-probes)
    assert cache.reachable(3, ip, 1.0) is None  # another interface
    assert not cache.has_requests


# ------------------------------------------------------------------------------------- claims
MAC3 = bytes.fromhex("020000000003")


def test_a_claim_unanswered_by_the_old_mac_is_learnt_stale() -> None:
    """A neighbour's request says it moved to MAC2: the old MAC is re-probed by unicast; three
    probes unanswered (3 s), MAC2 is taken, STALE, and its first use re-probes MAC2 in turn."""
    c = make()
    reachable(c)
    c.handle_claim(IF, A4, MAC2, 1.0)
    assert c.requests_to_send() == [req(A4, 1, MAC1)]
    assert c.lookup(IF, A4, 1.5) == MAC1  # the old MAC is served while it is verified
    for attempt, t in ((2, 2.0), (3, 3.0)):
        assert c.handle_timer(t) == []
        assert c.requests_to_send() == [req(A4, attempt, MAC1)]
    assert c.handle_timer(4.0) == []  # learnt, not failed: no datagram was waiting
    assert c.state(IF, A4, 4.0) is NeighbourState.STALE
    assert c.resolve(IF, A4, "next", 4.0) == MAC2
    assert c.requests_to_send() == [req(A4, 1, MAC2)]
    assert (c.stats["claims_verified"], c.stats["claims_learned"]) == (1, 1)


def test_a_claim_refuted_by_the_old_mac_changes_nothing() -> None:
    c = make()
    reachable(c)
    c.handle_claim(IF, A4, MAC2, 1.0)
    c.requests_to_send()
    # Neither the claimant nor a third MAC can answer the probe of the old one.
    assert c.handle_reply(IF, A4, MAC2, 1.1) == []
    assert c.handle_reply(IF, A4, MAC3, 1.2) == []
    assert c.state(IF, A4, 1.2) is NeighbourState.PROBE
    assert c.handle_reply(IF, A4, MAC1, 1.3) == []
    assert c.state(IF, A4, 1.3) is NeighbourState.REACHABLE
    assert c.lookup(IF, A4, 1.3) == MAC1
    for t in (2.0, 3.0, 5.0):
        assert c.handle_timer(t) == []
    assert c.lookup(IF, A4, 5.0) == MAC1
    assert c.stats["claims_refuted"] == 1
    assert c.stats["claims_learned"] == 0
    assert c.stats["unsolicited"] == 2


def test_claims_that_are_ignored() -> None:
    c = make()
    c.handle_claim(IF, A4, MAC2, 0.0)  # no entry: claims never create one
    assert len(c) == 0
    assert c.resolve(IF, B4, "waiting", 0.0) is None
    c.handle_claim(IF, B4, MAC2, 0.0)  # in resolution: the reply decides
    reachable(c, C4)
    c.handle_claim(IF, C4, MAC1, 0.5)  # the MAC it has
    assert c.stats["claims_ignored"] == 3
    c.handle_claim(IF, C4, MAC2, 1.0)
    c.handle_claim(IF, C4, MAC3, 1.1)  # a second claim during the verification: the first wins
    assert c.stats["claims_ignored"] == 4
    for t in (2.0, 3.0, 4.0):
        c.handle_timer(t)
    assert c.lookup(IF, C4, 4.0) == MAC2
    for mac in BAD_MACS:
        c.handle_claim(IF, C4, mac, 5.0)
    assert c.stats["bad_mac"] == len(BAD_MACS)
    assert c.stats["claims_verified"] == 1


def test_a_claim_during_a_stale_reprobe_joins_it() -> None:
    c = make(reachable_time=1.0)
    reachable(c)
    assert c.resolve(IF, A4, "x", 1.5) == MAC1  # STALE in use: re-probed
    assert c.requests_to_send() == [req(A4, 1, MAC1)]
    c.handle_claim(IF, A4, MAC2, 1.6)
    assert c.requests_to_send() == []  # the probe under way serves the claim too
    for t in (2.5, 3.5, 4.5):
        c.handle_timer(t)
    assert c.lookup(IF, A4, 4.5) == MAC2
