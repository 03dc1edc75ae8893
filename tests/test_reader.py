"""The read path end to end against a local range server: bytes, caching, re-signing, retries, budget.

Sizes are scaled down (64 KiB parts, 32 KiB small files, 16 KiB first window) so multi-part logic,
readahead growth and the memory budget are exercised on small data.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encordfs.core.blockcache import (
    Block,
    BlockCache,
    DiskFileCache,
    MemoryBlockCache,
    TieredBlockCache,
    _pwrite_all,
)
from encordfs.core.counters import Counters
from encordfs.core.fetch import HttpFetcher
from encordfs.core.reader import ReadPipeline, Throttled
from encordfs.core.urls import SignedUrlCache
from encordfs.errors import InvalidValue, PermissionDenied, RemoteIOError, Stale
from harness.http import ByteServer, FakeClock

KiB = 1024
SMALL = dict(
    small_file_bytes=32 * KiB,
    part_bytes=64 * KiB,
    initial_window=16 * KiB,
    max_window_bytes=256 * KiB,
    memory_budget_bytes=2048 * KiB,
    max_parallel_per_file=4,
    max_parallel_total=8,
    seek_back_bytes=16 * KiB,
    read_timeout_s=20.0,
)


def data_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def server() -> Iterator[ByteServer]:
    with ByteServer().running() as running:
        yield running


@pytest.fixture
def counters() -> Counters:
    return Counters()


@pytest.fixture
def fetcher(counters: Counters, http_client: str) -> Iterator[HttpFetcher]:
    fetcher = HttpFetcher(http_client, counters=counters, retry_budget_s=5.0, backoff_base_s=0.001, backoff_cap_s=0.01)
    assert fetcher.transport.name == http_client
    yield fetcher
    fetcher.close()


@pytest.fixture
def make_pipeline(fetcher: HttpFetcher, counters: Counters) -> Iterator[Callable[..., ReadPipeline]]:
    made: list[ReadPipeline] = []

    def make(cache: BlockCache | None = None, **overrides: object) -> ReadPipeline:
        options = {**SMALL, **overrides}
        cache = cache if cache is not None else MemoryBlockCache(16 << 20, counters=counters)
        pipeline = ReadPipeline(fetcher, cache, counters, **options)  # type: ignore[arg-type]
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.close()
        assert pipeline.budget.used_bytes == 0  # every charge released: no leak across handles


def plain_source(server: ByteServer, name: str) -> Callable[[bool], str]:
    return lambda force_resign: server.sign(name)


def read_all(pipeline: ReadPipeline, key: str, size: int, source: Callable[[bool], str], chunk: int = 8 * KiB) -> bytes:
    handle = pipeline.open(key, size, source)
    try:
        out = bytearray()
        while piece := handle.read(len(out), chunk):
            out += piece
        return bytes(out)
    finally:
        handle.close()


def run_threads(target: Callable[[int], None], n: int, timeout_s: float) -> None:
    """Run ``target(0..n-1)`` on ``n`` threads; fail on any thread's exception or on a thread still running."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # reported below, from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert stuck == 0, f"{stuck} of {n} threads still running after {timeout_s} s"


# ---------------------------------------------------------------------------------------------- bytes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.sampled_from([0, 1, 5 * KiB, 32 * KiB, 32 * KiB + 1, 64 * KiB, 200 * KiB + 7, 700 * KiB]),
    reads=st.lists(st.tuples(st.floats(0, 1.1), st.integers(0, 150 * KiB)), min_size=1, max_size=12),
)
def test_random_reads_match_source(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline], counters: Counters, size: int, reads: list
) -> None:
    name = f"blob-{size}"
    if name not in server.blobs:
        server.add(name, data_of(size, size))
    source = server.blobs[name]
    # A memory cache smaller than the larger files: parts are evicted and fetched again.
    pipeline = make_pipeline(MemoryBlockCache(128 * KiB, counters=counters))
    handle = pipeline.open(f"{name}:{size}:v1", size, plain_source(server, name))
    try:
        for fraction, length in reads:
            offset = int(fraction * size)
            assert handle.read(offset, length) == source[offset : offset + length]
    finally:
        handle.close()


def test_sequential_read_of_large_file_with_readahead(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline], counters: Counters
) -> None:
    size = 3 * 1024 * KiB + 123
    server.add("big", data_of(1, size))
    pipeline = make_pipeline()
    assert read_all(pipeline, "big:1", size, plain_source(server, "big")) == server.blobs["big"]
    snap = counters.snapshot()
    assert snap["reader.readahead_fetches"] > 0
    ranges = [h.range for h in server.hits("big")]
    lengths = [int(r.split("-")[1]) - int(r.split("=")[1].split("-")[0]) + 1 for r in ranges if r]
    assert lengths[0] == 16 * KiB  # the first request is the initial window ...
    assert lengths.count(64 * KiB) >= size // (64 * KiB) - 2  # ... then whole parts
    assert snap["fetch.bytes_fetched"] == size  # nothing fetched twice


def test_read_clamps_at_eof_and_past_eof_is_empty(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline]
) -> None:
    server.add("f", data_of(2, 100 * KiB))
    handle = make_pipeline().open("f:1", 100 * KiB, plain_source(server, "f"))
    assert handle.read(100 * KiB - 10, 4096) == server.blobs["f"][-10:]
    assert handle.read(100 * KiB, 10) == b""
    assert handle.read(10 * 100 * KiB, 10) == b""
    handle.close()
    with pytest.raises(InvalidValue):
        handle.read(0, 1)


# ---------------------------------------------------------------------------------------------- caching


def test_small_file_one_get_then_served_from_cache(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline]
) -> None:
    server.add("small", data_of(3, 30 * KiB))
    pipeline = make_pipeline()
    for _ in range(3):
        handle = pipeline.open("small:30720:t1", 30 * KiB, plain_source(server, "small"))
        assert handle.read(100, 10) == server.blobs["small"][100:110]
        assert handle.read(0, 64 * KiB) == server.blobs["small"]
        handle.close()
    hits = server.hits("small")
    assert len(hits) == 1 and hits[0].range == f"bytes=0-{30 * KiB - 1}"


def test_a_sequential_read_caches_every_part_the_first_one_included(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline], counters: Counters
) -> None:
    """The first part of a stream is fetched as growing ramp requests (not as one part) and read far
    past before its last ramp arrives: it is still collected and cached whole, so the file ends up
    complete in the cache (a passthrough backing file) and a second read fetches nothing."""
    size = 5 * 64 * KiB + 999
    server.add("big", data_of(21, size))
    cache = MemoryBlockCache(16 << 20, counters=counters)
    pipeline = make_pipeline(cache)
    assert read_all(pipeline, "big:1", size, plain_source(server, "big"), chunk=4 * KiB) == server.blobs["big"]
    assert all(cache.contains(("big:1", k)) for k in range(6))
    assert counters.get("reader.parts_coalesced") == 1
    server.reset_log()
    assert read_all(pipeline, "big:1", size, plain_source(server, "big"), chunk=4 * KiB) == server.blobs["big"]
    assert server.hits() == []


def test_the_first_part_is_collected_when_reads_arrive_out_of_order(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline], counters: Counters
) -> None:
    size = 3 * 64 * KiB
    server.add("big", data_of(22, size))
    source = server.blobs["big"]
    cache = MemoryBlockCache(16 << 20, counters=counters)
    handle = make_pipeline(cache).open("big:1", size, plain_source(server, "big"))
    try:
        # parallel FUSE threads: the bytes after 8 KiB come first, then the first 8 KiB, then the rest
        assert handle.read(8 * KiB, 16 * KiB) == source[8 * KiB : 24 * KiB]
        assert handle.read(0, 8 * KiB) == source[: 8 * KiB]
        for offset in range(24 * KiB, size, 4 * KiB):
            assert handle.read(offset, 4 * KiB) == source[offset : offset + 4 * KiB]
    finally:
        handle.close()
    assert all(cache.contains(("big:1", k)) for k in range(3))
    assert counters.get("reader.parts_coalesced") == 1


def test_parts_are_shared_between_handles(server: ByteServer, make_pipeline: Callable[..., ReadPipeline]) -> None:
    size = 500 * KiB
    server.add("big", data_of(4, size))
    pipeline = make_pipeline()
    assert read_all(pipeline, "big:1", size, plain_source(server, "big"), chunk=64 * KiB) == server.blobs["big"]
    server.reset_log()
    assert read_all(pipeline, "big:1", size, plain_source(server, "big"), chunk=64 * KiB) == server.blobs["big"]
    assert server.hits() == []


def test_changed_content_is_never_served_stale(server: ByteServer, make_pipeline: Callable[..., ReadPipeline]) -> None:
    pipeline = make_pipeline()
    server.add("doc", b"version one")
    assert read_all(pipeline, "doc:11:2024-01-01", 11, plain_source(server, "doc")) == b"version one"
    server.add("doc", b"version two!")
    assert read_all(pipeline, "doc:12:2024-02-01", 12, plain_source(server, "doc")) == b"version two!"


def test_prefetch_fills_the_cache(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline], tmp_path: Path
) -> None:
    size = 1024 * KiB + 5
    server.add("big", data_of(5, size))
    server.add("small", data_of(6, 20 * KiB))
    with DiskFileCache(tmp_path / "c", capacity_bytes=64 << 20, min_free_bytes=0) as disk:
        pipeline = make_pipeline(TieredBlockCache(MemoryBlockCache(128 * KiB), disk))
        assert pipeline.prefetch("big:1", size, plain_source(server, "big")) == 17
        assert pipeline.prefetch("small:1", 20 * KiB, plain_source(server, "small")) == 1
        assert pipeline.prefetch("big:1", size, plain_source(server, "big")) == 0
        server.reset_log()
        assert read_all(pipeline, "big:1", size, plain_source(server, "big")) == server.blobs["big"]
        assert read_all(pipeline, "small:1", 20 * KiB, plain_source(server, "small")) == server.blobs["small"]
        assert server.hits() == []


def test_disk_cache_serves_a_remount(server: ByteServer, fetcher: HttpFetcher, tmp_path: Path) -> None:
    size = 300 * KiB
    server.add("big", data_of(7, size))
    for _ in range(2):
        with DiskFileCache(tmp_path / "c", capacity_bytes=64 << 20, min_free_bytes=0) as disk:
            pipeline = ReadPipeline(fetcher, TieredBlockCache(MemoryBlockCache(1 << 20), disk), **SMALL)  # type: ignore[arg-type]
            pipeline.prefetch("big:1", size, plain_source(server, "big"))
            pipeline.close()
    assert len(server.hits("big")) == 5  # the second "mount" fetched nothing


def test_a_part_queued_for_the_disk_is_not_fetched_again(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline], tmp_path: Path
) -> None:
    gate = threading.Event()

    def stuck_disk(fd: int, data: Block, offset: int) -> None:
        assert gate.wait(10)
        _pwrite_all(fd, data, offset)

    size = 200 * KiB
    server.add("big", data_of(8, size))
    with DiskFileCache(tmp_path / "c", capacity_bytes=64 << 20, min_free_bytes=0, write_part=stuck_disk) as disk:
        pipeline = make_pipeline(TieredBlockCache(MemoryBlockCache(1), disk))  # the memory tier holds nothing
        source = plain_source(server, "big")
        assert read_all(pipeline, "big:1", size, source, chunk=64 * KiB) == server.blobs["big"]  # disk stuck
        gets = len(server.hits("big"))
        assert read_all(pipeline, "big:1", size, source, chunk=64 * KiB) == server.blobs["big"]
        assert len(server.hits("big")) == gets  # served from the write queue
        gate.set()
        assert disk.flush(5) and disk.used_bytes > 0
        assert read_all(pipeline, "big:1", size, source, chunk=64 * KiB) == server.blobs["big"]
        assert len(server.hits("big")) == gets  # and now from the files


def test_prefetch_waits_for_a_slow_disk_instead_of_skipping(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline], tmp_path: Path
) -> None:
    def slow_disk(fd: int, data: Block, offset: int) -> None:
        time.sleep(0.01)
        _pwrite_all(fd, data, offset)

    size = 1024 * KiB
    server.add("big", data_of(9, size))
    disk = DiskFileCache(
        tmp_path / "c", capacity_bytes=64 << 20, min_free_bytes=0, max_backlog_bytes=64 * KiB, write_part=slow_disk
    )
    with disk:
        pipeline = make_pipeline(TieredBlockCache(MemoryBlockCache(1), disk))
        assert pipeline.prefetch("big:1", size, plain_source(server, "big")) == 16
        assert disk.flush(5)
        assert disk.counters.get("cache.skipped_disk_backlog") == 0
        assert all(disk.contains(("big:1", k)) for k in range(16))


def test_small_files_read_faster_than_the_disk_all_land_and_prefetch_waits_for_it(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline], tmp_path: Path
) -> None:
    """A whole small file skipped by a busy disk would be fetched again at its next open and never be
    read through passthrough: demand reads of small files wait for room, and prefetch holds off (Throttled)
    while the disk's queue is full rather than fetch what the disk would skip."""
    gate = threading.Event()

    def slow_disk(fd: int, data: Block, offset: int) -> None:
        assert gate.wait(10)
        _pwrite_all(fd, data, offset)

    size, files = 16 * KiB, 12
    for i in range(files):
        server.add(f"s{i}", data_of(100 + i, size))
    disk = DiskFileCache(
        tmp_path / "c", capacity_bytes=64 << 20, min_free_bytes=0, max_backlog_bytes=4 * size, write_part=slow_disk
    )
    with disk:
        pipeline = make_pipeline(TieredBlockCache(MemoryBlockCache(1 << 20), disk))
        for i in range(4):  # one being written (held at the gate), three queued: the queue is full
            assert read_all(pipeline, f"s{i}:1", size, plain_source(server, f"s{i}")) == server.blobs[f"s{i}"]
        with pytest.raises(Throttled):
            pipeline.prefetch_file("s4:1", size, plain_source(server, "s4"))
        assert pipeline.counters.get("reader.prefetch_disk_behind") == 1 and not server.hits("s4")
        reader = threading.Thread(
            target=lambda: [read_all(pipeline, f"s{i}:1", size, plain_source(server, f"s{i}")) for i in range(4, files)]
        )
        reader.start()
        time.sleep(0.2)
        assert reader.is_alive()  # the fifth file waits for room instead of being skipped
        gate.set()
        reader.join(10)
        assert not reader.is_alive() and disk.flush(5)
        assert disk.counters.get("cache.skipped_disk_backlog") == 0
        assert all(disk.complete_now(f"s{i}:1", size) for i in range(files))


def test_a_part_whose_fetch_just_failed_fails_again_at_once(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline]
) -> None:
    """The kernel reads a page whose readahead failed once more, synchronously: after a failure that took
    the whole budget (EIO: a stalled signing call or byte server), that second READ fails at once instead
    of waiting it out again; later, the part is asked anew. A refusal is not remembered."""
    size = 20 * KiB
    server.add("f", data_of(21, size))
    calls: list[bool] = []

    def source(force_resign: bool) -> str:
        calls.append(force_resign)
        if len(calls) == 1:
            raise RemoteIOError("signing item f took longer than 30 s (Encord is slow or unreachable)")
        return server.sign("f")

    pipeline = make_pipeline(failure_memory_s=0.5)
    with pytest.raises(RemoteIOError):
        read_all(pipeline, "f:1", size, source)
    with pytest.raises(RemoteIOError, match="moments ago"):
        read_all(pipeline, "f:1", size, source)
    assert len(calls) == 1 and pipeline.counters.get("reader.recent_failures") == 1
    time.sleep(0.6)
    assert read_all(pipeline, "f:1", size, source) == server.blobs["f"]
    server.inject(403, 403, 403)  # refused, and refused again once re-signed: asked again each time
    with pytest.raises(PermissionDenied):
        read_all(pipeline, "g:1", size, plain_source(server, "f"))
    assert read_all(pipeline, "g:1", size, plain_source(server, "f")) == server.blobs["f"]


def test_read_held_answers_only_from_memory(server: ByteServer, make_pipeline: Callable[..., ReadPipeline]) -> None:
    """What the kernel binding answers on the thread that reads requests: a small file's bytes held in
    memory, never a fetch; None otherwise (the read then goes the normal way)."""
    small, big = 20 * KiB, 200 * KiB
    server.add("s", data_of(31, small))
    server.add("b", data_of(32, big))
    pipeline = make_pipeline()
    handle = pipeline.open("s:1", small, plain_source(server, "s"))
    try:
        assert handle.read_held(0, 4 * KiB) is None and not server.hits("s")  # not fetched yet: nothing asked
        assert bytes(handle.read(0, 4 * KiB)) == server.blobs["s"][: 4 * KiB]
        gets = len(server.hits("s"))
        assert bytes(handle.read_held(4 * KiB, 64 * KiB) or b"") == server.blobs["s"][4 * KiB :]
        assert handle.read_held(small, 4 * KiB) == b"" and len(server.hits("s")) == gets
    finally:
        handle.close()
    assert read_all(pipeline, "b:1", big, plain_source(server, "b")) == server.blobs["b"]
    handle = pipeline.open("b:1", big, plain_source(server, "b"))
    try:
        assert handle.read_held(0, 4 * KiB) is None  # a big file's handle holds no part yet
    finally:
        handle.close()


def test_read_held_serves_a_big_file_from_the_parts_readahead_fetched(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline]
) -> None:
    """A big file's bytes are held once its handle has their whole part (readahead fetched it):
    ``read_held`` answers them without a GET and keeps the stream going (readahead, dropping what is
    behind), so a sequential reader that tries it first reads the file with every byte fetched once.
    A range past what is fetched, or across two parts, is None: ``read`` waits for it."""
    part, big = 64 * KiB, 1024 * KiB
    server.add("b", data_of(34, big))
    pipeline = make_pipeline()
    handle = pipeline.open("b:1", big, plain_source(server, "b"))
    try:
        assert handle.read_held(0, 16 * KiB) is None
        out, held = bytearray(), 0
        while len(out) < big:
            piece = handle.read_held(len(out), 16 * KiB)
            if piece is None:
                piece = handle.read(len(out), 16 * KiB)
            else:
                held += 1
            out += piece
            if len(out) == 4 * part:  # a range across two parts is never answered from one (nor noted)
                assert handle.read_held(5 * part - 8 * KiB, 16 * KiB) is None
        assert bytes(out) == server.blobs["b"]
        assert held >= (big // part - 2) * 3  # past the ramp, every read of a part but its first
        assert pipeline.counters.get("reader.reads_held") == held
        assert pipeline.counters.get("reader.bytes_read") == big  # each read counted once
        fetched = 0
        for hit in server.hits("b"):
            first, last = (int(x) for x in (hit.range or "").removeprefix("bytes=").split("-"))
            fetched += last - first + 1
        assert fetched <= big + pipeline.initial_window  # the ramp's requests, then each part once
        assert handle.read_held(big, 4 * KiB) is None  # at EOF: ``read`` answers b""
    finally:
        handle.close()


# ---------------------------------------------------------------------------------------------- URLs


def test_resign_after_expiry_in_the_middle_of_a_long_read(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline], counters: Counters
) -> None:
    size = 1024 * KiB
    server.add("long", data_of(8, size))
    signs: list[list[str]] = []

    def sign_many(ids: list[str]) -> dict[str, str | None]:
        signs.append(ids)
        return {i: server.sign(i, ttl_s=1.0, expose_expiry=False) for i in ids}  # the client cannot see expiry

    urls = SignedUrlCache(sign_many, counters=counters, default_ttl_s=300)
    pipeline = make_pipeline(MemoryBlockCache(64 * KiB))
    handle = pipeline.open("long:1", size, urls.source("long"))
    first = handle.read(0, 200 * KiB)
    time.sleep(1.2)  # the URL expires mid-read; the server starts answering 403
    rest = bytearray()
    while piece := handle.read(200 * KiB + len(rest), 32 * KiB):
        rest += piece
    handle.close()
    assert first + rest == server.blobs["long"]
    assert len(server.hits("long", status=403)) >= 1
    assert len(signs) == 2  # the first signing and exactly one re-sign
    assert counters.get("fetch.resigns_after_error") >= 1


def test_known_expiry_is_resigned_before_use(server: ByteServer, fetcher: HttpFetcher, counters: Counters) -> None:
    clock = FakeClock()
    server.clock = clock  # server and client agree on time, which we move by hand
    server.add("a", data_of(9, 10 * KiB))
    signs: list[list[str]] = []

    def sign_many(ids: list[str]) -> dict[str, str | None]:
        signs.append(ids)
        return {i: server.sign(i, ttl_s=600) for i in ids}

    urls = SignedUrlCache(sign_many, clock=clock, margin_s=60, counters=counters)
    pipeline = ReadPipeline(fetcher, MemoryBlockCache(1 << 20), counters, **SMALL)  # type: ignore[arg-type]
    try:
        assert read_all(pipeline, "a:v1", 10 * KiB, urls.source("a")) == server.blobs["a"]
        clock.advance(700)  # the cached URL is now expired on the server too
        assert read_all(pipeline, "a:v2", 10 * KiB, urls.source("a")) == server.blobs["a"]
    finally:
        pipeline.close()
    assert server.hits(status=403) == []
    assert len(signs) == 2 and counters.get("urls.resigns_expired") == 1
    assert counters.get("fetch.resigns_after_error") == 0


def test_refused_twice_is_permission_denied(server: ByteServer, fetcher: HttpFetcher) -> None:
    server.add("a", b"x" * 100)
    forged = f"{server.base_url}/blob/a?Expires=9999999999&Signature=00"
    calls: list[bool] = []

    def source(force_resign: bool) -> str:
        calls.append(force_resign)
        return forged

    with pytest.raises(PermissionDenied) as info:
        fetcher.fetch(source, 0, 100)
    assert calls == [False, True]
    assert "Signature" not in str(info.value) and "?" not in str(info.value)


# ---------------------------------------------------------------------------------------------- faults


def test_retries_injected_server_errors_then_succeeds(
    server: ByteServer, fetcher: HttpFetcher, counters: Counters
) -> None:
    server.add("a", data_of(10, 50 * KiB))
    server.inject(500, 503, 429)
    assert fetcher.fetch(plain_source(server, "a"), 1000, 41000) == server.blobs["a"][1000:41000]
    assert counters.get("fetch.retries") == 3
    assert [h.status for h in server.hits("a")] == [500, 503, 429, 206]


def test_past_retry_budget_fails_quickly_with_eio(server: ByteServer, counters: Counters, http_client: str) -> None:
    server.add("a", b"x" * 1000)
    server.inject(*([500] * 1000))
    fetcher = HttpFetcher(http_client, counters=counters, retry_budget_s=0.3, backoff_base_s=0.01, backoff_cap_s=0.05)
    started = time.monotonic()
    try:
        with pytest.raises(RemoteIOError) as info:
            fetcher.fetch(plain_source(server, "a"), 0, 1000)
    finally:
        fetcher.close()
    assert time.monotonic() - started < 2.0
    assert info.value.errno == 5 and "Signature" not in str(info.value)
    assert counters.get("fetch.retries") >= 2


def test_object_shorter_than_catalog_is_stale_not_short(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline]
) -> None:
    server.add("shrunk", data_of(11, 100 * KiB))
    handle = make_pipeline().open("shrunk:1", 200 * KiB, plain_source(server, "shrunk"))
    try:
        with pytest.raises(Stale):
            handle.read(150 * KiB, 10)  # 416
        with pytest.raises(Stale):
            handle.read(64 * KiB, 64 * KiB)  # the range is cut short: never returned silently
    finally:
        handle.close()


def test_errors_are_not_sticky(server: ByteServer, make_pipeline: Callable[..., ReadPipeline]) -> None:
    size = 600 * KiB
    server.add("big", data_of(12, size))
    handle = make_pipeline().open("big:1", size, plain_source(server, "big"))
    handle.read(0, 8 * KiB)
    server.inject(*([404] * 3))  # the next requests fail, readahead or demand (404 is not retried)
    out, failures = bytearray(), 0
    while True:
        try:
            piece = handle.read(8 * KiB + len(out), 16 * KiB)
        except Stale:
            failures += 1  # a failed segment is dropped: the same read again fetches afresh
            assert failures <= 3
            continue
        if not piece:
            break
        out += piece
    handle.close()
    assert bytes(out) == server.blobs["big"][8 * KiB :]


# ---------------------------------------------------------------------------------------------- budget


def test_memory_budget_holds_with_64_concurrent_handles(
    server: ByteServer, make_pipeline: Callable[..., ReadPipeline], counters: Counters
) -> None:
    budget = 1024 * KiB
    sizes = [512 * KiB + n * 1000 for n in range(8)]
    for n, size in enumerate(sizes):
        server.add(f"f{n}", data_of(100 + n, size))
    pipeline = make_pipeline(MemoryBlockCache(256 * KiB, counters=counters), memory_budget_bytes=budget)
    start = threading.Barrier(64)

    def reader(n: int) -> None:
        name = f"f{n % 8}"
        start.wait()
        got = read_all(pipeline, f"{name}:{n % 3}", sizes[n % 8], plain_source(server, name), chunk=16 * KiB)
        assert got == server.blobs[name]

    run_threads(reader, 64, timeout_s=60)
    assert 0 < pipeline.budget.peak_bytes <= budget
    assert counters.get("reader.budget_peak_bytes") == pipeline.budget.peak_bytes
    assert pipeline.budget.used_bytes == 0


def test_budget_smaller_than_a_part_is_rejected(fetcher: HttpFetcher) -> None:
    with pytest.raises(InvalidValue):
        ReadPipeline(fetcher, MemoryBlockCache(1), **{**SMALL, "memory_budget_bytes": 32 * KiB})  # type: ignore[arg-type]


def test_many_threads_on_one_handle(server: ByteServer, make_pipeline: Callable[..., ReadPipeline]) -> None:
    size = 900 * KiB + 17
    server.add("shared", data_of(13, size))
    source = server.blobs["shared"]
    pipeline = make_pipeline(MemoryBlockCache(128 * KiB), memory_budget_bytes=512 * KiB)
    handle = pipeline.open("shared:1", size, plain_source(server, "shared"))

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        offset = rng.randrange(size) if seed % 2 else 0  # half stream from the start, half jump around
        for _ in range(40):
            length = rng.randrange(1, 40 * KiB)
            assert handle.read(offset, length) == source[offset : offset + length]
            offset = offset + length if seed % 2 == 0 and offset + length < size else rng.randrange(size)

    try:
        run_threads(reader, 8, timeout_s=30)
    finally:
        handle.close()
    assert pipeline.budget.peak_bytes <= 512 * KiB
