"""Fixtures for the network tests: every test here is ``netns`` and gets fresh namespaces.

Tests in this directory build namespaces and veth pairs (see ``tests/netns.py``). They are marked
``netns`` automatically and skipped without the privileges for it; ``tests/conftest.py`` turns such
a skip into a failure under ``CI=true``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import VethPair, have_netns_privileges, veth_pair

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/net ``netns``; skip them all when namespaces are out of reach."""
    del config
    ours = [item for item in items if _HERE in item.path.parents]
    if not ours:
        return
    skip = None
    if not have_netns_privileges():
        skip = pytest.mark.skip(
            reason="needs root (CAP_NET_ADMIN + CAP_NET_RAW), iproute2 and network namespaces"
        )
    for item in ours:
        item.add_marker(pytest.mark.netns)
        if skip is not None:
            item.add_marker(skip)


@pytest.fixture
def veth(request: pytest.FixtureRequest) -> Iterator[VethPair]:
    """A fresh veth pair between two new namespaces, deleted (with its peers) at teardown."""
    tag = "".join(c for c in request.node.name if c.isalnum())[:16]
    with veth_pair(tag) as pair:
        yield pair
