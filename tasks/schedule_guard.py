"""Business-hours guard: no run starts against the production source inside a blackout window.

Configured in the environment of whatever starts the flow (the worker, or your shell for `etl run`):

    ETL_BLACKOUT="Mon-Fri 07:00-19:00"     windows, `;`-separated: `[DAYS ]HH:MM-HH:MM`
    ETL_BLACKOUT_TZ="America/New_York"     IANA time zone the windows are in (default UTC)
    ETL_BLACKOUT_MANUAL=refuse             manual runs inside a window: `refuse` (default) or `allow`

DAYS is a comma list of days or day ranges (`Mon-Fri`, `Sat,Sun`, `Fri-Mon`); without it the window
applies every day. A window whose end is before its start crosses midnight (`22:00-06:00`, the
days name the day it starts on); `24:00` is the end of the day. Unset or empty: no blackout.

Who is refused inside a window:
- a scheduled run (created by the Prefect scheduler from a deployment's schedule: the flow run's
  `auto_scheduled` flag) always; `ignore_blackout` does not apply to it, so a deployment default
  cannot switch the guard off for the nightly schedule;
- a manual run (`etl run`, Run in the UI, `prefect deployment run`) unless it passes
  `ignore_blackout=true` (`etl run --ignore-blackout`), or ETL_BLACKOUT_MANUAL=allow, which lets
  manual runs go ahead with a warning.
The guard runs before the flow touches any database. It decides only whether a run may *start*: a
run that started before the window opened is not stopped.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from typing import Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tasks.errors import ConfigError, EtlError

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


class BlackoutRefused(EtlError):
    """The run did not start: it is inside a blackout window. Nothing was read or written."""


@dataclass(frozen=True)
class Window:
    """One blackout window in local time: minutes since midnight, days (0 = Monday) it starts on."""

    days: frozenset[int]
    start: int
    end: int  # 1..1440; end <= start means the window crosses midnight
    text: str

    def contains(self, local: dt.datetime) -> bool:
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        # Crosses midnight: the evening part on a listed day, the morning part on the day after one.
        return (today in self.days and minute >= self.start) or ((today - 1) % 7 in self.days and minute < self.end)

    def end_text(self) -> str:
        return f"{self.end // 60:02d}:{self.end % 60:02d}"


@dataclass(frozen=True)
class Blackout:
    spec: str
    tz_name: str
    windows: tuple[Window, ...]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.tz_name)

    def active_window(self, now: dt.datetime) -> Window | None:
        """The window `now` (an aware datetime) falls in, or None."""
        local = now.astimezone(self.tz)
        return next((w for w in self.windows if w.contains(local)), None)


def _minutes(text: str, *, what: str, spec: str) -> int:
    m = _TIME.match(text.strip())
    if not m or int(m.group(2)) > 59 or int(m.group(1)) > 24 or (int(m.group(1)) == 24 and int(m.group(2))):
        raise ConfigError(f"ETL_BLACKOUT={spec!r}: {what} {text!r} is not a time like 07:00 (24:00 = end of day)")
    return int(m.group(1)) * 60 + int(m.group(2))


def _day(text: str, spec: str) -> int:
    key = text.strip().lower()[:3]
    if key not in DAYS or len(text.strip()) < 3:
        raise ConfigError(f"ETL_BLACKOUT={spec!r}: {text.strip()!r} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")
    return DAYS.index(key)


def _days(text: str, spec: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            a, b = (_day(x, spec) for x in part.split("-", 1))
            i = a
            out.add(i)
            while i != b:  # Fri-Mon wraps around the week
                i = (i + 1) % 7
                out.add(i)
        elif part.strip():
            out.add(_day(part, spec))
    if not out:
        raise ConfigError(f"ETL_BLACKOUT={spec!r}: no days in {text!r}")
    return frozenset(out)


def parse_blackout(spec: str | None, tz_name: str | None = None) -> Blackout | None:
    """`"Mon-Fri 07:00-19:00"` -> Blackout; None or empty -> None. Raises ConfigError naming the problem."""
    if not spec or not spec.strip():
        return None
    tz_name = (tz_name or "UTC").strip()
    try:
        ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"ETL_BLACKOUT_TZ={tz_name!r} is not an IANA time zone (e.g. America/New_York)") from None
    windows = []
    for raw in spec.split(";"):
        text = raw.strip()
        if not text:
            continue
        *day_part, times = text.rsplit(None, 1)
        if "-" not in times:
            raise ConfigError(f"ETL_BLACKOUT={spec!r}: {text!r} has no time range like 07:00-19:00")
        a, b = times.split("-", 1)
        start, end = _minutes(a, what="start", spec=spec), _minutes(b, what="end", spec=spec)
        if start == 1440:
            raise ConfigError(f"ETL_BLACKOUT={spec!r}: a window cannot start at 24:00")
        if start == end:
            raise ConfigError(f"ETL_BLACKOUT={spec!r}: window {text!r} is empty; 00:00-24:00 is the whole day")
        days = _days(day_part[0], spec) if day_part else frozenset(range(7))
        windows.append(Window(days=days, start=start, end=end, text=text))
    if not windows:
        return None
    return Blackout(spec=spec.strip(), tz_name=tz_name, windows=tuple(windows))


@dataclass(frozen=True)
class Decision:
    refuse: bool
    message: str | None  # a refusal's reason, or a warning to log when the run goes ahead inside a window


def decide(blackout: Blackout | None, now: dt.datetime, *, scheduled: bool, ignore_blackout: bool,
           manual_policy: str = "refuse") -> Decision:
    """Whether a run may start at `now`; pure, so the window logic is tested with a fixed clock."""
    if blackout is None:
        return Decision(False, None)
    window = blackout.active_window(now)
    if window is None:
        return Decision(False, None)
    local = now.astimezone(blackout.tz)
    where = (f"{local:%a %H:%M} {blackout.tz_name} is inside the blackout window '{window.text}' "
             f"(ETL_BLACKOUT={blackout.spec!r}; it ends at {window.end_text()})")
    if scheduled:
        extra = " (ignore_blackout is not honoured for scheduled runs)" if ignore_blackout else ""
        return Decision(True, f"blackout: {where}: this scheduled run does not start and the source is not read"
                              f"{extra}. Move the schedule out of the window, or start a manual run with "
                              f"ignore_blackout=true.")
    if ignore_blackout:
        return Decision(False, f"blackout: {where}; running anyway because ignore_blackout=true")
    if manual_policy == "allow":
        return Decision(False, f"blackout: {where}; manual run allowed by ETL_BLACKOUT_MANUAL=allow")
    return Decision(True, f"blackout: {where}: this manual run does not start and the source is not read. "
                          f"To run anyway: `etl run --ignore-blackout` (flow parameter ignore_blackout=true).")


def is_scheduled_run() -> bool:
    """True inside a flow run the Prefect scheduler created from a deployment schedule."""
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return bool(ctx and ctx.flow_run and getattr(ctx.flow_run, "auto_scheduled", False))
    except Exception:  # noqa: BLE001 - outside Prefect: a manual run
        return False


def check_blackout(*, ignore_blackout: bool, scheduled: bool | None = None, now: dt.datetime | None = None,
                   environ: Mapping[str, str] | None = None, warn: Callable[[str], None] | None = None) -> None:
    """Raise BlackoutRefused when this run may not start now; call `warn` when it goes ahead in a window."""
    env = os.environ if environ is None else environ
    blackout = parse_blackout(env.get("ETL_BLACKOUT"), env.get("ETL_BLACKOUT_TZ"))
    if blackout is None:
        return
    policy = (env.get("ETL_BLACKOUT_MANUAL") or "refuse").strip().lower()
    if policy not in ("refuse", "allow"):
        raise ConfigError(f"ETL_BLACKOUT_MANUAL={policy!r}: use `refuse` or `allow`")
    d = decide(blackout, now or dt.datetime.now(dt.timezone.utc),
               scheduled=is_scheduled_run() if scheduled is None else scheduled,
               ignore_blackout=ignore_blackout, manual_policy=policy)
    if d.refuse:
        raise BlackoutRefused(d.message)
    if d.message and warn:
        warn(d.message)
