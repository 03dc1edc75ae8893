"""The metadata write queue: coalescing against a model, journal durability, retries, parking,
bisection, bulk batching, waiting, a SIGKILL crash test, and one push through the real SDK.

Most tests drive the queue by hand (``start=False`` + ``push_round``) against ``MemoryBackend`` and
its fault hooks; the worker is started only where its scheduling is the point. The crash test runs
this file as a writer subprocess (``python tests/test_writes.py writer ...``) against ``FileServer``,
a JSON-file fake whose state survives the process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # the crash test's writer subprocess: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from encordfs import errors
from encordfs.backend import BULK_LIMIT, DatasetRecord, PushOutcome, RowChange, RowPatch
from encordfs.backend.memory import MemoryBackend
from encordfs.core.journal import Journal, Op, OpKind, RowRef
from encordfs.core.retry import RetryPolicy
from encordfs.core.writes import QueueConfig, WriteQueue, coalesce
from harness.fakes import row_record

DS = "ds-1"


# --- helpers ---------------------------------------------------------------------------------------


def _ref(i: int) -> RowRef:
    return RowRef(f"row-{i}", DS, f"item-{i}", f"r{i}.jpg")


def _backend(n_rows: int) -> MemoryBackend:
    mem = MemoryBackend()
    mem.add_dataset(DatasetRecord(DS, "ds", "", 0.0, 0.0, 0, None, None))
    for i in range(n_rows):
        mem.add_row(row_record(f"row-{i}", DS, f"r{i}.jpg", None, metadata={"orig": i}, item=f"item-{i}"))
    return mem


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _manual(path: Path, push: Any, **config: Any) -> tuple[WriteQueue, FakeClock]:
    clock = FakeClock()
    queue = WriteQueue.open(
        path, push, config=QueueConfig(**config), retry=RetryPolicy(rand=lambda: 0.0), monotonic=clock, start=False
    )
    return queue, clock


def model_apply(
    metadata: dict[str, Any] | None, title: str, kind: OpKind, key: str | None, value: Any
) -> tuple[dict[str, Any] | None, str]:
    """The reference semantics: one op at a time, onto a plain dict."""
    if kind is OpKind.SET_TITLE:
        return metadata, value
    out = dict(metadata or {})
    if kind is OpKind.SET_METADATA:
        out = dict(value)
    elif kind is OpKind.SET_KEY:
        out[key] = value  # type: ignore[index]
    else:
        out.pop(key, None)  # type: ignore[arg-type]
    return out, title


# --- coalescing ------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner, max_size=2),
    max_leaves=4,
)
KEYS = st.sampled_from(["a", "b", "c", "d"])
METADATA = st.dictionaries(KEYS, JSON_VALUES, max_size=4)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just(OpKind.SET_METADATA), st.none(), METADATA),
        st.tuples(st.just(OpKind.SET_KEY), KEYS, JSON_VALUES),
        st.tuples(st.just(OpKind.DEL_KEY), KEYS, st.none()),
        st.tuples(st.just(OpKind.SET_TITLE), st.none(), st.sampled_from(["x.jpg", "y.jpg"])),
    ),
    max_size=12,
)


def _ops(specs: list[tuple[OpKind, str | None, Any]]) -> list[Op]:
    return [Op(i + 1, _ref(0), kind, key, value, None, 0.0) for i, (kind, key, value) in enumerate(specs)]


@given(OPS, st.none() | METADATA)
def test_coalesce_matches_one_op_at_a_time_model(
    specs: list[tuple[OpKind, str | None, Any]], server: dict[str, Any] | None
) -> None:
    change = coalesce(_ops(specs))
    expected, title = server, "orig.jpg"
    for kind, key, value in specs:
        expected, title = model_apply(expected, title, kind, key, value)
    assert change.apply_metadata(server) == expected
    assert (change.title or "orig.jpg") == title
    if change.replace is not None:  # normal form
        assert not change.set_keys and not change.del_keys
    assert not (change.set_keys.keys() & change.del_keys)


@given(OPS, st.integers(0, 12), st.none() | METADATA)
def test_coalesce_composes_and_replays_idempotently(
    specs: list[tuple[OpKind, str | None, Any]], cut: int, server: dict[str, Any] | None
) -> None:
    ops = _ops(specs)
    whole = coalesce(ops)
    split = coalesce(ops[:cut]).then(coalesce(ops[cut:]))
    assert split.apply_metadata(server) == whole.apply_metadata(server) and split.title == whole.title
    once = whole.apply_metadata(server)
    assert whole.apply_metadata(once) == once  # a replayed change lands on the same final state


def test_invalid_values_are_refused_before_the_journal(tmp_path: Path) -> None:
    queue, _ = _manual(tmp_path / "j.sqlite3", _backend(1).push)
    with pytest.raises(errors.InvalidValue):
        queue.set_metadata(_ref(0), [1, 2])  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidValue):
        queue.set_key(_ref(0), "x", math.nan)
    with pytest.raises(errors.InvalidValue):
        queue.set_key(_ref(0), "", 1)
    with pytest.raises(errors.InvalidValue):
        queue.set_title(_ref(0), "")
    assert queue.status()["pending_ops"] == 0
    queue.close()


# --- the queue against a model (stateful) ----------------------------------------------------------


class QueueMachine(RuleBasedStateMachine):
    """Random edits, pushes (some failing transiently or permanently, some timing out on our side while
    the server applies them a step later, over what landed since) and restarts. The view must equal
    the model, except for a row a late request has just overwritten (allowed for the late-duplicate
    window); once that window has passed and everything is pushed, so must the server."""

    ROWS = 4
    WINDOW_S = 300.0  # QueueConfig.reassert_after_s; each push step advances the clock 100 s

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="wq-"))
        self.mem = _backend(self.ROWS)
        self.model = {r.uid: (dict(r.client_metadata or {}), r.title) for r in self.mem.rows[DS]}
        self.held: list[RowPatch] = []  # a request the server holds, to apply later
        self.hold_next = False
        self.stale: set[str] = set()  # rows a late request overwrote: stale for at most the window
        self.late_at: list[float] = []
        self.repair_lost = False  # restarted within a window: the repair is in memory (SEMANTICS)
        self.queue, self.clock = _manual(self.dir / "j.sqlite3", self._push, landed_ttl_s=0.0)

    def _push(self, patches: list[RowPatch]) -> dict[str, PushOutcome]:
        if self.hold_next:
            self.hold_next = False
            self.held.extend(patches)
            self.late_at.append(self.clock.now)
            raise errors.Unavailable("read timed out")
        return self.mem.push(patches)

    @rule()
    def deliver_late(self) -> None:
        """The server applies a request it held, whatever landed since."""
        if self.held:
            self.mem.push(self.held)
            self.stale.update(p.row_uid for p in self.held)
            self.held = []

    @rule(i=st.integers(0, ROWS - 1), spec=OPS.filter(bool).map(lambda s: s[0]))
    def edit(self, i: int, spec: tuple[OpKind, str | None, Any]) -> None:
        kind, key, value = spec
        self.queue.append(_ref(i), kind, key, value)
        uid = f"row-{i}"
        self.model[uid] = model_apply(*self.model[uid], kind, key, value)  # type: ignore[assignment]

    @rule(fault=st.sampled_from([None, "transient", "permanent", "late"]))
    def push(self, fault: str | None) -> None:
        self.deliver_late()  # a held request is applied within 100 s: inside the window, as the API's timeout
        if fault == "transient":
            self.mem.push_faults.append(errors.TransientError("503"))
        elif fault == "permanent":
            self.mem.row_errors["row-0"] = errors.PermanentError("413")
        self.hold_next = fault == "late"
        self.queue.push_round()
        self.hold_next = False
        self.mem.push_faults.clear()
        self.mem.row_errors.clear()
        self.clock.now += 100

    @rule()
    def restart(self) -> None:
        if any(self.clock.now - t < self.WINDOW_S for t in self.late_at):
            self.repair_lost = True
        self.queue.close(flush_timeout_s=0)
        self.queue, self.clock = _manual(self.dir / "j.sqlite3", self._push, landed_ttl_s=0.0)

    @invariant()
    def view_is_the_model(self) -> None:
        for r in self.mem.rows[DS]:
            metadata, title = self.queue.view(r.uid, r.client_metadata, r.title)
            seen = (dict(metadata or {}), title)
            if seen == self.model[r.uid]:
                self.stale.discard(r.uid)  # repaired (or overridden): from now on it must stay right
            else:
                assert r.uid in self.stale, (r.uid, seen, self.model[r.uid])

    def teardown(self) -> None:
        try:
            self.deliver_late()
            for uid in list(self.model):  # a parked row is un-parked by editing it again
                if self.queue.parked_reason(uid) is not None:
                    metadata, title = self.model[uid]
                    self.queue.set_metadata(RowRef(uid, DS, "item-" + uid[4:]), metadata)
                    self.queue.set_title(RowRef(uid, DS, "item-" + uid[4:]), title)
            while self.queue.push_round():
                pass
            self.clock.now += self.WINDOW_S + 1  # every window over: the re-asserts are due
            while self.queue.push_round():
                pass
            assert self.queue.status()["pending_rows"] == 0 and not self.queue.status()["parked"]
            if self.repair_lost:
                return
            for r in self.mem.rows[DS]:
                assert (dict(r.client_metadata or {}), r.title) == self.model[r.uid]
        finally:  # a failed example leaves no open journal or temp dir behind
            self.queue.close(flush_timeout_s=0)
            shutil.rmtree(self.dir, ignore_errors=True)


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --- journal ---------------------------------------------------------------------------------------


def test_journal_is_0600_wal_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "writes.sqlite3"
    queue, _ = _manual(path, _backend(2).push)
    seqs = [
        queue.set_key(_ref(0), "a", 1),
        queue.set_key(_ref(0), "b", [1, 2]),
        queue.del_key(_ref(0), "orig"),
        queue.set_title(_ref(1), "new.jpg"),
        queue.set_metadata(_ref(1), {"z": None}),
    ]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    before = (queue.pending_change("row-0"), queue.pending_change("row-1"))
    left = queue.close(flush_timeout_s=0)
    assert left["pending_rows"] == 2 and left["pending_ops"] == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    wal = path.with_name(path.name + "-wal")  # may be folded back into the journal at close
    if wal.exists():
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600, wal
    reopened, _ = _manual(path, _backend(2).push)
    assert (reopened.pending_change("row-0"), reopened.pending_change("row-1")) == before
    assert reopened.set_key(_ref(0), "c", 3) > seqs[-1]
    reopened.close(flush_timeout_s=0)
    conn_check = Journal.open(path)
    assert conn_check._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn_check.close()


def test_public_surface() -> None:
    from encordfs.core import writes

    assert sorted(writes.__all__) == [
        "Op",
        "OpKind",
        "QueueConfig",
        "RowRef",
        "WriteQueue",
        "coalesce",
        "compose",
        "op_change",
    ]
    public = {n for n in dir(WriteQueue) if not n.startswith("_")}
    assert public == {
        "open",
        "start",
        "append",
        "set_metadata",
        "set_key",
        "del_key",
        "set_title",
        "discard",
        "view",
        "overlaid",
        "pending_change",
        "parked_reason",
        "flush",
        "wait_row",
        "status",
        "push_round",
        "close",
    }


def test_appended_values_are_private_copies(tmp_path: Path) -> None:
    queue, _ = _manual(tmp_path / "j.sqlite3", _backend(1).push)
    mine = {"a": [1]}
    queue.set_metadata(_ref(0), mine)
    mine["a"].append(2)
    assert queue.view("row-0", None, "t")[0] == {"a": [1]}
    queue.close(flush_timeout_s=0)


def test_view_applies_pending_then_landed_overlay_until_ttl(tmp_path: Path) -> None:
    mem = _backend(1)
    queue, clock = _manual(tmp_path / "j.sqlite3", mem.push, landed_ttl_s=60.0)
    stale = {"orig": 0, "other": 1}
    queue.set_key(_ref(0), "split", "train")
    queue.set_title(_ref(0), "b.jpg")
    assert queue.view("row-0", stale, "r0.jpg") == ({"orig": 0, "other": 1, "split": "train"}, "b.jpg")
    assert queue.view("row-9", stale, "x") == (stale, "x")  # untouched rows: inputs as they are
    queue.push_round()
    assert mem.row("row-0").client_metadata == {"orig": 0, "split": "train"} and mem.row("row-0").title == "b.jpg"
    assert queue.view("row-0", stale, "r0.jpg") == ({"orig": 0, "other": 1, "split": "train"}, "b.jpg")
    clock.now += 61
    assert queue.view("row-0", stale, "r0.jpg") == (stale, "r0.jpg")
    queue.close(flush_timeout_s=0)


# --- conflict rule ---------------------------------------------------------------------------------


def test_key_edits_merge_onto_current_server_state_and_replace_wins(tmp_path: Path) -> None:
    mem = _backend(2)
    queue, _ = _manual(tmp_path / "j.sqlite3", mem.push)
    queue.set_key(_ref(0), "split", "train")
    queue.set_metadata(_ref(1), {"x": 1})
    queue.set_key(_ref(1), "y", 2)
    for i in range(2):  # someone else edits the server meanwhile
        mem.rows[DS][i] = dataclasses.replace(mem.rows[DS][i], client_metadata={"orig": i, "theirs": True})
    queue.push_round()
    assert mem.row("row-0").client_metadata == {"orig": 0, "theirs": True, "split": "train"}
    assert mem.row("row-1").client_metadata == {"x": 1, "y": 2}
    queue.close(flush_timeout_s=0)


# --- pushing: batching, in-flight edits, retries, parking, bisection -------------------------------


def test_10000_ops_over_1000_rows_cost_one_push_of_1000_rows(tmp_path: Path) -> None:
    mem = _backend(1000)
    queue = WriteQueue.open(tmp_path / "j.sqlite3", mem.push, config=QueueConfig(debounce_s=60.0))
    rnd = random.Random(7)
    model = {r.uid: (dict(r.client_metadata or {}), r.title) for r in mem.rows[DS]}
    for n in range(10_000):
        i = n % 1000 if n < 1000 else rnd.randrange(1000)
        kind = rnd.choice([OpKind.SET_KEY, OpKind.SET_KEY, OpKind.DEL_KEY, OpKind.SET_METADATA, OpKind.SET_TITLE])
        key = rnd.choice("abc") if kind in (OpKind.SET_KEY, OpKind.DEL_KEY) else None
        value = {OpKind.SET_KEY: n, OpKind.DEL_KEY: None, OpKind.SET_METADATA: {"m": n}, OpKind.SET_TITLE: f"t{n}.jpg"}[
            kind
        ]
        queue.append(_ref(i), kind, key, value)
        model[f"row-{i}"] = model_apply(*model[f"row-{i}"], kind, key, value)  # type: ignore[assignment]
    assert mem.push_log == []  # debounced: nothing pushed during the burst
    assert queue.status()["pending_ops"] == 10_000
    assert queue.flush(30.0)
    assert len(mem.push_log) <= 2 and all(len(call) <= BULK_LIMIT for call in mem.push_log)
    assert {r.uid: (dict(r.client_metadata or {}), r.title) for r in mem.rows[DS]} == model
    status = queue.close()
    assert status["pending_rows"] == 0 and status["pushed_rows_total"] == 1000 and status["push_calls_total"] == 1


def test_batches_are_at_most_batch_rows(tmp_path: Path) -> None:
    mem = _backend(10)
    queue, _ = _manual(tmp_path / "j.sqlite3", mem.push, batch_rows=4)
    for i in range(10):
        queue.set_key(_ref(i), "k", i)
    while queue.push_round():
        pass
    assert [len(c) for c in mem.push_log] == [4, 4, 2]
    queue.close(flush_timeout_s=0)


def test_edits_made_during_a_push_stay_pending(tmp_path: Path) -> None:
    mem = _backend(1)
    holder: list[WriteQueue] = []

    def push(patches: list[RowPatch]) -> dict[str, PushOutcome]:
        if len(mem.push_log) == 0:
            holder[0].set_key(_ref(0), "late", True)  # the user edits while the push is on the wire
        return mem.push(patches)

    queue, _ = _manual(tmp_path / "j.sqlite3", push)
    holder.append(queue)
    queue.set_key(_ref(0), "early", 1)
    queue.push_round()
    assert mem.row("row-0").client_metadata == {"orig": 0, "early": 1}
    assert queue.pending_change("row-0") == RowChange(set_keys={"late": True})
    queue.close(flush_timeout_s=0)  # and the journal agrees
    queue, _ = _manual(tmp_path / "j.sqlite3", mem.push)
    assert queue.pending_change("row-0") == RowChange(set_keys={"late": True})
    queue.push_round()
    assert mem.row("row-0").client_metadata == {"orig": 0, "early": 1, "late": True}
    assert queue.pending_change("row-0") is None
    queue.close(flush_timeout_s=0)


def test_concurrent_writers_while_the_worker_pushes(tmp_path: Path) -> None:
    mem = _backend(40)
    mem.push_faults += [errors.TransientError("503")] * 3
    queue = WriteQueue.open(
        tmp_path / "j.sqlite3",
        mem.push,
        config=QueueConfig(debounce_s=0.001),
        retry=RetryPolicy(base_s=0.001, cap_s=0.01),
    )
    models: dict[str, tuple[dict[str, Any] | None, str]] = {}

    def writer(t: int) -> None:
        rnd = random.Random(t)
        own = {i: ({"orig": i}, f"r{i}.jpg") for i in range(t * 5, t * 5 + 5)}
        for n in range(300):
            i = rnd.choice(list(own))
            kind = rnd.choice([OpKind.SET_KEY, OpKind.DEL_KEY, OpKind.SET_METADATA, OpKind.SET_TITLE])
            key = rnd.choice("ab") if kind in (OpKind.SET_KEY, OpKind.DEL_KEY) else None
            value = {OpKind.SET_KEY: n, OpKind.DEL_KEY: None, OpKind.SET_METADATA: {"m": n}, OpKind.SET_TITLE: f"t{n}"}[
                kind
            ]
            queue.append(_ref(i), kind, key, value)
            own[i] = model_apply(*own[i], kind, key, value)  # type: ignore[assignment]
        models.update({f"row-{i}": m for i, m in own.items()})

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert queue.flush(20.0)
    assert queue.close()["push_calls_total"] > 3
    assert {r.uid: (r.client_metadata, r.title) for r in mem.rows[DS]} == models


def test_retry_policy_is_capped_full_jitter_with_retry_after_floor() -> None:
    top = RetryPolicy(base_s=0.5, cap_s=60.0, rand=lambda: 0.999999)
    assert [round(top.delay_s(n), 2) for n in (1, 2, 3, 8, 50)] == [0.5, 1.0, 2.0, 60.0, 60.0]
    zero = RetryPolicy(rand=lambda: 0.0)
    assert zero.delay_s(3) == 0.0 and zero.delay_s(3, retry_after_s=7) == 7 and zero.delay_s(1, 10_000) == 300


def test_transient_error_backs_off_honouring_retry_after_then_lands(tmp_path: Path) -> None:
    mem = _backend(1)
    queue, clock = _manual(tmp_path / "j.sqlite3", mem.push)
    mem.push_faults.append(errors.TransientError("429", retry_after_s=7))
    queue.set_key(_ref(0), "a", 1)
    queue.push_round()
    status = queue.status()
    assert status["pending_rows"] == 1 and status["retry_in_s"] == 7 and "429" in status["last_error"]
    assert queue._wait_s_locked() == 7  # the worker would wait this long
    clock.now += 7
    assert queue._wait_s_locked() == 0
    queue.push_round()
    assert mem.row("row-0").client_metadata == {"orig": 0, "a": 1}
    assert queue.status()["retry_in_s"] == 0 and len(mem.push_log) == 2
    queue.close(flush_timeout_s=0)


def test_worker_retries_transient_errors_and_flush_waits(tmp_path: Path) -> None:
    mem = _backend(2)
    mem.push_faults += [errors.TransientError("503"), errors.TransientError("429", retry_after_s=0.05)]
    queue = WriteQueue.open(
        tmp_path / "j.sqlite3", mem.push, config=QueueConfig(debounce_s=0.01), retry=RetryPolicy(base_s=0.01)
    )
    queue.set_key(_ref(0), "a", 1)
    assert queue.flush(10.0)
    assert len(mem.push_log) == 3 and mem.row("row-0").client_metadata == {"orig": 0, "a": 1}
    queue.set_key(_ref(1), "b", 2)
    assert queue.wait_row("row-1", 10.0)
    assert mem.row("row-1").client_metadata == {"orig": 1, "b": 2}
    assert queue.close()["pending_rows"] == 0


def test_permanent_error_parks_the_row_until_the_user_edits_it_again(tmp_path: Path) -> None:
    mem = _backend(2)
    path = tmp_path / "j.sqlite3"
    queue, _ = _manual(path, mem.push)
    mem.row_errors["row-0"] = errors.PermanentError("payload too large (413)")
    queue.set_key(_ref(0), "huge", "x" * 100)
    queue.set_key(_ref(1), "fine", 1)
    queue.push_round()
    status = queue.status()
    assert status["pending_rows"] == 0 and status["pending_ops"] == 0
    [parked] = status["parked"]
    assert parked["row"] == "row-0" and "413" in parked["reason"] and parked["title"] == "r0.jpg"
    assert mem.row("row-1").client_metadata == {"orig": 1, "fine": 1}
    calls = len(mem.push_log)
    assert queue.push_round() == 0 and len(mem.push_log) == calls  # not retried
    assert queue.view("row-0", {"orig": 0}, "r0.jpg")[0] == {"orig": 0, "huge": "x" * 100}  # still visible
    queue.close(flush_timeout_s=0)
    queue, _ = _manual(path, mem.push)  # parked survives a restart
    assert queue.parked_reason("row-0") is not None and queue.push_round() == 0
    assert not queue.wait_row("row-0", 5.0)  # fsync on a parked row fails at once
    del mem.row_errors["row-0"]
    queue.del_key(_ref(0), "huge")  # the user fixes it: un-parked with the new state
    assert queue.parked_reason("row-0") is None and queue.status()["pending_ops"] == 2
    queue.push_round()
    assert mem.row("row-0").client_metadata == {"orig": 0} and queue.status()["parked"] == []
    queue.close(flush_timeout_s=0)


def test_discard_drops_a_parked_row(tmp_path: Path) -> None:
    mem = _backend(1)
    queue, _ = _manual(tmp_path / "j.sqlite3", mem.push)
    mem.row_errors["row-0"] = errors.PermanentError("403")
    queue.set_key(_ref(0), "a", 1)
    queue.push_round()
    assert queue.discard("row-0") == 1
    assert queue.status()["parked"] == [] and queue.view("row-0", {"orig": 0}, "t") == ({"orig": 0}, "t")
    queue.close(flush_timeout_s=0)


def test_413_on_a_bulk_call_is_bisected_so_innocent_rows_land(tmp_path: Path) -> None:
    mem = _backend(16)
    queue, _ = _manual(tmp_path / "j.sqlite3", mem.push)
    mem.reject_rows["row-5"] = errors.PermanentError("payload too large (413)")
    for i in range(16):
        queue.set_key(_ref(i), "n", i)
    queue.push_round()
    assert len(mem.push_log) <= 1 + 2 * 4  # one call, then two per halving down to the guilty row
    assert [p["row"] for p in queue.status()["parked"]] == ["row-5"]
    for i in range(16):
        assert mem.row(f"row-{i}").client_metadata == ({"orig": i} if i == 5 else {"orig": i, "n": i})
    queue.close(flush_timeout_s=0)


def test_rows_missing_from_the_outcomes_are_retried(tmp_path: Path) -> None:
    mem = _backend(2)

    def forgetful(patches: list[RowPatch]) -> dict[str, PushOutcome]:
        out = mem.push(patches)
        out.pop("row-1", None)
        return out

    queue, _ = _manual(tmp_path / "j.sqlite3", forgetful)
    queue.set_key(_ref(0), "a", 1)
    queue.set_key(_ref(1), "a", 1)
    queue.push_round()
    assert queue.status()["pending_rows"] == 1 and queue.status()["retry_in_s"] >= 0
    assert queue.pending_change("row-0") is None and queue.pending_change("row-1") is not None
    queue.close(flush_timeout_s=0)


# --- crash safety: SIGKILL a writer at random points -----------------------------------------------


class FileServer:
    """A server whose state is one JSON file (atomic replace), so it survives SIGKILL of a pusher.

    ``push`` sleeps after writing, widening the window in which a change has landed but the journal
    does not know yet — the case replay must get right."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def create(path: Path, n_rows: int) -> FileServer:
        FileServer(path)._save({f"row-{i}": {"metadata": {"orig": i}, "title": f"r{i}.jpg"} for i in range(n_rows)})
        return FileServer(path)

    def load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())  # type: ignore[no-any-return]

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def push(self, patches: list[RowPatch]) -> dict[str, PushOutcome]:
        state = self.load()
        for p in patches:
            row = state[p.row_uid]
            row["metadata"] = p.change.apply_metadata(row["metadata"])
            row["title"] = p.change.title or row["title"]
        self._save(state)
        time.sleep(0.003)
        return {p.row_uid: PushOutcome(p.row_uid) for p in patches}


CRASH_ROWS = 12


def _crash_op(seed: int, n: int) -> tuple[int, OpKind, str | None, Any]:
    rnd = random.Random(seed * 1_000_003 + n)
    i = rnd.randrange(CRASH_ROWS)
    kind = rnd.choice([OpKind.SET_KEY, OpKind.SET_KEY, OpKind.DEL_KEY, OpKind.SET_METADATA, OpKind.SET_TITLE])
    key = rnd.choice("abc") if kind in (OpKind.SET_KEY, OpKind.DEL_KEY) else None
    value = {OpKind.SET_KEY: n, OpKind.DEL_KEY: None, OpKind.SET_METADATA: {"m": n}, OpKind.SET_TITLE: f"t{n}"}[kind]
    return i, kind, key, value


def _writer_main(journal: str, server: str, seed: int) -> None:
    """The subprocess: push in the background while appending forever; print intent/ack lines."""
    queue = WriteQueue.open(Path(journal), FileServer(Path(server)).push, config=QueueConfig(debounce_s=0.002))
    print("ready", flush=True)
    n = 0
    while True:
        i, kind, key, value = _crash_op(seed, n)
        print(f"intent {json.dumps([i, kind.value, key, value])}", flush=True)
        seq = queue.append(_ref(i), kind, key, value)
        print(f"ack {seq}", flush=True)
        n += 1


def test_sigkill_at_random_points_loses_no_acknowledged_op(tmp_path: Path) -> None:
    journal, server = tmp_path / "j.sqlite3", tmp_path / "server.json"
    FileServer.create(server, CRASH_ROWS)
    committed: dict[int, tuple[int, OpKind, str | None, Any]] = {}  # seq -> op, for the model
    rnd = random.Random(1234)
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    prev_last = 0
    for run in range(22):
        proc = subprocess.Popen(
            [sys.executable, __file__, "writer", str(journal), str(server), str(run)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rnd.uniform(0.01, 0.15))
        finally:  # the writer appends forever: it is killed here whatever happened
            os.kill(proc.pid, signal.SIGKILL)
            lines = proc.stdout.read().splitlines()
            proc.stdout.close()
            proc.wait()
        acked: list[tuple[int, Any]] = []
        pending_intent: Any = None
        for line in lines:
            word, _, rest = line.partition(" ")
            if word == "intent":
                pending_intent = json.loads(rest)
            elif word == "ack":
                acked.append((int(rest), pending_intent))
                pending_intent = None
        for seq, (i, kind, key, value) in acked:
            committed[seq] = (i, OpKind(kind), key, value)
        check = Journal.open(journal)
        last = check.last_seq()
        check.close()
        last_acked = acked[-1][0] if acked else prev_last
        assert last in (last_acked, last_acked + 1), "an acknowledged op is missing from the journal"
        if last == last_acked + 1:  # killed after the commit, before the ack: committed all the same
            assert pending_intent is not None
            i, kind, key, value = pending_intent
            committed[last] = (i, OpKind(kind), key, value)
        prev_last = last
    queue = WriteQueue.open(journal, FileServer(server).push, config=QueueConfig(debounce_s=0.0))
    assert queue.flush(20.0)
    queue.close()
    model = {f"row-{i}": ({"orig": i}, f"r{i}.jpg") for i in range(CRASH_ROWS)}
    for seq in sorted(committed):
        i, kind, key, value = committed[seq]
        model[f"row-{i}"] = model_apply(*model[f"row-{i}"], kind, key, value)  # type: ignore[assignment]
    final = {uid: (row["metadata"], row["title"]) for uid, row in FileServer(server).load().items()}
    assert final == model
    assert len(committed) > 22


# --- through the real SDK, against the emulator ----------------------------------------------------

EMULATOR_ROWS = 1000


def test_sdk_backend_pushes_10000_ops_over_1000_rows_in_few_calls(tmp_path: Path) -> None:
    from encord.orm.dataset import DatasetAccessSettings

    from encordfs.backend.sdk import SdkBackend
    from harness.emulator import RunningEmulator

    tree = tmp_path / "tree"
    (tree / "writes").mkdir(parents=True)
    for n in range(EMULATOR_ROWS):  # importing a folder is far faster than POST /_emulator/rows per row
        (tree / "writes" / f"r{n}.txt").write_text("x")
        (tree / "writes" / f"r{n}.txt.metadata.json").write_text(json.dumps({"orig": n}))
    with RunningEmulator(["--import", str(tree), "--max-metadata-bytes", "4096"]) as emu:
        assert emu.key_file is not None
        backend = SdkBackend(emu.domain, emu.key_file.read_text())
        [dataset] = [d for d in backend.list_datasets() if d.title == "writes"]
        rows = list(backend.iter_rows(dataset.uid))
        assert len(rows) == EMULATOR_ROWS and all(r.backing_item_uuid for r in rows)
        model = {r.uid: (dict(r.client_metadata or {}), r.title) for r in rows}
        refs = [RowRef(r.uid, dataset.uid, r.backing_item_uuid, r.title) for r in rows]
        queue = WriteQueue.open(tmp_path / "j.sqlite3", backend.push, config=QueueConfig(debounce_s=60.0))
        rnd = random.Random(11)
        for n in range(10_000):
            ref = refs[n % EMULATOR_ROWS] if n < EMULATOR_ROWS else rnd.choice(refs)
            kind = rnd.choice([OpKind.SET_KEY, OpKind.SET_KEY, OpKind.DEL_KEY, OpKind.SET_METADATA, OpKind.SET_TITLE])
            key = rnd.choice("ab") if kind in (OpKind.SET_KEY, OpKind.DEL_KEY) else None
            value = {
                OpKind.SET_KEY: n,
                OpKind.DEL_KEY: None,
                OpKind.SET_METADATA: {"m": n},
                OpKind.SET_TITLE: f"t{n}.txt",
            }[kind]
            queue.append(ref, kind, key, value)
            model[ref.uid] = model_apply(*model[ref.uid], kind, key, value)  # type: ignore[assignment]
        # one row over the emulator's 4 KiB limit: its 413 fails the bulk call, bisection isolates it
        queue.set_key(refs[0], "huge", "x" * 5000)
        model[refs[0].uid] = (dict(rows[0].client_metadata or {}), rows[0].title)  # parked: never lands
        emu.reset()  # counters from zero
        assert queue.flush(60.0)
        calls = emu.stats()
        status = queue.close()
        assert [p["row"] for p in status["parked"]] == [refs[0].uid]
        # 2 calls for the bulk push, then bisection down to the one guilty row: 2 per halving
        assert calls["api_calls"] <= 2 + 2 * 2 * math.ceil(math.log2(EMULATOR_ROWS)), calls
        plain = emu.client()
        fresh = plain.get_dataset(
            dataset.uid, dataset_access_settings=DatasetAccessSettings(fetch_client_metadata=True)
        )
        got = {r.uid: (dict(r.client_metadata or {}), r.title) for r in fresh.data_rows}
        assert got == model

        # without the guilty row, 10,000 ops cost exactly one get-bulk and one patch-bulk
        queue = WriteQueue.open(tmp_path / "j2.sqlite3", backend.push, config=QueueConfig(debounce_s=60.0))
        for n in range(10_000):
            ref = refs[n % EMULATOR_ROWS]
            queue.set_key(ref, "round2", n)
            model[ref.uid] = model_apply(*model[ref.uid], OpKind.SET_KEY, "round2", n)  # type: ignore[assignment]
        emu.reset()
        assert queue.flush(60.0)
        calls = emu.stats()
        queue.close()
        assert calls["api_calls"] == 2 and calls["v2.items.patch_bulk"] == 1, calls
        fresh = plain.get_dataset(
            dataset.uid, dataset_access_settings=DatasetAccessSettings(fetch_client_metadata=True)
        )
        assert {r.uid: (dict(r.client_metadata or {}), r.title) for r in fresh.data_rows} == model

        # rows without a backing item go through the deprecated DataRow.save path, merge rule included
        legacy = [
            RowPatch(r.uid, dataset.uid, None, RowChange(set_keys={"legacy": 1}, title=f"L{k}.txt"))
            for k, r in enumerate(rows[1:3])
        ]
        emu.reset()
        outcomes = backend.push(legacy)
        assert all(o.ok for o in outcomes.values()) and emu.stats()["api_calls"] == 2 + len(legacy)
        fresh = plain.get_dataset(
            dataset.uid, dataset_access_settings=DatasetAccessSettings(fetch_client_metadata=True)
        )
        got = {r.uid: (dict(r.client_metadata or {}), r.title) for r in fresh.data_rows}
        for k, r in enumerate(rows[1:3]):
            assert got[r.uid] == ({**model[r.uid][0], "legacy": 1}, f"L{k}.txt")


if __name__ == "__main__" and sys.argv[1:2] == ["writer"]:
    _writer_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))


def test_a_late_duplicate_of_a_push_of_unknown_outcome_is_repaired_by_a_reassert(tmp_path: Path) -> None:
    """The first push times out on our side but the server applies it later, after a newer push:
    once the late-duplicate window has passed, the newest landed state is pushed once more."""
    mem = _backend(1)
    late: list[RowPatch] = []

    def push(patches: list[RowPatch]) -> dict[str, PushOutcome]:
        if not late:
            late.extend(patches)  # the server holds this request and applies it later
            raise errors.Unavailable("read timed out")
        return mem.push(patches)

    queue, clock = _manual(tmp_path / "j.sqlite3", push, reassert_after_s=30.0)
    queue.set_key(_ref(0), "split", "train")
    queue.push_round()  # times out: doubtful
    clock.now += 5
    queue.push_round()  # the retry lands "train"
    queue.set_key(_ref(0), "split", "val")
    queue.push_round()  # lands "val"
    assert mem.row("row-0").client_metadata == {"orig": 0, "split": "val"}
    mem.push(late)  # the held request lands now: a stale overwrite
    assert mem.row("row-0").client_metadata == {"orig": 0, "split": "train"}
    assert queue.push_round() == 0  # still inside the window: nothing yet
    status = queue.status()
    assert status["reasserts_pending"] == 1 and status["pending_rows"] == 0
    clock.now += 31
    assert queue._wait_s_locked() == 0  # the worker would wake for it
    assert queue.push_round() == 1
    assert mem.row("row-0").client_metadata == {"orig": 0, "split": "val"}  # the newest state wins again
    assert queue.status()["reasserts_total"] == 1 and queue.status()["reasserts_pending"] == 0
    assert queue._wait_s_locked() is None
    queue.close(flush_timeout_s=0)


def test_a_planned_reassert_takes_in_what_lands_before_it_is_sent(tmp_path: Path) -> None:
    """Found by the stateful test (CI): a re-assert planned once the late-duplicate window had passed
    was still sent after a newer edit landed, and put the older state back over it."""
    mem = _backend(1)
    fail = [errors.TransientError("503")]

    def push(patches: list[RowPatch]) -> dict[str, PushOutcome]:
        if fail:
            raise fail.pop()
        return mem.push(patches)

    queue, clock = _manual(tmp_path / "j.sqlite3", push, reassert_after_s=30.0)
    queue.set_key(_ref(0), "split", "train")
    queue.push_round()  # 503: the outcome is unknown, the server may still apply it
    clock.now += 5
    queue.push_round()  # lands "train": a re-assert is planned for the end of the window
    clock.now += 30
    queue.set_key(_ref(0), "split", "val")
    queue.push_round()  # lands "val" once the window has passed: the re-assert is due, with "val"
    queue.set_key(_ref(0), "split", "test")  # edited again before the re-assert went out
    while queue.push_round():
        pass
    assert mem.row("row-0").client_metadata == {"orig": 0, "split": "test"}
    assert queue.status()["reasserts_pending"] == 0
    queue.close(flush_timeout_s=0)


def test_pending_memory_is_per_row_not_per_edit(tmp_path: Path) -> None:
    mem = _backend(2)
    queue, clock = _manual(tmp_path / "j.sqlite3", mem.push)
    for i in range(3000):
        queue.set_key(_ref(i % 2), f"k{i % 7}", i)
    assert queue.status()["pending_ops"] == 3000
    assert all(isinstance(r.ops, int) for r in queue._rows.values())  # a count, not a list of ops
    queue.push_round()
    assert mem.row("row-1").client_metadata is not None and mem.row("row-1").client_metadata["k3"] == 2999
    queue.close(flush_timeout_s=0)


def test_an_internal_error_of_push_parks_the_guilty_row_instead_of_looping(tmp_path: Path) -> None:
    mem = _backend(3)

    def buggy(patches: list[RowPatch]) -> dict[str, PushOutcome]:
        if any(p.row_uid == "row-1" for p in patches):
            raise TypeError("a bug that fails this row every time")
        return mem.push(patches)

    queue, clock = _manual(tmp_path / "j.sqlite3", buggy)
    for i in range(3):
        queue.set_key(_ref(i), "a", i)
    queue.push_round()
    status = queue.status()
    assert status["pending_rows"] == 0 and [p["row"] for p in status["parked"]] == ["row-1"]
    assert "internal error: TypeError" in status["parked"][0]["reason"]
    assert mem.row("row-0").client_metadata == {"orig": 0, "a": 0} and mem.row("row-2").client_metadata == {
        "orig": 2,
        "a": 2,
    }
    assert queue._wait_s_locked() is None  # nothing left to retry
    queue.close(flush_timeout_s=0)


def test_the_journal_really_syncs_every_commit(tmp_path: Path) -> None:
    """``synchronous=FULL`` is what makes a returned append survive power loss: NORMAL would pass every
    other test, so it is checked here on the connection the queue uses."""
    from encordfs.core.journal import Journal

    journal = Journal.open(tmp_path / "j.sqlite3")
    try:
        assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert journal._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        journal.close()
