"""The bench's arithmetic: percentiles, medians, spreads, ratios and the kernel-text parsers."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawtransport.bench import stats

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0], 50, 1.0),
        ([1.0, 2.0], 50, 1.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([1.0, 2.0, 3.0, 4.0], 25, 1.75),  # rank 0.75: between 1 and 2
        ([10.0, 20.0, 30.0, 40.0, 50.0], 90, 46.0),  # rank 3.6
        (list(range(1, 1001)), 99.9, 999.001),  # rank 998.001
    ],
)
def test_percentile_table(values: list[float], q: float, expected: float) -> None:
    assert stats.percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize("q", [-0.1, 100.1, float("nan")])
def test_percentile_rejects_bad_rank(q: float) -> None:
    with pytest.raises(ValueError, match="rank"):
        stats.percentile([1.0, 2.0], q)


def test_percentile_and_median_reject_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        stats.percentile([], 50)
    with pytest.raises(ValueError, match="empty"):
        stats.median([])


@given(st.lists(finite, min_size=2, max_size=200))
def test_percentiles_match_statistics_inclusive_method(values: list[float]) -> None:
    """Type-7 interpolation is what ``statistics.quantiles(method="inclusive")`` computes."""
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    for q in (1, 25, 50, 90, 99):
        assert stats.percentile(ordered, q) == pytest.approx(cuts[q - 1], rel=1e-9, abs=1e-6)


@given(st.lists(finite, min_size=1, max_size=100), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotone_and_bounded(values: list[float], q1: float, q2: float) -> None:
    ordered = sorted(values)
    lo, hi = sorted((q1, q2))
    a, b = stats.percentile(ordered, lo), stats.percentile(ordered, hi)
    assert ordered[0] - 1e-6 <= a <= b + 1e-6 <= ordered[-1] + 2e-6


@given(st.lists(finite, min_size=1, max_size=100))
def test_median_matches_statistics(values: list[float]) -> None:
    assert stats.median(values) == pytest.approx(statistics.median(values), rel=1e-9, abs=1e-6)


def test_spread_ignores_missing_and_nan() -> None:
    s = stats.spread([3.0, None, 1.0, float("nan"), 2.0])
    assert s == stats.Spread(median=2.0, low=1.0, high=3.0, n=3)
    assert s.as_dict() == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert stats.spread([None, float("nan")]) is None
    assert stats.spread([]) is None


def test_spread_of_even_count_is_midpoint() -> None:
    assert stats.spread([4.0, 1.0, 3.0, 2.0]) == stats.Spread(2.5, 1.0, 4.0, 4)


def test_ratio() -> None:
    assert stats.ratio(50.0, 100.0) == 0.5
    assert stats.ratio(None, 1.0) is None
    assert stats.ratio(1.0, None) is None
    assert stats.ratio(1.0, 0.0) is None


def test_summarize_rtt_in_microseconds() -> None:
    samples = [i * 1000 for i in range(1, 1001)]  # 1 .. 1000 µs
    s = stats.summarize_rtt(reversed(samples))
    assert s["n"] == 1000
    assert s["min_us"] == 1.0
    assert s["max_us"] == 1000.0
    assert s["p50_us"] == pytest.approx(500.5)
    assert s["p99_us"] == pytest.approx(990.01)
    assert s["p999_us"] == pytest.approx(999.001)
    assert s["mean_us"] == pytest.approx(500.5)
    with pytest.raises(ValueError, match="no RTT samples"):
        stats.summarize_rtt([])


PROC_STAT_1 = """\
cpu  100 0 50 1000 10 0 5 0 0 0
cpu0 60 0 30 400 5 0 5 0 0 0
cpu1 40 0 20 600 5 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""
PROC_STAT_2 = """\
cpu  200 0 100 1100 10 0 15 0 0 0
cpu0 140 0 50 400 5 0 15 0 0 0
cpu1 60 0 50 700 5 0 0 0 0 0
intr 12346 0 0
"""


def test_proc_stat_busy_fractions() -> None:
    before, after = stats.parse_proc_stat(PROC_STAT_1), stats.parse_proc_stat(PROC_STAT_2)
    assert before["cpu0"] == stats.CpuTimes(busy=95, total=500)
    busy = stats.busy_fractions(before, after)
    # cpu0: +80 user +20 system +10 softirq, no idle: fully busy. cpu1: +20 +30 busy, +100 idle.
    assert busy["cpu0"] == pytest.approx(1.0)
    assert busy["cpu1"] == pytest.approx(50 / 150)
    assert set(busy) == {"cpu", "cpu0", "cpu1"}


def test_busy_fractions_skip_cpus_without_ticks_or_history() -> None:
    before = {"cpu0": stats.CpuTimes(10, 100)}
    after = {"cpu0": stats.CpuTimes(10, 100), "cpu1": stats.CpuTimes(5, 50)}
    assert stats.busy_fractions(before, after) == {}


SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 1234
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
Udp: 100 2 7 50 5 0
UdpLite: InDatagrams NoPorts
UdpLite: 0 0
"""
SNMP6 = """\
Ip6InReceives                   	12
Udp6InDatagrams                 	40
Udp6RcvbufErrors                	3
"""


def test_parse_snmp_and_snmp6() -> None:
    counters = stats.parse_snmp(SNMP)
    assert counters["Udp.RcvbufErrors"] == 5
    assert counters["Udp.InErrors"] == 7
    assert counters["Ip.InReceives"] == 1234
    assert "UdpLite.NoPorts" in counters
    assert stats.parse_snmp(SNMP6)["Udp6RcvbufErrors"] == 3


# A real `strace -c -f` summary (strace 6.x): the errors column is blank on most rows.
STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 45.10    0.004512           2      2000           recvfrom
 40.00    0.004001           2      2000           sendto
 14.00    0.001400           0      2063           epoll_wait
  0.90    0.000090           9        10         2 futex
------ ----------- ----------- --------- --------- ----------------
100.00    0.010003           1      6073         2 total
"""


def test_parse_strace_summary() -> None:
    calls = stats.parse_strace_summary(STRACE)
    assert calls == {
        "recvfrom": 2000,
        "sendto": 2000,
        "epoll_wait": 2063,
        "futex": 10,
        "total": 6073,
    }


def test_parse_strace_summary_without_total_sums_rows() -> None:
    text = "\n".join(STRACE.splitlines()[:4]) + "\nstrace: Process 7 detached\n"
    assert stats.parse_strace_summary(text) == {"recvfrom": 2000, "sendto": 2000, "total": 4000}
