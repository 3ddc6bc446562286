"""Shared test configuration: hypothesis profiles and the CI rule that privileged tests never skip."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile(
    "ci",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI=true, a privileged (``netns``) test that skips is a failure: green must mean it ran."""
    report = yield
    if IN_CI and report.skipped and item.get_closest_marker("netns") is not None:
        report.outcome = "failed"
        report.longrepr = f"privileged test skipped under CI=true: {report.longrepr!r}"
    return report
