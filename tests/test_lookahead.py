"""Prefetch across files in the core, without a kernel or a server: which files are fetched before
they are opened, under sequential reads, random reads and order hints (``core.prefetch``).

A recording fetcher logs every GET in one sequence with the test's opens, so "fetched before it was
opened" is an order of events, not a timing. Between opens the test waits for the prefetcher to be
idle (``wait_idle``), which makes each run deterministic.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from encordfs import errors
from encordfs.backend import DatasetRecord
from encordfs.backend.memory import MemoryBackend
from encordfs.core.blockcache import MemoryBlockCache
from encordfs.core.catalog import Catalog
from encordfs.core.counters import Counters
from encordfs.core.fs import EncordFS, Options
from encordfs.core.prefetch import Item, PrefetchConfig, Prefetcher
from encordfs.core.reader import ReadPipeline
from encordfs.core.urls import SignedUrlCache
from harness.fakes import Clock
from harness.fakes import row_record as _row

FILES = 40
SIZE = 3000


class RecordingFetcher:
    """A RangeFetcher over MemoryBackend that logs each GET (item id) in ``events``; ``fail`` names
    items whose GETs fail."""

    def __init__(self, backend: MemoryBackend, events: list[tuple[str, str]], lock: threading.Lock) -> None:
        self.backend = backend
        self.events = events
        self.lock = lock
        self.fail: set[str] = set()

    def fetch_into(self, url_source: Any, start: int, out: memoryview, total: int | None = None) -> None:
        item = url_source(False).removeprefix("mem://")
        with self.lock:
            self.events.append(("fetch", item))
        if item in self.fail:
            raise errors.RemoteIOError(f"{item}: injected failure")
        out[:] = self.backend.fetch(f"mem://{item}", start, start + len(out))


class AsyncRecordingFetcher(RecordingFetcher):
    """Also ``fetch_async``, completed on a thread of its own as libcurl's loop would: ``fail_async``
    names items whose single async attempt fails; ``hold`` (an Event) keeps each transfer in flight
    until it is set."""

    def __init__(self, backend: MemoryBackend, events: list[tuple[str, str]], lock: threading.Lock) -> None:
        super().__init__(backend, events, lock)
        self.fail_async: set[str] = set()
        self.hold: threading.Event | None = None

    def fetch_async(self, url: str, start: int, out: memoryview, on_done: Any, total: int | None = None) -> bool:
        item = url.removeprefix("mem://")

        def run() -> None:
            if self.hold is not None:
                self.hold.wait(10)
            with self.lock:
                self.events.append(("fetch", item))
            if item in self.fail_async:
                on_done(errors.RemoteIOError(f"{item}: injected async failure"))
                return
            out[:] = self.backend.fetch(url, start, start + len(out))
            on_done(None)

        threading.Thread(target=run, daemon=True).start()
        return True


@dataclass
class FakeLink:
    """The byte server's link as ``core.link.LinkEstimate`` would have measured it."""

    floor_s: float = 0.0
    bandwidth_bytes_s: float = 0.0


class World:
    def __init__(
        self,
        tmp_path: Path,
        config: PrefetchConfig,
        files: int = FILES,
        use_async: bool = False,
        sign_gate: threading.Event | None = None,
    ) -> None:
        self.backend = MemoryBackend()
        self.backend.add_dataset(DatasetRecord("ds1", "street", "d", 1e9, 1e9, 0, "folder1", "admin"))
        self.backend.add_dataset(DatasetRecord("ds2", "other", "d", 1e9, 1e9, 0, "folder2", "admin"))
        for i in range(files):
            self.backend.add_row(_row(f"r{i:03d}", "ds1", f"f{i:03d}.jpg", bytes(SIZE)), bytes([i % 256]) * SIZE)
        for i in range(5):
            self.backend.add_row(_row(f"o{i}", "ds2", f"g{i}.jpg", bytes(SIZE)), bytes([100 + i]) * SIZE)
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.counters = Counters()
        self.catalog = Catalog(tmp_path / "catalog.sqlite")
        self.fetcher = (AsyncRecordingFetcher if use_async else RecordingFetcher)(self.backend, self.events, self.lock)
        self.sign_calls: list[list[str]] = []  # the ids of each signing call, in order

        def sign(ids: list[str]) -> Any:
            if sign_gate is not None:
                sign_gate.wait(10)
            with self.lock:
                self.sign_calls.append(list(ids))
            return self.backend.sign(ids)

        urls = SignedUrlCache(sign, clock=Clock())
        self.reader = ReadPipeline(
            self.fetcher,
            MemoryBlockCache(64 << 20),
            self.counters,
            small_file_bytes=1 << 20,
            part_bytes=1 << 20,
            memory_budget_bytes=64 << 20,
        )
        options = Options(uid=0, gid=0, metadata_ttl_s=60)
        self.fs = EncordFS(self.backend, self.catalog, self.reader, urls, options, clock=Clock())

        self.handed: list[int] = []  # inodes handed to fetch or fetch_async (the planner thread's)
        self.prefetch_hold: threading.Event | None = None  # holds prefetches on worker threads until set

        def fetch(item: Item) -> int:
            self.handed.append(item.ino)
            if self.prefetch_hold is not None:
                self.prefetch_hold.wait(10)
            return self.reader.prefetch_file(item.key, item.size, item.url_source)

        def fetch_async(item: Item, done: Any) -> bool:
            self.handed.append(item.ino)
            return self.reader.prefetch_file_async(item.key, item.size, item.url_source, done)

        def cached(item: Item) -> bool:
            return self.reader.has_first_part(item.key)

        self.prefetcher = Prefetcher(
            self.fs,
            fetch,
            self.counters,
            config,
            mountpoint="/mnt/enc",
            fetch_async=fetch_async if use_async else None,
            cached=cached,
        )
        self.fs.prefetcher = self.prefetcher

    def close(self) -> None:
        self.prefetcher.close()
        self.fs.close()
        self.reader.close()
        self.catalog.close()

    def read(self, path: str) -> bytes:
        ino = self.fs.resolve(path)
        item = f"item-{self.fs.node(ino).uid}"
        with self.lock:
            self.events.append(("open", item))
        fh = self.fs.open(ino, writable=False).fh
        try:
            return bytes(self.fs.read(fh, 0, 1 << 20))
        finally:
            self.fs.release(fh)

    def fetched_before_opened(self) -> set[str]:
        """Items whose first GET came before their first open."""
        first: dict[tuple[str, str], int] = {}
        with self.lock:
            for i, event in enumerate(self.events):
                first.setdefault(event, i)
        return {
            item
            for (kind, item), at in first.items()
            if kind == "fetch" and at < first.get(("open", item), len(self.events) + 1)
        }

    def opened(self) -> set[str]:
        with self.lock:
            return {item for kind, item in self.events if kind == "open"}

    def fetches(self, item: str) -> int:
        with self.lock:
            return sum(1 for event in self.events if event == ("fetch", item))

    def hint(self, lines: list[bytes]) -> None:
        fh = self.fs.open(self.fs.resolve("/.encordfs/hints"), writable=True).fh
        try:
            data = b"".join(line + b"\n" for line in lines)
            for at in range(0, len(data), 100):  # lines split across writes
                assert self.fs.write(fh, at, data[at : at + 100]) == len(data[at : at + 100])
        finally:
            self.fs.release(fh)


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Any]:
    made: list[World] = []

    def make(
        files: int = FILES, use_async: bool = False, sign_gate: threading.Event | None = None, **config: Any
    ) -> World:
        world = World(tmp_path / f"w{len(made)}", PrefetchConfig(**config), files, use_async, sign_gate)
        made.append(world)
        return world

    for path in (tmp_path / f"w{i}" for i in range(4)):
        path.mkdir()
    yield make
    for world in made:
        world.close()


def name(i: int) -> str:
    return f"/street/f{i:03d}.jpg"


def test_cached_files_are_passed_over_without_a_fetch(make_world: Any) -> None:
    """An epoch over files already cached: the planner passes over them itself instead of handing each to
    ``fetch`` to find out (that machinery cost ~90 us of mount CPU per open of a cached file)."""
    w = make_world(use_async=True)
    w.fs.readdir(w.fs.resolve("/street"))
    for i in range(FILES):
        w.read(name(i))
    assert w.prefetcher.wait_idle()
    first_pass = len(w.handed)
    for i in range(FILES):
        assert w.read(name(i)) == bytes([i]) * SIZE
        assert w.prefetcher.wait_idle()
    assert len(w.handed) == first_pass  # nothing handed over the second time
    assert w.counters.get("prefetch.already_cached") >= FILES - 2 * PrefetchConfig().lookahead_run
    assert all(w.fetches(f"item-r{i:03d}") == 1 for i in range(FILES))


@pytest.mark.parametrize("use_async", [False, True], ids=["threads", "async"])
def test_a_sequential_reader_gets_the_next_files_fetched_before_it_opens_them(make_world: Any, use_async: bool) -> None:
    w = make_world(use_async=use_async)
    w.fs.readdir(w.fs.resolve("/street"))
    for i in range(FILES):
        assert w.read(name(i)) == bytes([i]) * SIZE
        assert w.prefetcher.wait_idle()
    ahead = w.fetched_before_opened()
    # the first four opens make the run that starts the stream; every later file was there first
    run = PrefetchConfig().lookahead_run
    assert {f"item-r{i:03d}" for i in range(run, FILES)} <= ahead
    assert not {f"item-r{i:03d}" for i in range(run)} & ahead
    assert all(w.fetches(f"item-r{i:03d}") == 1 for i in range(FILES))  # nothing fetched twice
    c = w.counters.snapshot()
    assert c["lookahead.streams"] == 1 and c["prefetch.used"] == FILES - run
    assert w.counters.get("prefetch.unused_files") == 0  # the stream ended with the folder
    assert w.prefetcher.status()["ahead_bytes"] == 0


def test_a_busy_planner_handles_events_a_few_at_a_time(make_world: Any) -> None:
    """With 8 or more files in flight from a fast server the planner lets events gather (``linger_s``)
    instead of waking for each: 40 opens a fraction of a millisecond apart make far fewer planning
    rounds than opens. Behind a slow link (the measured latency floor) it does not wait."""
    w = make_world(use_async=True, initial_window=16, linger_s=0.01)
    hold = threading.Event()
    w.fetcher.hold = hold  # prefetches stay in flight until released
    try:
        for i in range(PrefetchConfig().lookahead_run):  # a run of opens: the stream fetches 16 ahead
            w.read(name(i))
        assert w.prefetcher.ping()
        assert w.prefetcher.status()["in_flight"] >= 8
        other = w.fs.resolve("/other")
        rounds = w.counters.get("prefetch.plan_rounds")
        for i in range(40):
            w.prefetcher.opened(other, 10_000 + i, f"elsewhere-{i}")
            time.sleep(0.0005)
        assert w.prefetcher.ping()
        assert w.counters.get("prefetch.plan_rounds") - rounds <= 20
        # behind a link whose first bytes take 30 ms the wait would cost fetches per second: none
        w.prefetcher.link = FakeLink(floor_s=0.03)
        assert not w.prefetcher._lingers()  # noqa: SLF001
        w.prefetcher.link = FakeLink(floor_s=0.0005)
        assert w.prefetcher._lingers()  # noqa: SLF001
    finally:
        hold.set()
    assert w.prefetcher.wait_idle()


def test_a_link_with_slow_first_bytes_gets_more_files_in_flight_as_far_as_its_bandwidth_carries(
    make_world: Any,
) -> None:
    """``parallel`` files at once serve at most ``parallel / floor`` files per second: behind a slow
    first byte the planner allows ``latency_target_files_s`` x the floor (at most ``max_parallel``),
    the ones beyond ``parallel`` only while their bytes stay under ``bdp_multiple`` x bandwidth x
    floor, and it re-decides every planning round (the bandwidth measured grows as more deliver)."""
    w = make_world(
        files=60, use_async=True, parallel=4, max_parallel=12, latency_target_files_s=1000, hint_initial_window=30
    )
    hold = threading.Event()
    w.fetcher.hold = w.prefetch_hold = hold  # every prefetch stays in flight until released
    status = w.prefetcher.status
    try:
        w.prefetcher.link = FakeLink(floor_s=0.0005, bandwidth_bytes_s=1e9)  # loopback: 1 file wanted
        w.hint([name(i).encode() for i in range(60)])
        assert w.prefetcher.ping()
        assert (status()["in_flight"], status()["in_flight_max"]) == (4, 4)
        # 100 ms to the first byte, but 120 KB/s: 2 x 120,000 x 0.1 = 24,000 bytes, 8 files of 3,000
        w.prefetcher.link = link = FakeLink(floor_s=0.1, bandwidth_bytes_s=120_000)
        assert w.prefetcher.ping()
        assert (status()["in_flight"], status()["in_flight_max"]) == (8, 12)
        assert (status()["in_flight_bytes"], status()["in_flight_max_bytes"]) == (24_000, 24_000)
        link.bandwidth_bytes_s = 1e9  # the transfers delivered more: up to max_parallel, no further
        assert w.prefetcher.ping()
        assert (status()["in_flight"], status()["in_flight_max"]) == (12, 12)
        assert w.counters.get("prefetch.in_flight_peak") == 12
        link.floor_s = 0.0005  # a fast link again: nothing new starts until fewer than 4 are in flight
        assert w.prefetcher.ping()
        assert (status()["in_flight"], status()["in_flight_max"]) == (12, 4)
    finally:
        hold.set()
    assert w.prefetcher.wait_idle()
    for i in range(60):
        assert w.read(name(i)) == bytes([i]) * SIZE
        assert w.prefetcher.wait_idle()
    assert all(w.fetches(f"item-r{i:03d}") == 1 for i in range(60))  # each fetched once, before its open
    assert w.fetched_before_opened() == {f"item-r{i:03d}" for i in range(60)}


def test_a_random_reader_starts_no_lookahead(make_world: Any) -> None:
    w = make_world(files=300)
    order = list(range(300))
    random.Random(7).shuffle(order)
    for i in order:
        assert w.read(name(i)) == bytes([i % 256]) * SIZE
        assert w.prefetcher.wait_idle(timeout_s=30)
    assert w.fetched_before_opened() == set()
    c = w.counters.snapshot()
    assert c.get("lookahead.streams", 0) == 0 and c.get("prefetch.files", 0) == 0


def test_the_window_grows_while_used_and_stays_bounded(make_world: Any) -> None:
    w = make_world(initial_window=2, max_window=6, lookahead_run=3)
    for i in range(4):  # three in a row start the stream, window 2; the fourth open uses it
        w.read(name(i))
        assert w.prefetcher.wait_idle()
    opened = {f"item-r{i:03d}" for i in range(4)}
    ahead = w.fetched_before_opened() - opened
    assert ahead == {f"item-r{i:03d}" for i in range(4, 7)}  # window 3 after one use: files 4, 5, 6
    for i in range(4, 20):
        w.read(name(i))
        assert w.prefetcher.wait_idle()
    not_yet = w.fetched_before_opened() - w.opened()
    assert not_yet == {f"item-r{i:03d}" for i in range(20, 26)}  # the window stopped at its maximum, 6


def test_an_abandoned_stream_stops_and_counts_what_nobody_read(make_world: Any) -> None:
    w = make_world(idle_opens=4, lookahead_run=3)
    for i in range(3):
        w.read(name(i))
        assert w.prefetcher.wait_idle()
    for i in (30, 25, 35, 20, 38, 28):  # the reader leaves the sequence
        w.read(name(i))
        assert w.prefetcher.wait_idle()
    c = w.counters.snapshot()
    assert c["lookahead.retired_idle"] == 1 and c["prefetch.unused_files"] >= 3
    assert w.prefetcher.status() == {
        "streams": [],
        "in_flight": 0,
        "in_flight_max": 32,
        "in_flight_bytes": 0,
        "in_flight_max_bytes": 0,
        "ahead_bytes": 0,
        "ahead_bytes_max": 128 << 20,
    }


def test_hints_are_fetched_in_their_order_a_bounded_window_ahead(make_world: Any) -> None:
    w = make_world(hint_initial_window=5)
    order = list(range(FILES))
    random.Random(3).shuffle(order)
    w.hint([name(i).encode() for i in order])
    assert w.prefetcher.wait_idle()
    first = {f"item-r{i:03d}" for i in order[:5]}
    assert w.fetched_before_opened() == first  # bounded: the window, nothing more
    for i in order:
        assert w.read(name(i)) == bytes([i]) * SIZE
        assert w.prefetcher.wait_idle()
    assert w.fetched_before_opened() == {f"item-r{i:03d}" for i in order}  # every one was there first
    c = w.counters.snapshot()
    assert c["hints.lists"] == 1 and c["hints.lines"] == FILES and c["prefetch.used"] == FILES
    assert c.get("lookahead.streams", 0) == 0  # hinted opens start no lookahead
    assert c["hints.retired_finished"] == 1


def test_hint_lines_that_name_nothing_are_skipped_and_counted(make_world: Any) -> None:
    w = make_world(hint_initial_window=8)
    w.hint(
        [
            b"/street/nope.jpg",  # no such file
            b"/nowhere/x.jpg",  # no such folder
            b"/street",  # a folder
            b"\xff\xfe.jpg",  # not UTF-8
            b"",  # empty: skipped silently
            b"street/f001.jpg",  # relative to the mount root
            b"/mnt/enc/street/f002.jpg\r",  # absolute under the mount point, CRLF
            b"/street/f003.jpg",
            b"/.encordfs/status.json",  # a control file is not a file to fetch
        ]
    )
    assert w.prefetcher.wait_idle()
    assert w.fetched_before_opened() == {"item-r001", "item-r002", "item-r003"}
    c = w.counters.snapshot()
    assert c["hints.lines"] == 8
    assert c["hints.unknown_paths"] == 3 and c["hints.not_files"] == 1 and c["hints.invalid_lines"] == 1
    assert w.read(name(2)) == bytes([2]) * SIZE  # nothing failed


def test_an_empty_hint_write_clears_the_hints(make_world: Any) -> None:
    w = make_world(hint_initial_window=2)
    w.hint([name(i).encode() for i in range(10, 30)])
    assert w.prefetcher.wait_idle()
    assert len(w.prefetcher.status()["streams"]) == 1
    w.hint([])
    assert w.prefetcher.wait_idle()
    assert w.prefetcher.status()["streams"] == [] and w.counters.get("hints.clears") == 1


def test_a_failed_prefetch_is_dropped_and_the_demand_read_still_works(make_world: Any) -> None:
    w = make_world(hint_initial_window=4)
    w.fetcher.fail.add("item-r005")
    w.hint([name(i).encode() for i in range(4, 8)])
    assert w.prefetcher.wait_idle()
    assert w.counters.get("prefetch.failed") == 1 and w.counters.get("prefetch.files") == 3
    w.fetcher.fail.clear()
    assert w.read(name(5)) == bytes([5]) * SIZE  # fetched on demand, no error left behind
    assert w.fetches("item-r005") == 2
    assert w.read(name(6)) == bytes([6]) * SIZE and w.fetches("item-r006") == 1  # from the cache


def test_prefetch_stays_within_its_ahead_budget(make_world: Any) -> None:
    w = make_world(hint_initial_window=64, ahead_bytes=5 * SIZE)
    w.hint([name(i).encode() for i in range(FILES)])
    assert w.prefetcher.wait_idle()
    assert len(w.fetched_before_opened()) == 5  # five files' worth of bytes, whatever the window
    status = w.prefetcher.status()
    assert status["ahead_bytes"] == 5 * SIZE and w.counters.get("prefetch.ahead_full") >= 1
    w.read(name(0))
    assert w.prefetcher.wait_idle()
    assert len(w.fetched_before_opened() - w.opened()) == 5  # one consumed, one more fetched


def test_hints_without_a_prefetcher_are_refused(make_world: Any) -> None:
    w = make_world()
    w.fs.prefetcher = None
    with pytest.raises(errors.ReadOnly):
        w.fs.open(w.fs.resolve("/.encordfs/hints"), writable=True)
    fh = w.fs.open(w.fs.resolve("/.encordfs/hints"), writable=False).fh
    assert w.fs.read(fh, 0, 100) == b""
    w.fs.release(fh)
    w.fs.truncate(w.fs.resolve("/.encordfs/hints"), 0)  # echo ... > hints truncates first: fine
    with pytest.raises(errors.ReadOnly):
        w.fs.truncate(w.fs.resolve(name(1)), 0)
    fh = w.fs.open(w.fs.resolve(name(1)), writable=False).fh
    with pytest.raises(errors.ReadOnly):
        w.fs.write(fh, 0, b"x")
    w.fs.release(fh)


def test_a_failed_async_attempt_is_retried_on_a_thread(make_world: Any) -> None:
    w = make_world(use_async=True, hint_initial_window=4)
    w.fetcher.fail_async.add("item-r005")
    w.hint([name(i).encode() for i in range(4, 8)])
    assert w.prefetcher.wait_idle()
    assert w.fetched_before_opened() == {f"item-r{i:03d}" for i in range(4, 8)}
    c = w.counters.snapshot()
    assert c["prefetch.async_retries"] == 1 and c["prefetch.files"] == 4 and c.get("prefetch.failed", 0) == 0
    assert w.fetches("item-r005") == 2  # the failed attempt, then the thread's
    assert w.read(name(5)) == bytes([5]) * SIZE and w.fetches("item-r005") == 2


def test_a_demand_read_that_joined_a_failing_prefetch_fetches_on_its_own(make_world: Any) -> None:
    w = make_world(use_async=True, hint_initial_window=1)
    w.fetcher.hold = threading.Event()
    w.fetcher.fail_async.add("item-r009")
    w.hint([name(9).encode()])
    assert w.prefetcher.wait_idle(timeout_s=0.5) is False  # held in flight
    reader_done: list[bytes] = []
    t = threading.Thread(target=lambda: reader_done.append(_read_when_fetchable(w)))
    t.start()
    while w.counters.get("reader.flight_joins") == 0:  # the demand read joined the prefetch's flight
        threading.Event().wait(0.01)
    w.fetcher.hold.set()
    t.join(10)
    assert reader_done == [bytes([9]) * SIZE]
    assert w.counters.get("reader.prefetch_failures_refetched") == 1
    assert w.prefetcher.wait_idle() and w.counters.get("prefetch.async_retries") == 1


def _read_when_fetchable(w: World) -> bytes:
    """Open and read file 9 while its prefetch is held in flight."""
    fh = w.fs.open(w.fs.resolve(name(9)), writable=False).fh
    try:
        return bytes(w.fs.read(fh, 0, 1 << 20))
    finally:
        w.fs.release(fh)


def test_hints_serve_parallel_workers_reading_their_own_batches(make_world: Any) -> None:
    """A loader's workers each read their own batch of the hinted order at once (worker k: positions
    10k, 10k+1, ...): files opened before scheduling reached them are skipped, not the files between."""
    w = make_world(hint_initial_window=2)
    w.hint([name(i).encode() for i in range(FILES)])
    assert w.prefetcher.wait_idle()
    order = [10 * k + j for j in range(10) for k in range(4)]  # 0, 10, 20, 30, 1, 11, 21, 31, ...
    for i in order:
        assert w.read(name(i)) == bytes([i]) * SIZE
        assert w.prefetcher.wait_idle()
    missed = {f"item-r{i:03d}" for i in range(FILES)} - w.fetched_before_opened()
    assert missed == {"item-r010", "item-r020", "item-r030"}  # opened before the window (2, 3, 4...) got there
    assert all(w.fetches(f"item-r{i:03d}") == 1 for i in range(FILES))  # and none fetched twice
    c = w.counters.snapshot()
    assert c["hints.overtaken"] == 3 and c["hints.hits"] == FILES - 3 and c["hints.retired_finished"] == 1
    assert w.prefetcher.status()["ahead_bytes"] == 0


def test_urls_are_signed_ahead_in_hint_order_and_a_slow_call_never_stalls_the_planner(make_world: Any) -> None:
    """A hint list's URLs are asked for ``sign_lead`` positions ahead of what it schedules, a batch of
    ``sign_batch`` at a time, in the list's order; a file whose URL is still being signed goes to a
    worker thread, so the planner keeps scheduling and answering meanwhile (it used to wait for the
    call: one API round trip with the link idle, each time it reached unsigned files)."""
    gate = threading.Event()
    w = make_world(use_async=True, sign_gate=gate, hint_initial_window=4, sign_lead=5, sign_batch=10)
    order = list(range(FILES))
    random.Random(5).shuffle(order)
    w.hint([name(i).encode() for i in order])
    try:
        assert w.prefetcher.ping(timeout_s=3.0)  # the planner answers while the first signing call hangs
        assert w.counters.snapshot().get("prefetch.url_waits", 0) >= 1  # those files went to threads
    finally:
        gate.set()
    assert w.prefetcher.wait_idle()
    for i in order:
        assert w.read(name(i)) == bytes([i]) * SIZE
        assert w.prefetcher.wait_idle()
    assert w.fetched_before_opened() == {f"item-r{i:03d}" for i in order}  # every one was there first
    hinted = [f"item-r{i:03d}" for i in order]
    assert w.sign_calls == [hinted[k : k + 10] for k in range(0, FILES, 10)]


def test_hint_lines_written_a_few_at_a_time_are_not_signed_a_few_at_a_time(make_world: Any) -> None:
    """Signing ahead waits for a whole batch of lines (or the list's end): three lines of a list still
    being written are signed by their fetch, together with their folder, not in a call of three."""
    w = make_world(use_async=True, hint_initial_window=4, sign_lead=5, sign_batch=10)
    fh = w.fs.open(w.fs.resolve("/.encordfs/hints"), writable=True).fh
    try:
        lines = b"".join(name(i).encode() + b"\n" for i in (7, 3, 29))
        assert w.fs.write(fh, 0, lines) == len(lines)
        assert w.prefetcher.wait_idle()
        assert {f"item-r{i:03d}" for i in (7, 3, 29)} <= w.fetched_before_opened()
        assert len(w.sign_calls) == 1 and len(w.sign_calls[0]) == FILES  # the folder's batch
    finally:
        w.fs.release(fh)
