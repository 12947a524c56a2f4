"""Bookkeeping DDL once per connection, not once per table and phase (and facts a connection cannot
change, read once: `remembered`).

Every phase of every table made sure of its bookkeeping tables (`CREATE TABLE IF NOT EXISTS` for
the state, checkpoint, pending-window and checksum-log tables, plus a look at their name columns'
collation): a dozen statements per table, ~35 ms of a tiny table's ~0.5 s. The tables cannot
disappear under a run, so the first statement set on a database connection is enough: later calls
on the same connection return at once. Keyed by the DB-API connection object (weakly: a run's pool
is disposed with its engines, so the next run, or a test that dropped the database in between,
starts over on new connections). A connection that was invalidated (lost, reconnected) is a new
object, so it checks again.

Only for statements committed right after they run (MySQL DDL commits by itself; the PostgreSQL
callers commit at once), so a mark never outlives a rolled-back CREATE.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_seen: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_values: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def first_time(conn: Any, what: str) -> bool:
    """True the first time `what` is asked for on this DB-API connection (then it is marked done)."""
    try:
        with _lock:
            done = _seen.setdefault(conn, set())
            if what in done:
                return False
            done.add(what)
            return True
    except TypeError:  # not weak-referenceable (a test double): always do the work
        return True


def forget(conn: Any, what: str) -> None:
    """The work marked done on `conn` did not stick (its transaction was rolled back): do it again next time."""
    with _lock:
        _seen.get(conn, set()).discard(what)


def remembered(conn: Any, what: str, read: Callable[[], T]) -> T:
    """`read()` the first time `what` is asked for on this DB-API connection, the same value after it
    (a fact the connection cannot change under it, e.g. which server it talks to)."""
    try:
        with _lock:
            held = _values.setdefault(conn, {})
            if what in held:
                return held[what]
    except TypeError:  # not weak-referenceable (a test double): always read
        return read()
    value = read()
    with _lock:
        held[what] = value
    return value
