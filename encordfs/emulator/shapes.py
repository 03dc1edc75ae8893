"""Wire shapes: turn store records (``sqlite3.Row`` of the ``items`` table) into the JSON the SDK expects.

Legacy shapes are snake_case (DataRow §4.3, ImageData §5.2), v2 shapes camelCase (StorageItem §6.2,
StorageFolder §6.7). Every key the SDK requires is always present, ``null`` where allowed.

Signing is a seam: functions take ``sign: Callable[[blob_key], url] | None``; ``None`` means "do not
sign" and yields ``null`` URLs. Composite items never get a URL, except an image sequence's video
under the recorded shape.

Client metadata is stored as compact JSON text, so legacy rows splice it into the output verbatim
(:func:`row_json`) instead of parsing and re-serialising it: the 100k-row ``get_dataset`` path
never builds a metadata object.

Shapes (``--shape``): the same stored data rendered two ways. :data:`DEFAULT` is the emulator's reading
of the SDK (every row backed by a storage item, integer sizes, ISO dates with an offset, the frames of
an image sequence as its child items). :data:`RECORDED` renders it the way payloads recorded from the
real service look (``docs/RECORDED-SHAPES.md`` lists each fact with its public source):

* every third top-level row (``rows.id % 3 == 0``; image groups included, DICOM series and image
  sequences excepted) has ``backing_item_uuid: null`` and no storage item: the storage API answers 403
  for it and its members, folder listings leave it out, and its bytes are reachable only through the
  legacy ``datarow`` call (``signed_url``, ``images_data``). Such an image group carries its first
  image's ``width``/``height``/``file_*`` and ``is_optimised_image_group: null``, as recorded;
* ``file_size`` as a float (``400.0``) in DataRow and ImageData; ``image/jpg`` for JPEGs everywhere;
* DICOM slices named without their ``.dcm`` extension;
* an image sequence is one storage item whose signed URL is an MP4 of its frames (with ``fileSize``,
  ``mimeType: video/mp4``, ``fps``, ``duration``); its child-items listing is empty and its frames
  come only through the legacy ``images_data``;
* dates in three forms: DataRows ``2022-01-05 18:51:05``, ``Thu, 09 Feb 2023 14:12:03 UTC`` or
  ``2023-03-21T09:58:08.472959`` (chosen per row), ImageData the second form, v2 objects the third
  (ISO 8601 without a zone);
* legacy error envelopes sent with HTTP 400 and ``"status": 400`` (``errors.render``).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Signer = Callable[[str], str]
# A row of the store (``sqlite3.Row``) or any mapping of its column names.
Record = Mapping[str, Any] | sqlite3.Row

STORAGE_LOCATION_ENCORD = 0  # legacy int (StorageLocation.CORD_STORAGE)
COMPOSITE_ITEM_TYPES = frozenset({"imageGroup", "imageSequence", "dicomSeries"})


@dataclass(frozen=True)
class Shape:
    """How stored data is rendered on the wire (see the module docstring)."""

    name: str
    legacy_every: int = 0  # rows with ``rows.id % legacy_every == 0`` have no storage item; 0 = none
    float_sizes: bool = False
    jpg_mime: bool = False
    bare_dicom_titles: bool = False
    sequence_video: bool = False
    varied_dates: bool = False
    legacy_error_http_status: int | None = None  # HTTP status of legacy error envelopes (None: 200)

    def is_legacy(self, row: Record) -> bool:
        """Whether a row (``rows`` joined with its item) is served without a storage item."""
        return (
            self.legacy_every > 0
            and row["row_id"] % self.legacy_every == 0
            and row["data_type"] != "DICOM"
            and not row["is_optimised"]
        )

    def legacy_sql(self, rows: str) -> str:
        """:meth:`is_legacy` as an SQL condition on the ``rows`` table (or alias) ``rows``."""
        if self.legacy_every <= 0:
            return "0"
        return (
            f"({rows}.id % {int(self.legacy_every)} = 0 AND {rows}.data_type <> 'DICOM' "
            f"AND COALESCE({rows}.is_optimised, 0) = 0)"
        )

    def mime(self, mime_type: str | None) -> str | None:
        if self.jpg_mime and mime_type == "image/jpeg":
            return "image/jpg"
        return mime_type

    def size(self, size: int | None) -> int | float | None:
        return float(size) if self.float_sizes and size is not None else size


DEFAULT = Shape("default")
RECORDED = Shape(
    "recorded",
    legacy_every=3,
    float_sizes=True,
    jpg_mime=True,
    bare_dicom_titles=True,
    sequence_video=True,
    varied_dates=True,
    legacy_error_http_status=400,
)
SHAPES = {s.name: s for s in (DEFAULT, RECORDED)}


def legacy_time(ts: float) -> str:
    """Legacy datetime style, ``2024-03-01 12:00:00`` (UTC, no zone; whole seconds)."""
    return _legacy_second(int(ts))


@functools.lru_cache(maxsize=4096)  # rows imported together share seconds: saves ~25% of get_dataset
def _legacy_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%d %H:%M:%S")


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_time(ts: float) -> str:
    """``Thu, 09 Feb 2023 14:12:03 UTC`` (whole seconds; English names whatever the locale)."""
    dt = datetime.fromtimestamp(int(ts), UTC)
    return f"{_DAYS[dt.weekday()]}, {dt.day:02d} {_MONTHS[dt.month - 1]} {dt.year} {dt:%H:%M:%S} UTC"


def iso_time(ts: float) -> str:
    """v2 datetime style, ISO 8601 with offset."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def naive_iso_time(ts: float) -> str:
    """ISO 8601 without a zone (UTC meant), microseconds when there are any: ``2023-03-21T09:58:08.472959``."""
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat()


_ROW_DATE_FORMS = (legacy_time, http_time, naive_iso_time)


def _row_time(shape: Shape, row: Record) -> Callable[[float], str]:
    if not shape.varied_dates:
        return legacy_time
    return _ROW_DATE_FORMS[int(row["data_hash"][-1], 16) % len(_ROW_DATE_FORMS)]


def _v2_time(shape: Shape) -> Callable[[float], str]:
    return naive_iso_time if shape.varied_dates else iso_time


def _has_file(item: Record, shape: Shape) -> bool:
    """Whether the item's file columns are shown: single files, and a sequence's video when the shape has them."""
    if item["item_type"] not in COMPOSITE_ITEM_TYPES:
        return True
    return shape.sequence_video and item["item_type"] == "imageSequence" and item["blob_key"] is not None


def _sign(item: Record, sign: Signer | None, shape: Shape = DEFAULT) -> str | None:
    if sign is None or not item["blob_key"] or not _has_file(item, shape):
        return None
    return sign(item["blob_key"])


def _item_name(item: Record, shape: Shape) -> str:
    name: str = item["name"]
    if shape.bare_dicom_titles and item["item_type"] == "dicomFile" and name.lower().endswith(".dcm"):
        return name[: -len(".dcm")] or name
    return name


def image_data(child: Record, sign: Signer | None, shape: Shape = DEFAULT) -> dict[str, Any]:
    when = http_time if shape.varied_dates else legacy_time
    return {
        "image_hash": child["uuid"],
        "title": child["name"],
        "file_link": child["file_link"],
        "file_type": shape.mime(child["mime_type"]),
        "file_size": shape.size(child["file_size"]),
        "storage_location": STORAGE_LOCATION_ENCORD,
        "created_at": when(child["created_at"]),
        "last_edited_at": when(child["last_edited_at"]),
        "width": child["width"],
        "height": child["height"],
        "signed_url": _sign(child, sign, shape),
    }


def row_json(
    row: Record,
    *,
    with_metadata: bool,
    sign: Signer | None = None,
    children: Iterable[Record] | None = None,
    sign_children: Signer | None = None,
    shape: Shape = DEFAULT,
) -> str:
    """One legacy DataRow as JSON text. ``row`` joins ``rows`` (row_id, data_hash, data_type,
    is_optimised) with its backing item. ``children`` are given for IMG_GROUP rows (→ ``images_data``)."""
    is_optimised = row["is_optimised"]
    legacy = shape.is_legacy(row)
    when = _row_time(shape, row)
    images = None if children is None else [image_data(c, sign_children, shape) for c in children]
    # Single files show their file; composites none, except a legacy image group under the recorded
    # shape, which carries its first image's (the recorded fixture: docs/RECORDED-SHAPES.md).
    source: Record | None = row if row["item_type"] not in COMPOSITE_ITEM_TYPES else None
    if legacy and row["data_type"] == "IMG_GROUP":
        first = next(iter(children), None) if isinstance(children, list) else None
        source = first
    out: dict[str, Any] = {
        "data_hash": row["data_hash"],
        "data_title": row["name"],
        "data_type": row["data_type"],
        "created_at": when(row["created_at"]),
        "last_edited_at": when(row["last_edited_at"]),
        "width": source["width"] if source is not None else row["width"],
        "height": source["height"] if source is not None else row["height"],
        "file_link": source["file_link"] if source is not None else None,
        "file_size": shape.size(source["file_size"]) if source is not None else None,
        "file_type": shape.mime(source["mime_type"]) if source is not None else None,
        "storage_location": STORAGE_LOCATION_ENCORD,
        "frames_per_second": row["fps"] if source is row else None,
        "duration": row["duration"] if source is row else None,
        "signed_url": _sign(row, sign, shape) if source is row else None,
        "is_optimised_image_group": None if is_optimised is None or legacy else bool(is_optimised),
        "backing_item_uuid": None if legacy else row["uuid"],
        "images_data": images,
    }
    if not with_metadata:
        out["client_metadata"] = None
        return json.dumps(out)
    text = json.dumps(out)
    return f'{text[:-1]}, "client_metadata": {row["client_metadata"]}}}'


def storage_item(
    item: Record, sign: Signer | None, *, with_metadata: bool = True, shape: Shape = DEFAULT
) -> dict[str, Any]:
    when = _v2_time(shape)
    has_file = _has_file(item, shape)
    return {
        "uuid": item["uuid"],
        "parent": item["folder_uuid"],
        "itemType": item["item_type"],
        "name": _item_name(item, shape),
        "description": item["description"],
        "clientMetadata": item["client_metadata"] if with_metadata else "{}",
        "owner": item["owner"],
        "createdAt": when(item["created_at"]),
        "lastEditedAt": when(item["last_edited_at"]),
        "isTombstone": False,
        "isPlaceholder": False,
        "backedDataUnitsCount": 1 if item["group_id"] is None else 0,
        "storageLocation": "encord",
        "integrationHash": None,
        "url": item["file_link"] if has_file else None,
        "signedUrl": _sign(item, sign, shape),
        "fileSize": item["file_size"] if has_file else None,
        "mimeType": shape.mime(item["mime_type"]) if has_file else None,
        "duration": item["duration"] if has_file else None,
        "fps": item["fps"] if has_file else None,
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


def storage_folder(folder: Record, shape: Shape = DEFAULT) -> dict[str, Any]:
    when = _v2_time(shape)
    return {
        "uuid": folder["uuid"],
        "parent": folder["parent_uuid"],
        "name": folder["name"],
        "description": folder["description"],
        "clientMetadata": folder["client_metadata"],
        "owner": folder["owner"],
        "createdAt": when(folder["created_at"]),
        "lastEditedAt": when(folder["last_edited_at"]),
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


def dataset_info(ds: Record, user_role: str | None, shape: Shape = DEFAULT) -> dict[str, Any]:
    when = _v2_time(shape)
    return {
        "datasetUuid": ds["hash"],
        "title": ds["title"],
        "description": ds["description"],
        "createdAt": when(ds["created_at"]),
        "lastEditedAt": when(ds["last_edited_at"]),
        "userRole": user_role,
        "storageLocation": STORAGE_LOCATION_ENCORD,
        "backingFolderUuid": ds["folder_uuid"],
    }
