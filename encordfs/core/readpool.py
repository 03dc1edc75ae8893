"""A pool of SQLite reader connections, shared by the catalog (``core.catalog``) and folder images
(``core.images``).

Owns: the borrowed connections. A reader takes one for one query (``one``, ``all``) or one streamed
listing (``stream``) and gives it back; the pool opens a connection when none is free and closes one
it has no room for. FUSE worker threads come and go (libfuse starts and retires them with the load),
so per-thread connections were opened afresh for a large share of lookups.

Threads: connections are opened with ``check_same_thread=False`` by the caller's ``connect`` and used by
one thread at a time; the queue is thread-safe. After ``close`` a connection given back is closed.
"""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any


class ReadPool:
    def __init__(self, connect: Callable[[], sqlite3.Connection], size: int) -> None:
        self._connect = connect
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue(maxsize=size)
        self._closed = False

    def _take(self) -> sqlite3.Connection:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            return self._connect()

    def _give(self, conn: sqlite3.Connection) -> None:
        if self._closed:
            conn.close()
            return
        try:
            self._pool.put_nowait(conn)
        except queue.Full:
            conn.close()

    def one(self, sql: str, args: tuple[Any, ...]) -> Any:
        conn = self._take()
        try:
            return conn.execute(sql, args).fetchone()
        finally:
            self._give(conn)

    def all(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        conn = self._take()
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            self._give(conn)

    def stream(self, sql: str, args: tuple[Any, ...]) -> Iterator[Any]:
        """Rows of ``sql`` one at a time. The first row is read before this returns, so the result is
        the database as of the call (the SQLite read snapshot starts there); the connection goes back
        to the pool when the iterator is exhausted or dropped."""
        conn = self._take()
        try:
            cur = conn.execute(sql, args)
            first = cur.fetchone()
        except BaseException:
            self._give(conn)
            raise
        return self._rest(conn, cur, first)

    def _rest(self, conn: sqlite3.Connection, cur: sqlite3.Cursor, row: Any) -> Iterator[Any]:
        try:
            if row is not None:
                yield row
                yield from cur  # the cursor's own iteration: no method call per row
        finally:
            cur.close()
            self._give(conn)

    def close(self) -> None:
        """Close the pooled connections; the ones still lent out are closed as they come back."""
        self._closed = True
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                break
