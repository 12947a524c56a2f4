"""Which path a table takes this run, decided once: `etl run` (tasks/sync.py) and `etl plan`
(tasks/planning.py) both ask these functions, so the plan cannot drift from what a run does.

Pure functions over facts gathered elsewhere (the table's config, its effective mode, whether the
replica and analytics hold a copy and state, the drift found between source and replica).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Path = Literal["full", "incremental", "binlog", "checksum"]


@dataclass(frozen=True)
class ReplicaPath:
    """How the replica phase moves a table: `full` reload or `incremental` merge, and why."""

    path: Path
    why: str
    apply_drift: bool = False  # ALTER the replica in place first (added or widened columns)


def replica_path(*, mode: Path, why: str, full_refresh: bool, has_state: bool, replica_live: bool,
                 drift_added: bool = False, drift_widened: bool = False) -> ReplicaPath:
    """The replica phase's path. `mode`/`why` come from the table's effective mode; drift problems
    (a dropped or retyped column) are refused before this is asked."""
    if mode == "full":
        return ReplicaPath("full", why)
    if full_refresh:
        return ReplicaPath("full", "full refresh requested (--full-refresh); state reset, old state kept in history")
    if not has_state or not replica_live:
        return ReplicaPath("full", f"first run: full refresh, then {why}")
    if drift_added:
        return ReplicaPath("full", "column added in the source: full reload back-fills it", apply_drift=True)
    if mode in ("binlog", "checksum"):
        return ReplicaPath(mode, why, apply_drift=drift_widened)
    return ReplicaPath("incremental", why, apply_drift=drift_widened)


def analytics_path(*, mode: Path, full_refresh: bool, live: bool, state_generation: int | None,
                   replica_generation: int | None) -> Path:
    """The analytics phase's path: incremental only when analytics holds the replica's current generation
    (every full reload of the replica bumps it, so analytics reloads in full after one)."""
    if mode == "full" or full_refresh or not live:
        return "full"
    if state_generation is None or replica_generation is None or state_generation != replica_generation:
        return "full"
    return mode if mode in ("binlog", "checksum") else "incremental"


def probe_skips(*, full_refresh: bool, probe_same: bool, replica_live: bool, analytics_live: bool) -> str | None:
    """Why a table is skipped this run ("nothing to do"), or None to run it: the probe (tasks/probe.py)
    read the same as recorded after its last finished run, and both copies are still there."""
    if full_refresh or not probe_same or not replica_live or not analytics_live:
        return None
    return "unchanged since its last run (probe: same count and change-column maxima or whole-table hash)"
