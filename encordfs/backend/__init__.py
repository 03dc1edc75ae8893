"""What the filesystem core needs from Encord, as plain records and one Protocol.

The core never sees SDK objects: backends turn them into these frozen records. Two backends
implement ``Backend``: ``backend.sdk.SdkBackend`` (the only module that imports ``encord``) and
``backend.memory.MemoryBackend`` (an in-process fake for core tests that run without a kernel or a
server). Times are unix seconds (float, UTC).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    uid: str  # dataset_hash
    title: str
    description: str
    created_at: float
    last_edited_at: float
    storage_location: int
    backing_folder_uuid: str | None
    user_role: str | None


@dataclass(frozen=True, slots=True)
class RowRecord:
    """One data row, with every field of the SDK's ``DataRow`` that the xattrs show."""

    uid: str  # data_hash
    dataset_uid: str
    title: str
    data_type: str  # upper case, as the SDK names it: IMAGE, IMG_GROUP, VIDEO, DICOM, ...
    created_at: float
    last_edited_at: float
    width: int | None
    height: int | None
    frames_per_second: float | None
    duration: float | None
    file_link: str | None
    file_size: int | None
    file_type: str | None
    storage_location: int
    backing_item_uuid: str | None
    is_image_sequence: bool | None
    client_metadata: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class ChildRecord:
    """One member of a composite row (an image of a group, a slice of a DICOM series)."""

    item_uuid: str  # storage item uuid; signable through ``Backend.sign``
    title: str
    index: int  # frame / slice order
    item_type: str  # storage item type: image, dicomFile, ...
    file_link: str | None
    file_type: str | None
    file_size: int | None
    width: int | None
    height: int | None
    created_at: float
    last_edited_at: float
    storage_location: str
    dicom_instance_uid: str | None = None
    dicom_series_uid: str | None = None
    dicom_study_uid: str | None = None
    signed_url: str | None = None


# Data types whose rows are folders of children rather than single files.
COMPOSITE_TYPES = frozenset({"IMG_GROUP", "DICOM", "GROUP", "SCENE", "DICOM_STUDY"})


class Backend(Protocol):
    """The calls the core makes. Each raises ``errors.BackendError`` subclasses, never SDK errors."""

    def list_datasets(self) -> list[DatasetRecord]: ...

    def iter_rows(self, dataset_uid: str) -> Iterator[RowRecord]:
        """Every row of a dataset with its client metadata: one ``get_dataset`` call."""
        ...

    def list_children(self, group_item_uuids: list[str]) -> dict[str, list[ChildRecord]]:
        """Members of composite rows by backing item uuid, signed where the API signs them."""
        ...

    def sign(self, item_uuids: list[str]) -> dict[str, str | None]:
        """Signed URLs for single-file storage items, in bulk (the backend chunks to its limit)."""
        ...

    def close(self) -> None: ...
