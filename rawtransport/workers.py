"""Kernel operations that wait, run off the event-loop thread: opening and closing packet sockets.

Closing an ``AF_PACKET`` socket waits in the kernel: ``packet_release()`` unhooks the socket from
the device and calls ``synchronize_net()`` (an RCU grace period), measured at 7–24 ms per socket on
the project's 2-core machines. Run on the loop thread that time stalls every other task, so an
endpoint hands its packet sockets' ``close`` to :func:`close_in_background`: one daemon worker
thread runs them in order. ``socket.close()`` releases the GIL in the system call, so the loop goes on
meanwhile. Nothing else is deferred: the guard socket (which holds the port) and the nftables rule of
``kernel_bypass`` still go synchronously, so the port is free as soon as ``close()`` returns.

:func:`wait_closed` waits for the queue to drain; it runs at interpreter exit too.

Opening waits too (``setsockopt(PACKET_RX_RING)``, 7–16 ms): :func:`run_in_new_thread` runs the
endpoint's setup in a thread of its own. A new thread, not a pooled one: Linux capabilities and
the network namespace (``setns()``) are per thread, and a new thread inherits its creator's, so the
setup runs with the loop thread's privileges in the loop thread's namespace. A program that dropped
``CAP_NET_RAW`` after opening an endpoint still gets ``PermissionError`` for the next one
(tests/net/test_faults.py).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["close_in_background", "pending", "run_in_new_thread", "wait_closed"]

_T = TypeVar("_T")

_log = logging.getLogger("rawtransport")


class _Closer:
    """One worker thread and its queue; the thread starts on first use."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.idle = threading.Condition(threading.Lock())
        self.pending = 0
        self.worker: threading.Thread | None = None

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                job()
            except OSError:
                pass  # a close that fails leaves nothing to clean up (EBADF)
            except Exception:
                _log.exception("rawtransport: background close failed")
            with self.idle:
                self.pending -= 1
                if self.pending == 0:
                    self.idle.notify_all()

    def submit(self, close: Callable[[], None]) -> None:
        with self.idle:
            self.pending += 1
            if self.worker is None or not self.worker.is_alive():
                self.worker = threading.Thread(
                    target=self.run, name="rawtransport-closer", daemon=True
                )
                self.worker.start()
        self.jobs.put(close)


_closer = _Closer()


def close_in_background(close: Callable[[], None]) -> None:
    """Run ``close`` (a socket's or receiver's ``close``) on the closer thread, after earlier ones."""
    _closer.submit(close)


def pending() -> int:
    """Closes queued or running."""
    with _closer.idle:
        return _closer.pending


def wait_closed(timeout: float | None = None) -> bool:
    """Wait until every queued close has run; False if ``timeout`` (seconds) passed first."""
    with _closer.idle:
        return _closer.idle.wait_for(lambda: _closer.pending == 0, timeout)


# One setup at a time: each holds the GIL for its Python part (netlink dumps, the filter), and many
# at once would starve the loop thread of it; waiting on this lock does not hold the GIL.
_one_open_at_a_time = threading.Lock()


def run_in_new_thread(fn: Callable[[], _T]) -> concurrent.futures.Future[_T]:
    """Start ``fn`` in a new daemon thread (one such ``fn`` runs at a time); its result (or
    exception) arrives in the future."""
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            with _one_open_at_a_time:
                result = fn()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name="rawtransport-open", daemon=True).start()
    return future


atexit.register(wait_closed, 5.0)
