"""``python -m rawtransport doctor``: findings, JSON output, and no traceback without privileges."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rawtransport import doctor

ROOT = Path(__file__).resolve().parents[1]


def test_checks_cover_every_topic() -> None:
    checks = doctor.run_checks()
    names = {c.name.split()[0] for c in checks}
    assert {"CAP_NET_RAW", "CAP_NET_ADMIN", "kernel", "TPACKET", "nftables", "busy-poll"} <= names
    assert all(c.status in ("ok", "warn", "missing") for c in checks)
    # Anything not fine says what to do about it.
    assert all(c.advice for c in checks if c.status == "missing")


def test_kernel_version_parsing() -> None:
    assert doctor._kernel_tuple("6.18.44-fc-v769") == (6, 18)
    assert doctor._kernel_tuple("4.19.0") == (4, 19)
    assert doctor._kernel_tuple("weird") == (0, 0)


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code = doctor.main(["--json"])
    data = json.loads(capsys.readouterr().out)
    raw = next(c for c in data["checks"] if c["name"] == "CAP_NET_RAW")
    assert data["usable"] is (raw["status"] == "ok")
    assert code == (0 if data["usable"] else 1)


@pytest.mark.parametrize(("known", "status"), [(True, "ok"), (False, "missing")])
def test_busy_poll_sysctls_absent(
    monkeypatch: pytest.MonkeyPatch, known: bool, status: str
) -> None:
    """Outside the initial network namespace the sysctls are absent: the socket option tells a
    kernel that busy-polls from one that cannot."""
    monkeypatch.setattr(doctor, "_read", lambda path: None)
    monkeypatch.setattr(doctor, "_so_busy_poll_known", lambda: known)
    (check,) = doctor.check_busy_poll()
    assert check.status == status
    assert ("CONFIG_NET_RX_BUSY_POLL" in check.advice) is (not known)


def test_so_busy_poll_probe_matches_this_kernel() -> None:
    # A kernel that shows the sysctl busy-polls and knows the option.
    if doctor._read("/proc/sys/net/core/busy_poll") is not None:
        assert doctor._so_busy_poll_known()


def test_grant_advice_keeps_the_user() -> None:
    """setpriv without --reuid would leave the program running as root."""
    assert "--reuid=" in doctor._GRANT_RAW
    assert "--init-groups" in doctor._GRANT_RAW


def test_a_failing_check_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> list[doctor.Check]:
        raise RuntimeError("odd machine")

    monkeypatch.setattr(doctor, "check_busy_poll", boom)
    checks = doctor.run_checks()
    assert any(c.name == "busy_poll" and "odd machine" in c.value for c in checks)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_unprivileged_run_explains_instead_of_crashing(tmp_path: Path) -> None:
    """As nobody with no capabilities: a clear CAP_NET_RAW finding, exit 1, no traceback."""
    if not os.access(sys.executable, os.X_OK):  # pragma: no cover - odd installs
        pytest.skip("python not executable")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         "--bounding-set=-all", sys.executable, "-m", "rawtransport.doctor"],
        check=False, capture_output=True, text=True, timeout=60, env=env, cwd="/",
    )  # fmt: skip
    assert "Traceback" not in res.stderr + res.stdout
    assert res.returncode == 1, res.stderr
    assert "[MISS] CAP_NET_RAW: AF_PACKET socket refused" in res.stdout
    assert "grant CAP_NET_RAW" in res.stdout
    assert "cannot run here yet" in res.stdout
