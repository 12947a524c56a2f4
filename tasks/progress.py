"""Progress on long tables: rows done / estimated and the rate, in the log and as a Prefect artifact.

Only for tables that move many rows: a line once at least LOG_MIN_ROWS rows are done and the copy has
run LOG_EVERY_SECONDS, then every LOG_EVERY_SECONDS. A small or incremental table (its estimate is the
table's size, not what this run moves) finishes without one: "1 / ~7,897 rows (0%)" followed by
"1 rows" read as a stalled copy to the people on call.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from uuid import UUID

ARTIFACT_MIN_ROWS = 100_000  # smaller tables finish before a progress bar would help anyone
LOG_EVERY_SECONDS = 5.0
LOG_MIN_ROWS = 50_000  # fewer rows than this are done before anyone would look at a progress line


@dataclass
class Progress:
    """Call with the rows done so far; logs at most every few seconds."""

    table: str
    phase: str
    estimated_rows: int
    logger: logging.Logger | logging.LoggerAdapter
    _started: float = field(default_factory=time.monotonic)
    _last_log: float | None = None
    _artifact: UUID | None = None

    def __post_init__(self) -> None:
        if self.estimated_rows >= ARTIFACT_MIN_ROWS:
            try:
                from prefect.artifacts import create_progress_artifact

                self._artifact = create_progress_artifact(
                    progress=0.0, description=f"{self.phase} of {self.table}: rows done / estimated"
                )
            except Exception:  # noqa: BLE001 - no Prefect run context (plain function use)
                self._artifact = None

    def __call__(self, rows: int) -> None:
        now = time.monotonic()
        if now - (self._last_log if self._last_log is not None else self._started) < LOG_EVERY_SECONDS:
            return
        self._last_log = now
        elapsed = max(now - self._started, 1e-6)
        est = self.estimated_rows
        known = bool(est) and rows <= est
        pct = 100.0 * rows / est if known else 0.0
        if rows >= LOG_MIN_ROWS:
            if known:
                self.logger.info("%s %s: %s / ~%s rows (%.0f%%), %.0f rows/s",
                                 self.table, self.phase, f"{rows:,}", f"{est:,}", pct, rows / elapsed)
            else:  # no estimate (an incremental window), or already past it: the count and rate say enough
                self.logger.info("%s %s: %s rows, %.0f rows/s", self.table, self.phase, f"{rows:,}", rows / elapsed)
        if self._artifact is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact, progress=min(pct if known else 99.9, 99.9))
            except Exception:  # noqa: BLE001
                pass

    def done(self) -> None:
        if self._artifact is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact, progress=100.0)
            except Exception:  # noqa: BLE001
                pass
