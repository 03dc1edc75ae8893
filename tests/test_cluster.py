"""Cluster mode in one process: several mounts (``app.build``, no kernel) of one in-memory Encord share a
real ``redis-server``. Encord's calls are ``MemoryBackend.calls`` (one backend plays the service for
every node); bytes come from a fetcher that counts origin requests per node."""

from __future__ import annotations

import mmap
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from encordfs import errors
from encordfs.app import Mount, build
from encordfs.backend import DatasetRecord
from encordfs.backend.memory import MemoryBackend
from encordfs.cluster import blocks as blocks_mod
from encordfs.cluster import folders as folders_mod
from encordfs.cluster import link as link_mod
from encordfs.cluster.keys import Keys, namespace
from encordfs.cluster.link import RedisLink
from encordfs.cluster.signing import SharedBackend
from encordfs.core import directio
from encordfs.core.counters import Counters
from encordfs.settings import resolve
from harness.fakes import row_record
from harness.redis import RunningRedis

ROWS = 30


BLOBS = "https://blobs.test/"


class CountingFetcher:
    """RangeFetcher over ``FreshUrls``' URLs; counts origin requests."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.requests = 0

    def fetch_into(
        self, url_source: Callable[[bool], str], start: int, out: memoryview, total: int | None = None
    ) -> None:
        self.requests += 1
        handle = url_source(False).removeprefix(BLOBS).split("?", 1)[0]
        out[:] = self.backend.fetch(f"mem://{handle}", start, start + len(out))


class FreshUrls(MemoryBackend):
    """Signs a new URL every time (``https://blobs.test/HANDLE?sig=N``), as a real service does."""

    def __init__(self) -> None:
        super().__init__()
        self.serial = 0

    def sign(self, handles: list[str]) -> Any:
        out = super().sign(handles)
        with self._lock:
            self.serial += 1
            serial = self.serial
        return {h: f"{BLOBS}{h}?sig={serial}" if isinstance(u, str) else u for h, u in out.items()}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RunningRedis]:
    with RunningRedis(maxmemory="256mb") as server:
        yield server


@pytest.fixture()
def encord(redis_server: RunningRedis) -> FreshUrls:
    redis_server.start()  # a test may have killed it
    redis_server.client().flushall()
    backend = FreshUrls()
    backend.add_dataset(DatasetRecord("ds1", "street", "d", 1e9, 1e9, 0, "folder1", "admin"))
    for i in range(ROWS):
        data = bytes([i]) * (100 + i)
        backend.add_row(row_record(f"r{i:03d}", "ds1", f"img{i:03d}.jpg", data, metadata={"i": i}), data)
    return backend


class Node:
    def __init__(self, mount: Mount, fetcher: CountingFetcher) -> None:
        self.mount = mount
        self.fs = mount.fs
        self.fetcher = fetcher

    def names(self, path: str = "/street") -> list[tuple[str, int]]:
        return [(name, attr.size) for name, attr in self.fs.readdir(self.fs.resolve(path))]

    def read(self, path: str) -> bytes:
        fh = self.fs.open(self.fs.resolve(path), writable=False).fh
        try:
            return bytes(self.fs.read(fh, 0, 1 << 20))
        finally:
            self.fs.release(fh)

    def counter(self, name: str) -> int:
        return self.mount.counters.get(name)


@pytest.fixture()
def nodes(tmp_path: Path, encord: FreshUrls, redis_server: RunningRedis) -> Iterator[Callable[..., Node]]:
    made: list[Mount] = []

    def node(name: str, account: str = "acct", **given: Any) -> Node:
        settings = resolve({
            "domain": "http://encord.test", "cache_dir": str(tmp_path / name), "shared": redis_server.url,
            "metadata_ttl": 60, "prefetch": False, **given,
        })  # fmt: skip  # prefetch would read past what a test counts (tests/test_cluster_mounts.py has it on)
        mount = build(encord, settings, account_id=account)
        made.append(mount)
        fetcher = CountingFetcher(encord)
        mount.fs.reader.fetcher = fetcher  # type: ignore[attr-defined]
        return Node(mount, fetcher)

    yield node
    for mount in made:
        mount.close()


def _published(node: Node, count: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while node.counter("shared.snapshot_publishes") < count:
        assert time.monotonic() < deadline, "the listing was not published"
        time.sleep(0.05)


def _shared_after_reading(nodes: Callable[..., Node], path: str) -> Node:
    """Node ``a`` (shared blocks) once it has listed, read ``path`` and published its listings and the blocks."""
    a = nodes("a", shared_blocks=True)
    a.names()
    a.read(path)
    _published(a, 2)
    assert a.mount.fs.reader.cache.flush(10)  # type: ignore[attr-defined]
    return a


def test_a_second_node_lists_from_the_cluster_with_the_same_names(
    nodes: Callable[..., Node], encord: FreshUrls
) -> None:
    a = nodes("a")
    listed = a.names()
    assert encord.calls["get_dataset"] == 1 and encord.calls["list_datasets"] == 1
    _published(a, 2)  # root and the dataset
    b = nodes("b")
    assert b.names() == listed and b.names("/") == a.names("/")
    assert encord.calls["get_dataset"] == 1 and encord.calls["list_datasets"] == 1
    assert b.counter("shared.snapshot_loads") == 2 and b.counter("shared.leases_taken") == 0
    node = b.fs.node(b.fs.resolve("/street/img003.jpg"))
    assert node.client_metadata == {"i": 3} and b.fs.getxattr(node.ino, "user.encord.meta.i") == b"3"


def test_a_big_folder_is_adopted_and_served_before_it_is_copied_in(
    nodes: Callable[..., Node], encord: FreshUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folders_mod, "ADOPT_MIN_ROWS", 10)
    a = nodes("a")
    listed = a.names()
    _published(a, 2)
    b = nodes("b")
    assert b.names() == listed
    catalog = b.fs.catalog
    ds = b.fs.resolve("/street")
    assert catalog.adopted() == {ds: ROWS}
    assert b.read("/street/img007.jpg") == bytes([7]) * 107
    catalog.fill_now()
    assert catalog.adopted() == {} and b.names() == listed
    assert encord.calls["get_dataset"] == 1


def test_a_listing_in_many_chunks_is_put_together_on_another_node(
    nodes: Callable[..., Node], encord: FreshUrls, monkeypatch: pytest.MonkeyPatch, redis_server: RunningRedis
) -> None:
    """Chunks of 4 KiB: each download thread decompresses several into its one reused buffer, the last
    one short; the joining node must see the very folder the first one published."""
    monkeypatch.setattr(folders_mod, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(folders_mod, "ADOPT_MIN_ROWS", 10)
    a = nodes("a")
    listed = a.names()
    _published(a, 2)
    chunks = list(redis_server.client().scan_iter(match="encordfs:*:f:ds1:c:*"))
    assert len(chunks) >= 4
    b = nodes("b")
    assert b.names() == listed
    b.fs.catalog.fill_now()
    node = b.fs.node(b.fs.resolve("/street/img009.jpg"))
    assert node.client_metadata == {"i": 9} and b.read("/street/img009.jpg") == bytes([9]) * 109
    assert encord.calls["get_dataset"] == 1 and b.counter("shared.snapshot_rejected") == 0


def test_a_frame_is_never_decompressed_past_the_room_given() -> None:
    import zstandard

    frame = zstandard.ZstdCompressor().compress(bytes(range(256)) * 40)  # 10,240 bytes
    room = memoryview(bytearray(4097))
    assert folders_mod._decompress_into(frame, room) == 4097 and bytes(room) == (bytes(range(256)) * 17)[:4097]
    room = memoryview(bytearray(20000))
    assert folders_mod._decompress_into(frame, room) == 10240
    assert folders_mod._decompress_into(frame[:-8], memoryview(bytearray(20000))) < 10240  # cut short: caught


def test_an_image_whose_direct_write_is_refused_is_written_through_the_page_cache(tmp_path: Path) -> None:
    """``O_DIRECT`` refuses an offset off a block boundary with EINVAL, as a filesystem without direct
    I/O would refuse any write: the bytes still land, through the page cache, and the fd stays that way."""
    import fcntl

    path = tmp_path / "image"
    fd, direct = directio.open_for_write(path, os.O_WRONLY | os.O_CREAT)
    try:
        assert direct and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        payload = bytes(range(256)) * 16
        room = memoryview(mmap.mmap(-1, 4096))
        room[:4000] = payload[:4000]
        room[4000:] = bytes(96)  # padding, never to be written
        folders_mod._write_chunk(fd, room, 100, 4000)
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        room.release()
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(100) + payload[:4000]


def test_simultaneous_first_listings_load_once(nodes: Callable[..., Node], encord: FreshUrls) -> None:
    many = [nodes(name) for name in "abcd"]
    results: dict[str, Any] = {}

    def list_it(name: str, node: Node) -> None:
        results[name] = node.names()

    threads = [threading.Thread(target=list_it, args=(n, node)) for n, node in zip("abcd", many)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len({repr(r) for r in results.values()}) == 1 and len(results) == 4
    assert encord.calls["get_dataset"] == 1 and encord.calls["list_datasets"] == 1
    # the three others took the listing from Redis: while the first loaded it (a lease waited for), or once it
    # was published (a slow start under load)
    assert sum(n.counter("shared.snapshot_loads") for n in many) >= 3


def test_each_url_is_signed_once_per_cluster(nodes: Callable[..., Node], encord: FreshUrls) -> None:
    many = [nodes(name) for name in "abc"]
    for node in many:
        node.names()
    files = [f"/street/img{i:03d}.jpg" for i in range(ROWS)]
    errors_seen: list[BaseException] = []

    def read_all(node: Node) -> None:
        try:
            for path in files:
                assert node.read(path)
        except BaseException as exc:  # reported below
            errors_seen.append(exc)

    threads = [threading.Thread(target=read_all, args=(node,)) for node in many]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors_seen
    assert encord.calls["sign"] == 1  # 30 files, one bulk call, for three nodes
    assert sum(n.counter("shared.url_hits") for n in many) >= 2 * ROWS


def test_nodes_reading_in_different_orders_sign_the_same_windows(nodes: Callable[..., Node], encord: FreshUrls) -> None:
    encord.add_dataset(DatasetRecord("ds2", "many", "d", 1e9, 1e9, 0, "folder2", "admin"))
    for i in range(2500):
        encord.add_row(row_record(f"m{i:05d}", "ds2", f"m{i:05d}.jpg", b"m"), b"m")
    many = [nodes(name) for name in "abc"]
    files = [f"/many/m{i:05d}.jpg" for i in range(2500)]
    for seed, node in enumerate(many):
        node.names("/many")
        order = files[:]
        random.Random(seed).shuffle(order)
        for path in order[:400]:
            assert node.read(path) == b"m"
    assert encord.calls["sign"] == 3  # one per window of 1,000 files, whatever the order or the node
    assert encord.calls["get_dataset"] == 1


def test_nodes_asking_for_one_window_at_once_never_split_it(encord: FreshUrls, redis_server: RunningRedis) -> None:
    """Two nodes that ask for the same window of 1,000 URLs at the same moment make one signing call
    between them, not one each for the part of the window whose leases each got: a node's leases are
    taken in one transaction (two plain pipelines of SETs interleave in Redis, 16 KiB of commands at a
    time, and the window was split)."""
    for i in range(1000):
        encord.add_row(row_record(f"w{i:04d}", "ds1", f"w{i:04d}.jpg", b"w"), b"w")
    handles = [f"item-w{i:04d}" for i in range(1000)]
    keys = Keys(namespace("http://encord.test", "acct", False))
    links = [RedisLink(redis_server.url, password=None, timeout_s=5, counters=Counters()) for _ in range(2)]
    try:
        for attempt in range(30):  # (plain pipelines split a window at attempts 7, 12 and 0 of three runs)
            redis_server.client().flushall()
            calls = encord.calls["sign"]
            got = _sign_at_once([SharedBackend(encord, link, keys, Counters()) for link in links], handles)
            assert all(len(g) == 1000 for g in got) and got[0] == got[1]  # the same URLs on both nodes
            assert encord.calls["sign"] - calls == 1, f"attempt {attempt}: the window was split"
    finally:
        for link in links:
            link.close()


def _sign_at_once(sharers: list[SharedBackend], handles: list[str]) -> list[dict[str, Any]]:
    """What each of ``sharers`` answers for ``handles``, all asked at the same moment."""
    start = threading.Barrier(len(sharers))
    got: list[dict[str, Any]] = [{} for _ in sharers]

    def ask(i: int) -> None:
        start.wait(5)
        got[i] = sharers[i].sign(handles)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(sharers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got


def test_a_refused_url_is_signed_again_not_served_again(nodes: Callable[..., Node], encord: FreshUrls) -> None:
    a, b = nodes("a"), nodes("b")
    a.names(), b.names()
    handle = a.fs.node(a.fs.resolve("/street/img001.jpg")).handle
    assert handle is not None
    first = a.fs.urls.get(handle)  # type: ignore[attr-defined]
    assert b.fs.urls.get(handle) == first and encord.calls["sign"] == 1  # type: ignore[attr-defined]
    second = b.fs.urls.get(handle, stale_url=first)  # type: ignore[attr-defined]  # the storage said 403
    assert second != first and encord.calls["sign"] == 2
    assert a.fs.urls.get(handle, stale_url=first) == second and encord.calls["sign"] == 2  # type: ignore[attr-defined]


def test_a_landed_write_shows_on_the_other_nodes_before_their_ttl(nodes: Callable[..., Node]) -> None:
    a, b = nodes("a"), nodes("b")
    a.names(), b.names()
    ino_a = a.fs.resolve("/street/img002.jpg")
    a.fs.setxattr(ino_a, "user.encord.meta.split", b'"val"', 0)
    a.fs.rename(a.fs.resolve("/street"), "img004.jpg", a.fs.resolve("/street"), "four.jpg")
    assert a.fs.writes is not None and a.fs.writes.flush(10)
    ino_b = b.fs.resolve("/street/img002.jpg")
    _wait_until(lambda: b.fs.node(ino_b).client_metadata == {"i": 2, "split": "val"}, "the landed write")
    _wait_until(lambda: "four.jpg" in dict(b.names()), "the landed rename")
    assert b.counter("shared.landed_applied") >= 1

    # a node that joins later takes the listing published before the write, and the write on top
    c = nodes("c")
    node = c.fs.node(c.fs.resolve("/street/img002.jpg"))
    assert node.client_metadata == {"i": 2, "split": "val"}


def _wait_until(ok: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"{what} never reached the other node"
        time.sleep(0.05)


def test_blocks_read_by_one_node_come_from_redis_for_the_others(nodes: Callable[..., Node]) -> None:
    a = nodes("a", shared_blocks=True)
    b = nodes("b", shared_blocks=True)
    a.names(), b.names()
    files = [f"/street/img{i:03d}.jpg" for i in range(10)]
    for path in files:
        a.read(path)
    assert a.fetcher.requests == 10
    tier = a.mount.fs.reader.cache  # type: ignore[attr-defined]
    assert isinstance(tier, blocks_mod.SharedBlockCache) and tier.flush(10)
    assert [b.read(p) for p in files] == [bytes([i]) * (100 + i) for i in range(10)]
    assert b.fetcher.requests == 0 and b.counter("shared.block_hits") == 10


def test_a_block_or_listing_that_fails_its_check_is_ignored(
    nodes: Callable[..., Node], encord: FreshUrls, redis_server: RunningRedis
) -> None:
    a = _shared_after_reading(nodes, "/street/img001.jpg")
    r = redis_server.client()
    for key in r.scan_iter(match="encordfs:*:b:*"):
        value = bytearray(r.get(key))
        value[-1] ^= 0xFF
        r.set(key, bytes(value))
    for key in r.scan_iter(match="encordfs:*:f:ds1:c:*"):
        r.set(key, b"\x00" * 100)
    b = nodes("b", shared_blocks=True)
    assert b.names() == a.names()
    assert encord.calls["get_dataset"] == 2 and b.counter("shared.snapshot_rejected") == 1
    assert b.read("/street/img001.jpg") == bytes([1]) * 101
    assert b.fetcher.requests == 1 and b.counter("shared.block_rejected") == 1


def test_another_accounts_data_is_never_read(nodes: Callable[..., Node], encord: FreshUrls) -> None:
    a = nodes("a")
    a.names()
    a.read("/street/img001.jpg")
    _published(a, 2)
    other = nodes("other", account="another-key")
    assert other.names() == a.names()
    assert encord.calls["get_dataset"] == 2 and encord.calls["list_datasets"] == 2
    other.read("/street/img001.jpg")
    assert encord.calls["sign"] == 2 and other.counter("shared.url_hits") == 0
    assert namespace("http://encord.test", "acct", False) != namespace("http://encord.test", "another-key", False)
    assert namespace("http://encord.test", "acct", False) != namespace("http://encord.test", "acct", True)


def test_redis_going_away_degrades_then_the_node_rejoins(
    nodes: Callable[..., Node], encord: FreshUrls, redis_server: RunningRedis, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr(link_mod, "PROBE_INTERVAL_S", 0.2)
    a = nodes("a", shared_blocks=True)
    a.names()
    redis_server.kill()
    for i in range(ROWS):  # reads, signing and a refresh, all against "Encord" directly
        assert a.read(f"/street/img{i:03d}.jpg") == bytes([i]) * (100 + i)
    a.fs.refresh(a.fs.resolve("/street"))
    assert a.counter("shared.degraded_events") == 1 and a.counter("shared.redis_errors") >= 1
    assert [r.message for r in caplog.records].count(
        f"shared: Redis at {redis_server.url} is not answering (Connection refused); carrying on against Encord "
        "directly until it is back"
    ) <= 1
    assert sum("is not answering" in r.message for r in caplog.records) == 1
    redis_server.start()
    deadline = time.monotonic() + 10
    while a.counter("shared.rejoins") < 1:
        assert time.monotonic() < deadline, "the node did not rejoin"
        time.sleep(0.05)
    a.fs.refresh(a.fs.resolve("/street"))
    _published(a, 1)


def test_a_mount_told_to_share_fails_at_start_without_redis(tmp_path: Path, redis_server: RunningRedis) -> None:
    backend = MemoryBackend()

    def start(**given: Any) -> None:
        settings = resolve({"domain": "http://encord.test", "cache_dir": str(tmp_path / "n"), **given})
        build(backend, settings, account_id="acct").close()

    with pytest.raises(errors.Unavailable, match=r"^cannot reach Redis at redis://127\.0\.0\.1:1/0 \(.*refused"):
        start(shared="redis://127.0.0.1:1/0")
    with RunningRedis(password="sesame") as locked:
        with pytest.raises(errors.AuthError, match="wants a password"):
            start(shared=locked.url)
        with pytest.raises(errors.AuthError, match="refused the password") as refused:
            start(shared=f"redis://:wrong@127.0.0.1:{locked.port}/0")
        assert "wrong" not in str(refused.value)
        start(shared=locked.url, redis_password="sesame")
        start(shared=f"redis://:sesame@127.0.0.1:{locked.port}/0")
    with pytest.raises(errors.InvalidValue, match="account"):
        build(backend, resolve({"cache_dir": str(tmp_path / "m"), "shared": redis_server.url}))


def test_refreshes_follow_the_ttl_cluster_wide(nodes: Callable[..., Node], encord: FreshUrls) -> None:
    a, b = nodes("a", metadata_ttl=1), nodes("b", metadata_ttl=1)
    a.names()
    _published(a, 2)
    b.names()
    assert encord.calls["get_dataset"] == 1
    time.sleep(1.2)  # the cluster's listing is due: one of the nodes reloads, the other takes its result
    for node in (a, b):
        node.fs.refresh(node.fs.resolve("/street"), force=False)
    for node in (a, b):  # a lookup of the due folder may have started a load in the background: let it end
        node.fs.wait_refreshes()
    assert encord.calls["get_dataset"] == 2
    b.fs.refresh(b.fs.resolve("/street"))  # encordfs refresh: Encord now, whatever the cluster has
    assert encord.calls["get_dataset"] == 3


def test_the_redis_url_and_password_reach_a_detached_mount_by_its_environment_only() -> None:
    from encordfs.settings import mount_argv, mount_env

    settings = resolve({"shared": "redis://:pw@r:6379/1", "shared_blocks": True, "redis_password": "other"})
    argv = mount_argv(settings, Path("/mnt/x"))
    assert "--shared-blocks" in argv and not any("pw" in a or "redis" in a for a in argv)
    assert mount_env(settings) == {"ENCORDFS_SHARED": "redis://:pw@r:6379/1", "ENCORDFS_REDIS_PASSWORD": "other"}
    assert "pw" not in repr(settings.redis_password)
    with pytest.raises(errors.InvalidValue, match="--shared-blocks needs --shared"):
        resolve({"shared_blocks": True})
    with pytest.raises(errors.InvalidValue, match=r"^--shared: must be a redis://") as bad:
        resolve({"shared": "http://:secret@r:6379/0"})
    assert "secret" not in str(bad.value)


def test_a_node_that_dies_holding_a_lease_loses_it_and_another_takes_over(
    nodes: Callable[..., Node], encord: FreshUrls, redis_server: RunningRedis
) -> None:
    a = nodes("a")
    keys = a.mount.fs.loader.keys  # type: ignore[union-attr]
    r = redis_server.client()
    # a dead node's leases: on the dataset's load, and on signing one file; they expire in 1.5 s
    r.set(keys.folder_lease("ds1"), "dead", px=1500)
    t0 = time.monotonic()
    assert len(a.names()) == ROWS
    assert time.monotonic() - t0 >= 1.0 and encord.calls["get_dataset"] == 1
    assert a.counter("shared.leases_waited") >= 1 and a.counter("shared.leases_taken") >= 1
    handle = a.fs.node(a.fs.resolve("/street/img000.jpg")).handle
    r.set(keys.url_lease(handle), "dead", px=1500)
    assert a.read("/street/img000.jpg") == bytes([0]) * 100
    assert encord.calls["sign"] >= 1


def test_a_flushed_redis_is_a_cold_cache_not_an_error(
    nodes: Callable[..., Node], encord: FreshUrls, redis_server: RunningRedis
) -> None:
    a = nodes("a", shared_blocks=True)
    a.names()
    _published(a, 2)
    redis_server.client().flushall()
    b = nodes("b", shared_blocks=True)
    assert b.names() == a.names() and b.read("/street/img005.jpg") == bytes([5]) * 105
    assert encord.calls["get_dataset"] == 2 and b.counter("shared.degraded_events") == 0


def test_a_listing_or_block_of_another_format_is_ignored(
    nodes: Callable[..., Node], encord: FreshUrls, redis_server: RunningRedis
) -> None:
    import json

    a = _shared_after_reading(nodes, "/street/img002.jpg")
    r = redis_server.client()
    for key in r.scan_iter(match="encordfs:*:f:*:m"):
        manifest = json.loads(r.get(key))
        r.set(key, json.dumps({**manifest, "format": 99}))
    for key in r.scan_iter(match="encordfs:*:b:*"):
        r.set(key, b"EFSRB999" + r.get(key)[8:])
    b = nodes("b", shared_blocks=True)
    assert b.names() == a.names() and b.read("/street/img002.jpg") == bytes([2]) * 102
    assert encord.calls["get_dataset"] == 2 and encord.calls["list_datasets"] == 2
    assert b.counter("shared.snapshot_rejected") >= 2 and b.counter("shared.block_rejected") == 1


def test_a_listing_published_between_a_look_and_the_lease_is_taken_not_loaded_again(
    nodes: Callable[..., Node], encord: FreshUrls
) -> None:
    """A holder publishes, then lets its lease go. A node that looked for the manifest just before the
    one and took the lease just after the other (seen in CI: three mounts at once) finds the manifest
    when it looks again under the lease, and takes it: Encord is asked once per cluster."""
    a = nodes("a")
    listed = a.names()
    _published(a, 2)
    b = nodes("b")
    loader = b.fs.loader
    real = loader._manifest
    looked: set[str] = set()

    def first_look_too_early(folder: str) -> Any:
        if folder not in looked:  # the first look at each folder comes before a's commit
            looked.add(folder)
            return None
        return real(folder)

    loader._manifest = first_look_too_early  # type: ignore[method-assign]
    assert b.names() == listed and b.names("/") == a.names("/")
    assert encord.calls["get_dataset"] == 1 and encord.calls["list_datasets"] == 1
    assert b.counter("shared.snapshot_loads") == 2 and b.counter("shared.leases_taken") == 0


def test_a_block_published_between_a_look_and_the_lease_is_read_not_fetched_again(
    nodes: Callable[..., Node], redis_server: RunningRedis
) -> None:
    """The same race for a block: its fetcher publishes it, then drops its lease; a node whose first
    look came before the one and whose lease came after the other reads the block from Redis."""
    a = _shared_after_reading(nodes, "/street/img001.jpg")
    b = nodes("b", shared_blocks=True)
    assert b.names() == a.names()
    tier = b.mount.fs.reader.cache  # type: ignore[attr-defined]
    real = tier.link.run
    early = [True]

    def first_look_too_early(call: Callable[[Any], Any]) -> Any:
        result = real(call)
        if early[0] and isinstance(result, bytes):  # the first GET of the block comes before a's publication
            early[0] = False
            return None
        return result

    tier.link.run = first_look_too_early
    assert b.read("/street/img001.jpg") == bytes([1]) * 101
    assert not early[0]
    assert b.fetcher.requests == 0 and b.counter("shared.block_hits") == 1
    assert not list(redis_server.client().scan_iter(match="encordfs:*:bl:*"))  # no lease left behind
