"""Wire shapes: turn store records (``sqlite3.Row`` of the ``items`` table) into the JSON the SDK expects.

Legacy shapes are snake_case (DataRow §4.3, ImageData §5.2), v2 shapes camelCase (StorageItem §6.2,
StorageFolder §6.7). Every key the SDK requires is always present, ``null`` where allowed.

Signing is a seam: functions take ``sign: Callable[[blob_key], url] | None``; ``None`` means "do not
sign" and yields ``null`` URLs. Composite items (no blob) never get a URL.

Client metadata is stored as compact JSON text, so legacy rows splice it into the output verbatim
(:func:`row_json`) instead of parsing and re-serialising it: the 100k-row ``get_dataset`` path
never builds a metadata object.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

Signer = Callable[[str], str]
Record = Mapping[str, Any]

STORAGE_LOCATION_ENCORD = 0  # legacy int (StorageLocation.CORD_STORAGE)


def legacy_time(ts: float) -> str:
    """Legacy datetime style, ``2024-03-01 12:00:00`` (UTC, no zone; whole seconds)."""
    return _legacy_second(int(ts))


@functools.lru_cache(maxsize=4096)  # rows imported together share seconds: saves ~25% of get_dataset
def _legacy_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(ts: float) -> str:
    """v2 datetime style, ISO 8601 with offset."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _sign(item: Record, sign: Signer | None) -> str | None:
    return sign(item["blob_key"]) if sign is not None and item["blob_key"] else None


def image_data(child: Record, sign: Signer | None) -> dict[str, Any]:
    return {
        "image_hash": child["uuid"],
        "title": child["name"],
        "file_link": child["file_link"],
        "file_type": child["mime_type"],
        "file_size": child["file_size"],
        "storage_location": STORAGE_LOCATION_ENCORD,
        "created_at": legacy_time(child["created_at"]),
        "last_edited_at": legacy_time(child["last_edited_at"]),
        "width": child["width"],
        "height": child["height"],
        "signed_url": _sign(child, sign),
    }


def row_json(
    row: Record,
    *,
    with_metadata: bool,
    sign: Signer | None = None,
    children: Iterable[Record] | None = None,
    sign_children: Signer | None = None,
) -> str:
    """One legacy DataRow as JSON text. ``row`` joins ``rows`` (data_hash, data_type, is_optimised)
    with its backing item. ``children`` are given for IMG_GROUP rows (→ ``images_data``)."""
    is_optimised = row["is_optimised"]
    out: dict[str, Any] = {
        "data_hash": row["data_hash"],
        "data_title": row["name"],
        "data_type": row["data_type"],
        "created_at": legacy_time(row["created_at"]),
        "last_edited_at": legacy_time(row["last_edited_at"]),
        "width": row["width"],
        "height": row["height"],
        "file_link": row["file_link"],
        "file_size": row["file_size"],
        "file_type": row["mime_type"],
        "storage_location": STORAGE_LOCATION_ENCORD,
        "frames_per_second": row["fps"],
        "duration": row["duration"],
        "signed_url": _sign(row, sign),
        "is_optimised_image_group": None if is_optimised is None else bool(is_optimised),
        "backing_item_uuid": row["uuid"],
        "images_data": None if children is None else [image_data(c, sign_children) for c in children],
    }
    if not with_metadata:
        out["client_metadata"] = None
        return json.dumps(out)
    text = json.dumps(out)
    return f'{text[:-1]}, "client_metadata": {row["client_metadata"]}}}'


def storage_item(item: Record, sign: Signer | None, *, with_metadata: bool = True) -> dict[str, Any]:
    return {
        "uuid": item["uuid"],
        "parent": item["folder_uuid"],
        "itemType": item["item_type"],
        "name": item["name"],
        "description": item["description"],
        "clientMetadata": item["client_metadata"] if with_metadata else "{}",
        "owner": item["owner"],
        "createdAt": iso_time(item["created_at"]),
        "lastEditedAt": iso_time(item["last_edited_at"]),
        "isTombstone": False,
        "isPlaceholder": False,
        "backedDataUnitsCount": 1 if item["group_id"] is None else 0,
        "storageLocation": "encord",
        "integrationHash": None,
        "url": item["file_link"],
        "signedUrl": _sign(item, sign),
        "fileSize": item["file_size"],
        "mimeType": item["mime_type"],
        "duration": item["duration"],
        "fps": item["fps"],
        "height": item["height"],
        "width": item["width"],
        "dicomInstanceUid": item["dicom_instance_uid"],
        "dicomStudyUid": item["dicom_study_uid"],
        "dicomSeriesUid": item["dicom_series_uid"],
        "frameCount": item["frame_count"],
        "audioSampleRate": item["audio_sample_rate"],
        "audioBitDepth": item["audio_bit_depth"],
        "audioCodec": item["audio_codec"],
        "audioNumChannels": item["audio_num_channels"],
    }


def storage_folder(folder: Record) -> dict[str, Any]:
    return {
        "uuid": folder["uuid"],
        "parent": folder["parent_uuid"],
        "name": folder["name"],
        "description": folder["description"],
        "clientMetadata": folder["client_metadata"],
        "owner": folder["owner"],
        "createdAt": iso_time(folder["created_at"]),
        "lastEditedAt": iso_time(folder["last_edited_at"]),
        "userRole": "admin",
        "syncedDatasetHash": folder["synced_dataset_hash"],
        "folderType": "generic",
        "integrationHash": None,
        "remoteUrl": None,
        "pathToRoot": [
            {
                "uuid": folder["uuid"],
                "parentUuid": folder["parent_uuid"],
                "name": folder["name"],
                "syncedDatasetHash": folder["synced_dataset_hash"],
            }
        ],
    }


def dataset_info(ds: Record, user_role: str | None) -> dict[str, Any]:
    return {
        "datasetUuid": ds["hash"],
        "title": ds["title"],
        "description": ds["description"],
        "createdAt": iso_time(ds["created_at"]),
        "lastEditedAt": iso_time(ds["last_edited_at"]),
        "userRole": user_role,
        "storageLocation": STORAGE_LOCATION_ENCORD,
        "backingFolderUuid": ds["folder_uuid"],
    }
