"""``drop_privileges()`` argument checks (the drop itself: tests/net/test_privileges.py)."""

from __future__ import annotations

import pytest

from rawtransport import drop_privileges


@pytest.mark.parametrize("bad", [[64], [-1], [True], ["net_raw"]])
def test_a_number_that_is_no_capability_is_refused_before_anything_is_dropped(
    bad: list[object],
) -> None:
    with pytest.raises(ValueError, match="not a capability number"):
        drop_privileges(bad)  # type: ignore[arg-type]
