"""Progress on long tables: rows done / estimated and the rate, in the log and as a Prefect artifact."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from uuid import UUID

ARTIFACT_MIN_ROWS = 100_000  # smaller tables finish before a progress bar would help anyone
LOG_EVERY_SECONDS = 5.0


@dataclass
class Progress:
    """Call with the rows done so far; logs at most every few seconds."""

    table: str
    phase: str
    estimated_rows: int
    logger: logging.Logger | logging.LoggerAdapter
    _started: float = field(default_factory=time.monotonic)
    _last_log: float = 0.0
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
        if now - self._last_log < LOG_EVERY_SECONDS:
            return
        self._last_log = now
        elapsed = max(now - self._started, 1e-6)
        est = max(self.estimated_rows, rows)
        pct = 100.0 * rows / est if est else 100.0
        self.logger.info("%s %s: %s / ~%s rows (%.0f%%), %.0f rows/s",
                         self.table, self.phase, f"{rows:,}", f"{est:,}", pct, rows / elapsed)
        if self._artifact is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact, progress=min(pct, 99.9))
            except Exception:  # noqa: BLE001
                pass

    def done(self) -> None:
        if self._artifact is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact, progress=100.0)
            except Exception:  # noqa: BLE001
                pass
