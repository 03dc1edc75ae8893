"""An in-memory ``Backend`` for core tests: no server, no SDK, deterministic, observable.

Blobs are plain bytes keyed by handle (a storage item uuid, or a legacy key for rows without one);
``sign`` returns ``mem://`` URLs that ``MemoryBackend.fetch`` resolves, so the reader can be driven
through a plain ``fetch`` callable. Every call is counted in ``calls`` (``sign_legacy``: one per legacy
row signed, as the real service's one data-row call per row). ``refused`` (handle → error) makes
``sign`` report that one handle as refused; ``member_errors`` (group handle → reason) makes
``list_children`` report a group as unlistable.

Writes: ``push`` applies each ``RowPatch`` onto the row's current metadata (the same conflict rule as
the SDK backend, via ``RowChange.apply_metadata``) and logs the row uids of every call in
``push_log``. Fault injection for the write queue's tests: ``push_faults`` (exceptions raised by the
next calls, one each, consumed in order), ``reject_rows`` (row uid → error: any call containing the
row raises it, as a 413 fails a whole bulk request) and ``row_errors`` (row uid → error reported in
that row's outcome only).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import encordfs.backend as records
from encordfs.errors import BackendError, NotFound, PermanentError


class MemoryBackend:
    def __init__(self) -> None:
        self.datasets: dict[str, records.DatasetRecord] = {}
        self.rows: dict[str, list[records.RowRecord]] = {}
        self.children: dict[str, list[records.ChildRecord]] = {}  # group handle -> members
        self.videos: dict[str, records.ChildRecord] = {}  # image sequence handle -> its video
        self.blobs: dict[str, bytes] = {}  # handle -> bytes
        self.refused: dict[str, BackendError] = {}  # handle -> why the service refuses to sign it
        self.member_errors: dict[str, str] = {}  # group handle -> why its members cannot be listed
        self.calls: Counter[str] = Counter()
        self.push_log: list[list[str]] = []  # row uids of every push call, failed ones included
        self.push_faults: list[BaseException] = []
        self.reject_rows: dict[str, BackendError] = {}
        self.row_errors: dict[str, BackendError] = {}
        self._lock = threading.Lock()

    # -- building the fake ----------------------------------------------------------------------
    def add_dataset(self, ds: records.DatasetRecord) -> None:
        self.datasets[ds.uid] = ds
        self.rows.setdefault(ds.uid, [])

    def add_row(self, row: records.RowRecord, data: bytes | None = None) -> None:
        self.rows[row.dataset_uid].append(row)
        if data is not None:
            self.blobs[row.handle] = data

    def add_child(self, group_handle: str, child: records.ChildRecord, data: bytes) -> None:
        self.children.setdefault(group_handle, []).append(child)
        self.blobs[child.handle] = data

    def add_video(self, group_handle: str, video: records.ChildRecord, data: bytes) -> None:
        self.videos[group_handle] = video
        self.blobs[video.handle] = data

    def remove_row(self, dataset_uid: str, row_uid: str) -> None:
        self.rows[dataset_uid] = [r for r in self.rows[dataset_uid] if r.uid != row_uid]

    # -- Backend ----------------------------------------------------------------------------------
    def list_datasets(self) -> list[records.DatasetRecord]:
        self._count("list_datasets")
        return list(self.datasets.values())

    def iter_rows(self, dataset_uid: str) -> Iterator[records.RowRecord]:
        self._count("get_dataset")
        if dataset_uid not in self.rows:
            raise NotFound(f"dataset {dataset_uid} not found")
        return iter(list(self.rows[dataset_uid]))

    def list_children(self, groups: list[records.GroupRef]) -> dict[str, records.Members]:
        self._count("list_children", len(groups))
        return {g.row_uid: self._members(g) for g in groups}

    def _members(self, group: records.GroupRef) -> records.Members:
        handle = group.item_uuid or records.legacy_key(group.dataset_uid, group.row_uid)
        if handle in self.member_errors:
            return records.Members([], error=self.member_errors[handle])
        kids = sorted(self.children.get(handle, []), key=lambda c: c.index)
        video = self.videos.get(handle)
        error = "Encord lists no members for this row" if not kids and video is None else None
        return records.Members(kids, video, error if group.data_type in ("IMG_GROUP", "DICOM") else None)

    def sign(self, handles: list[str]) -> dict[str, str | BackendError | None]:
        self._count("sign")
        self._count("sign_legacy", len({p[:2] for h in handles if (p := records.parse_legacy_key(h)) is not None}))
        out: dict[str, str | BackendError | None] = {}
        for h in handles:
            out[h] = self.refused.get(h) or (f"mem://{h}" if h in self.blobs else None)
        return out

    def fetch(self, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the blob behind a ``mem://`` URL."""
        return self.blobs[url.removeprefix("mem://")][start:end]

    def push(self, patches: list[records.RowPatch]) -> dict[str, records.PushOutcome]:
        self._count("push")
        with self._lock:
            self.push_log.append([p.row_uid for p in patches])
            if self.push_faults:
                raise self.push_faults.pop(0)
            if len(patches) > records.BULK_LIMIT:
                raise PermanentError(f"payload too large (413): {len(patches)} items")
            for patch in patches:
                if patch.row_uid in self.reject_rows:
                    raise self.reject_rows[patch.row_uid]
            where = {r.uid: (ds, i) for ds, rows in self.rows.items() for i, r in enumerate(rows)}
            return {p.row_uid: self._apply_locked(p, where.get(p.row_uid)) for p in patches}

    def _apply_locked(self, patch: records.RowPatch, at: tuple[str, int] | None) -> records.PushOutcome:
        if patch.row_uid in self.row_errors:
            return records.PushOutcome(patch.row_uid, error=self.row_errors[patch.row_uid])
        if at is None:
            return records.PushOutcome(patch.row_uid, error=PermanentError("row not found (404)"))
        ds, i = at
        row = self.rows[ds][i]
        metadata = patch.change.apply_metadata(row.client_metadata)
        title = patch.change.title if patch.change.title is not None else row.title
        self.rows[ds][i] = replace(row, client_metadata=metadata, title=title)
        return records.PushOutcome(patch.row_uid, metadata=metadata, title=title)

    def row(self, row_uid: str) -> records.RowRecord:
        """The current record of a row, wherever it is (for assertions)."""
        for rows in self.rows.values():
            for r in rows:
                if r.uid == row_uid:
                    return r
        raise NotFound(row_uid)

    def close(self) -> None:
        pass

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.calls[name] += n
