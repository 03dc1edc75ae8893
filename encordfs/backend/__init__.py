"""What the filesystem core needs from Encord, as plain records and one Protocol.

The core never sees SDK objects: backends turn them into these frozen records. Two backends
implement ``Backend``: ``backend.sdk.SdkBackend`` (the only module that imports ``encord``) and
``backend.memory.MemoryBackend`` (an in-process fake for core tests that run without a kernel or a
server). Times are unix seconds (float, UTC); sizes and dimensions are ``int`` whatever form the
service sent them in (``400.0``, ``"400.0"``).

Handles: the core reads a file through ``Backend.sign`` and lists a composite row through
``Backend.list_children``, each keyed by the node's *handle*. For a row or member with a storage item
the handle is that item's uuid; rows created before Encord's storage API have none
(``backing_item_uuid`` null), and their handles are legacy keys made here (:func:`legacy_key`):
``legacy:<dataset hash>/<data hash>`` for a row, ``legacy:<dataset hash>/<data hash>/<image hash>`` for
an image of a group reached through the legacy ``images_data``. A backend signs a legacy key with the
legacy data-row call, one call per row (every image of a group in that one call); the core never
signs a legacy row together with its siblings (:func:`costs_a_call`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from encordfs.errors import BackendError

LEGACY_PREFIX = "legacy:"


def legacy_key(dataset_uid: str, row_uid: str, image_hash: str | None = None) -> str:
    """The handle of a row without a storage item, or of one image of such a group (module docstring)."""
    tail = f"/{image_hash}" if image_hash else ""
    return f"{LEGACY_PREFIX}{dataset_uid}/{row_uid}{tail}"


def parse_legacy_key(handle: str) -> tuple[str, str, str | None] | None:
    """(dataset uid, row uid, image hash or None) of a legacy key; None for any other handle."""
    if not handle.startswith(LEGACY_PREFIX):
        return None
    parts = handle[len(LEGACY_PREFIX) :].split("/")
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1], None
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    return None


def costs_a_call(handle: str) -> bool:
    """A handle that costs one API call of its own to sign (a legacy row): never signed with siblings."""
    parsed = parse_legacy_key(handle)
    return parsed is not None and parsed[2] is None


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

    @property
    def handle(self) -> str:
        """What ``Backend.sign`` / ``Backend.list_children`` take for this row (module docstring)."""
        return self.backing_item_uuid or legacy_key(self.dataset_uid, self.uid)


@dataclass(frozen=True, slots=True)
class ChildRecord:
    """One member of a composite row (an image of a group, a slice of a DICOM series), or an image
    sequence's video (``item_type`` ``imageSequence``: the sequence's own storage item)."""

    item_uuid: str  # storage item uuid (= ``ImageData.image_hash``)
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
    sign_key: str | None = None  # the handle when it is not ``item_uuid`` (an image reached through images_data)
    frames_per_second: float | None = None  # a video's
    duration: float | None = None  # a video's, seconds

    @property
    def handle(self) -> str:
        """What ``Backend.sign`` takes for this member."""
        return self.sign_key or self.item_uuid


@dataclass(frozen=True, slots=True)
class GroupRef:
    """A composite row whose members ``Backend.list_children`` is asked for."""

    dataset_uid: str
    row_uid: str
    data_type: str  # IMG_GROUP, DICOM, GROUP, ...
    item_uuid: str | None  # its storage item; None for a row without one (legacy)


@dataclass(frozen=True, slots=True)
class Members:
    """What ``Backend.list_children`` found for one composite row."""

    children: list[ChildRecord]  # in frame / slice order
    video: ChildRecord | None = None  # an image sequence's video, when the service has one
    error: str | None = None  # why nothing could be listed, when neither members nor a video came back


# Data types whose rows are folders of children rather than single files.
COMPOSITE_TYPES = frozenset({"IMG_GROUP", "DICOM", "GROUP", "SCENE", "DICOM_STUDY"})


class Backend(Protocol):
    """The calls the core makes. Each raises ``errors.FsError`` subclasses (``BackendError`` ones, or
    ``NotFound``/``PermissionDenied`` for a missing or forbidden resource), never SDK errors."""

    def list_datasets(self) -> list[DatasetRecord]: ...

    def iter_rows(self, dataset_uid: str) -> Iterator[RowRecord]:
        """Every row of a dataset with its client metadata: one ``get_dataset`` call."""
        ...

    def list_children(self, groups: list[GroupRef]) -> dict[str, Members]:
        """Members of composite rows by row uid, signed where the API signs them: from the storage
        item's child items, else (image groups and sequences) the legacy ``images_data``; an image
        sequence's video too. A failure confined to one row is that row's ``Members.error``."""
        ...

    def sign(self, handles: list[str]) -> dict[str, str | BackendError | None]:
        """Signed URLs by handle: storage items in bulk (the backend chunks to its limit), legacy keys
        one row per call (bounded concurrency). ``None``: the item cannot be signed (gone); a
        ``BackendError``: the service refused that one row (its neighbours are unaffected)."""
        ...

    def push(self, patches: list[RowPatch]) -> dict[str, PushOutcome]:
        """Apply each row's final change (``RowChange.apply_metadata`` onto the *current* server
        metadata, fetched in the same call). Idempotent: pushing a change that already landed gives the
        same state. At most ``BULK_LIMIT`` patches per call. Raises ``TransientError`` /
        ``PermanentError`` when the whole call failed (the write queue bisects permanent ones);
        a failure confined to one row is that row's ``PushOutcome.error``. Every patch gets an outcome.
        """
        ...

    def close(self) -> None: ...


# --- Writes: what the write queue hands a backend (see ``encordfs.core.writes`` for the rules).

BULK_LIMIT = 1000  # items per bulk call (signing, pushing): the documented maximum of get-bulk / patch-bulk


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row's pending edits reduced to a final state (the output of ``core.writes.coalesce``).

    Normal form: either ``replace`` is set (a whole-metadata replacement with every later key edit
    already folded into it; ``set_keys``/``del_keys`` are then empty), or ``replace`` is ``None`` and
    ``set_keys``/``del_keys`` (disjoint) are merged onto the server's current metadata. ``title`` is
    the final title, or ``None`` for no rename. Treat the mappings as read-only.
    """

    replace: Mapping[str, Any] | None = None
    set_keys: Mapping[str, Any] = field(default_factory=dict)
    del_keys: frozenset[str] = frozenset()
    title: str | None = None

    @property
    def touches_metadata(self) -> bool:
        return self.replace is not None or bool(self.set_keys) or bool(self.del_keys)

    def apply_metadata(self, current: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The metadata after this change lands on ``current`` (the conflict rule, in one place)."""
        if not self.touches_metadata:
            return dict(current) if current is not None else None
        out = dict(self.replace) if self.replace is not None else dict(current or {})
        for key in self.del_keys:
            out.pop(key, None)
        out.update(self.set_keys)
        return out

    def then(self, later: RowChange) -> RowChange:
        """The single change equal to applying ``self`` and then ``later`` (kept in normal form)."""
        title = later.title if later.title is not None else self.title
        if later.replace is not None:
            return RowChange(replace=later.replace, title=title)
        if self.replace is not None:
            return RowChange(replace=later.apply_metadata(self.replace), title=title)
        set_keys = {k: v for k, v in self.set_keys.items() if k not in later.del_keys}
        set_keys.update(later.set_keys)
        del_keys = (self.del_keys - later.set_keys.keys()) | later.del_keys
        return RowChange(set_keys=set_keys, del_keys=frozenset(del_keys), title=title)


@dataclass(frozen=True, slots=True)
class RowPatch:
    """One row's change as a push sends it. ``item_uuid`` None → the legacy ``DataRow.save`` path."""

    row_uid: str
    dataset_uid: str
    item_uuid: str | None
    change: RowChange


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What happened to one row of a push: ``error`` None means it landed; ``metadata``/``title``
    are the server's state after the push when the backend learnt it (else ``None``)."""

    row_uid: str
    error: BackendError | None = None
    metadata: Mapping[str, Any] | None = None
    title: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
