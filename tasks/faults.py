"""Fault injection points for the reliability tests (a fault you inject, never a database mock).

Tests set a fault in-process with `inject(...)`, or for a subprocess through the environment:
`ETL_FAULT=analytics:patient:2:raise` raises after the 2nd committed chunk of `patient` in the
analytics load; `...:kill` sends SIGKILL to the process instead; `...:drop` raises the error a dropped
MySQL connection raises (2013), which tasks/errors.is_retriable retries. Unset, every check is a no-op.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import pymysql


class InjectedFault(RuntimeError):
    """Raised by an injected fault; not retriable, so the task fails where the test wants it to."""


@dataclass(frozen=True)
class Fault:
    phase: str
    table: str
    after_chunks: int
    action: str = "raise"  # raise | kill | drop (a retriable lost connection) | sleep (stands in for a slow table)
    seconds: float = 0.0


_injected: list[Fault] = []


def inject(fault: Fault) -> None:
    _injected.append(fault)


def clear() -> None:
    _injected.clear()


def _from_env() -> list[Fault]:
    spec = os.environ.get("ETL_FAULT")
    if not spec:
        return []
    out = []
    for part in spec.split(","):
        phase, table, n, *action = part.split(":")
        out.append(Fault(phase, table, int(n), action[0] if action else "raise"))
    return out


def check(phase: str, table: str, chunks_done: int) -> None:
    """Called after each committed chunk."""
    for f in [*_injected, *_from_env()]:
        if f.phase == phase and f.table == table and chunks_done == f.after_chunks:
            if f.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if f.action == "drop":
                raise pymysql.err.OperationalError(
                    2013, f"Lost connection to server during query (injected in {phase} of {table} after "
                          f"{chunks_done} chunks)")
            if f.action == "sleep":
                time.sleep(f.seconds)
                continue
            raise InjectedFault(f"injected fault in {phase} of {table} after {chunks_done} chunks")
