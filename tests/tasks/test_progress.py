"""Progress lines: only for tables that move many rows, never "1 / ~7,897 rows (0%)"."""
from __future__ import annotations

import logging
import re
import time

import pytest

from tasks import progress
from tasks.progress import Progress


class Clock:
    def __init__(self) -> None:
        # From the real clock: Progress takes its start time from the unpatched one.
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    # The rate depends on the real clock at the start (see Clock): compared without its digits.
    return [re.sub(r"[0-9]+ rows/s$", "N rows/s", r.getMessage()) for r in caplog.records if r.name == "test.progress"]


def test_a_table_that_moves_few_rows_logs_no_progress(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.progress")
    p = Progress("patient", "replica copy", 7_897, logging.getLogger("test.progress"))
    p(1)  # the first chunk of an incremental window: no "1 / ~7,897 rows (0%)"
    clock.now += 30
    p(1)
    p(7_000)
    assert _lines(caplog) == []


def test_a_big_copy_logs_every_few_seconds_with_its_share(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.progress")
    p = Progress("procedurelog", "analytics load", 1_000_000, logging.getLogger("test.progress"))
    p(20_000)  # at once: nothing
    clock.now += 6
    p(60_000)
    clock.now += 1
    p(70_000)  # within 5 s of the last line: nothing
    clock.now += 5
    p(1_200_000)  # past the estimate: the count, no percentage
    assert _lines(caplog) == ["procedurelog analytics load: 60,000 / ~1,000,000 rows (6%), N rows/s",
                              "procedurelog analytics load: 1,200,000 rows, N rows/s"]


def test_an_incremental_window_counts_rows_without_a_share(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.progress")
    p = Progress("claim", "replica copy", 0, logging.getLogger("test.progress"))  # _rows_to_move: 0
    clock.now += 10
    p(80_000)
    assert _lines(caplog) == ["claim replica copy: 80,000 rows, N rows/s"]
