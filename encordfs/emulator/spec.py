"""What the emulator imports: a plain description of datasets, rows and their files.

Both ``--import DIR`` (``importer.scan``) and ``--sample`` (``sample.generate``) produce a list of
``DatasetSpec``; ``store.Store.ingest`` turns each into datasets, data rows, storage items and blobs.
Keeping this seam plain data means titles can be anything (``/``, NUL-free unicode, 300-byte names,
duplicates) even though files on disk cannot carry such names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Legacy DataRow.data_type names (upper case, as the SDK's legacy API sends them).
DataTypeName = Literal["IMAGE", "VIDEO", "AUDIO", "PDF", "PLAIN_TEXT", "NIFTI", "IMG_GROUP", "DICOM"]


@dataclass(frozen=True)
class MediaInfo:
    """What a file is, read from its bytes (never trusted from its name alone)."""

    data_type: DataTypeName  # IMAGE, VIDEO, AUDIO, PDF, PLAIN_TEXT, NIFTI, or DICOM for a .dcm slice
    mime_type: str | None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    fps: float | None = None
    frame_count: int | None = None
    audio_sample_rate: int | None = None
    audio_bit_depth: int | None = None
    audio_codec: str | None = None
    audio_num_channels: int | None = None
    dicom_study_uid: str | None = None
    dicom_series_uid: str | None = None
    dicom_instance_uid: str | None = None


@dataclass(frozen=True)
class FileSpec:
    """One file: a single-file data row, or one member (image, slice) of a group."""

    title: str
    path: Path  # the bytes; the store copies or hard-links them into its blob directory
    media: MediaInfo
    client_metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class GroupSpec:
    """A composite row whose members are files, in frame / slice order."""

    title: str
    kind: Literal["image_group", "image_sequence", "dicom_series"]
    children: list[FileSpec]
    client_metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    title: str
    rows: list[FileSpec | GroupSpec] = field(default_factory=list)
    description: str = ""
