"""tasks/decide.py: the path decision shared by `etl run` and `etl plan` (pure functions)."""
from __future__ import annotations

import pytest

from tasks.decide import analytics_path, replica_path

WHY = "incremental on SecDateTEdit (any of them advanced)"


@pytest.mark.parametrize("kw, path, why_start, drift", [
    (dict(mode="full", why="mode: full"), "full", "mode: full", False),
    (dict(full_refresh=True), "full", "full refresh requested", False),
    (dict(has_state=False), "full", "first run: full refresh, then incremental", False),
    (dict(replica_live=False), "full", "first run", False),
    (dict(drift_added=True), "full", "column added in the source", True),
    (dict(drift_widened=True), "incremental", "incremental on", True),
    (dict(), "incremental", "incremental on", False),
])
def test_replica_path(kw, path, why_start, drift) -> None:
    args = dict(mode="incremental", why=WHY, full_refresh=False, has_state=True, replica_live=True)
    args.update(kw)
    got = replica_path(**args)
    assert (got.path, got.why.startswith(why_start), got.apply_drift) == (path, True, drift)


@pytest.mark.parametrize("kw, path", [
    (dict(), "incremental"),
    (dict(mode="full"), "full"),
    (dict(full_refresh=True), "full"),
    (dict(live=False), "full"),
    (dict(state_generation=None), "full"),
    (dict(replica_generation=3), "full"),  # the replica was reloaded since analytics last loaded it
])
def test_analytics_path(kw, path) -> None:
    args = dict(mode="incremental", full_refresh=False, live=True, state_generation=2, replica_generation=2)
    args.update(kw)
    assert analytics_path(**args) == path
