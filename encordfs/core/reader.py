"""Read pipeline: file reads served from the block cache, demand range GETs, and budgeted readahead.

Owns the bytes between a FUSE ``read(offset, length)`` and the HTTP fetcher: per-handle segments,
sequential detection, readahead, a shared worker pool, single-flight part fetches, the global memory
budget, and ``prefetch``/``prefetch_file``. It depends on two seams only: a ``RangeFetcher``
(``fetch_into``; optionally a second one for background GETs, ``background_fetcher``, and its
``fetch_async``) and a ``BlockCache``; URLs come from the ``url_source`` given to ``open``. An
optional ``link`` (``core.link.LinkEstimate``) sizes readahead from the bandwidth-delay product.

Parts
    A file is cut into parts of ``part_bytes``; part ``k`` is ``[k*P, min((k+1)*P, size))`` and is cached
    under ``(content_key, k)``. A small file (``size <= small_file_bytes``) is a single part: the first
    read fetches it whole with one GET, and later opens find it in the cache.

Segments
    A handle holds ``_Segment``\\ s: byte ranges being fetched or fetched, each charged to the budget
    until dropped. A segment is either a whole part (cacheable, single-flight across handles via
    ``_flights``) or a "ramp" range inside one part (not cached): after a random access the first GET is
    only ``initial_window`` bytes (1 MiB + 128 KiB, like mountpoint-s3: one Linux readahead of 128 KiB
    past 1 MiB), so scattered small reads (media headers, indexes at the end of a file) do not pull
    whole 8 MiB parts.

Sequential detection and readahead
    An access is sequential when it lands within ``[last_end - seek_back_bytes, last_end + window]`` or
    inside a segment the handle already holds: a small forward skip or a slightly reordered read from
    parallel FUSE threads continues the stream. Anything else is random: the window drops back to
    ``initial_window`` and readahead stops until the next sequential read. After a sequential read
    ending at ``pos`` the handle keeps ``[pos, pos + window)`` requested; each readahead request (and
    each sequential read that still had to fetch on demand) doubles the window up to
    ``max_window_bytes``. Requests never cross part boundaries; once the window reaches a part they are
    whole parts. With a ``link``, the caps grow with the measured bandwidth-delay product
    (``_readahead_limits``): about 8 x BDP in flight (``ceil(8 BDP / part) + 1`` GETs, at least
    ``max_parallel_per_file``, at most the pool) in a window that holds them (at least
    ``max_window_bytes``, at most a quarter of the readahead budget): a long, fat link gets more
    parallel range GETs of a part each; loopback keeps the defaults. A stream's window also starts at
    2 x BDP (``_link_window``) once it is sequential, rather than doubling up from ``initial_window``
    one round trip at a time (behind 25 ms and more, each doubling costs one). The ramp requests of a stream's first part are copied into one buffer as they are read
    and cached as that part once it is whole (``_collect_ramp``), so every part of a sequentially read
    file ends up cached. Readahead is bounded per handle (``max_parallel_per_file`` in flight,
    ``max_window_bytes`` held ahead) and overall (``max_parallel_total`` in flight = pool size).

Who fetches
    A demand segment (the bytes a read needs now) is fetched inline by the reading thread. Readahead
    runs in the pool; if a reader needs a readahead segment that is still queued it claims and runs it
    itself (``_Segment.claim``), so demand never waits behind the queue. Pool GETs (readahead,
    ``prefetch_file``) go through ``background_fetcher``, which leaves connections for demand GETs.
    ``prefetch_file_async`` (``core.prefetch``'s files) starts a GET on the transport's own loop and
    lands it from there, without a thread. A reader that joins a prefetch's flight which then fails
    fetches the part itself (``_prefetch_flights``): a prefetch never fails a read. ``cache.put`` only
    queues the disk write (the disk tier serves the queued buffer until it lands, so a part is not
    fetched twice meanwhile, and skips the write when its backlog is full). A part of a big file is
    skipped then (the stream does not slow to the disk's pace); a whole small file and ``prefetch``
    wait for room in that queue instead: a small file skipped is fetched again whole at its next
    open and is never read through passthrough, and readers of many small files faster than the
    disk can take them (a single-threaded first pass over cached bytes) left files out of the disk
    cache without it. The wait happens only while the disk is a backlog behind.

Backing files
    ``open_backing`` serves a binding that can open files in FUSE passthrough mode: an fd of the cache's
    local file of an item when that file holds every byte, else None (the open's reads come here, and
    what they fetch is stored: a small file is backed from its first open after its write landed).
    Fetching a small file whole at open and waiting for its write made the open wait for the disk
    writer too: cold small files measured 656 files/s that way against 920 served from memory.

Global memory budget
    ``MemoryBudget`` accounts every segment held by any handle or in flight (prefetch too). Readahead only
    uses ``try_acquire`` below 3/4 of the budget (the rest is kept for demand, so a cold handle is not
    starved by others' readahead) and is skipped when it does not fit. A demand fetch waits; while it
    waits it sheds other handles' completed, buffered segments (the fetched parts remain in the block
    cache). Everything else in flight completes within the fetcher's budget, so a demand acquire always
    progresses; past ``read_timeout_s`` the read fails with EIO rather than block. The memory block cache
    is capped separately (its own capacity); a block shared by both is one object, counted in both.

Invariants
    ``read`` returns exactly ``min(length, size - offset)`` bytes (``b""`` at or past EOF) or raises an
    ``FsError``; a segment's budget charge is released exactly once, when it is both dropped and done;
    a fetched part is complete before it enters the cache.

Lock order: ``ReadHandle._lock`` -> ``ReadPipeline._lock`` -> ``MemoryBudget._cond``, and
``ReadHandle._lock`` -> ``_Segment._lock`` -> ``MemoryBudget._cond``; ``ReadHandle._ramp_lock`` ->
(the cache's lock, ``MemoryBudget._cond``), never together with ``ReadHandle._lock``. The pipeline never takes a handle's
lock while holding its own (``_shed`` copies the handle list first). No lock is held while fetching,
waiting for a segment, or waiting for budget (``MemoryBudget.acquire`` calls ``shed`` unlocked).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

from encordfs.core.blockcache import Block, BlockCache, BlockKey, FileLayout, aligned_bytearray
from encordfs.core.counters import Counters
from encordfs.core.fetch import RangeFetcher
from encordfs.core.link import LinkEstimate
from encordfs.core.urls import UrlSource
from encordfs.errors import FsError, InvalidValue, RemoteIOError


class Throttled(FsError):
    """A background read was refused because its share of the memory budget is full (not an error)."""


MiB = 1 << 20
_FAILURES_KEPT = 4096  # parts whose failure is remembered (``failure_memory_s``), most recent
# Bandwidth-delay products kept in flight by a sequential stream (``ReadPipeline._readahead_limits``).
LINK_ROUNDS = 8
# Parts at least this big are fetched into buffers the disk cache can write with O_DIRECT without a copy.
_ALIGNED_MIN_BYTES = MiB


def _part_buffer(length: int) -> bytearray:
    """A part's buffer. A big one is not cleared: it is served only once every byte of it arrived (a
    fetch fills it whole or fails, a ramp part is stored once complete)."""
    return aligned_bytearray(length, zeroed=False) if length >= _ALIGNED_MIN_BYTES else bytearray(length)


class MemoryBudget:
    """Bytes of read buffers in flight or held, across all handles; never exceeds ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int, counters: Counters | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self.counters = counters if counters is not None else Counters()
        self._cond = threading.Condition(threading.Lock())
        self._used_bytes = 0
        self.peak_bytes = 0

    @property
    def used_bytes(self) -> int:
        with self._cond:
            return self._used_bytes

    def try_acquire(self, n: int, limit_bytes: int | None = None) -> bool:
        """Take ``n`` bytes if the total stays within ``limit_bytes`` (default: the capacity)."""
        limit = self.capacity_bytes if limit_bytes is None else min(limit_bytes, self.capacity_bytes)
        with self._cond:
            if self._used_bytes + n > limit:
                return False
            self._take_locked(n)
            return True

    def acquire(
        self,
        n: int,
        deadline: float,
        shed: Callable[[int], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Take ``n`` bytes, calling ``shed(short_bytes)`` and waiting until they fit or ``deadline``."""
        if self.try_acquire(n):
            return
        self.counters.inc("reader.budget_waits")
        while True:
            with self._cond:
                short = self._used_bytes + n - self.capacity_bytes
            if short > 0:
                shed(short)
            with self._cond:
                if self._used_bytes + n <= self.capacity_bytes:
                    self._take_locked(n)
                    return
                left_s = deadline - clock()
                if left_s <= 0:
                    raise FsError(f"read memory budget ({self.capacity_bytes} bytes) stayed exhausted")
                self._cond.wait(min(0.05, left_s))

    def release(self, n: int) -> None:
        with self._cond:
            self._used_bytes -= n
            self._cond.notify_all()

    def _take_locked(self, n: int) -> None:
        self._used_bytes += n
        if self._used_bytes > self.peak_bytes:
            self.peak_bytes = self._used_bytes
            self.counters.set_max("reader.budget_peak_bytes", self._used_bytes)


class _Segment:
    """Bytes ``[start, end)`` of one file; ``part`` is the part index if it is a whole (cacheable) part."""

    def __init__(self, start: int, end: int, part: int | None, budget: MemoryBudget) -> None:
        self.start = start
        self.end = end
        self.part = part
        self.fill_cache = False  # prefetch: wait for room in a slow cache tier rather than skip it
        self.prefetch = False  # a prefetch's flight: a reader that joined it fetches itself if it fails
        self.collected = False  # a ramp segment copied into the part being collected (``_collect_ramp``)
        self.future: Future[Block] = Future()
        self._budget = budget
        self._lock = threading.Lock()
        self._claimed = False
        self._dropped = False
        self._released = False

    def claim(self, unless_dropped: bool = False) -> bool:
        """True exactly once: the caller must then fetch this segment.

        ``unless_dropped`` (pool workers): a segment its handle already let go of (random seek, close) is
        failed instead of fetched, which releases its charge without a wasted GET.
        """
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            abandoned = unless_dropped and self._dropped
        if abandoned:
            self.fail(RemoteIOError("readahead abandoned before it started"))
        return not abandoned

    def finish(self, data: Block) -> None:
        self.future.set_result(data)
        self._release_if_done_and_dropped()

    def fail(self, exc: BaseException) -> None:
        self.future.set_exception(exc)
        self._release_if_done_and_dropped()

    def failed(self) -> bool:
        return self.future.done() and self.future.exception() is not None

    def drop(self) -> None:
        """The handle lets go; the budget charge is released now, or when the fetch completes."""
        with self._lock:
            self._dropped = True
        self._release_if_done_and_dropped()

    def wait(self, timeout_s: float) -> Block:
        try:
            return self.future.result(timeout=timeout_s)
        except TimeoutError:
            raise RemoteIOError(f"read of bytes {self.start}-{self.end} timed out after {timeout_s:g} s") from None

    def _release_if_done_and_dropped(self) -> None:
        with self._lock:
            release = self._dropped and self.future.done() and not self._released
            self._released = self._released or release
        if release:
            self._budget.release(self.end - self.start)


class ReadPipeline:
    """Opens ``ReadHandle``\\ s and owns what they share: pool, budget, in-flight parts, counters."""

    def __init__(
        self,
        fetcher: RangeFetcher,
        cache: BlockCache,
        counters: Counters | None = None,
        small_file_bytes: int = 8 * MiB,
        part_bytes: int = 8 * MiB,
        initial_window: int = MiB + 128 * 1024,
        max_window_bytes: int = 64 * MiB,
        memory_budget_bytes: int = 512 * MiB,
        max_parallel_per_file: int = 4,
        max_parallel_total: int = 16,
        seek_back_bytes: int = MiB,  # reordered reads from parallel FUSE threads stay "sequential"
        read_timeout_s: float = 60.0,  # >= the fetcher's retry budget (30 s) + one socket timeout
        # A part whose fetch just failed (after the fetcher's retries) fails again at once for this long:
        # the kernel reads a page that failed its readahead once more, synchronously, and that second
        # READ must not wait out the retry budget again (a stalled store held such a read 60 s).
        failure_memory_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        background_fetcher: RangeFetcher | None = None,
        link: LinkEstimate | None = None,
    ) -> None:
        if memory_budget_bytes < max(part_bytes, small_file_bytes):
            raise InvalidValue("memory_budget_bytes must hold at least one part and one small file")
        self.fetcher = fetcher
        self.background_fetcher = background_fetcher if background_fetcher is not None else fetcher
        self.link = link
        self.cache = cache
        self.counters = counters if counters is not None else Counters()
        self.small_file_bytes = small_file_bytes
        self.part_bytes = part_bytes
        self.initial_window = initial_window
        self.max_window_bytes = max(max_window_bytes, initial_window)
        self.max_parallel_per_file = max_parallel_per_file
        self.max_parallel_total = max_parallel_total
        self.seek_back_bytes = seek_back_bytes
        self.read_timeout_s = read_timeout_s
        self.failure_memory_s = failure_memory_s
        self._failures: OrderedDict[BlockKey, tuple[float, FsError]] = OrderedDict()  # under ``_lock``
        self.budget = MemoryBudget(memory_budget_bytes, self.counters)
        self._readahead_limit_bytes = memory_budget_bytes * 3 // 4
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max_parallel_total, thread_name_prefix="encordfs-read")
        self._lock = threading.Lock()
        self._handles: set[ReadHandle] = set()
        self._flights: dict[BlockKey, Future[Block]] = {}
        self._prefetch_flights: set[Future[Block]] = set()  # flights of prefetch: their failure fails no reader
        self._pooled_in_flight = 0

    # -- public surface

    def open(self, content_key: str, size: int, url_source: UrlSource) -> ReadHandle:
        handle = ReadHandle(self, content_key, size, url_source)
        with self._lock:
            self._handles.add(handle)
        return handle

    def prefetch(self, content_key: str, size: int, url_source: UrlSource) -> int:
        """Warm the block cache with every part of a file; returns the number of parts fetched."""
        part_size = self.part_size_for(size)
        layout = FileLayout(size, part_size)
        slots = threading.Semaphore(self.max_parallel_per_file)
        pending: list[Future[None]] = []
        for k in range(-(-size // part_size) if size else 0):
            if any(f.done() and f.exception() is not None for f in pending):
                break
            if self.cache.contains((content_key, k)):
                continue
            start, end = k * part_size, min((k + 1) * part_size, size)
            slots.acquire()
            try:
                self._acquire_demand(end - start, requester=None)
            except FsError:
                slots.release()
                raise
            segment = _Segment(start, end, k, self.budget)
            segment.fill_cache = True
            pending.append(self._submit(segment, content_key, layout, url_source, on_done=_releaser(segment, slots)))
        futures_wait(pending)
        for future in pending:
            error = future.exception()
            if error is not None:
                raise error
        self.counters.inc("reader.prefetch_parts", len(pending))
        return len(pending)

    def probe_size(self, url_source: UrlSource) -> int:
        """The object's size, asked of the server (rows whose metadata has none)."""
        return self.fetcher.probe_size(url_source)

    def has_first_part(self, content_key: str) -> bool:
        """Whether a file's first part (a small file whole) is cached here (memory, or this disk's index:
        no shared tier asked): what prefetch may pass over without starting anything."""
        return self.cache.contains((content_key, 0))

    def _have(self, key: BlockKey) -> bool:
        """Whether prefetch can leave a part alone: cached here, or had from a shared tier without the
        origin (``cluster.blocks``: ``lookup`` reads Redis and stores what it finds locally)."""
        return self.cache.contains(key) or self.cache.lookup(key) is not None

    def _prefetch_start(self, content_key: str, size: int) -> int | None:
        """The length of a file's first part, charged to the readahead share of the budget, when prefetch
        should fetch it; None when it is empty, cached, obtainable from a shared tier or being fetched.
        ``Throttled`` when the share is full, or the disk cache's write queue is (the part would be left
        out of the disk: its open would not be passthrough, and the next epoch would fetch it again)."""
        key = (content_key, 0)
        with self._lock:
            in_flight = key in self._flights
        if size <= 0 or in_flight or self._have(key):
            return None
        end = min(self.part_size_for(size), size)
        if self.cache.backlogged(end):  # prefetch fills the cache: at the disk's pace, or it is skipped there
            self.counters.inc("reader.prefetch_disk_behind")
            raise Throttled("the disk cache's write queue is full")
        if not self.budget.try_acquire(end, self._readahead_limit_bytes):
            self.counters.inc("reader.readahead_throttled")
            raise Throttled(f"no room in the read budget for {end} bytes of prefetch")
        return end

    def prefetch_file(self, content_key: str, size: int, url_source: UrlSource) -> int:
        """Background: bring a file's first part (the whole file when it is small) into the cache, for
        ``core.prefetch``. Returns the bytes fetched: 0 when the part is cached or already being fetched
        (nothing is waited for). Never waits for memory: raises ``Throttled`` when the readahead share
        of the budget is full. A fetch error propagates (the caller drops the file; a demand read later
        tries again on its own).

        The part is fetched through ``background_fetcher`` and stored like a readahead part (the disk
        write is queued, waiting for room in its queue: filling the cache is the point), so a later
        open finds it in memory or on disk, and with backing files on, complete on disk.
        """
        end = self._prefetch_start(content_key, size)
        if end is None:
            return 0
        segment = _Segment(0, end, 0, self.budget)
        segment.fill_cache = segment.prefetch = True
        try:
            self._run_segment(segment, content_key, FileLayout(size, self.part_size_for(size)), url_source, True)
            segment.wait(self.read_timeout_s)
        finally:
            segment.drop()
        return end

    def prefetch_file_async(
        self, content_key: str, size: int, url_source: UrlSource, done: Callable[[int, FsError | None], None]
    ) -> bool:
        """``prefetch_file`` without a thread of its own, when the background fetcher has ``fetch_async``
        (libcurl): the GET runs on the transport's loop, which stores the part (memory, and the disk
        queue unless its backlog is full) and then calls ``done(bytes, error)`` on that loop thread
        (hand over, nothing more). One attempt: on an error the caller may try ``prefetch_file``, which
        retries and re-signs. Returns False when it cannot start this way (httpx; no background
        connection free): call ``prefetch_file`` on a thread instead. Otherwise a cached or in-flight part
        is ``done(0, None)`` at once. Raises ``Throttled`` as ``prefetch_file`` does, and the ``FsError`` of
        a URL that cannot be had (``url_source`` runs on the calling thread and may sign, one API call).
        """
        fetch_async = getattr(self.background_fetcher, "fetch_async", None)
        if fetch_async is None:
            return False
        key = (content_key, 0)
        end = self._prefetch_start(content_key, size)
        if end is None:
            done(0, None)
            return True
        segment = _Segment(0, end, 0, self.budget)
        segment.claim()
        try:
            url = url_source(False)
        except BaseException:
            segment.fail(RemoteIOError("no URL"))
            segment.drop()
            raise
        with self._lock:
            joined = key in self._flights
            if not joined:
                self._flights[key] = segment.future
                self._prefetch_flights.add(segment.future)
        if not joined and self.cache.contains(key):  # a demand read fetched it since the check above
            self._end_flight(key, segment)
            joined = True
        if joined:  # someone started it meanwhile
            segment.fail(RemoteIOError("joined"))
            segment.drop()
            done(0, None)
            return True
        buf = bytearray(end)
        layout = FileLayout(size, self.part_size_for(size))

        def land(error: FsError | None) -> None:
            if error is None:
                segment.finish(buf)  # a demand reader that joined goes on now
                if self.cache.backlogged(end):  # the disk would skip it: wait for room on a pool thread (not
                    try:  # on this loop); the flight stays open until it is stored
                        self._pool.submit(store, None, True)
                        return
                    except RuntimeError:  # shutting down
                        pass
            else:
                segment.fail(error)
            store(error, False)

        def store(error: FsError | None, wait: bool) -> None:
            try:
                if error is None:
                    self.cache.put(key, buf, layout, wait=wait)  # memory; the disk tier only queues
            finally:
                self._end_flight(key, segment)
                segment.drop()
            done(end if error is None else 0, error)

        try:
            started = bool(fetch_async(url, 0, memoryview(buf), land, size))
        except BaseException as exc:
            land(exc if isinstance(exc, FsError) else RemoteIOError(f"prefetch: {type(exc).__name__}"))
            return True
        if not started:
            self._end_flight(key, segment)
            segment.fail(RemoteIOError("not started"))
            segment.drop()
            return False
        return True

    def open_backing(self, content_key: str, size: int) -> int | None:
        """A read-only fd of a local file holding the whole file at its own offsets (for a FUSE
        passthrough open; the caller closes it), or None when the cache holds no complete, checked copy
        (nothing is fetched here: see "Backing files")."""
        return self.cache.open_complete(content_key, size)

    def backing_still_complete(self, content_key: str, size: int) -> bool:
        """Whether a backing file ``open_backing`` gave earlier still holds the file (no system call; see
        ``BlockCache.still_complete``)."""
        return self.cache.still_complete(content_key, size)

    def watch_backing_drops(self, callback: Callable[[str], None]) -> None:
        """Have ``callback`` told the ``item_name`` of every cache file dropped from the disk cache (an
        ``open_backing`` file among them: a binding holding it registered then lets it go)."""
        self.cache.watch_drops(callback)

    def backing_may_wait(self, content_key: str, size: int) -> bool:
        """Whether ``open_backing`` may wait: unless the file is known complete and checked on disk, its
        record may be read from the disk cache's index, and an inherited file that is not sealed read
        whole to check it."""
        return size > 0 and not self.cache.complete_now(content_key, size)

    def part_size_for(self, size: int) -> int:
        """The part size of a file: the whole file when small, else ``part_bytes``."""
        return max(1, size) if size <= self.small_file_bytes else self.part_bytes

    def close(self) -> None:
        with self._lock:
            handles = list(self._handles)
        for handle in handles:
            handle.close()
        self._pool.shutdown(wait=True)  # queued readahead of closed handles is abandoned, not fetched

    # -- shared machinery (called by handles)

    def _forget(self, handle: ReadHandle) -> None:
        with self._lock:
            self._handles.discard(handle)

    def _acquire_demand(self, n: int, requester: ReadHandle | None) -> None:
        deadline = self._clock() + self.read_timeout_s
        self.budget.acquire(n, deadline, shed=lambda short: self._shed(short, requester), clock=self._clock)

    def _readahead_limits(self) -> tuple[int, int]:
        """(GETs in flight per file, bytes held ahead per file) for a sequential stream.

        Every range GET waits a first-byte latency before its bytes flow, and the GETs of one stream
        share the link, so they end together and the next ones start together: the link idles for a
        latency once per round of GETs. Keeping ``LINK_ROUNDS`` x the bandwidth-delay product in flight
        makes a round that many latencies long, so that idle time is about a ninth of it (measured behind
        25 ms at 1 Gbit/s: 4 x 8 MiB in flight gave 0.86 of the link, 12 gave 0.94). Never fewer than
        ``max_parallel_per_file`` GETs nor a window below ``max_window_bytes`` (loopback keeps those);
        never more GETs than the pool, nor a window over a quarter of the readahead budget.
        """
        bdp = self.link.bdp_bytes() if self.link is not None else 0
        if bdp <= 0:
            return self.max_parallel_per_file, self.max_window_bytes
        want = LINK_ROUNDS * bdp
        parallel = min(max(self.max_parallel_per_file, -(-want // self.part_bytes) + 1), self.max_parallel_total)
        cap = max(self.max_window_bytes, self._readahead_limit_bytes // 4)
        window = min(max(self.max_window_bytes, (parallel + 1) * self.part_bytes, want), cap)
        return min(parallel, max(self.max_parallel_per_file, window // self.part_bytes - 1)), window

    def _link_window(self) -> int:
        """Twice the measured bandwidth-delay product (0 without a link or a measurement): where a
        sequential stream's window may start instead of doubling up from ``initial_window``."""
        return 2 * self.link.bdp_bytes() if self.link is not None else 0  # the window: in flight, and growing

    def _try_acquire_readahead(self, n: int) -> bool:
        with self._lock:
            if self._pooled_in_flight >= self.max_parallel_total:
                return False
            if not self.budget.try_acquire(n, self._readahead_limit_bytes):
                self.counters.inc("reader.readahead_throttled")
                return False
            self._pooled_in_flight += 1  # released by _readahead_done when the pool has run it
            return True

    def _readahead_done(self) -> None:
        with self._lock:
            self._pooled_in_flight -= 1

    def _shed(self, short_bytes: int, requester: ReadHandle | None) -> int:
        """Drop completed buffered segments, other handles first, until ``short_bytes`` are freed."""
        with self._lock:
            handles = [h for h in self._handles if h is not requester]
        if requester is not None:
            handles.append(requester)
        freed = 0
        for handle in handles:
            freed += handle._shed(short_bytes - freed)
            if freed >= short_bytes:
                break
        if freed:
            self.counters.inc("reader.shed_bytes", freed)
        return freed

    def _submit(
        self,
        segment: _Segment,
        content_key: str,
        layout: FileLayout,
        url_source: UrlSource,
        on_done: Callable[[], None],
    ) -> Future[None]:
        """Run ``segment`` in the pool; ``on_done`` is called once it has run (or could not be queued)."""

        def run() -> None:
            try:
                self._run_segment(segment, content_key, layout, url_source, from_pool=True)
                error = segment.future.exception() if segment.future.done() else None
                if error is not None:
                    raise error  # for prefetch, which waits on the pool's futures
            finally:
                on_done()

        try:
            return self._pool.submit(run)
        except RuntimeError:  # the pool is shut down: the pipeline is closing
            if segment.claim():
                segment.fail(RemoteIOError("read pipeline is closed"))
            on_done()
            failed: Future[None] = Future()
            failed.set_exception(RemoteIOError("read pipeline is closed"))
            return failed

    def _run_segment(
        self, segment: _Segment, content_key: str, layout: FileLayout, url_source: UrlSource, from_pool: bool = False
    ) -> None:
        """Fill ``segment`` (no-op unless this thread claims it); errors land in its future. A pool
        worker's (readahead, prefetch) GETs are background GETs; a reader that claims a queued
        readahead segment fetches it as demand."""
        if not segment.claim(unless_dropped=from_pool):
            return
        try:
            if segment.part is None:
                segment.finish(self._fetch(url_source, segment.start, segment.end, layout.size_bytes, from_pool))
            else:
                self._load_part(segment, (content_key, segment.part), layout, url_source, from_pool)
        except Exception as exc:
            if not segment.future.done():
                segment.fail(exc)

    def _load_part(
        self, segment: _Segment, key: BlockKey, layout: FileLayout, url_source: UrlSource, background: bool = False
    ) -> None:
        while True:
            cached = self.cache.get(key)
            if cached is not None:
                segment.finish(cached)
                return
            with self._lock:
                flight = self._flights.get(key)
                if flight is not None and flight in self._prefetch_flights and _failed(flight):
                    flight = None  # a failed prefetch is dropped: this reader fetches on its own
                if flight is None:
                    self._flights[key] = segment.future
                    if segment.prefetch:
                        self._prefetch_flights.add(segment.future)
                joined_prefetch = flight is not None and flight in self._prefetch_flights
            if flight is None:
                break
            self.counters.inc("reader.flight_joins")
            try:
                segment.finish(flight.result(timeout=self.read_timeout_s))
            except TimeoutError:
                raise RemoteIOError(f"waiting for part {key[1]} timed out") from None
            except FsError:
                if not joined_prefetch:
                    raise
                self.counters.inc("reader.prefetch_failures_refetched")
                continue  # never fail a demand read because a prefetch of it failed
            return
        try:
            # a flight that ended between the cache check and taking this one has stored its part
            landed = self.cache.lookup(key) if self.cache.contains(key) else None
            if landed is not None:
                segment.finish(landed)
                return
            self._raise_recent_failure(key)
            try:
                data = self._fetch(url_source, segment.start, segment.end, layout.size_bytes, background)
            except FsError as exc:
                self._remember_failure(key, exc, segment.prefetch)
                raise
            segment.finish(data)  # readers go on before the cache write
            small = layout.size_bytes <= self.small_file_bytes  # a whole file: waits for room (see above)
            self.cache.put(key, data, layout, wait=segment.fill_cache or small)  # the disk tier only queues it
        finally:
            self._end_flight(key, segment)

    def _remember_failure(self, key: BlockKey, exc: FsError, prefetch: bool) -> None:
        """A fetch of ``key`` for readers failed for good after waiting: the byte server or the signing
        call did not answer within its budget (``RemoteIOError``). Not remembered: a prefetch's failure
        (it fails no reader), a changed object (its folder reloads), a refusal (asked again each time,
        and answered at once)."""
        if prefetch or not isinstance(exc, RemoteIOError) or self.failure_memory_s <= 0:
            return
        with self._lock:
            self._failures[key] = (self._clock(), exc)
            self._failures.move_to_end(key)
            while len(self._failures) > _FAILURES_KEPT:
                self._failures.popitem(last=False)

    def _raise_recent_failure(self, key: BlockKey) -> None:
        """The error of a fetch of ``key`` that failed less than ``failure_memory_s`` ago, raised again."""
        with self._lock:
            failed = self._failures.get(key)
            if failed is not None and self._clock() - failed[0] >= self.failure_memory_s:
                del self._failures[key]
                failed = None
        if failed is not None:
            self.counters.inc("reader.recent_failures")
            raise type(failed[1])(f"{failed[1].message} (failed moments ago)")

    def _end_flight(self, key: BlockKey, segment: _Segment) -> None:
        """``segment``'s fetch of ``key`` is over: later readers of the part find it in the cache (stored
        before this) or fetch it anew."""
        with self._lock:
            if self._flights.get(key) is segment.future:
                del self._flights[key]
            self._prefetch_flights.discard(segment.future)

    def _fetch(self, url_source: UrlSource, start: int, end: int, total: int, background: bool = False) -> bytearray:
        """Bytes ``[start, end)`` of a file the catalog says is ``total`` bytes long (an object that grew
        or shrank on the server is ``Stale``, never served cut or padded)."""
        buf = _part_buffer(end - start)
        fetcher = self.background_fetcher if background else self.fetcher
        fetcher.fetch_into(url_source, start, memoryview(buf), total=total)
        return buf


class _RampPart:
    """One part being collected from ramp segments: its bytes, and which of them have arrived."""

    def __init__(self, index: int, start: int, length: int) -> None:
        self.index = index
        self.start = start
        self.buf = _part_buffer(length)
        self._spans: list[list[int]] = []  # arrived ranges relative to ``start``, sorted, merged

    def add(self, start: int, data: memoryview) -> bool:
        """Copy ``data`` (the file's bytes from ``start``); True once every byte of the part is in."""
        lo = start - self.start
        hi = min(lo + len(data), len(self.buf))
        self.buf[lo:hi] = data[: hi - lo]
        spans = sorted([*self._spans, [lo, hi]])
        merged = [spans[0]]
        for span in spans[1:]:
            if span[0] <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], span[1])
            else:
                merged.append(span)
        self._spans = merged
        return merged == [[0, len(self.buf)]]


def _failed(future: Future[Block]) -> bool:
    return future.done() and future.exception() is not None


def _releaser(segment: _Segment, slots: threading.Semaphore) -> Callable[[], None]:
    """For prefetch: when its fetch is done, let the segment go (releasing its charge) and free a slot."""

    def release() -> None:
        segment.drop()
        slots.release()

    return release


class ReadHandle:
    """One open file: sequential detection, its segments, its readahead. Thread-safe."""

    def __init__(self, pipeline: ReadPipeline, content_key: str, size: int, url_source: UrlSource) -> None:
        self._p = pipeline
        self.content_key = content_key
        self.size = size
        self._url_source = url_source
        self._part_size = pipeline.part_size_for(size)
        self._layout = FileLayout(size, self._part_size)
        self._small = size <= pipeline.small_file_bytes  # fetched whole, with one GET
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []  # least recently used first
        self._window = pipeline.initial_window
        self._frontier = 0  # readahead has been requested up to here
        self._last_end: int | None = None
        self._sequential = False
        self._closed = False
        self._ramp_lock = threading.Lock()
        self._ramp: _RampPart | None = None  # the first part of a stream, collected from its ramp requests

    # -- public surface

    def read(self, offset: int, length: int) -> bytes | memoryview:
        """Bytes ``offset`` .. ``offset + length`` (fewer at the end of the file). A range inside one
        segment (a cached block, or a ramp's buffer) comes back as a view of it, without a copy (a
        fresh 100 KiB ``bytes`` per read was a fifth of a warm small-file read). The view may be
        writable only so that the FUSE adapter can hand its address to libfuse: nothing may write
        through it (the block is shared); callers that keep data take ``bytes()``."""
        if offset < 0 or length < 0:
            raise InvalidValue(f"read at offset {offset}, length {length}")
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        with self._lock:
            self._check_open_locked()
            self._note_access_locked(offset)
        pieces: list[memoryview] = []
        pos = offset
        while pos < end:
            segment = self._segment_at(pos, end)
            self._p._run_segment(segment, self.content_key, self._layout, self._url_source)  # demand, or steal
            try:
                data = segment.wait(self._p.read_timeout_s)
            except BaseException:
                with self._lock:
                    self._drop_locked(segment)  # the next read retries instead of replaying the error
                raise
            upto = min(end, segment.end)
            pieces.append(memoryview(data)[pos - segment.start : upto - segment.start])
            pos = upto
            if segment.part is None:
                self._collect_ramp(segment, data)
        with self._lock:
            self._last_end = end
            if self._sequential:
                self._drop_behind_locked(end - self._p.seek_back_bytes)
        self._p.counters.inc("reader.reads")
        self._p.counters.inc("reader.bytes_read", end - offset)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read_held(self, offset: int, length: int) -> bytes | memoryview | None:
        """``read`` without waiting for anything: the bytes of a small file in memory now (the cache's
        memory tier, or a disk write not landed yet), or of a big file's part that this handle holds
        fetched (``_read_fetched``); None when they are not: then ``read`` it. A binding answers such a
        read on the thread that read the request."""
        if offset < 0 or length < 0 or self._closed:
            return None
        if not self._small:
            return self._read_fetched(offset, length)
        block = self._p.cache.held((self.content_key, 0))
        if block is None or len(block) != self.size:
            return None
        end = min(offset + length, self.size)
        self._p.counters.inc("reader.reads_held")
        self._p.counters.inc("reader.bytes_read", max(0, end - offset))
        return memoryview(block)[offset:end] if offset < end else b""

    def _read_fetched(self, offset: int, length: int) -> memoryview | None:
        """``read_held`` of a big file: the bytes when one whole part this handle holds has them
        already (fetched by readahead), with ``read``'s bookkeeping (stream detection, readahead,
        dropping what is behind); else None."""
        end = min(offset + length, self.size)
        if offset >= end:
            return None
        with self._lock:
            if self._closed:
                return None
            segment = self._find_locked(offset)
            if segment is None or segment.part is None or segment.end < end or not segment.future.done():
                return None
            if segment.failed():  # (``read`` lets go of it and asks anew)
                return None
            self._note_access_locked(offset)
            self._schedule_readahead_locked(end)
            self._last_end = end
            if self._sequential:
                self._drop_behind_locked(end - self._p.seek_back_bytes)
        data = segment.future.result()
        self._p.counters.inc("reader.reads_held")  # (``reader.reads`` counts the reads that may wait)
        self._p.counters.inc("reader.bytes_read", end - offset)
        return memoryview(data)[offset - segment.start : end - segment.start]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for segment in self._segments:
                segment.drop()
            self._segments.clear()
        with self._ramp_lock:
            ramp, self._ramp = self._ramp, None
        if ramp is not None:
            self._p.budget.release(len(ramp.buf))
        self._p._forget(self)

    # -- reading

    def _segment_at(self, pos: int, want_end: int) -> _Segment:
        """The segment covering ``pos``: held already, or a new demand segment (budget acquired)."""
        while True:
            with self._lock:
                self._check_open_locked()
                found = self._find_locked(pos)
                if found is not None:
                    self._schedule_readahead_locked(want_end)
                    return found
                start, end, part = self._demand_range_locked(pos, want_end)
            self._p._acquire_demand(end - start, requester=self)
            with self._lock:
                if self._closed or self._find_locked(pos) is not None:
                    self._p.budget.release(end - start)
                    continue  # closed: raises above; found: another thread of this handle got there first
                segment = self._add_locked(start, end, part)
                self._frontier = max(self._frontier, end)
                if self._sequential:  # readahead fell behind this stream: widen it
                    self._window = min(self._window * 2, self._p._readahead_limits()[1])
                self._schedule_readahead_locked(want_end)
            self._p.counters.inc("reader.demand_fetches")
            return segment

    def _note_access_locked(self, offset: int) -> None:
        last = self._last_end
        in_stream = last is not None and last - self._p.seek_back_bytes <= offset <= last + self._window
        self._sequential = in_stream or (last is not None and self._find_locked(offset) is not None)
        if not self._sequential:
            if last is not None:
                self._p.counters.inc("reader.random_seeks")
            self._window = self._p.initial_window
            self._frontier = offset

    def _demand_range_locked(self, pos: int, want_end: int) -> tuple[int, int, int | None]:
        """Bytes to fetch for a read of ``[pos, want_end)``: its whole part, or a ramp of ``window`` bytes."""
        part = pos // self._part_size
        part_start = part * self._part_size
        part_end = min(part_start + self._part_size, self.size)
        if self._small or self._window >= self._part_size or self._p.cache.contains((self.content_key, part)):
            return part_start, part_end, part
        return self._ramp_locked(pos, part, part_start, part_end, max(pos + self._window, want_end))

    def _ramp_locked(
        self, pos: int, part: int, part_start: int, part_end: int, want_end: int
    ) -> tuple[int, int, int | None]:
        end = min(want_end, part_end)
        if part_end - end < self._p.initial_window:
            end = part_end  # no tiny remnant request at the end of a part
        return pos, end, part if (pos == part_start and end == part_end) else None

    def _schedule_readahead_locked(self, pos: int) -> None:
        """Keep ``[pos, pos + window)`` requested on a sequential stream (``pos``: end of the current read)."""
        if not self._sequential or self._closed:
            return
        p = self._p
        parallel, window_cap = p._readahead_limits()
        jump = min(p._link_window(), window_cap)  # a measured long, fat link: skip the doubling from 1 MiB
        target = min(self.size, pos + max(self._window, jump))
        frontier = max(self._frontier, pos)
        while frontier < target:
            held = self._find_locked(frontier)
            if held is not None:
                frontier = held.end
                continue
            if self._in_flight_locked() >= parallel or self._held_ahead_locked(pos) >= window_cap:
                break
            previous_window, self._window = self._window, min(max(self._window * 2, jump), window_cap)
            start, end, part = self._readahead_range_locked(frontier)
            if not p._try_acquire_readahead(end - start):
                self._window = previous_window
                break
            segment = self._add_locked(start, end, part)
            p.counters.inc("reader.readahead_fetches")
            p._submit(segment, self.content_key, self._layout, self._url_source, on_done=p._readahead_done)
            frontier = end
            target = min(self.size, pos + self._window)
        self._frontier = frontier

    def _readahead_range_locked(self, frontier: int) -> tuple[int, int, int | None]:
        part = frontier // self._part_size
        part_start = part * self._part_size
        part_end = min(part_start + self._part_size, self.size)
        if frontier == part_start and self._window >= self._part_size:
            return part_start, part_end, part
        if self._p.cache.contains((self.content_key, part)):
            return part_start, part_end, part
        return self._ramp_locked(frontier, part, part_start, part_end, frontier + self._window)

    def _collect_ramp(self, segment: _Segment, data: Block) -> None:
        """A read used a ramp segment: copy it (once) into the part it belongs to, and cache that part
        once whole.

        Without this the first part of every stream (fetched as growing ramp requests, which are read
        past and dropped long before the last one arrives) would never be cached, and a file read from
        start to end would never be complete in the cache (no passthrough backing file). A collection
        begins with the ramp that starts at its part's start (and takes the ramp segments of that part
        the handle still holds: parallel reads arrive out of order); the buffer (one part) is charged to
        the budget like readahead, and nothing is collected when that does not fit. One copy of one part
        per stream start.
        """
        if segment.collected:
            return
        part = segment.start // self._part_size
        part_start = part * self._part_size
        part_length = min(self._part_size, self.size - part_start)
        key = (self.content_key, part)
        with self._ramp_lock:
            starting = self._ramp is None or self._ramp.index != part
        held: list[_Segment] = []
        if starting:
            if segment.start != part_start or self._closed or self._p.cache.contains(key):
                return
            held = self._fetched_ramps(part_start, part_start + part_length)
        with self._ramp_lock:
            ramp = self._ramp
            if ramp is None or ramp.index != part:
                if not starting or not self._p.budget.try_acquire(part_length, self._p._readahead_limit_bytes):
                    return
                if ramp is not None:
                    self._p.budget.release(len(ramp.buf))  # a new stream start: the old one is abandoned
                ramp = self._ramp = _RampPart(part, part_start, part_length)
            whole = False
            for used, block in [*((s, s.future.result()) for s in held), (segment, data)]:
                used.collected = True
                whole = ramp.add(used.start, memoryview(block)[: used.end - used.start])
            if whole:
                self._ramp = None
        if whole:
            self._p.cache.put(key, ramp.buf, self._layout)
            self._p.budget.release(part_length)
            self._p.counters.inc("reader.parts_coalesced")

    def _fetched_ramps(self, start: int, end: int) -> list[_Segment]:
        """The fetched ramp segments held inside ``[start, end)`` (takes ``self._lock``)."""
        with self._lock:
            return [
                s
                for s in self._segments
                if s.part is None and start <= s.start and s.end <= end and s.future.done() and not s.failed()
            ]

    # -- segment bookkeeping (all under self._lock)

    def _check_open_locked(self) -> None:
        if self._closed:
            raise InvalidValue(f"read on a closed handle of {self.content_key}")

    def _find_locked(self, pos: int) -> _Segment | None:
        for segment in reversed(self._segments):
            if segment.start <= pos < segment.end:
                if segment.failed():
                    self._drop_locked(segment)  # a failed readahead gets a fresh demand attempt
                    return self._find_locked(pos)
                self._segments.remove(segment)
                self._segments.append(segment)
                return segment
        return None

    def _add_locked(self, start: int, end: int, part: int | None) -> _Segment:
        """Hold a new segment (its bytes are already charged); stay within the per-handle cap by LRU."""
        segment = _Segment(start, end, part, self._p.budget)
        self._segments.append(segment)
        cap = self._p._readahead_limits()[1] + self._part_size
        held = sum(s.end - s.start for s in self._segments)
        for old in list(self._segments[:-1]):
            if held <= cap:
                break
            held -= old.end - old.start
            self._drop_locked(old)
        return segment

    def _drop_locked(self, segment: _Segment) -> None:
        if segment in self._segments:
            self._segments.remove(segment)
            segment.drop()

    def _drop_behind_locked(self, before: int) -> None:
        for segment in [s for s in self._segments if s.end <= before]:
            self._drop_locked(segment)

    def _in_flight_locked(self) -> int:
        return sum(1 for s in self._segments if not s.future.done())

    def _held_ahead_locked(self, pos: int) -> int:
        return sum(s.end - max(s.start, pos) for s in self._segments if s.end > pos)

    def _shed(self, want_bytes: int) -> int:
        """Drop completed segments, least recently used first, until ``want_bytes`` are freed."""
        freed = 0
        with self._lock:
            for segment in [s for s in self._segments if s.future.done()]:
                if freed >= want_bytes:
                    break
                freed += segment.end - segment.start
                self._drop_locked(segment)
        return freed


__all__ = ["MemoryBudget", "ReadHandle", "ReadPipeline", "Throttled"]
