"""Prefetch across files, to hide the byte server's latency: sequential lookahead and order hints.

A reader that opens files one after another (``tar``, ``cp -r``, ``rsync``, an unshuffled loader)
waits one first-byte latency per file, and a shuffled loader one per sample: 25 ms each is 40 files
per second per reader, whatever the bandwidth. This module fetches files before they are opened, in
the order they will be opened, a bounded window ahead, into the block cache (memory and disk), so an
open finds its bytes there. It owns no bytes: ``fetch_async`` (``ReadPipeline.prefetch_file_async``:
one GET on libcurl's loop, no thread waiting) or ``fetch`` (``ReadPipeline.prefetch_file``, on one of
``parallel`` worker threads: httpx, no background connection free, or a retry after the async attempt
failed) fetches a file's first part (a small file whole) into the cache; what to fetch comes from
``source`` (``EncordFS``: the catalog's listing order, path resolution). Of the rest of the core it
knows only the reader's ``Throttled``.

Streams
    Each ordered sequence of files being prefetched is a ``_Stream``: positions 0, 1, 2, ... of
    ``Item``\\ s it produces lazily (a page of the folder's listing, or a page of resolved hint lines),
    a *front* (the furthest position opened so far), and a *window* (files ahead of the front kept
    fetched or in flight). An open of a file the stream holds is a *hit*: the front moves there (if it
    is further), the window grows by one file, up to ``max_window`` (TCP's slow start: it doubles every
    window's worth of hits while prefetch keeps being used). A stream that gets no hit for
    ``idle_opens`` opens in its scope (its folder; for hints, the whole mount) or ``idle_s`` seconds is
    retired, and what it fetched and nobody opened is counted (``prefetch.unused_files``). An open of a
    file not scheduled yet (the reader overtook prefetch) moves a lookahead stream's scheduling past it
    (one reader); a hint list only skips that file (its readers are a loader's parallel workers, each
    at its own place within a few batches of the front: positions up to ``hint_keep_behind`` behind
    the front still match). A stream ends ("finished") once it has handed out every file and its last
    one was opened.

Sequential lookahead (``opened``)
    Listing order is inode order (``readdir``). When an open of file ``x`` in a folder follows the open
    of the file listed just before ``x`` (``source.previous_file``; remembered among the folder's last
    ``recent_opens`` opens), ``x`` extends that run; a run of ``lookahead_run`` files starts a stream of
    the files listed after ``x`` (``source.next_files``), window ``initial_window``. Parallel readers
    of one folder (8 threads taking chunks in order) each start their own stream; streams skip files
    already cached or in flight. A random reader almost never makes a run of 4 and starts nothing.
    The core posts the open of a file complete on disk only while ``follows`` says a stream could
    move with it (a lookahead stream of its folder, or a hint list): an epoch over cached files starts
    no stream (it would find nothing to fetch), and a run starts at the first files not on disk. A
    lookahead stream's hits are opens of files no further than a window past what it scheduled: a
    reader elsewhere in the folder is a miss, not a jump.

Order hints (``hints_open``, ``hints_write``, ``hints_close``)
    The ``/.encordfs/hints`` control file (``core.fs``) takes paths, one per line, in the order a
    reader will open them. Each open-for-write of it starts a hint list, fed as lines arrive (a loader
    writing a million paths is prefetched from its first lines); closing it ends the list. Lines are
    paths inside the mount: relative to its root, with or without a leading ``/``, or absolute under
    ``mountpoint``; a trailing ``\\r`` is dropped, empty lines are skipped. Each list is a stream over
    its lines, resolved only as the window reaches them (a line naming nothing is counted:
    ``hints.unknown_paths``, ``hints.not_files``, ``hints.invalid_lines`` for non-UTF-8,
    ``hints.unresolved`` when resolving failed, e.g. Encord unreachable), window
    ``hint_initial_window``. At most ``max_hint_lists`` lists live (a new one retires the oldest) and
    ``max_hint_lines`` lines per list (more are dropped, counted); a list ends when its reader passed
    its last line or it goes idle. Closing a hint handle that wrote no line clears every hint list.
    When a hint list holds the file an open names, that open starts no lookahead. Resolving a line runs
    on the planner thread and may load a folder never listed before (one API call; the planner waits
    for it while opens queue up behind it).

Bounds (prefetch never takes a demand read's connection and never exceeds its budgets)
    At most ``parallel`` files are fetched at once, over all streams, each through the fetcher's
    background slots (``HttpFetcher.background``: demand reads keep connections of their own, but
    share libcurl's loop, which makes them slower while prefetch is busy: ``core.fetch``,
    "Priorities"); behind
    a link whose first bytes are slow, more (``_set_limits``). A file in flight holds its slot for a
    first-byte time and then its transfer, so ``n`` slots serve at most ``n / floor`` files per second:
    32 allow 1,280 files/s at 25 ms but 320 at 100 ms, whatever the bandwidth. The planner therefore
    allows ``latency_target_files_s`` x the link's first-byte floor files at once (at most
    ``max_parallel``), but the ones beyond ``parallel`` only while the bytes in flight stay under
    ``bdp_multiple`` x the measured bandwidth x that floor: behind a slow link more transfers would
    not raise its throughput, only slow each file and every demand read sharing the link. Bandwidth
    is measured from what the transfers achieve, so the limit grows a window of measurement at a time
    while more transfers deliver more. Bytes
    fetched ahead of their readers (charged when handed to the fetcher, released when that file is
    opened, falls far behind the front, or the stream ends) stay under ``ahead_bytes``: the mount sets it below the memory cache's
    capacity and the disk cache's, so prefetched files are still cached when they are opened. Each
    fetch takes its memory from the readahead share of the read budget without waiting
    (``Throttled``: the stream pauses ``throttle_pause_s`` and tries again). A demand read of a file
    being prefetched joins that fetch (the reader's single flight); one not started yet is fetched by
    the reader, and the prefetch then finds it cached. A prefetch that fails is dropped (counted,
    logged at DEBUG): the file's demand read fetches it on its own and fails or not on its own.

Signed URLs ahead
    A stream asks its source to sign the URLs of its next ``sign_batch`` positions (``sign_ahead``: one
    bulk call, not waited for) once scheduling comes within ``sign_lead`` positions of those asked for
    so far, in the stream's own order (a hint list's, not the folder's). A file whose URL is not at
    hand when its turn comes (``url_ready``) goes to a worker thread, which waits for the signing call
    (``prefetch.url_waits``): the planner never does. It used to: resolving the URL of a file of a
    shuffled hint list signed it on the planner thread, one API round trip while in-flight fetches
    drained (a 10,000-file WAN epoch: 986-990 files/s, 1,086-1,101 with URLs signed ahead).

Threads
    One planner thread owns every stream, run and counter decision; FUSE threads only post events
    (``opened``, hint lines) to its queue and return; the transport's thread (``fetch_async``) and
    ``parallel`` worker threads (``fetch``) only post outcomes back. The planner takes events in
    batches and schedules once per batch (a wake-up and a pass over the streams per file cost more
    than the fetch itself on 2 cores). Nothing the planner owns is locked; ``status`` reads a list
    of stream summaries the planner replaces (never mutates). Hint lines arrive as events too and are
    kept by the planner in ``_HintLines`` (its lock is a leaf, for ``status``-style readers).
"""

from __future__ import annotations

import array
import logging
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from encordfs import errors
from encordfs.core.counters import Counters
from encordfs.core.reader import Throttled
from encordfs.core.urls import UrlSource

log = logging.getLogger(__name__)

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Item:
    """One file to prefetch: its inode, cache key, size and where its URL comes from."""

    ino: int
    key: str
    size: int
    url_source: UrlSource
    handle: str = ""  # what signs its URL (``Source.sign_ahead``); "" when there is nothing to sign


class Source(Protocol):
    """What the prefetcher needs from the filesystem core."""

    def next_files(self, folder: int, after_ino: int, limit: int) -> list[Item]:
        """Files of ``folder`` listed after ``after_ino``, in listing order."""
        ...

    def previous_file(self, folder: int, ino: int) -> int | None:
        """The file listed just before ``ino`` in ``folder``."""
        ...

    def file_at(self, path: str) -> Item:
        """The file at ``path`` (relative to the mount root); ``errors.NotFound`` if nothing is there,
        ``errors.IsADirectory`` for a folder, another ``FsError`` if it cannot be resolved now."""
        ...

    def url_ready(self, item: Item) -> bool:
        """Whether the item's URL is at hand: fetching it waits for no signing call."""
        ...

    def sign_ahead(self, items: list[Item]) -> None:
        """Start signing these items' URLs, in bulk, and return at once."""
        ...


class Link(Protocol):
    """What the prefetcher reads of the byte server's link (``core.link.LinkEstimate``)."""

    @property
    def floor_s(self) -> float:
        """The least time to first byte seen, seconds (0 before any GET)."""
        ...

    @property
    def bandwidth_bytes_s(self) -> float:
        """The link's recent peak delivery rate, bytes per second (0 before any GET)."""
        ...


FetchFile = Callable[[Item], int]  # bytes fetched (0: cached already); raises reader.Throttled or FsError
# Start fetching without a thread; calls back (bytes, error) from the transport's thread; False: cannot.
FetchFileAsync = Callable[[Item, Callable[[int, "errors.FsError | None"], None]], bool]


@dataclass(frozen=True, slots=True)
class PrefetchConfig:
    """Tuning of ``Prefetcher`` (the mount sets ``ahead_bytes`` and ``parallel`` from its settings)."""

    # Files fetched at once over all streams, whatever the link: 32 in flight keep a fast link (loopback,
    # a LAN) busy, and behind 25 ms of first-byte latency serve ~1,300 files/s.
    parallel: int = 32
    # Behind a slower link, more: as many as ``latency_target_files_s`` x the link's first-byte floor
    # (at 100 ms, 32 in flight cap any reader at 320 files/s whatever the bandwidth), up to
    # ``max_parallel``, and only while the bytes in flight stay under ``bdp_multiple`` x the link's
    # measured bandwidth x that floor (see "Bounds": a slow link gets no more transfers than it can
    # carry, which would only slow each file and every demand read sharing the link).
    max_parallel: int = 256
    # ~1,300-1,400 cold small files/s is what the mount opens and reads on 2 cores (P2): latency alone
    # must allow more than that.
    latency_target_files_s: float = 2000.0
    # Little's law: a link is kept full by its bandwidth-delay product in flight, plus the files whose
    # first byte is late. The bandwidth measured is what the transfers in flight achieved, so the limit
    # grows by up to this factor per window of measurement while more transfers deliver more, and stops
    # at twice the link's product once it is full.
    bdp_multiple: float = 2.0
    # Bytes fetched ahead of their readers, over all streams (see "Bounds").
    ahead_bytes: int = 128 * MiB
    # The most a file's prefetch fetches: its first part (the reader's ``small_file_bytes``).
    file_bytes_cap: int = 8 * MiB
    # Files opened in listing order that start a lookahead stream. A random reader of N files makes such
    # a run about N x (recent_opens / N) ** (run - 1) times an epoch: 4 keeps it near zero from N ~ 200.
    lookahead_run: int = 4
    initial_window: int = 4  # files ahead of a new lookahead stream
    hint_initial_window: int = 16  # hints announce intent: start wider
    max_window: int = 1024  # files ahead of one stream, at most
    idle_opens: int = 64  # opens in a stream's scope without a hit that retire it (x4 for hint lists)
    idle_s: float = 30.0  # seconds without a hit that retire a stream
    recent_opens: int = 16  # opens per folder remembered for run detection (2 per reader of 8 in parallel)
    max_folders: int = 256  # folders whose recent opens are remembered (least recently used go)
    max_streams_per_folder: int = 16
    max_hint_lists: int = 4
    max_hint_lines: int = 10_000_000
    page_files: int = 64  # items produced per catalog query or resolution batch
    # URLs are signed this many positions ahead of what a stream schedules, a bulk call (1,000) at a
    # time, so the planner never waits for a signing call (an API round trip) while the link idles.
    sign_lead: int = 500
    sign_batch: int = 1000
    # Positions a hint list keeps matching behind its front: the slowest of a loader's workers is a few
    # batches behind its fastest (8 workers x 2 batches of 32 in flight = 512).
    hint_keep_behind: int = 1024
    throttle_pause_s: float = 0.05
    # While at least ``linger_in_flight`` files are being fetched from a server whose first bytes come
    # within ``linger_below_latency_s`` (the link's floor, as measured), the planner waits ``linger_s``
    # after an event before it plans, so that the events of a busy epoch (an open and a fetch's end per
    # file) are handled a few at a time instead of a wakeup each: there the mount's CPU is the limit.
    # Behind a slower link the limit is ``parallel`` fetches per first-byte time, and a slot refilled
    # 1 ms late on average would cost ~3% of the files per second at 30 ms (reasoning: the WAN epoch's
    # files/s varied more than that between runs, with and without the wait).
    linger_s: float = 0.002
    linger_in_flight: int = 8
    linger_below_latency_s: float = 0.005


class _HintLines:
    """The lines of one hint list, compact: one bytearray of text and the offset where each line ends.
    Written by the FUSE thread that writes the hints file, read by the planner (``_lock``: a leaf)."""

    def __init__(self, max_lines: int) -> None:
        self._lock = threading.Lock()
        self._text = bytearray()
        self._ends = array.array("Q")
        self._partial = bytearray()
        self._max_lines = max_lines
        self.closed = False
        self.dropped = 0

    def feed(self, data: bytes | memoryview) -> int:
        """Append ``data``; returns how many complete lines it finished (empty lines are not kept)."""
        added = 0
        with self._lock:
            buf = self._partial + data
            start = 0
            while True:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                added += self._add_locked(buf[start:nl])
                start = nl + 1
            self._partial = buf[start:]
        return added

    def close(self) -> int:
        with self._lock:
            added = self._add_locked(self._partial) if self._partial else 0
            self._partial = bytearray()
            self.closed = True
        return added

    def _add_locked(self, line: bytearray | bytes) -> int:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return 0
        if len(self._ends) >= self._max_lines:
            self.dropped += 1
            return 0
        self._text += line
        self._ends.append(len(self._text))
        return 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._ends)

    def line(self, i: int) -> bytes:
        with self._lock:
            start = self._ends[i - 1] if i else 0
            return bytes(self._text[start : self._ends[i]])

    def state(self) -> tuple[int, bool]:
        """(lines so far, closed)."""
        with self._lock:
            return len(self._ends), self.closed


class _Stream:
    """One ordered sequence being prefetched (planner-owned; see the module docstring)."""

    def __init__(
        self, kind: str, scope: int, produce: Callable[[int, int], tuple[list[Item | None], bool]], window: int
    ) -> None:
        self.kind = kind  # "lookahead" or "hints"
        self.scope = scope  # the folder's inode, or the hint list's number
        self.produce = produce  # (from position, count) -> (items, exhausted); None: a line naming no file
        self.items: dict[int, Item | None] = {}
        self.index: dict[int, int] = {}  # ino -> position
        self.base = 0  # lowest position still held in ``items``
        self.produced = 0
        self.exhausted = False
        self.front = -1
        self.next_pos = 0
        self.window = window
        self.in_flight = 0
        self.charged: dict[int, int] = {}  # position -> bytes counted in ``ahead``: fetched, not opened yet
        self.consumed: set[int] = set()  # positions opened before they were scheduled (hint lists)
        self.idle = 0
        self.last_hit = 0.0
        self.paused_until = 0.0
        self.done = False
        self.signed_to = 0  # positions below this one had their URLs asked for (``Source.sign_ahead``)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scope": self.scope,
            "front": self.front,
            "window": self.window,
            "in_flight": self.in_flight,
            "ahead_bytes": sum(self.charged.values()),
        }


class _Folder:
    def __init__(self) -> None:
        self.recent: OrderedDict[int, int] = OrderedDict()  # ino -> length of the run it ends
        self.streams: list[_Stream] = []


_STOP = ("stop",)


class Prefetcher:
    """Sequential lookahead and order hints over one mount (see the module docstring)."""

    def __init__(
        self,
        source: Source,
        fetch: FetchFile,
        counters: Counters | None = None,
        config: PrefetchConfig | None = None,
        mountpoint: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        fetch_async: FetchFileAsync | None = None,
        cached: Callable[[Item], bool] | None = None,
        link: Link | None = None,
    ) -> None:
        self.source = source
        # The byte server's link as measured (``core.link.LinkEstimate``): its first-byte floor gates the
        # planner's wait (``PrefetchConfig.linger_s``) and, with its bandwidth, how many files are
        # fetched at once beyond ``parallel``. None: taken as a fast link.
        self.link = link
        self.fetch = fetch
        self.fetch_async = fetch_async
        # Whether a file's first part is cached here already (memory or this disk): such a file is passed
        # over by the planner itself, not handed to ``fetch`` to find out (an epoch over cached files
        # cost ~90 us of planner work per open that way).
        self.cached = cached
        self.counters = counters if counters is not None else Counters()
        self.config = config if config is not None else PrefetchConfig()
        self.mountpoint = mountpoint.rstrip("/") if mountpoint else None
        self._clock = clock
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, self.config.parallel), thread_name_prefix="encordfs-prefetch"
        )
        self._hint_ids = iter(range(1, 1 << 62))
        self._hint_ids_lock = threading.Lock()
        self._closed = False
        # planner-owned
        self._folders: OrderedDict[int, _Folder] = OrderedDict()
        self._hint_streams: list[_Stream] = []
        self._in_flight_keys: dict[str, int] = {}  # the files in flight: key -> bytes asked for
        self._in_flight_bytes = 0
        self._limit, self._limit_bytes = self.config.parallel, 0  # beyond ``parallel``: ``_set_limits``
        self._ahead = 0
        self._fetched: OrderedDict[str, None] = OrderedDict()  # prefetched, not opened since (bounded)
        self._view: list[_Stream] = []
        # Folders with a live lookahead stream, and whether a hint list is live: read by FUSE threads
        # (``follows``), replaced (never mutated) by the planner with ``_view``.
        self._followed: tuple[frozenset[int], bool] = (frozenset(), False)
        self._pings: list[threading.Event] = []
        self._planner = threading.Thread(target=self._plan, name="encordfs-prefetch-plan", daemon=True)
        self._planner.start()

    # -- called from FUSE threads: post and return

    def opened(self, folder: int, ino: int, key: str) -> None:
        """A file was opened (any reader): feeds hits and run detection. Never blocks, never raises."""
        if not self._closed:
            self._events.put(("open", folder, ino, key))

    def follows(self, folder: int) -> bool:
        """Whether an open in ``folder`` may move a live stream (a lookahead stream of that folder, or
        any hint list). The core skips ``opened`` for a file complete on disk when it does not: such
        opens would only feed run detection, and an epoch over cached files paid the planner ~100 us of
        CPU per open for streams that found every file cached."""
        folders, hints = self._followed
        return hints or folder in folders

    def hints_open(self) -> int:
        """Start a hint list; returns its number (for ``hints_write`` and ``hints_close``)."""
        with self._hint_ids_lock:
            number = next(self._hint_ids)
        self._events.put(("hints", number, _HintLines(self.config.max_hint_lines)))
        return number

    def hints_write(self, number: int, data: bytes | memoryview) -> None:
        self._events.put(("lines", number, bytes(data)))

    def hints_close(self, number: int) -> None:
        self._events.put(("end", number))

    def status(self) -> dict[str, Any]:
        view = self._view
        return {
            "streams": [s.summary() for s in view],
            "in_flight": len(self._in_flight_keys),
            "in_flight_max": self._limit,
            # beyond ``parallel`` files, also their bytes (0: no more than ``parallel`` now)
            "in_flight_bytes": self._in_flight_bytes,
            "in_flight_max_bytes": self._limit_bytes,
            "ahead_bytes": self._ahead,
            "ahead_bytes_max": self.config.ahead_bytes,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._events.put(_STOP)
        self._planner.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Tests: True once no event is queued and nothing is in flight."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ping(max(0.0, deadline - time.monotonic())) and not self._in_flight_keys and self._events.empty():
                return True
            time.sleep(0.01)
        return False

    def ping(self, timeout_s: float = 10.0) -> bool:
        """Tests: True once the planner has handled every event posted before this call and scheduled."""
        done = threading.Event()
        self._events.put(("ping", done))
        return done.wait(timeout_s)

    # -- the planner thread

    def _plan(self) -> None:
        lists: dict[int, _HintLines] = {}
        while True:
            paused = any(s.paused_until for s in self._view)
            try:
                events = [self._events.get(timeout=self.config.throttle_pause_s if paused else 1.0)]
            except queue.Empty:
                events = []
            if events and events[0] is not _STOP and self._lingers():
                time.sleep(self.config.linger_s)
            if events:
                self.counters.inc("prefetch.plan_rounds")
            while len(events) < 512:  # a batch: streams are pumped once for all of it
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            for event in events:
                if event is _STOP:
                    for stream in list(self._view):
                        self._retire(stream, "closed")
                    return
                try:
                    self._handle(event, lists)
                except Exception:  # a bug must not end prefetch for the mount's life
                    log.exception("prefetch planner: %s failed", event[0])
            try:
                self._retire_idle()
                self._pump_all()
            except Exception:
                log.exception("prefetch planner: scheduling failed")
            for ping in self._pings:
                ping.set()
            self._pings.clear()

    def _lingers(self) -> bool:
        """Whether events may gather before planning (``PrefetchConfig.linger_s``)."""
        cfg = self.config
        if len(self._in_flight_keys) < cfg.linger_in_flight:
            return False
        return self.link is None or self.link.floor_s < cfg.linger_below_latency_s

    def _set_limits(self) -> None:
        """How many files may be in flight this planning round, and their bytes beyond ``parallel``
        (``PrefetchConfig.max_parallel``): more only behind a link whose first-byte floor makes
        ``parallel`` too few for ``latency_target_files_s``, and whose measured bandwidth holds them."""
        cfg = self.config
        self._limit, self._limit_bytes = cfg.parallel, 0
        if self.link is None:
            return
        floor = self.link.floor_s
        wanted = min(cfg.max_parallel, math.ceil(cfg.latency_target_files_s * floor))
        if wanted > cfg.parallel:
            self._limit = wanted
            self._limit_bytes = int(cfg.bdp_multiple * self.link.bandwidth_bytes_s * floor)

    def _has_room(self) -> bool:
        """Whether one more file may start now (``_set_limits``)."""
        n = len(self._in_flight_keys)
        return n < self.config.parallel or (n < self._limit and self._in_flight_bytes < self._limit_bytes)

    def _handle(self, event: tuple[Any, ...], lists: dict[int, _HintLines]) -> None:
        kind = event[0]
        if kind == "open":
            self._on_open(event[1], event[2], event[3])
        elif kind == "done":
            self._on_done(*event[1:])
        elif kind == "hints":
            lists[event[1]] = event[2]
            self._start_hints(event[1], event[2])
        elif kind == "lines":
            hint_lines = lists.get(event[1])
            if hint_lines is not None:
                self.counters.inc("hints.lines", hint_lines.feed(event[2]))
        elif kind == "end":
            hint_lines = lists.pop(event[1], None)
            if hint_lines is not None:
                self.counters.inc("hints.lines", hint_lines.close())
                if not len(hint_lines):
                    self._clear_hints()
                self._count_dropped(hint_lines)
        elif kind == "ping":
            self._pings.append(event[1])  # answered once the batch has been scheduled

    # -- opens

    def _on_open(self, folder: int, ino: int, key: str) -> None:
        if key in self._fetched:
            del self._fetched[key]
            self.counters.inc("prefetch.used")
        elif key in self._in_flight_keys:
            self.counters.inc("prefetch.used_in_flight")
        hinted = False
        for stream in list(self._hint_streams):
            hinted = self._match(stream, ino) or hinted
        state = self._folders.get(folder)
        if state is None:
            state = self._folders[folder] = _Folder()
            while len(self._folders) > self.config.max_folders:
                _, old = self._folders.popitem(last=False)
                for stream in old.streams:
                    self._retire(stream, "forgotten")
        else:
            self._folders.move_to_end(folder)
        matched = False
        for stream in list(state.streams):
            matched = self._match(stream, ino) or matched
        if matched or hinted:
            return
        self._note_run(folder, state, ino)

    def _match(self, stream: _Stream, ino: int) -> bool:
        """A hit: a file the stream holds (for lookahead: no further ahead than a window past what it
        scheduled; a hint list is the reader's own word, wherever the file is in it)."""
        pos = stream.index.get(ino)
        if pos is None or (stream.kind == "lookahead" and pos > stream.next_pos + stream.window):
            stream.idle += 1
            return False
        self._hit(stream, pos)
        return True

    def _note_run(self, folder: int, state: _Folder, ino: int) -> None:
        """Run detection: does ``ino`` continue a run of opens in listing order?"""
        before = self.source.previous_file(folder, ino)
        run = state.recent.get(before, 0) + 1 if before is not None else 1
        state.recent[ino] = run
        state.recent.move_to_end(ino)
        while len(state.recent) > self.config.recent_opens:
            state.recent.popitem(last=False)
        if run < self.config.lookahead_run or len(state.streams) >= self.config.max_streams_per_folder:
            return

        last = ino

        def produce(pos: int, count: int) -> tuple[list[Item | None], bool]:
            nonlocal last
            items = self.source.next_files(folder, last, count)
            if items:
                last = items[-1].ino
            return list(items), len(items) < count

        stream = _Stream("lookahead", folder, produce, self.config.initial_window)
        stream.last_hit = self._clock()
        state.streams.append(stream)
        del state.recent[ino]  # the stream owns what follows: the run starts afresh if it is retired
        self._set_view([*self._view, stream])
        self.counters.inc("lookahead.streams")

    def _hit(self, stream: _Stream, pos: int) -> None:
        stream.idle = 0
        stream.last_hit = self._clock()
        cfg = self.config
        stream.window = min(stream.window + 1, cfg.max_window)
        if pos < stream.next_pos:  # handed to the fetcher before it was opened: prefetch is used
            self.counters.inc(f"{stream.kind}.hits")
        else:
            self.counters.inc(f"{stream.kind}.overtaken")
            if stream.kind == "lookahead":  # one reader, past the files before it: schedule from there
                stream.next_pos = pos + 1
            else:  # a hint list's readers work in parallel: only this one is taken
                stream.consumed.add(pos)
        self._ahead -= stream.charged.pop(pos, 0)
        if pos <= stream.front:
            return
        stream.front = pos
        # Positions this far behind the front will not be opened any more (a lookahead reader skipped
        # them; a hint list's slowest worker is within a few batches of its fastest).
        behind = stream.window if stream.kind == "lookahead" else max(4 * stream.window, cfg.hint_keep_behind)
        keep_from = stream.front - max(behind, cfg.page_files)
        while stream.base < keep_from:
            item = stream.items.pop(stream.base, None)
            if item is not None and stream.index.get(item.ino) == stream.base:
                del stream.index[item.ino]
            charged = stream.charged.pop(stream.base, 0)
            if charged:
                self._ahead -= charged
                self.counters.inc("prefetch.unused_files")
            stream.consumed.discard(stream.base)
            stream.base += 1

    # -- hints

    def _start_hints(self, number: int, hint_lines: _HintLines) -> None:
        self.counters.inc("hints.lists")
        while len(self._hint_streams) >= self.config.max_hint_lists:
            self._retire(self._hint_streams[0], "replaced")

        def produce(pos: int, count: int) -> tuple[list[Item | None], bool]:
            have, closed = hint_lines.state()
            end = min(have, pos + count)
            return [self._resolve(hint_lines.line(i)) for i in range(pos, end)], closed and end >= have

        stream = _Stream("hints", number, produce, self.config.hint_initial_window)
        stream.last_hit = self._clock()
        self._hint_streams.append(stream)
        self._set_view([*self._view, stream])

    def _resolve(self, raw: bytes) -> Item | None:
        try:
            path = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.counters.inc("hints.invalid_lines")
            return None
        mnt = self.mountpoint
        if mnt is not None and (path == mnt or path.startswith(mnt + "/")):
            path = path[len(mnt) :]
        try:
            return self.source.file_at("/" + path.lstrip("/"))
        except errors.NotFound:
            self.counters.inc("hints.unknown_paths")
        except errors.IsADirectory:
            self.counters.inc("hints.not_files")
        except errors.FsError as exc:
            self.counters.inc("hints.unresolved")
            log.debug("hint %r not resolved: %s", path, exc)
        return None

    def _clear_hints(self) -> None:
        for stream in list(self._hint_streams):
            self._retire(stream, "cleared")
        self.counters.inc("hints.clears")

    def _count_dropped(self, hint_lines: _HintLines) -> None:
        if hint_lines.dropped:
            self.counters.inc("hints.dropped_lines", hint_lines.dropped)

    # -- scheduling

    def _pump_all(self) -> None:
        self._set_limits()
        for stream in self._view:
            if not stream.done:
                self._pump(stream)

    def _pump(self, stream: _Stream) -> None:
        cfg = self.config
        now = self._clock()
        if stream.paused_until:
            if now < stream.paused_until:
                return
            stream.paused_until = 0.0
        limit = stream.front + stream.window
        while stream.next_pos <= limit and self._has_room():
            pos = stream.next_pos
            if pos + cfg.sign_lead >= stream.signed_to:
                self._sign_next(stream)
            if not self._produce_to(stream, pos + 1):
                break
            item = stream.items.get(pos)
            if (
                item is None
                or pos in stream.consumed
                or item.key in self._in_flight_keys
                or item.key in self._fetched
                or item.size <= 0
            ):
                stream.consumed.discard(pos)
                stream.next_pos += 1
                continue
            if self.cached is not None and self.cached(item):
                self.counters.inc("prefetch.already_cached")
                stream.next_pos += 1
                continue
            nbytes = min(item.size, cfg.file_bytes_cap)
            if self._ahead + nbytes > cfg.ahead_bytes:
                self.counters.inc("prefetch.ahead_full")
                break
            self._submit(stream, pos, item, nbytes)
            stream.next_pos += 1
        # what the reader may open next is known, so that an open beyond the window is recognised
        self._produce_to(stream, limit + 1 + stream.window)
        done = stream.exhausted and stream.next_pos >= stream.produced and not stream.in_flight
        if done and stream.front >= stream.produced - 1:
            self._retire(stream, "finished")  # all handed over, and its last file was opened

    def _sign_next(self, stream: _Stream) -> None:
        """Ask for the URLs of the stream's next ``sign_batch`` positions not asked for yet. A shorter
        batch only at the stream's end: a hint list whose lines arrive a few at a time would otherwise
        cost a call per few lines (its files' URLs are then signed by the fetch, with their folder)."""
        start = max(stream.signed_to, stream.next_pos)
        self._produce_to(stream, start + self.config.sign_batch)
        end = min(start + self.config.sign_batch, stream.produced)
        if end <= start or (end - start < self.config.sign_batch and not stream.exhausted):
            return
        cached = self.cached
        items = [
            item
            for pos in range(start, end)
            if (item := stream.items.get(pos)) is not None and (cached is None or not cached(item))
        ]  # (a cached file is passed over when its turn comes: its URL would be signed for nothing)
        stream.signed_to = end
        if items:
            try:
                self.source.sign_ahead(items)
            except Exception:  # signing ahead is an optimisation: the fetch signs on its own
                log.debug("prefetch: signing ahead failed", exc_info=True)

    def _produce_to(self, stream: _Stream, upto: int) -> bool:
        """Produce items until ``upto`` positions exist (or the sequence ends); True if ``upto - 1`` exists."""
        while stream.produced < upto and not stream.exhausted:
            count = max(self.config.page_files, upto - stream.produced)
            items, exhausted = stream.produce(stream.produced, count)
            for item in items:
                stream.items[stream.produced] = item
                if item is not None:
                    stream.index.setdefault(item.ino, stream.produced)
                stream.produced += 1
            stream.exhausted = exhausted
            if not items and not exhausted:
                break  # a hint list whose next lines have not been written yet
        return stream.produced >= upto

    def _submit(self, stream: _Stream, pos: int, item: Item, nbytes: int) -> None:
        stream.in_flight += 1
        self._in_flight_keys[item.key] = nbytes
        self._in_flight_bytes += nbytes
        self.counters.set_max("prefetch.in_flight_peak", len(self._in_flight_keys))
        stream.charged[pos] = nbytes
        self._ahead += nbytes
        self.counters.inc("prefetch.files_queued")
        if self.fetch_async is not None:
            if self._start_async(stream, pos, item):
                return
        self._to_pool(stream, pos, item)

    def _start_async(self, stream: _Stream, pos: int, item: Item) -> bool:
        """Fetch without a thread (libcurl); False: not possible now, use a worker thread (also when the
        URL still has to be signed: the worker waits for that call, never the planner)."""
        assert self.fetch_async is not None
        if not self.source.url_ready(item):
            self.counters.inc("prefetch.url_waits")
            return False

        def done(nbytes: int, error: errors.FsError | None) -> None:  # the transport's thread: post only
            self._events.put(("done", stream, pos, item, "ok" if error is None else "async_failed", nbytes))

        try:
            return self.fetch_async(item, done)
        except Throttled:
            self._on_done(stream, pos, item, "throttled", 0)
        except errors.FsError as exc:
            log.debug("prefetch of inode %d dropped: %s", item.ino, exc)
            self._on_done(stream, pos, item, "failed", 0)
        return True

    def _to_pool(self, stream: _Stream, pos: int, item: Item) -> None:
        try:
            self._pool.submit(self._run, stream, pos, item)
        except RuntimeError:  # shutting down
            self._on_done(stream, pos, item, "failed", 0)

    def _run(self, stream: _Stream, pos: int, item: Item) -> None:
        """A worker thread: fetch one file, post the outcome to the planner."""
        outcome, nbytes = "failed", 0
        try:
            nbytes = self.fetch(item)
            outcome = "ok"
        except Throttled:
            outcome = "throttled"
        except errors.FsError as exc:
            log.debug("prefetch of inode %d dropped: %s", item.ino, exc)
        except Exception:
            log.exception("prefetch of inode %d failed", item.ino)
        self._events.put(("done", stream, pos, item, outcome, nbytes))

    def _on_done(self, stream: _Stream, pos: int, item: Item, outcome: str, nbytes: int) -> None:
        if outcome == "async_failed":  # one attempt failed: a worker thread tries with retries, re-signing
            self.counters.inc("prefetch.async_retries")
            self._to_pool(stream, pos, item)
            return
        stream.in_flight -= 1
        self._in_flight_bytes -= self._in_flight_keys.pop(item.key, 0)
        if outcome == "ok":
            if nbytes:
                self.counters.inc("prefetch.files")
                self.counters.inc("prefetch.bytes", nbytes)
                self._fetched[item.key] = None
                while len(self._fetched) > 65536:
                    self._fetched.popitem(last=False)
            else:
                self.counters.inc("prefetch.already_cached")
            return
        charged = stream.charged.pop(pos, 0)
        self._ahead -= charged
        if outcome == "throttled":
            self.counters.inc("prefetch.throttled")
            if not stream.done and pos > stream.front:
                stream.next_pos = min(stream.next_pos, pos)
                stream.paused_until = self._clock() + self.config.throttle_pause_s
        else:
            self.counters.inc("prefetch.failed")

    def _set_view(self, streams: list[_Stream]) -> None:
        self._view = streams
        self._followed = (
            frozenset(s.scope for s in streams if s.kind == "lookahead"),
            any(s.kind == "hints" for s in streams),
        )

    # -- retiring

    def _retire_idle(self) -> None:
        now = self._clock()
        cfg = self.config
        for stream in self._view:
            limit = cfg.idle_opens * (4 if stream.kind == "hints" else 1)
            if stream.idle > limit or now - stream.last_hit > cfg.idle_s:
                self._retire(stream, "idle")

    def _retire(self, stream: _Stream, why: str) -> None:
        if stream.done:
            return
        stream.done = True
        if why != "finished" and stream.charged:  # fetched for readers that went elsewhere
            self.counters.inc("prefetch.unused_files", len(stream.charged))
        self._ahead -= sum(stream.charged.values())
        stream.charged.clear()
        stream.items.clear()
        stream.index.clear()
        if stream.kind == "hints":
            self._hint_streams.remove(stream)
        else:
            state = self._folders.get(stream.scope)
            if state is not None and stream in state.streams:
                state.streams.remove(stream)
        self._set_view([s for s in self._view if s is not stream])
        self.counters.inc(f"{stream.kind}.retired_{why}")


__all__ = ["FetchFile", "Item", "PrefetchConfig", "Prefetcher", "Source"]
