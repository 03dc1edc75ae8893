"""A stateful model test of the tree, xattrs and write queue against a plain-dict model.

Hypothesis drives random sequences of user edits (per-key set/remove, whole-metadata replace,
rename), server-side edits by another client, pushes, TTL refreshes and remounts (a new core over the
same catalog and journal). After every step the filesystem must show exactly what the model says:
the view is the pending edits applied onto the server's current state; after a push the server
holds that state too.
"""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from encordfs import errors
from encordfs.app import _landed
from encordfs.backend import DatasetRecord, RowRecord
from encordfs.backend.memory import MemoryBackend
from encordfs.core.blockcache import MemoryBlockCache
from encordfs.core.catalog import Catalog
from encordfs.core.fs import EncordFS, Options
from encordfs.core.reader import ReadPipeline
from encordfs.core.urls import SignedUrlCache
from encordfs.core.writes import QueueConfig, WriteQueue

ROWS = [f"row{i}" for i in range(4)]
keys = st.sampled_from(["a", "b", "c"])
values = st.one_of(
    st.integers(-5, 5),
    st.text(alphabet="xyz", max_size=3),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 3), max_size=2),
)
titles = st.text(alphabet="abcXYZ", min_size=1, max_size=4).map(lambda t: t + ".jpg")


class Clock:
    now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class FsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="encordfs-model-"))
        self.backend = MemoryBackend()
        self.backend.add_dataset(DatasetRecord("ds", "d", "", 0, 0, 0, None, None))
        for i, uid in enumerate(ROWS):
            self.backend.add_row(
                RowRecord(
                    uid,
                    "ds",
                    f"r{i}.jpg",
                    "IMAGE",
                    0,
                    0,
                    1,
                    1,
                    None,
                    None,
                    None,
                    1,
                    "image/jpeg",
                    0,
                    f"item-{uid}",
                    None,
                    {"a": i},
                ),
                b"x",
            )
        self.clock = Clock()
        # The model: the server's state, the catalog's copy of it (refreshed by TTL, updated when a
        # push lands), and the user's pending edits.
        self.server_md: dict[str, dict[str, Any]] = {uid: {"a": i} for i, uid in enumerate(ROWS)}
        self.server_title: dict[str, str] = {uid: f"r{i}.jpg" for i, uid in enumerate(ROWS)}
        self.catalog_md = {uid: dict(md) for uid, md in self.server_md.items()}
        self.catalog_title = dict(self.server_title)
        self.pending: dict[str, list[tuple[str, Any, Any]]] = {uid: [] for uid in ROWS}
        self.inos: dict[str, int] = {}
        self._open()

    def _open(self) -> None:
        self.catalog = Catalog(self.dir / "catalog.sqlite")
        # landed_ttl_s=0: the catalog learns each landed state through on_landed, as in app.build.
        self.writes = WriteQueue.open(
            self.dir / "journal.sqlite",
            self.backend.push,
            start=False,
            clock=self.clock,
            config=QueueConfig(landed_ttl_s=0),
            on_landed=lambda outcomes: _landed(self.catalog, outcomes),
        )
        self.reader = ReadPipeline(
            _Fetch(self.backend),
            MemoryBlockCache(1 << 20),
            memory_budget_bytes=1 << 24,
            small_file_bytes=1 << 20,
            part_bytes=1 << 20,
        )
        self.fs = EncordFS(
            self.backend,
            self.catalog,
            self.reader,
            SignedUrlCache(self.backend.sign),
            Options(uid=0, gid=0),
            clock=self.clock,
            writes=self.writes,
        )

    def _close(self) -> None:
        self.writes.close(0)
        self.fs.close()
        self.reader.close()
        self.catalog.close()

    def teardown(self) -> None:
        self._close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model ----------------------------------------------------------------------------------
    def _view(self, uid: str) -> tuple[dict[str, Any], str]:
        return self._apply(uid, self.catalog_md[uid], self.catalog_title[uid])

    def _apply(self, uid: str, base_md: dict[str, Any], base_title: str) -> tuple[dict[str, Any], str]:
        md, title = dict(base_md), base_title
        for kind, a, b in self.pending[uid]:
            if kind == "set":
                md[a] = b
            elif kind == "del":
                md.pop(a, None)
            elif kind == "whole":
                md = dict(a)
            elif kind == "title":
                title = a
        return md, title

    def _node_ino(self, uid: str) -> int:
        dataset = self.fs.lookup_ino(1, "d")
        for _name, attr in self.fs.readdir(dataset):
            if self.fs.getxattr(attr.ino, "user.encord.uid").decode() == uid:
                return attr.ino
        raise AssertionError(f"{uid} not listed")

    # -- rules --------------------------------------------------------------------------------------
    @rule(uid=st.sampled_from(ROWS), key=keys, value=values)
    def set_key(self, uid: str, key: str, value: Any) -> None:
        self.fs.setxattr(self._node_ino(uid), "user.encord.meta." + key, json.dumps(value).encode(), 0)
        self.pending[uid].append(("set", key, value))

    @rule(uid=st.sampled_from(ROWS), key=keys)
    def del_key(self, uid: str, key: str) -> None:
        present = key in self._view(uid)[0]
        try:
            self.fs.removexattr(self._node_ino(uid), "user.encord.meta." + key)
        except errors.FsError as exc:
            assert not present and exc.errno == errno.ENODATA
            return
        assert present
        self.pending[uid].append(("del", key, None))

    @rule(uid=st.sampled_from(ROWS), md=st.dictionaries(keys, values, max_size=3))
    def set_whole(self, uid: str, md: dict[str, Any]) -> None:
        self.fs.setxattr(self._node_ino(uid), "user.encord.client_metadata", json.dumps(md).encode(), 0)
        self.pending[uid].append(("whole", md, None))

    @rule(uid=st.sampled_from(ROWS), title=titles)
    def rename(self, uid: str, title: str) -> None:
        taken = {self._view(u)[1].casefold() for u in ROWS if u != uid}
        ino = self._node_ino(uid)
        old = self.catalog.get(ino)
        assert old is not None
        try:
            self.fs.rename(old.parent, old.name, old.parent, title)
        except errors.FsError as exc:
            assert title.casefold() in taken and exc.errno == errno.EEXIST
            return
        assert title.casefold() not in taken
        self.pending[uid].append(("title", title, None))

    @rule(uid=st.sampled_from(ROWS), key=keys, value=values)
    def server_edit(self, uid: str, key: str, value: Any) -> None:
        """Another client changes one key on the server."""
        rows = self.backend.rows["ds"]
        i = next(i for i, r in enumerate(rows) if r.uid == uid)
        md = dict(rows[i].client_metadata or {})
        md[key] = value
        rows[i] = replace(rows[i], client_metadata=md)
        self.server_md[uid] = md

    @rule()
    def push(self) -> None:
        while self.writes.push_round():
            pass
        for uid in ROWS:
            if not self.pending[uid]:
                continue
            # Per-key edits land on the server's *current* metadata (the conflict rule).
            md, title = self._apply(uid, self.server_md[uid], self.server_title[uid])
            self.server_md[uid], self.server_title[uid] = md, title
            self.catalog_md[uid], self.catalog_title[uid] = dict(md), title
            self.pending[uid] = []
        for uid in ROWS:
            assert dict(self.backend.row(uid).client_metadata or {}) == self.server_md[uid]
            assert self.backend.row(uid).title == self.server_title[uid]

    @rule()
    def ttl_passes(self) -> None:
        self.clock.now += 120
        self.fs.refresh(self.fs.lookup_ino(1, "d"))
        self.catalog_md = {uid: dict(md) for uid, md in self.server_md.items()}
        self.catalog_title = dict(self.server_title)

    @rule()
    def remount(self) -> None:
        self._close()
        self._open()

    # -- invariants ---------------------------------------------------------------------------------
    @invariant()
    def filesystem_matches_model(self) -> None:
        dataset = self.fs.lookup_ino(1, "d")
        listed = {
            self.fs.getxattr(a.ino, "user.encord.uid").decode(): (name, a.ino) for name, a in self.fs.readdir(dataset)
        }
        assert set(listed) == set(ROWS)
        for uid in ROWS:
            md, title = self._view(uid)
            name, ino = listed[uid]
            assert json.loads(self.fs.getxattr(ino, "user.encord.client_metadata")) == md, uid
            assert self.fs.getxattr(ino, "user.encord.title").decode() == title
            assert name == title
            if uid in self.inos:
                assert self.inos[uid] == ino  # inode stable for the life of the row
            self.inos[uid] = ino


class _Fetch:
    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    def fetch_into(self, url_source, start: int, out: memoryview, total: int | None = None) -> None:  # type: ignore[no-untyped-def]
        out[:] = self.backend.fetch(url_source(False), start, start + len(out))


TestFsModel = FsModel.TestCase
TestFsModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
