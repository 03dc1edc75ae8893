"""A pool of SQLite reader connections, shared by the catalog (``core.catalog``) and folder images
(``core.images``).

Owns: the borrowed connections. A reader takes one for one query (``one``, ``all``) or one streamed
listing (``stream``) and gives it back; the pool opens a connection when none is free and closes one
it has no room for. FUSE worker threads come and go (libfuse starts and retires them with the load),
so per-thread connections were opened afresh for a large share of lookups.

**Read transactions held across queries** (with ``generation``). A query in autocommit mode is a read
transaction of its own, and in WAL mode each one locks and unlocks a read mark of the shared-memory
index: two ``fcntl`` calls, about half of a point query's cost (6-8 µs of ~14 µs here; a LOOKUP makes
one). A pool given its owner's write ``generation`` (odd while a write is under way, moved on at each
write's start and end, after its commit) keeps a connection's read transaction open between queries
while the generation stays where it was when the transaction began. So a query sees the database as
of its ``take`` at the latest, as in autocommit: if a write began since, the old transaction is ended
and a new one begun. While a write is under way nothing is held (plain autocommit queries). An idle
connection must not keep an old snapshot past writes: the WAL cannot be checkpointed past it, and it
grows instead of wrapping. So the owner calls ``end_reads`` when a write begins (under its write
lock): the idle connections end theirs, and the ones lent out end theirs when they come back.

Threads: connections are opened with ``check_same_thread=False`` by the caller's ``connect`` and used by
one thread at a time; the idle ones are a list under a lock (a take and a give: 1.50 µs through a
``queue.LifoQueue``'s Condition, 0.36 µs this way, ``timeit`` here). After ``close`` a connection given
back is closed.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

_NONE = -1  # no read transaction held


class ReadPool:
    def __init__(
        self, connect: Callable[[], sqlite3.Connection], size: int, generation: Callable[[], int] | None = None
    ) -> None:
        self._connect = connect
        self._size = size
        self._generation = generation  # None: every query in autocommit mode
        # (connection, generation its read transaction began at, or _NONE); the most recent last
        self._idle: list[tuple[sqlite3.Connection, int]] = []
        self._lock = threading.Lock()
        self._closed = False

    def _take(self) -> tuple[sqlite3.Connection, int]:
        with self._lock:
            conn, began = self._idle.pop() if self._idle else (None, _NONE)
        if conn is None:
            conn = self._connect()
        if self._generation is None:
            return conn, _NONE
        now = self._generation()
        if began == now:
            return conn, began  # no write began since this snapshot was taken
        if conn.in_transaction:
            conn.commit()  # (a read: ends its snapshot)
        if now & 1:
            return conn, _NONE  # a write is under way: autocommit
        conn.execute("BEGIN")  # the snapshot starts at the first query, after ``now`` was read
        return conn, now

    def _give(self, conn: sqlite3.Connection, began: int) -> None:
        if began != _NONE and self._generation is not None and self._generation() != began:
            conn.commit()
            began = _NONE
        with self._lock:
            if not self._closed and len(self._idle) < self._size:
                self._idle.append((conn, began))
                return
        conn.close()

    def end_reads(self) -> None:
        """End the read transactions of the idle connections (a write begins: see the module docstring).
        The ones lent out end theirs when given back. Under the pool lock: a COMMIT of a read is a few
        microseconds, and a reader meanwhile would otherwise open a new connection."""
        with self._lock:
            for i, (conn, began) in enumerate(self._idle):
                if began != _NONE:
                    conn.commit()
                    self._idle[i] = (conn, _NONE)

    def one(self, sql: str, args: tuple[Any, ...]) -> Any:
        conn, began = self._take()
        try:
            return conn.execute(sql, args).fetchone()
        finally:
            self._give(conn, began)

    def all(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        conn, began = self._take()
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            self._give(conn, began)

    def stream(self, sql: str, args: tuple[Any, ...]) -> Iterator[Any]:
        """Rows of ``sql`` one at a time. The first row is read before this returns, so the result is
        the database as of the call (the SQLite read snapshot starts there, or is one no write began
        after); the connection goes back to the pool when the iterator is exhausted or dropped."""
        conn, began = self._take()
        try:
            cur = conn.execute(sql, args)
            first = cur.fetchone()
        except BaseException:
            self._give(conn, began)
            raise
        return self._rest(conn, began, cur, first)

    def _rest(self, conn: sqlite3.Connection, began: int, cur: sqlite3.Cursor, row: Any) -> Iterator[Any]:
        try:
            if row is not None:
                yield row
                yield from cur  # the cursor's own iteration: no method call per row
        finally:
            cur.close()
            self._give(conn, began)

    def close(self) -> None:
        """Close the pooled connections; the ones still lent out are closed as they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()
