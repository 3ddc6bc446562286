"""``python -m rawtransport doctor`` inside a network namespace (issue 13, item 4).

The ``net.core.busy_poll``/``busy_read`` sysctls exist in the initial namespace only: inside any
other, doctor must not report a kernel without busy polling.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.netns import VethPair

ROOT = Path(__file__).resolve().parents[2]


def test_doctor_in_a_namespace_sees_busy_polling(veth: VethPair) -> None:
    res = subprocess.run(
        ["ip", "netns", "exec", veth.ns_a, sys.executable, "-m", "rawtransport.doctor"],
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert "Traceback" not in res.stderr + res.stdout
    assert res.returncode == 0, res.stdout + res.stderr
    busy = next(line for line in res.stdout.splitlines() if "busy-poll" in line)
    assert busy.startswith("[ok  ]"), busy
    assert "not visible in this network namespace" in busy
