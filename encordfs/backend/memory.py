"""An in-memory ``Backend`` for core tests: no server, no SDK, deterministic, observable.

Blobs are plain bytes; ``sign`` returns ``mem://`` URLs that ``MemoryBackend.fetch`` resolves, so the
reader can be driven through a plain ``fetch`` callable. Every call is counted in ``calls``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

from encordfs.backend import ChildRecord, DatasetRecord, RowRecord
from encordfs.errors import NotFound


class MemoryBackend:
    def __init__(self) -> None:
        self.datasets: dict[str, DatasetRecord] = {}
        self.rows: dict[str, list[RowRecord]] = {}
        self.children: dict[str, list[ChildRecord]] = {}
        self.blobs: dict[str, bytes] = {}  # item uuid -> bytes
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    # -- building the fake ----------------------------------------------------------------------
    def add_dataset(self, ds: DatasetRecord) -> None:
        self.datasets[ds.uid] = ds
        self.rows.setdefault(ds.uid, [])

    def add_row(self, row: RowRecord, data: bytes | None = None) -> None:
        self.rows[row.dataset_uid].append(row)
        if data is not None and row.backing_item_uuid:
            self.blobs[row.backing_item_uuid] = data

    def add_child(self, group_item_uuid: str, child: ChildRecord, data: bytes) -> None:
        self.children.setdefault(group_item_uuid, []).append(child)
        self.blobs[child.item_uuid] = data

    def remove_row(self, dataset_uid: str, row_uid: str) -> None:
        self.rows[dataset_uid] = [r for r in self.rows[dataset_uid] if r.uid != row_uid]

    def retitle_row(self, dataset_uid: str, row_uid: str, title: str) -> None:
        self.rows[dataset_uid] = [replace(r, title=title) if r.uid == row_uid else r for r in self.rows[dataset_uid]]

    # -- Backend ----------------------------------------------------------------------------------
    def list_datasets(self) -> list[DatasetRecord]:
        self._count("list_datasets")
        return list(self.datasets.values())

    def iter_rows(self, dataset_uid: str) -> Iterator[RowRecord]:
        self._count("get_dataset")
        if dataset_uid not in self.rows:
            raise NotFound(f"dataset {dataset_uid} not found")
        return iter(list(self.rows[dataset_uid]))

    def list_children(self, group_item_uuids: list[str]) -> dict[str, list[ChildRecord]]:
        self._count("list_children", len(group_item_uuids))
        return {u: sorted(self.children.get(u, []), key=lambda c: c.index) for u in group_item_uuids}

    def sign(self, item_uuids: list[str]) -> dict[str, str | None]:
        self._count("sign")
        return {u: (f"mem://{u}" if u in self.blobs else None) for u in item_uuids}

    def fetch(self, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the blob behind a ``mem://`` URL."""
        return self.blobs[url.removeprefix("mem://")][start:end]

    def close(self) -> None:
        pass

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.calls[name] += n
