"""Which datapath runs: the compiled one (:mod:`rawtransport._datapath`) or the pure-Python reference.

The C extension is built by ``pip install`` where a compiler and the Python headers exist. It
accelerates the per-frame work of :mod:`rawtransport.packet_fast` and gives the same results (checked
by ``tests/test_datapath.py``); the pure-Python code stays the reference and runs when:

- the environment variable ``RAWTRANSPORT_PURE`` is set to anything but ``0`` or the empty string
  (read once, at import), or
- the extension was not built: then importing rawtransport warns once (``RuntimeWarning``).

:data:`DATAPATH` names the path in use; ``python -m rawtransport doctor``, every transport's
``get_extra_info("stats")["datapath"]`` and the bench report show it.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

from rawtransport.packet_types import UdpDatagram

__all__ = ["ACCEL", "DATAPATH", "PURE_ENV"]

#: The environment variable that forces the pure-Python datapath.
PURE_ENV = "RAWTRANSPORT_PURE"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"pure ({PURE_ENV} is set)"
    try:
        from rawtransport import _datapath
    except ImportError as exc:
        warnings.warn(
            "rawtransport: the compiled datapath is not built, running the pure-Python one "
            f"(slower; reinstall with a C compiler and the Python headers): {exc}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, "pure (compiled datapath not built)"
    _datapath.init(UdpDatagram)
    return _datapath, "compiled"


#: The compiled module, or None when the pure-Python path runs.
ACCEL: ModuleType | None
#: ``"compiled"``, or ``"pure (why)"``.
DATAPATH: str
ACCEL, DATAPATH = _load()
