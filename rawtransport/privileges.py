"""Giving up the raw path's privileges once its sockets are open: :func:`drop_privileges`.

``CAP_NET_RAW`` is checked when a packet socket is created (``packet_create()``), ``CAP_NET_ADMIN``
when the ``nft`` child creates a ``kernel_bypass`` table: a program can open its endpoints, then
drop both, and its open endpoints keep working (as a daemon binds port 53, then drops root). What
needs a new packet socket afterwards (a new stack, a ``reuse_port`` endpoint, a first send out of
another interface) fails with ``EPERM``; a new ``kernel_bypass`` endpoint with an ``NftError``.

Capabilities belong to a thread (``capset(2)``): the calling thread's sets are cleared, and the
threads it starts later inherit that; a thread started before keeps its own. Call it from the
thread that runs the event loop, before starting others. The ``nft`` children (one per
``kernel_bypass`` endpoint) hold ``CAP_NET_ADMIN`` in processes of their own: they are ended, and
their tables with them, so that no process of the program keeps what it dropped (those endpoints
go on without the bypass, their datagrams through the kernel's input again: slower, never wrong).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable

from rawtransport import nft

__all__ = ["CAP_NET_ADMIN", "CAP_NET_RAW", "drop_privileges"]

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
# linux/capability.h: version 3, two 32-bit words per set; linux/prctl.h.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_LOWER = 3
_CAP_SETPCAP = 8

_libc = ctypes.CDLL(None, use_errno=True)


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _check(result: int) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def drop_privileges(capabilities: Iterable[int] = (CAP_NET_RAW, CAP_NET_ADMIN)) -> None:
    """Drop ``capabilities`` (default: those the raw path uses) for good; see the module docstring.

    They leave the calling thread's effective, permitted, inheritable and ambient sets, and its
    bounding set when it holds ``CAP_SETPCAP`` (so that no later ``execve()`` of a privileged
    program regains them), and every ``kernel_bypass`` table's ``nft`` child is ended. Raises
    ``ValueError`` for a number that is no capability, ``OSError`` if the kernel refuses.
    """
    caps = list(capabilities)
    for cap in caps:
        if not isinstance(cap, int) or isinstance(cap, bool) or not 0 <= cap < 64:
            raise ValueError(f"not a capability number: {cap!r}")
    caps = sorted(set(caps))
    nft.close_all()
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    _check(_libc.capget(ctypes.byref(header), data))
    held_setpcap = bool(data[0].effective & (1 << _CAP_SETPCAP))
    for cap in caps:
        word, bit = divmod(cap, 32)
        mask = ~(1 << bit) & 0xFFFFFFFF
        data[word].effective &= mask
        data[word].permitted &= mask
        data[word].inheritable &= mask
    for cap in caps:
        # capset() below would clear it from the ambient set too (cap_capset(): ambient must stay
        # within permitted and inheritable); lowered first all the same, by its own call.
        lowered = _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_LOWER, cap, 0, 0)
        if lowered != 0 and ctypes.get_errno() != errno.EINVAL:  # EINVAL: no ambient sets
            _check(lowered)
        if held_setpcap:
            _check(_libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0))
    _check(_libc.capset(ctypes.byref(header), data))
