"""In-process fakes and record builders for core tests (no kernel, no server)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from encordfs.backend import RowRecord


class Clock:
    """A wall clock the test moves by hand (``clock.now += 61``)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def row_record(
    uid: str,
    ds: str,
    title: str,
    data: bytes | None,
    *,
    data_type: str = "IMAGE",
    metadata: dict[str, Any] | None = None,
    size: int | None = None,
    item: str | None = None,
) -> RowRecord:
    """A data row as a backend returns it; ``data`` gives its size (None: ``size``, None if unknown).
    Its storage item is ``item`` (default ``item-<uid>``)."""
    return RowRecord(
        uid=uid,
        dataset_uid=ds,
        title=title,
        data_type=data_type,
        created_at=1.0e9,
        last_edited_at=1.5e9,
        width=4 if data_type == "IMAGE" else None,
        height=3 if data_type == "IMAGE" else None,
        frames_per_second=None,
        duration=None,
        file_link=f"link/{uid}",
        file_size=len(data) if data is not None else size,
        file_type="image/jpeg" if data_type == "IMAGE" else None,
        storage_location=0,
        backing_item_uuid=item or f"item-{uid}",
        is_image_sequence=False if data_type == "IMG_GROUP" else None,
        client_metadata=metadata,
    )


def older_catalog(path: Path, version: int, change: str) -> None:
    """Make the closed catalog at ``path`` what an older encordfs left: ``change`` (SQL) applied to it,
    its schema version set to ``version``."""
    raw = sqlite3.connect(path)
    raw.execute(change)
    raw.execute(f"PRAGMA user_version={version}")
    raw.commit()
    raw.close()
