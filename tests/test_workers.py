"""The worker threads that keep slow kernel operations off the event loop (rawtransport.workers)."""

from __future__ import annotations

import functools
import logging
import threading

import pytest

from rawtransport import workers


def test_run_in_new_thread_returns_result_from_another_thread() -> None:
    here = threading.get_ident()
    future = workers.run_in_new_thread(threading.get_ident)
    assert future.result(timeout=10) != here


def test_run_in_new_thread_carries_the_exception() -> None:
    def fail() -> None:
        raise PermissionError(1, "no CAP_NET_RAW")

    future = workers.run_in_new_thread(fail)
    with pytest.raises(PermissionError):
        future.result(timeout=10)


def test_closes_run_in_order_off_the_calling_thread() -> None:
    here = threading.get_ident()
    done: list[tuple[int, int]] = []
    gate = threading.Event()

    def hold() -> None:
        gate.wait(10)

    def record(i: int) -> None:
        done.append((i, threading.get_ident()))

    workers.close_in_background(hold)
    for i in range(5):
        workers.close_in_background(functools.partial(record, i))
    assert workers.pending() >= 5  # held behind the gate
    gate.set()
    assert workers.wait_closed(timeout=10)
    assert [i for i, _ in done] == [0, 1, 2, 3, 4]
    assert all(tid != here for _, tid in done)
    assert workers.pending() == 0


def test_a_failing_close_is_logged_and_the_worker_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    ran = threading.Event()

    def broken() -> None:
        raise RuntimeError("boom")

    def quiet_oserror() -> None:
        raise OSError(9, "Bad file descriptor")

    with caplog.at_level(logging.ERROR, logger="rawtransport"):
        workers.close_in_background(broken)
        workers.close_in_background(quiet_oserror)
        workers.close_in_background(ran.set)
        assert workers.wait_closed(timeout=10)
    assert ran.is_set()
    assert [r.getMessage() for r in caplog.records] == ["rawtransport: background close failed"]
