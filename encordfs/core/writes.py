"""The metadata write queue: durable, coalescing, read-your-writes, pushed in bulk in the background.

Owns every user edit of a row's client metadata or title from the moment ``setfattr``/``mv`` returns
until Encord has it: ``append`` journals the edit (``core.journal``, one fsync'd SQLite transaction,
well under 5 ms, never the network) and returns; a worker thread pushes later.

Ops and coalescing
    Four op kinds: ``set_metadata`` (replace the whole object), ``set_key``, ``del_key`` and
    ``set_title``. Per row, pending ops reduce (``coalesce``, a pure fold of ``compose``) to one
    ``backend.RowChange``: either a whole replacement with every later key edit folded in, or a set
    of per-key sets/deletes; plus the final title if any op renamed the row. A thousand edits of one
    row cost one row in one push.

Conflict rule (copied to docs/SEMANTICS.md)
    Per-key edits (``user.encord.meta.KEY`` set/remove) are applied onto the server's *current*
    metadata at push time (the push fetches it fresh in the same call), so concurrent server-side
    edits of *other* keys survive; for the same key, the last push wins. A whole-object write
    (``user.encord.client_metadata``) replaces everything (last writer wins), and per-key edits
    made after it are applied on top of it. A rename sets the title, last writer wins. A change is
    a final state, not an increment, so pushing it twice (a crash between the push and the journal
    update) gives the same result; the price is that such a replay can re-assert a value someone
    else changed in between (at-least-once delivery).

Parking rule
    A permanent error for a row (400 invalid, 403 no access, 404 gone, 413 too large) *parks* it:
    its ops stay in the journal, its change stays visible through ``view``, ``status()["parked"]``
    shows the reason, and it is not retried. Any new edit of that row un-parks it, and the next push
    sends the coalesced state of *all* its ops, old and new (so removing the offending key is how a
    user fixes a 413). ``discard(row)`` drops a row's ops instead. A permanent error for a bulk call
    of several rows says nothing about which row is guilty (a 413 fails the whole request), so the
    batch is bisected until the guilty rows are alone and the innocent ones land.

Pushing
    The worker starts a round once edits have paused for ``debounce_s`` (default 0.2 s: a burst of
    ``setfattr`` calls from one script lands in one round), but at most ``max_delay_s`` (5 s) after
    the first pending edit, so a continuous stream still lands steadily; or at once when someone
    waits in ``flush``/``wait_row``. A round takes up to ``batch_rows`` (1000, the bulk API limit)
    pushable rows (not parked, not in flight), oldest first, snapshots their change and highest seq,
    and calls ``push`` without holding any lock. On success the row's ops with ``seq <=`` that
    snapshot are deleted in one journal transaction; ops appended during the push stay pending and
    go in the next round, so nothing is lost or applied out of order. Transient failures (429
    honouring ``retry_after_s``, 5xx, network, anything not known to be permanent) back the whole
    queue off by the one ``core.retry.RetryPolicy``; success resets it.

Late duplicates (the stale-overwrite guard; copied to docs/SEMANTICS.md)
    A push whose outcome is unknown (the call timed out, the connection reset, a 5xx) may still be
    applied by the server later, possibly after a newer push of the same row, which it would then
    overwrite. Encord's API has no conditional update, so the queue repairs instead of preventing:
    such a row is *doubtful* for ``reassert_after_s`` (300 s, beyond the API's 120 s read timeout);
    every change of it that lands meanwhile is composed into a *re-assert*, and once the window has
    passed and nothing newer is pending, that final state is pushed once more (idempotent: a final
    state, not an increment). A late duplicate therefore wins for at most that window. The re-assert
    lives in memory: a crash within the window loses the repair, never an edit.

Read-your-writes
    ``view(row, server_metadata, server_title)`` applies the row's pending change onto what the
    catalog has. After a change lands, the catalog may still hold the old server state until its next
    refresh, so the landed change is kept as an overlay for ``landed_ttl_s`` (default 60 s, the
    catalog's metadata TTL) and applied too (re-applying a landed final state is a no-op). A
    server-side edit of the same keys within that window is masked until the overlay expires.

Invariants
    The in-memory index (``_rows``) equals ``coalesce`` of the journal's ops per row, plus the parked
    marks: it is rebuilt from the journal by ``open`` and updated under ``_lock`` in the same critical
    section as each journal transaction. At most one round runs at a time (``_round_lock``).

Threads and lock order: ``_round_lock`` → ``_lock`` (the condition's lock) → ``Journal._lock``.
``push`` and ``on_landed`` are called with no lock but ``_round_lock`` held. Only two places here
catch ``Exception`` (a bug in a backend or the journal must not kill the queue): ``_push_batch``
around ``push`` (an internal error, not a ``BackendError``, parks the rows it was pushing like a
permanent error, bisected, rather than retrying a bug forever) and the worker's loop around a whole
round (logs, records ``last_error`` and backs off).
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encordfs import errors
from encordfs.backend import BULK_LIMIT, PushOutcome, RowChange, RowPatch
from encordfs.core.journal import Journal, Op, OpKind, Parked, RowRef
from encordfs.core.retry import RetryPolicy

log = logging.getLogger(__name__)

PushFn = Callable[[list[RowPatch]], dict[str, PushOutcome]]
LandedFn = Callable[[list[PushOutcome]], None]

__all__ = ["Op", "OpKind", "QueueConfig", "RowRef", "WriteQueue", "coalesce", "compose", "op_change"]


# --- coalescing: pure functions --------------------------------------------------------------------


def op_change(op: Op) -> RowChange:
    """The change a single op makes."""
    if op.kind is OpKind.SET_METADATA:
        return RowChange(replace=dict(op.value))
    if op.kind is OpKind.SET_KEY:
        assert op.key is not None
        return RowChange(set_keys={op.key: op.value})
    if op.kind is OpKind.DEL_KEY:
        assert op.key is not None
        return RowChange(del_keys=frozenset((op.key,)))
    return RowChange(title=str(op.value))


def compose(first: RowChange, then: RowChange) -> RowChange:
    """The single change equal to applying ``first`` and then ``then`` (``RowChange.then``)."""
    return first.then(then)


def coalesce(ops: Iterable[Op]) -> RowChange:
    """All of a row's ops, in seq order, reduced to one final change."""
    change = RowChange()
    for op in ops:
        change = compose(change, op_change(op))
    return change


def _check(kind: OpKind, key: str | None, value: Any) -> None:
    """Reject what can never be pushed before it reaches the journal (EINVAL for the user)."""
    if kind in (OpKind.SET_KEY, OpKind.DEL_KEY) and (not isinstance(key, str) or not key):
        raise errors.InvalidValue("a metadata key must be a non-empty string")
    if kind is OpKind.SET_METADATA and not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
        raise errors.InvalidValue("client metadata must be a JSON object")
    if kind is OpKind.SET_TITLE and (not isinstance(value, str) or not value):
        raise errors.InvalidValue("a title must be a non-empty string")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise errors.InvalidValue("value is not JSON") from None


# --- the queue -------------------------------------------------------------------------------------

DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class QueueConfig:
    # A round starts once edits have paused for ``debounce_s`` (0.2 s: a script's burst of setfattr
    # calls coalesces into one round, and a single edit reaches Encord well within a second), but
    # never later than ``max_delay_s`` after the first pending edit (5 s: a continuous stream of edits
    # still lands steadily, while 10,000 edits of 1,000 rows cost a handful of bulk calls, not one
    # round per 0.2 s).
    debounce_s: float = 0.2
    max_delay_s: float = 5.0
    batch_rows: int = BULK_LIMIT  # rows per push call; the bulk endpoints' maximum
    landed_ttl_s: float = 60.0  # the catalog's metadata TTL: until then it may show pre-push state
    # A push whose outcome is unknown (a timeout, a reset, a 5xx) may still be applied by the server
    # later, over a newer push. Such rows' final landed state is pushed once more after this long
    # (see "Late duplicates" in the module docstring): longer than the API's read timeout (120 s), so
    # a request the server still held is done by then.
    reassert_after_s: float = 300.0
    close_join_s: float = 10.0  # extra time ``close`` gives a push in flight after the flush timeout


@dataclass(slots=True)
class _Row:
    """A row's pending edits, summarised: the journal holds the ops themselves (memory is per row,
    not per edit: 10,000 edits of one row cost one of these)."""

    ref: RowRef  # from the latest op (a later op may know the backing item)
    change: RowChange  # coalesce() of the row's pending ops
    ops: int  # how many
    last_seq: int
    first_at: float  # created_at of the oldest pending op
    parked: Parked | None = None
    inflight: bool = False

    @classmethod
    def of(cls, ops: list[Op], parked: Parked | None = None) -> _Row:
        return cls(ops[-1].row, coalesce(ops), len(ops), ops[-1].seq, ops[0].created_at, parked)


@dataclass(frozen=True, slots=True)
class _Snap:
    patch: RowPatch
    max_seq: int


@dataclass(slots=True)
class _Counters:
    pushed_rows_total: int = 0
    push_calls_total: int = 0
    failed_push_calls_total: int = 0
    push_seconds_total: float = 0.0  # wall time inside successful push calls: rows ÷ this = push throughput
    last_error: str | None = None
    last_push_at: float | None = None  # unix seconds of the last successful push call
    reasserts_total: int = 0  # landed states pushed once more after a push of unknown outcome


class WriteQueue:
    """``WriteQueue.open(journal_path, backend.push)``; see the module docstring."""

    def __init__(
        self,
        journal: Journal,
        push: PushFn,
        *,
        config: QueueConfig,
        retry: RetryPolicy,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        on_landed: LandedFn | None,
    ) -> None:
        self._journal = journal
        self._push = push
        self._config = config
        self._retry = retry
        self._clock = clock  # wall clock: op timestamps, ages, parked "since"
        self._monotonic = monotonic  # scheduling: debounce, backoff, landed overlay expiry
        self._on_landed = on_landed
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._round_lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._landed: dict[str, tuple[RowChange, float]] = {}
        # Rows whose push had an unknown outcome: uid -> monotonic time until which it may still land.
        self._doubtful: dict[str, float] = {}
        # Landed final states to push once more: uid -> (row, change, due) (see "Late duplicates").
        self._reassert: dict[str, tuple[RowRef, RowChange, float]] = {}
        self._dirty_since: float | None = None
        self._last_op_at = 0.0  # monotonic time of the latest append (trailing debounce)
        self._failures = 0
        self._not_before = 0.0
        self._urgent = 0  # threads waiting in flush / wait_row: skip the debounce
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._counters = _Counters()

    @classmethod
    def open(
        cls,
        journal_path: Path,
        push: PushFn,
        *,
        config: QueueConfig = QueueConfig(),
        retry: RetryPolicy = DEFAULT_RETRY,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_landed: LandedFn | None = None,
        start: bool = True,
    ) -> WriteQueue:
        """Open (or create) the journal, rebuild the index, and start the worker unless ``start=False``
        (tests then drive ``push_round`` themselves)."""
        queue = cls(
            Journal.open(journal_path),
            push,
            config=config,
            retry=retry,
            clock=clock,
            monotonic=monotonic,
            on_landed=on_landed,
        )
        queue._load()
        if start:
            queue.start()
        return queue

    def _load(self) -> None:
        ops, parked = self._journal.load()
        by_row: dict[str, list[Op]] = {}
        for op in ops:
            by_row.setdefault(op.row.uid, []).append(op)
        with self._lock:
            for uid, row_ops in by_row.items():
                self._rows[uid] = _Row.of(row_ops, parked.get(uid))
            if any(r.parked is None for r in self._rows.values()):
                self._dirty_since = self._monotonic()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="encordfs-writes", daemon=True)
            self._thread.start()

    # -- user edits -------------------------------------------------------------------------------
    def append(
        self, row: RowRef, kind: OpKind, key: str | None = None, value: Any = None, base_version: float | None = None
    ) -> int:
        """Journal one edit (durable on return) and return its sequence number."""
        _check(kind, key, value)
        with self._cond:
            if self._closed:
                raise errors.ReadOnly("the write queue is closed")
            state = self._rows.get(row.uid)
            unpark = state is not None and state.parked is not None
            try:
                op = self._journal.append(row, kind, key, value, base_version, self._clock(), unpark=unpark)
            except (sqlite3.Error, OSError) as exc:  # not durable, so the edit failed
                raise errors.FsError(f"cannot journal the edit: {type(exc).__name__}: {exc}") from None
            if state is None:
                self._rows[row.uid] = _Row.of([op])
            else:
                state.ref, state.parked = row, None
                state.ops += 1
                state.last_seq = op.seq
                state.change = compose(state.change, op_change(op))
            self._last_op_at = self._monotonic()
            if self._dirty_since is None:
                self._dirty_since = self._last_op_at
            self._cond.notify_all()
        return op.seq

    def set_metadata(self, row: RowRef, metadata: dict[str, Any], base_version: float | None = None) -> int:
        return self.append(row, OpKind.SET_METADATA, None, metadata, base_version)

    def set_key(self, row: RowRef, key: str, value: Any, base_version: float | None = None) -> int:
        return self.append(row, OpKind.SET_KEY, key, value, base_version)

    def del_key(self, row: RowRef, key: str, base_version: float | None = None) -> int:
        return self.append(row, OpKind.DEL_KEY, key, None, base_version)

    def set_title(self, row: RowRef, title: str, base_version: float | None = None) -> int:
        return self.append(row, OpKind.SET_TITLE, None, title, base_version)

    def discard(self, row_uid: str) -> int:
        """Drop a row's pending (or parked) ops: the view reverts to the server. Returns ops dropped."""
        with self._cond:
            state = self._rows.get(row_uid)
            if state is None or state.inflight:
                return 0  # in flight: too late to take back; it lands or fails on its own
            n = self._journal.discard(row_uid)
            del self._rows[row_uid]
            self._cond.notify_all()
        return n

    # -- what users see ---------------------------------------------------------------------------
    def view(
        self, row_uid: str, server_metadata: Mapping[str, Any] | None, server_title: str
    ) -> tuple[Mapping[str, Any] | None, str]:
        """The row's metadata and title as the user should see them now. Without pending or recently
        landed changes the inputs come back as they are (do not mutate them)."""
        if row_uid not in self._rows and row_uid not in self._landed:
            # Nothing queued for the row (the common case, e.g. a refresh of 100k rows asks for every
            # one): two dict lookups, atomic under the GIL, no lock. A change queued concurrently is
            # ordered after this view, as it would be had the lock been taken first.
            return server_metadata, server_title
        with self._lock:
            change = self._visible_change_locked(row_uid)
        if change is None:
            return server_metadata, server_title
        title = change.title if change.title is not None else server_title
        if not change.touches_metadata:
            return server_metadata, title
        return change.apply_metadata(server_metadata), title

    def overlaid(self, limit: int) -> set[str] | None:
        """The uids of the rows ``view`` changes now (changes queued or recently landed), or None when
        there are more than ``limit``: then a caller asks ``view`` row by row."""
        with self._lock:
            if len(self._rows) + len(self._landed) > limit:
                return None
            return set(self._rows) | set(self._landed)

    def pending_change(self, row_uid: str) -> RowChange | None:
        with self._lock:
            state = self._rows.get(row_uid)
            return state.change if state is not None else None

    def parked_reason(self, row_uid: str) -> str | None:
        with self._lock:
            state = self._rows.get(row_uid)
            return state.parked.reason if state is not None and state.parked is not None else None

    def _visible_change_locked(self, row_uid: str) -> RowChange | None:
        landed = self._landed.get(row_uid)
        if landed is not None and landed[1] <= self._monotonic():
            del self._landed[row_uid]
            landed = None
        state = self._rows.get(row_uid)
        if state is None:
            return landed[0] if landed is not None else None
        return compose(landed[0], state.change) if landed is not None else state.change

    # -- waiting ----------------------------------------------------------------------------------
    def flush(self, timeout_s: float) -> bool:
        """Push now; True once nothing is pending (parked rows do not count), False on timeout.
        Needs the worker (``start``)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()
            try:
                while self._pending_rows_locked():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._urgent -= 1

    def wait_row(self, row_uid: str, timeout_s: float) -> bool:
        """For fsync: True once the row has nothing pending; False on timeout or if it is parked."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()
            try:
                while (state := self._rows.get(row_uid)) is not None:
                    remaining = deadline - time.monotonic()
                    if state.parked is not None or remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._urgent -= 1

    def _pending_rows_locked(self) -> list[_Row]:
        return [r for r in self._rows.values() if r.parked is None]

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            pending = self._pending_rows_locked()
            parked = [(uid, r) for uid, r in self._rows.items() if r.parked is not None]
            now, c = self._clock(), self._counters
            return {
                "pending_rows": len(pending),
                "pending_ops": sum(r.ops for r in pending),
                "oldest_pending_age_s": max(0.0, now - min(r.first_at for r in pending)) if pending else 0.0,
                "reasserts_pending": len(self._reassert),
                "reasserts_total": c.reasserts_total,
                "pushed_rows_total": c.pushed_rows_total,
                "push_calls_total": c.push_calls_total,
                "failed_push_calls_total": c.failed_push_calls_total,
                "push_seconds_total": round(c.push_seconds_total, 6),
                "retry_in_s": max(0.0, self._not_before - self._monotonic()) if self._failures else 0.0,
                "parked": [
                    {
                        "row": uid,
                        "title": r.change.title or r.ref.title,
                        "reason": r.parked.reason,
                        "since": r.parked.since,
                        "ops": r.ops,
                    }
                    for uid, r in parked
                    if r.parked is not None
                ],
                "last_error": c.last_error,
                "last_push_at": c.last_push_at,
            }

    # -- pushing ----------------------------------------------------------------------------------
    def push_round(self) -> int:
        """One round now, ignoring debounce and backoff: take up to ``batch_rows`` pushable rows and
        push them (bisecting permanent bulk failures). Returns the number of rows taken."""
        with self._round_lock:
            with self._lock:
                snaps = self._take_batch_locked() or self._due_reasserts_locked(self._monotonic())
            if not snaps:
                return 0
            try:
                self._push_batch(snaps)
            finally:
                with self._cond:
                    for snap in snaps:
                        if (state := self._rows.get(snap.patch.row_uid)) is not None:
                            state.inflight = False
                    self._cond.notify_all()
            return len(snaps)

    def _take_batch_locked(self) -> list[_Snap]:
        ready = [r for r in self._rows.values() if r.parked is None and not r.inflight]
        ready.sort(key=lambda r: r.last_seq)  # oldest last edit first; later edits win on shared items
        taken = ready[: self._config.batch_rows]
        for state in taken:
            state.inflight = True
        if len(taken) == len(ready):
            self._dirty_since = None
        return [_Snap(RowPatch(s.ref.uid, s.ref.dataset_uid, s.ref.item_uuid, s.change), s.last_seq) for s in taken]

    def _push_batch(self, snaps: list[_Snap]) -> bool:
        """Push one batch; False if a transient failure ended the round (the rest waits for backoff)."""
        started = self._monotonic()
        try:
            outcomes = self._push([s.patch for s in snaps])
        except errors.PermanentError as exc:
            self._note_call(failed=True, error=exc)
            if len(snaps) > 1:  # which row is guilty? halve until it is alone
                mid = len(snaps) // 2
                return self._push_batch(snaps[:mid]) and self._push_batch(snaps[mid:])
            self._settle(snaps, {}, {snaps[0].patch.row_uid: _reason(exc)}, transient=None)
            return True
        except errors.BackendError as exc:  # TransientError, Unavailable, AuthError: retry later
            self._note_call(failed=True, error=exc)
            self._settle(snaps, {}, {}, transient=exc)
            return False
        except Exception as exc:  # a programming error: the same push fails the same way; park, do not loop
            log.exception("write push failed with an internal error")
            self._note_call(failed=True, error=exc)
            if len(snaps) > 1:
                mid = len(snaps) // 2
                return self._push_batch(snaps[:mid]) and self._push_batch(snaps[mid:])
            self._settle(snaps, {}, {snaps[0].patch.row_uid: f"internal error: {_reason(exc)}"}, transient=None)
            return True
        self._note_call(failed=False, error=None, seconds=self._monotonic() - started)
        landed: dict[str, PushOutcome] = {}
        parked: dict[str, str] = {}
        transient: Exception | None = None
        for snap in snaps:
            outcome = outcomes.get(snap.patch.row_uid)
            if outcome is not None and outcome.ok:
                landed[snap.patch.row_uid] = outcome
            elif outcome is not None and isinstance(outcome.error, errors.PermanentError):
                parked[snap.patch.row_uid] = _reason(outcome.error)
            else:
                transient = (outcome.error if outcome is not None else None) or errors.TransientError(
                    "the backend reported nothing for a row"
                )
        self._settle(snaps, landed, parked, transient=transient)
        if landed and self._on_landed is not None:
            self._on_landed(list(landed.values()))
        return transient is None

    def _note_call(self, *, failed: bool, error: BaseException | None, seconds: float = 0.0) -> None:
        with self._lock:
            c = self._counters
            c.push_calls_total += 1
            c.push_seconds_total += seconds
            if failed:
                c.failed_push_calls_total += 1
                c.last_error = _reason(error) if error is not None else None
            else:
                c.last_push_at = self._clock()

    def _settle(
        self,
        snaps: list[_Snap],
        landed: Mapping[str, PushOutcome],
        parked: Mapping[str, str],
        transient: BaseException | None,
    ) -> None:
        """Record a push's results: journal first (one transaction), then the index and backoff."""
        by_uid = {s.patch.row_uid: s for s in snaps}
        with self._cond:
            # A row edited during its push is not parked: its new state has not been tried yet.
            park = {
                uid: Parked(reason, self._clock())
                for uid, reason in parked.items()
                if (state := self._rows.get(uid)) is not None and state.last_seq <= by_uid[uid].max_seq
            }
            done = {uid: by_uid[uid].max_seq for uid in landed}
            self._journal.settle(done, park)
            now = self._monotonic()
            self._expire_landed_locked(now)
            expires = now + self._config.landed_ttl_s
            if transient is not None:  # the call's outcome is unknown: the server may still apply it
                for uid, snap in by_uid.items():
                    if uid not in done:
                        self._doubtful[uid] = now + self._config.reassert_after_s
                        if snap.max_seq < 0:  # a re-assert that failed: try it again later
                            self._note_landed_locked(snap.patch, now)
            for uid, max_seq in done.items():
                self._mark_done_locked(uid, max_seq, by_uid[uid].patch.change, expires)
                self._note_landed_locked(by_uid[uid].patch, now)
            for uid, mark in park.items():
                self._rows[uid].parked = mark
                log.warning("write to row %s parked: %s", uid, mark.reason)
            self._counters.pushed_rows_total += len(done)
            self._counters.reasserts_total += sum(1 for uid in done if by_uid[uid].max_seq < 0)
            if transient is not None:
                self._back_off_locked(getattr(transient, "retry_after_s", None))
            else:  # the service answered: stop backing off
                self._failures = 0
            self._cond.notify_all()

    def _back_off_locked(self, retry_after_s: float | None = None) -> None:
        """One more consecutive failure: no round before the retry policy's delay has passed."""
        self._failures += 1
        self._not_before = self._monotonic() + self._retry.delay_s(self._failures, retry_after_s)

    def _expire_landed_locked(self, now: float) -> None:
        """Drop expired landed overlays, oldest first (a row that is never viewed again must not keep
        its overlay for the life of the mount). ``_landed`` is kept in expiry order: one TTL for all,
        and ``_mark_done_locked`` re-inserts a row that lands again."""
        expired = [uid for uid, _ in itertools.takewhile(lambda kv: kv[1][1] <= now, self._landed.items())]
        for uid in expired:
            del self._landed[uid]

    def _mark_done_locked(self, uid: str, max_seq: int, change: RowChange, expires: float) -> None:
        previous = self._landed.pop(uid, None)  # re-inserted at the end: ``_landed`` stays in expiry order
        self._landed[uid] = (compose(previous[0], change) if previous is not None else change, expires)
        state = self._rows.get(uid)
        if state is None:
            return
        if state.last_seq <= max_seq:
            del self._rows[uid]
            return
        # Edited during its push: the ops after the pushed ones are still pending; the journal has them.
        rest = self._journal.row_ops(uid, after_seq=max_seq)
        self._rows[uid] = _Row.of(rest, state.parked) if rest else state

    def _note_landed_locked(self, patch: RowPatch, now: float) -> None:
        """A row landed: if an earlier push of it may still be applied late, plan to push its final
        state once more when that can no longer happen (composed with whatever lands meanwhile)."""
        until = self._doubtful.get(patch.row_uid)
        earlier = self._reassert.get(patch.row_uid)
        if earlier is not None:  # a re-assert still planned takes in what landed since, doubtful or not:
            change = compose(earlier[1], patch.change)  # sent as it was, it would put back an older state
            due = earlier[2] if until is None else max(until, earlier[2])
        elif until is not None:
            change, due = patch.change, until
        else:
            return
        if until is not None and until <= now:
            del self._doubtful[patch.row_uid]
        ref = RowRef(patch.row_uid, patch.dataset_uid, patch.item_uuid, change.title or "")
        self._reassert[patch.row_uid] = (ref, change, due)

    def _due_reasserts_locked(self, now: float) -> list[_Snap]:
        """Re-assert rows whose late-duplicate window has passed and that have nothing pending (a
        pending change is pushed first, then composed into the re-assert)."""
        for uid in [u for u, until in self._doubtful.items() if until <= now and u not in self._reassert]:
            del self._doubtful[uid]  # never landed again: nothing to repair
        out = []
        for uid, (ref, change, due) in list(self._reassert.items()):
            if due > now or uid in self._rows or self._doubtful.get(uid, 0.0) > now:
                continue
            del self._reassert[uid]
            self._doubtful.pop(uid, None)
            out.append(_Snap(RowPatch(ref.uid, ref.dataset_uid, ref.item_uuid, change), -1))
        return out

    # -- the worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    wait_s = self._wait_s_locked()
                    if wait_s is not None and wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                if self._stopping:
                    return
            try:
                self.push_round()
            except Exception as exc:  # e.g. the journal failed: keep the worker alive
                log.exception("write round failed")
                with self._cond:
                    self._counters.last_error = _reason(exc)
                    self._back_off_locked()

    def _wait_s_locked(self) -> float | None:
        """Seconds until the next round is due; None when there is nothing to push."""
        now = self._monotonic()
        if not any(r.parked is None and not r.inflight for r in self._rows.values()):
            dues = [due for _, _, due in self._reassert.values()] + list(self._doubtful.values())
            return max(0.0, min(dues) - now) if self._reassert and dues else None
        due = self._not_before if self._failures else now
        if self._dirty_since is not None and not self._urgent:
            quiet = max(self._dirty_since, self._last_op_at) + self._config.debounce_s
            due = max(due, min(quiet, self._dirty_since + max(self._config.max_delay_s, self._config.debounce_s)))
        return due - now

    def close(self, flush_timeout_s: float = 5.0, join_s: float | None = None) -> dict[str, Any]:
        """Final flush attempt, stop the worker, close the journal. Returns ``status()`` at close:
        whatever is still pending stays in the journal and is pushed by the next ``open``. A push still
        in flight is given ``join_s`` (default ``close_join_s``) to finish; past that it is abandoned
        (its rows are replayed by the next ``open``: pushes are final states, so landing twice is fine)."""
        if self._thread is not None and flush_timeout_s > 0:
            self.flush(flush_timeout_s)
        with self._cond:
            self._stopping = True
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(self._config.close_join_s if join_s is None else join_s)
            if thread.is_alive():  # a push is hung: leave the journal open for it, replay next time
                log.warning("write worker still pushing at close; its rows will be replayed on next mount")
                return self.status()
        result = self.status()
        self._journal.close()
        return result


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", "") or str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
