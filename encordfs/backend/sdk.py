"""The Encord backend: the only module that imports the ``encord`` SDK.

It turns SDK objects into the plain records of ``encordfs.backend`` and SDK exceptions into
``encordfs.errors`` by one table (``_translate``; writes then sort the result into transient or
permanent, ``_as_write_error``), so nothing above it knows the SDK exists.

Calls, per the wire reference (shared/encord-wire.md §7): datasets come from ``get_datasets``; a
dataset's rows from one ``get_dataset`` request (with client metadata), streamed (below); group members from one bulk
``get_storage_items(sign_url=True)`` for the groups (which also signs an image sequence's video) plus
one ``get_child_items(get_signed_urls=True)`` per group (bounded concurrency); signed URLs from
``get_storage_items(sign_url=True)``'s request in chunks of at most ``BULK_LIMIT`` items (``_sign_items``:
the same POST through the SDK's own API client, but its answer read for ``uuid`` and ``signedUrl``
only, not validated into 30-field pydantic models: 12-18 us of CPU per item instead of 55-113 us, with the
GIL held, on every cold file). The SDK retries
idempotent calls itself; we lower its connect retries so an unreachable domain fails in seconds rather
than after its 9 s backoff per call.

Rows without a storage item (created before Encord's storage API: ``backing_item_uuid`` null) are
reached through the legacy data-row call, the request ``DataRow.refetch_data(signed_url=True)`` sends
(wire §5.1; with ``images_data_fetch_options=ImagesDataFetchOptions(fetch_signed_urls=True)`` for the
images of a group). The API has no bulk form of it, so it costs one call per row (a group's images come
in its one call); at most ``LEGACY_CONCURRENCY`` run at once across the mount. The call is sent through
the SDK's own querier for the row's dataset (``_refetch_row``), so a row needs no ``get_dataset`` first.
The same call lists the images of an image group or sequence whose storage item lists no children
(the real service lists a sequence's frames only there; its storage item is the sequence's MP4).

Forms: sizes and dimensions come as ints, floats (``3560366.0``) or text (``"5468354.0"``) and leave
here as ints (``_int``); times come in the three forms the SDK's ``parse_datetime`` reads
(``2022-01-05 18:51:05``, ``Thu, 09 Feb 2023 14:12:03 UTC``, ISO 8601 with or without a zone; no zone
means UTC) and leave as unix seconds (``_ts``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import re
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ijson
import requests
from cryptography.exceptions import UnsupportedAlgorithm
from encord import EncordUserClient
from encord import exceptions as enc_exc
from encord.common.time_parser import parse_datetime
from encord.constants.enums import DataType
from encord.constants.string_constants import TYPE_DATASET
from encord.http.bundle import Bundle
from encord.http.common import parse_retry_after
from encord.http.constants import RequestsSettings
from encord.http.error_utils import check_error_response
from encord.http.querier import Querier, create_new_session
from encord.http.query_methods import QueryMethods
from encord.orm.base_dto import BaseDTOInterface
from encord.orm.dataset import DataRow as OrmDataRow
from encord.orm.dataset import Dataset as OrmDataset
from encord.orm.dataset import DatasetAccessSettings, ImagesDataFetchOptions
from encord.orm.storage import GetItemsBulkPayload, StorageItemType

from encordfs import errors
from encordfs.backend import (
    BULK_LIMIT,
    ChildRecord,
    DatasetRecord,
    GroupRef,
    Members,
    PushOutcome,
    RowChange,
    RowPatch,
    RowRecord,
    legacy_key,
    parse_legacy_key,
)

log = logging.getLogger(__name__)

CHILD_FETCH_CONCURRENCY = 4  # parallel child-items calls; the SDK opens one connection per call
# Legacy data-row calls in flight at once, across every thread of the mount: each signs one row (there is
# no bulk form), so a burst of opens of legacy files runs this many at a time instead of one per FUSE
# thread; 8 keeps the 8-thread benchmark readers busy without opening dozens of connections at once.
LEGACY_CONCURRENCY = 8
# Storage API names of the legacy ``storage_location`` ints (images_data carries the int).
_STORAGE_NAMES = {0: "encord", 1: "s3", 2: "gcp", 3: "azure", 4: "s3Compatible"}

# Retries: the SDK retries GET/POST on 413/429/5xx itself. Two status retries with a short backoff
# keep a FUSE thread from waiting the SDK's default 9 s; one connect retry makes an unreachable
# domain fail fast.
_REQUESTS = RequestsSettings(
    max_retries=2, backoff_factor=0.5, connection_retries=1, connect_timeout=10, read_timeout=120
)
# How the dataset is loaded: "stream" (default) or "sdk" (the SDK's get_dataset, all rows in memory).
LOAD_MODE_ENV = "ENCORDFS_LOAD"
# Bytes of a get_dataset body kept whole for the envelope: error envelopes are a few hundred bytes.
ENVELOPE_KEEP_BYTES = 1 << 20
STREAM_CHUNK_BYTES = 1 << 16


def _ts(value: datetime | str | None) -> float:
    """Unix seconds of an SDK datetime or wire timestamp (naive means UTC, as the SDK assumes); None → 0.

    Wire forms seen from the service (docs/RECORDED-SHAPES.md): ``2022-01-05 18:51:05``,
    ``Thu, 09 Feb 2023 14:12:03 UTC`` and ISO 8601 with or without a zone; all read by the SDK's parser.
    """
    if value is None:
        return 0.0
    if isinstance(value, str):
        value = parse_datetime(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _int(value: Any) -> int | None:
    """A size or dimension as an int, whatever form it came in (``400``, ``400.0``, ``"400.0"``);
    None when missing or not a finite non-negative number (``"None"`` strings, booleans, NaN)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number or number in (float("inf"), float("-inf")) or number < 0:
        return None
    return int(number)


def _size_and_times(obj: Any) -> dict[str, Any]:
    """A ``ChildRecord``'s size, dimensions and times from an SDK object that names them as Encord
    does (a legacy ``images_data`` image, a storage item)."""
    return {
        "file_size": _int(obj.file_size),
        "width": _int(obj.width),
        "height": _int(obj.height),
        "created_at": _ts(obj.created_at),
        "last_edited_at": _ts(obj.last_edited_at),
    }


# SDK exception type → our error family, first match wins (foreign exceptions are translated here,
# by type, never by message text). Messages name the operation, never a URL or key.
_AUTH = "Encord refused the key or token (unregistered key, or wrong --domain?)"
_ERRORS: tuple[
    tuple[type[BaseException] | tuple[type[BaseException], ...], Callable[[str, Any], errors.FsError]], ...
] = (
    ((enc_exc.SshKeyNotFound, enc_exc.AuthenticationError), lambda what, e: errors.AuthError(f"{what}: {_AUTH}")),
    (enc_exc.AuthorisationError, lambda what, e: errors.PermissionDenied(f"{what}: not authorised")),
    (enc_exc.ResourceNotFoundError, lambda what, e: errors.NotFound(f"{what}: not found")),
    (
        enc_exc.RateLimitExceededError,
        lambda what, e: errors.TransientError(f"{what}: rate limited", retry_after_s=getattr(e, "retry_after", None)),
    ),
    (enc_exc.PayloadTooLargeError, lambda what, e: errors.PermanentError(f"{what}: payload too large (413)")),
    (enc_exc.InvalidArgumentsError, lambda what, e: errors.PermanentError(f"{what}: invalid arguments (400)")),
    (
        (enc_exc.UnknownException, enc_exc.GenericServerError),
        lambda what, e: errors.TransientError(f"{what}: server error"),
    ),
    (
        (requests.ConnectionError, requests.Timeout),
        lambda what, e: errors.Unavailable(f"{what}: cannot reach Encord ({type(e).__name__})"),
    ),
    # The SDK wraps a failed send in RequestException; the cause says what failed (above). Anything else
    # requests or the SDK raise is a reply they could not make sense of (HTML from a proxy, a wrong
    # --domain): transient. (requests' exceptions are OSErrors too, hence this order.)
    (
        (enc_exc.RequestException, requests.RequestException),
        lambda what, e: errors.TransientError(
            f"{what}: unexpected reply from Encord ({type(e).__name__}; is --domain right?)"
        ),
    ),
    (OSError, lambda what, e: errors.Unavailable(f"{what}: cannot reach Encord ({type(e).__name__})")),
)


def _translate(exc: BaseException, what: str) -> errors.FsError:
    """SDK exception → our error family by ``_ERRORS``; a wrapped send failure by its cause."""
    cause = exc.__cause__
    if isinstance(exc, enc_exc.RequestException) and isinstance(cause, (requests.RequestException, OSError)):
        exc = cause
    for types, make in _ERRORS:
        if isinstance(exc, types):
            return make(what, exc)
    return errors.BackendError(f"{what}: {type(exc).__name__}")


@contextlib.contextmanager
def _sdk(what: str) -> Iterator[None]:
    try:
        yield
    except errors.FsError:
        raise
    except Exception as exc:  # the one place SDK errors become ours
        translated = _translate(exc, what)
        if type(translated) is errors.BackendError:  # not in the table: keep the traceback for a bug report
            log.warning("%s failed with an unexpected %s", what, type(exc).__name__, exc_info=True)
        else:
            log.debug("%s failed: %s", what, type(exc).__name__)
        raise translated from None


_KEY_HINT = "encordfs needs an unencrypted OpenSSH Ed25519 private key (ssh-keygen -t ed25519 -N '' -f FILE)"


def load_key(path: Path) -> str:
    """Read and check an OpenSSH private key file. Every problem is one line that says what is wrong
    and what is expected; the key's content never appears in it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        raw = path.expanduser().read_bytes()
    except FileNotFoundError:
        raise errors.AuthError(f"SSH key file not found: {path}") from None
    except OSError as exc:
        raise errors.AuthError(f"cannot read SSH key file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise errors.AuthError(f"{path} is not a text key file; {_KEY_HINT}") from None
    if "-----BEGIN OPENSSH PRIVATE KEY-----" not in text:
        kind = "a public key" if text.startswith(("ssh-", "ecdsa-")) else "not an OpenSSH private key"
        if "-----BEGIN RSA PRIVATE KEY-----" in text or "-----BEGIN PRIVATE KEY-----" in text:
            kind = "a PEM private key, not an OpenSSH Ed25519 one"
        raise errors.AuthError(f"{path} is {kind}; {_KEY_HINT}")
    try:
        key = serialization.load_ssh_private_key(raw, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise errors.AuthError(f"{path} is protected by a passphrase; {_KEY_HINT}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise errors.AuthError(f"{path} could not be parsed as a private key; {_KEY_HINT}") from None
    if not isinstance(key, Ed25519PrivateKey):
        algorithm = type(key).__name__.removeprefix("_").replace("PrivateKey", "") or "another type"
        raise errors.AuthError(f"{path} is an {algorithm} key; {_KEY_HINT}")
    return text


def key_fingerprint(key_text: str) -> str:
    """sha256 of the key's OpenSSH public key: names the account (cluster mode keeps accounts apart by
    it) without revealing anything of the private key."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(key_text.encode(), password=None)
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        public = key_text.encode()  # the SDK refuses such a key anyway; this only has to differ per key
    return hashlib.sha256(public).hexdigest()


class _SignedUrls(BaseDTOInterface):
    """The answer of ``storage/items/get-bulk`` as item UUID -> ``signedUrl`` (``SdkBackend._sign_items``)."""

    def __init__(self, urls: dict[str, str | None]) -> None:
        self.urls = urls

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _SignedUrls:
        return cls({str(uuid.UUID(item["uuid"])): item.get("signedUrl") for item in d["results"]})

    def to_dict(self, by_alias: bool = True, exclude_none: bool = True) -> dict[str, Any]:
        return {"results": [{"uuid": k, "signedUrl": v} for k, v in self.urls.items()]}


class SdkBackend:
    """``Backend`` over the official SDK. Thread-safe: the SDK builds a new session per call."""

    def __init__(
        self, domain: str, ssh_key: str, *, include_org_access: bool = False, read_timeout_s: float | None = None
    ) -> None:
        requests_settings = _REQUESTS
        if read_timeout_s is not None:
            requests_settings = dataclasses.replace(_REQUESTS, read_timeout=max(1, int(read_timeout_s)))
        with _sdk("loading the SSH key"):
            try:
                self._client = EncordUserClient.create_with_ssh_private_key(
                    ssh_private_key=ssh_key, domain=domain, requests_settings=requests_settings
                )
            except ValueError as exc:  # the SDK's message for a non-Ed25519 or malformed key
                raise errors.AuthError(f"unusable SSH key: {str(exc).splitlines()[0][:120]}") from None
        self._include_org_access = include_org_access
        self.account_id = key_fingerprint(ssh_key)
        self._dataset_settings = DatasetAccessSettings(fetch_client_metadata=True)
        self._legacy_slots = threading.BoundedSemaphore(LEGACY_CONCURRENCY)

    # -- listing --------------------------------------------------------------------------------
    def list_datasets(self) -> list[DatasetRecord]:
        with _sdk("listing datasets"):
            found = self._client.get_datasets(include_org_access=self._include_org_access)
            out = []
            for entry in found:
                info = entry["dataset"]
                role = entry.get("user_role")
                out.append(
                    DatasetRecord(
                        uid=str(info.dataset_hash),
                        title=info.title,
                        description=info.description or "",
                        created_at=_ts(info.created_at),
                        last_edited_at=_ts(info.last_edited_at),
                        storage_location=int(getattr(info, "type", 0) or 0),
                        backing_folder_uuid=str(info.backing_folder_uuid) if info.backing_folder_uuid else None,
                        user_role=role.name.lower() if role is not None and hasattr(role, "name") else None,
                    )
                )
            return out

    def iter_rows(self, dataset_uid: str) -> Iterator[RowRecord]:
        if os.environ.get(LOAD_MODE_ENV, "stream") == "sdk":
            with _sdk(f"loading dataset {dataset_uid}"):
                dataset = self._client.get_dataset(dataset_uid, dataset_access_settings=self._dataset_settings)
                rows = dataset.data_rows
            return (self._row(dataset_uid, r) for r in rows)
        return self._stream_rows(dataset_uid)

    def _stream_rows(self, dataset_uid: str) -> Iterator[RowRecord]:
        """The rows of ``get_dataset``, parsed as they arrive (see the module docstring)."""
        what = f"loading dataset {dataset_uid}"
        with _sdk(what):
            config = self._client._config.config
            querier = Querier(config, resource_type=TYPE_DATASET, resource_id=dataset_uid)
            settings = dataclasses.replace(self._dataset_settings, fetch_rows=True)
            request = querier._request(
                QueryMethods.GET, Querier._route(OrmDataset), None, config.read_timeout,
                payload={"dataset_access_settings": dataclasses.asdict(settings)},
            )  # fmt: skip
            prepared = requests.Request("POST", config.endpoint, headers=request.headers, data=request.data).prepare()
            context = querier._exception_context(prepared)
            retry = config.requests_settings
            with create_new_session(
                max_retries=retry.max_retries,
                backoff_factor=retry.backoff_factor,
                connect_retries=retry.connection_retries,
            ) as session:
                try:
                    env = session.merge_environment_settings(config.endpoint, {}, None, None, None)
                    env["stream"] = True
                    response = session.send(prepared, timeout=(request.connect_timeout, request.timeout), **env)
                except Exception as exc:
                    raise enc_exc.RequestException(
                        f"Request session.send failed {prepared.method=}", context=context
                    ) from exc
                with response:
                    _check_status(response, context)
                    yield from _parse_rows(response, dataset_uid, context)

    @staticmethod
    def _row(dataset_uid: str, r: Any) -> RowRecord:
        """A ``RowRecord`` from an SDK ``DataRow`` (a dict of the wire keys, a few of them typed)."""
        wire = dict(r)
        wire["storage_location"] = int(r["storage_location"])
        backing = r.get("backing_item_uuid")
        wire["backing_item_uuid"] = str(backing) if backing else None
        return _row_from_json(dataset_uid, wire)

    def list_children(self, groups: list[GroupRef]) -> dict[str, Members]:
        """Members by row uid (see the module docstring); one row's failure is its ``Members.error``.
        The bulk item fetch failing because Encord is unreachable or refuses the key raises; failing
        otherwise (an item gone or forbidden fails the whole call) leaves each group to its other source."""
        items: dict[str, Any] = {}
        missing: str | None = None
        backed = [g.item_uuid for g in groups if g.item_uuid]
        for start in range(0, len(backed), BULK_LIMIT):
            try:
                with _sdk("loading group items"):
                    for item in self._client.get_storage_items(backed[start : start + BULK_LIMIT], sign_url=True):
                        items[str(item.uuid)] = item
            except (errors.Unavailable, errors.AuthError):
                raise
            except errors.FsError as exc:
                missing = exc.message

        def members(group: GroupRef) -> tuple[str, Members]:
            return group.row_uid, self._members(group, items.get(group.item_uuid or ""), missing)

        with ThreadPoolExecutor(max_workers=CHILD_FETCH_CONCURRENCY) as pool:
            return dict(pool.map(members, groups))

    def _members(self, group: GroupRef, item: Any, missing: str | None = None) -> Members:
        """Child items of the storage item; else, for image groups and sequences, the legacy
        ``images_data``; and a sequence's video. ``error`` only when nothing at all came back
        (``missing``: why the storage item could not be fetched)."""
        reasons: list[str] = []
        kids: list[ChildRecord] = []
        video = None
        if item is not None:
            if item.item_type == StorageItemType.IMAGE_SEQUENCE and (item.mime_type or "").startswith("video/"):
                video = self._child(0, item)
            try:
                with _sdk(f"listing the members of {group.row_uid}"):
                    kids = [self._child(i, k) for i, k in enumerate(item.get_child_items(get_signed_urls=True))]
            except errors.FsError as exc:
                reasons.append(exc.message)
        elif group.item_uuid:
            reasons.append(missing or f"Encord did not return storage item {group.item_uuid}")
        if not kids and group.data_type == "IMG_GROUP":
            try:
                kids = self._images_data(group)
            except errors.FsError as exc:
                reasons.append(exc.message)
        elif not kids and not group.item_uuid:
            reasons.append(f"{group.row_uid} has no storage item, and only image groups list members without one")
        if kids or video is not None or group.data_type not in ("IMG_GROUP", "DICOM"):
            return Members(kids, video)
        return Members([], None, "; ".join(reasons) or "Encord lists no members and no video for this row")

    def _images_data(self, group: GroupRef) -> list[ChildRecord]:
        """A group's images through the legacy call, signed (one call)."""
        row = self._refetch_row(group.dataset_uid, group.row_uid, signed_url=False, images=True)
        return [
            ChildRecord(
                item_uuid=str(image.image_hash),
                title=image.title,
                index=index,
                item_type="image",
                file_link=image.file_link,
                file_type=image.file_type,
                **_size_and_times(image),
                storage_location=_storage_name(image.storage_location),
                signed_url=image.signed_url,
                sign_key=legacy_key(group.dataset_uid, group.row_uid, str(image.image_hash)),
            )
            for index, image in enumerate(row.images_data or [])
        ]

    def _refetch_row(self, dataset_uid: str, row_uid: str, *, signed_url: bool, images: bool) -> Any:
        """The request ``DataRow.refetch_data(signed_url=..., images_data_fetch_options=
        ImagesDataFetchOptions(fetch_signed_urls=True) if images)`` sends, through the SDK's querier for
        the dataset; returns the SDK's ``DataRow``. At most ``LEGACY_CONCURRENCY`` at once."""
        fetch_images = dataclasses.asdict(ImagesDataFetchOptions(fetch_signed_urls=True)) if images else None
        payload = {
            "additional_data": {
                "signed_url": signed_url,
                "images_data_fetch_options": fetch_images,
                "client_metadata": False,
            }
        }
        querier = Querier(self._client._config.config, resource_type=TYPE_DATASET, resource_id=dataset_uid)
        with self._legacy_slots, _sdk(f"data row {row_uid}"):
            return querier.basic_getter(OrmDataRow, uid=row_uid, payload=payload)

    @staticmethod
    def _child(index: int, item: Any) -> ChildRecord:
        orm = item._orm_item  # the signed URL is read without the SDK's refetch/warning path
        return ChildRecord(
            item_uuid=str(item.uuid),
            title=item.name,
            index=index,
            item_type=str(getattr(item.item_type, "value", item.item_type)),
            file_link=item.url,
            file_type=item.mime_type,
            **_size_and_times(item),
            storage_location=str(getattr(item.storage_location, "value", item.storage_location)),
            dicom_instance_uid=item.dicom_instance_uid,
            dicom_series_uid=item.dicom_series_uid,
            dicom_study_uid=item.dicom_study_uid,
            signed_url=orm.signed_url,
            frames_per_second=item.fps,
            duration=item.duration,
        )

    # -- signing ----------------------------------------------------------------------------------
    def sign(self, handles: list[str]) -> dict[str, str | errors.BackendError | None]:
        """Storage items in bulk; legacy keys by row (``_sign_legacy``). A whole bulk call that fails
        raises; a legacy row the service refuses is that row's ``BackendError`` (EIO for its file only)."""
        out: dict[str, str | errors.BackendError | None] = {}
        legacy: dict[tuple[str, str], list[str]] = {}
        items = []
        for handle in handles:
            parsed = parse_legacy_key(handle)
            if parsed is None:
                items.append(handle)
            else:
                legacy.setdefault(parsed[:2], []).append(handle)
        for start in range(0, len(items), BULK_LIMIT):
            chunk = items[start : start + BULK_LIMIT]
            with _sdk(f"signing {len(chunk)} item(s)"):
                out.update(self._sign_items(chunk))
        if len(legacy) == 1:
            ((row, keys),) = legacy.items()
            out.update(self._sign_legacy(row, keys))
        elif legacy:
            with ThreadPoolExecutor(max_workers=LEGACY_CONCURRENCY) as pool:
                for signed in pool.map(lambda pair: self._sign_legacy(*pair), legacy.items()):
                    out.update(signed)
        return out

    def _sign_items(self, handles: list[str]) -> dict[str, str | None]:
        """item UUID -> signed URL (None for an item the service does not sign: a group), by the request
        ``get_storage_items(handles, sign_url=True)`` sends, its answer read for those two fields only.
        An SDK without that client falls back to the call itself."""
        api = getattr(self._client, "_api_client", None)
        if api is None:  # (a future SDK: the public call, and its parse)
            return {str(i.uuid): i._orm_item.signed_url for i in self._client.get_storage_items(handles, sign_url=True)}
        payload = GetItemsBulkPayload(item_uuids=[uuid.UUID(h) for h in handles], sign_urls=True)
        return api.post("storage/items/get-bulk", params=None, payload=payload, result_type=_SignedUrls).urls

    def _sign_legacy(self, row: tuple[str, str], keys: list[str]) -> dict[str, str | errors.BackendError | None]:
        """One legacy data-row call signs the row and/or every image of it that ``keys`` name."""
        dataset_uid, row_uid = row
        images = {parsed[2]: key for key in keys if (parsed := parse_legacy_key(key)) and parsed[2]}
        whole = [key for key in keys if key not in images.values()]
        try:
            found = self._refetch_row(dataset_uid, row_uid, signed_url=bool(whole), images=bool(images))
        except errors.FsError as exc:  # refused or failed: that row only, as EIO
            refused = errors.BackendError(f"signing {exc.message}")  # "signing data row <uid>: not authorised"
            return dict.fromkeys(keys, refused)
        out: dict[str, str | errors.BackendError | None] = dict.fromkeys(whole, found.signed_url)
        by_hash = {str(image.image_hash): image.signed_url for image in found.images_data or []}
        out.update({key: by_hash.get(image_hash) for image_hash, key in images.items()})
        return out

    # -- writes ----------------------------------------------------------------------------------
    def push(self, patches: list[RowPatch]) -> dict[str, PushOutcome]:
        """Apply the write queue's final changes (conflict rule: ``RowChange.apply_metadata`` onto the
        metadata fetched in the same call). Rows with a backing item: per ≤ ``BULK_LIMIT`` items, one
        ``get_storage_items`` (current metadata) and one bundled ``update`` → one ``patch-bulk``: two
        calls per 1000 rows. Rows without one: the deprecated ``DataRow.save`` (wire §6.1), per
        dataset one ``get_dataset`` + one ``list_data_rows``, then one call per row. Whole-call
        failures raise ``TransientError``/``PermanentError``; the SDK never retries PATCH, the queue does.
        """
        out: dict[str, PushOutcome] = {}
        backed: list[RowPatch] = []
        legacy: dict[str, list[RowPatch]] = {}
        for patch in patches:
            if not patch.item_uuid:
                legacy.setdefault(patch.dataset_uid, []).append(patch)
            elif _is_uuid(patch.item_uuid):
                backed.append(patch)
            else:
                out[patch.row_uid] = PushOutcome(patch.row_uid, error=errors.PermanentError("bad item uuid"))
        for start in range(0, len(backed), BULK_LIMIT):
            out.update(self._push_items(backed[start : start + BULK_LIMIT]))
        for dataset_uid, group in legacy.items():
            out.update(self._push_legacy(dataset_uid, group))
        return out

    def _push_items(self, patches: list[RowPatch]) -> dict[str, PushOutcome]:
        changes: dict[str, RowChange] = {}  # by item: rows of several datasets may share one item
        for patch in patches:
            assert patch.item_uuid is not None
            earlier = changes.get(patch.item_uuid)
            changes[patch.item_uuid] = patch.change if earlier is None else earlier.then(patch.change)
        with _sdk_write(f"loading {len(changes)} storage item(s) to update"):
            items = {str(i.uuid): i for i in self._client.get_storage_items(list(changes))}
        with _sdk_write(f"updating {len(items)} storage item(s)"), Bundle() as bundle:
            for item_uuid, change in changes.items():
                if (item := items.get(item_uuid)) is not None:
                    metadata = change.apply_metadata(item.client_metadata) if change.touches_metadata else None
                    item.update(client_metadata=metadata, name=change.title, bundle=bundle)
        out = {}
        for patch in patches:
            assert patch.item_uuid is not None
            if (item := items.get(patch.item_uuid)) is None:
                out[patch.row_uid] = PushOutcome(patch.row_uid, error=errors.PermanentError("storage item not found"))
            else:
                metadata = item.client_metadata
                out[patch.row_uid] = PushOutcome(
                    patch.row_uid, metadata=dict(metadata) if metadata is not None else None, title=item.name
                )
        return out

    def _push_legacy(self, dataset_uid: str, patches: list[RowPatch]) -> dict[str, PushOutcome]:
        with _sdk_write(f"loading rows of dataset {dataset_uid} to update"):
            dataset = self._client.get_dataset(
                dataset_uid, dataset_access_settings=self._dataset_settings, include_data_rows=False
            )
            rows = {r.uid: r for r in dataset.list_data_rows(data_hashes=[p.row_uid for p in patches])}
        out = {}
        for patch in patches:
            if (row := rows.get(patch.row_uid)) is None:
                out[patch.row_uid] = PushOutcome(patch.row_uid, error=errors.PermanentError("data row not found"))
                continue
            try:
                with _sdk_write(f"saving data row {patch.row_uid}"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # save() is deprecated (wire §6)
                    if patch.change.touches_metadata:
                        row.client_metadata = patch.change.apply_metadata(row.client_metadata) or {}
                    if patch.change.title is not None:
                        row.title = patch.change.title
                    row.save()
            except errors.BackendError as exc:
                out[patch.row_uid] = PushOutcome(patch.row_uid, error=exc)
                continue
            metadata = row.client_metadata
            out[patch.row_uid] = PushOutcome(
                patch.row_uid, metadata=dict(metadata) if metadata is not None else None, title=row.title
            )
        return out

    def close(self) -> None:
        pass


def _check_status(response: requests.Response, context: Any) -> None:
    """What the SDK's ``Querier._execute`` does with out-of-envelope statuses (wire §2.1)."""
    if response.status_code == 429:
        raise enc_exc.RateLimitExceededError(retry_after=parse_retry_after(response.headers), context=context)
    if response.status_code == 413:
        raise enc_exc.PayloadTooLargeError(
            "Request payload is too large and exceeds the maximum allowed size.", context=context
        )


def _parse_rows(response: requests.Response, dataset_uid: str, context: Any) -> Iterator[RowRecord]:
    """Yield each ``response.data_rows`` item as a ``RowRecord``; then apply the envelope rules."""
    rows: list[dict[str, Any]] = []
    status: list[Any] = []
    row_pipe = ijson.items_coro(_Sink(rows), "response.data_rows.item", use_float=True)
    status_pipe = ijson.items_coro(_Sink(status), "status", use_float=True)
    kept = bytearray()
    seen_rows = 0
    try:
        chunks = response.iter_content(STREAM_CHUNK_BYTES)
        for chunk in itertools.chain(chunks, [None]):
            if chunk is None:  # end of body: a truncated document raises IncompleteJSONError here
                row_pipe.close()
                if not status:
                    status_pipe.close()
            else:
                if len(kept) < ENVELOPE_KEEP_BYTES:
                    kept += chunk[: ENVELOPE_KEEP_BYTES - len(kept)]
                row_pipe.send(chunk)
                if not status:  # Encord sends "status" first: once seen, the second parse stops
                    status_pipe.send(chunk)
            if status and status[0] != 200:
                rows.clear()  # an error envelope: decoded whole below
                continue
            for raw in rows:
                seen_rows += 1
                yield _row_from_json(dataset_uid, raw)
            rows.clear()
    except ijson.JSONError as exc:
        raise enc_exc.RequestException(f"Error parsing JSON response: {str(exc)[:200]}", context=context) from None
    except requests.RequestException as exc:
        raise enc_exc.RequestException(
            f"Request session.send failed while reading: {type(exc).__name__}", context=context
        ) from exc
    if status == [200] and seen_rows:
        return
    _check_envelope(bytes(kept), status, context)


def _check_envelope(body: bytes, status: list[Any], context: Any) -> None:
    """Envelope rules for a body without rows, or whose status is not 200 (what ``Querier._execute``
    and ``basic_getter`` do): error codes through ``check_error_response``, a falsy response → not found."""
    if len(body) >= ENVELOPE_KEEP_BYTES:  # not kept whole: only the status is known
        if status == [200]:
            return
        check_error_response(None, context, None)
    try:
        envelope = json.loads(body)
    except ValueError:
        raise enc_exc.RequestException(f"Error parsing JSON response: {body[:200]!r}", context=context) from None
    if not isinstance(envelope, dict):
        raise enc_exc.RequestException("Error parsing JSON response: not an object", context=context)
    if envelope.get("status") != 200:
        check_error_response(envelope.get("response"), context, envelope.get("payload"))
    if not envelope.get("response"):
        raise enc_exc.ResourceNotFoundError("Resource not found.", context=context)


class _Sink:
    """An ijson coroutine target appending to a list (``send`` is what ijson calls)."""

    def __init__(self, out: list[Any]) -> None:
        self.send = out.append


@functools.lru_cache(maxsize=4096)
def _stream_ts(text: str) -> float:
    """A DataRow time in whole seconds: the SDK's ``DataRow`` keeps its times as ``%Y-%m-%d %H:%M:%S``
    text, so a sub-second part the service sent (ISO form) is dropped there too."""
    return float(math.floor(_ts(text)))


@functools.lru_cache(maxsize=64)
def _data_type(raw: str) -> str:
    return str(DataType.from_upper_case_string(raw).to_upper_case_string())


def _row_from_json(dataset_uid: str, r: dict[str, Any]) -> RowRecord:
    """A ``RowRecord`` from the wire DataRow (the fields and normalisations of ``DataRow.from_dict``)."""
    backing = r.get("backing_item_uuid")
    return RowRecord(
        uid=r["data_hash"],
        dataset_uid=dataset_uid,
        title=r["data_title"],
        data_type=_data_type(r["data_type"]),
        created_at=_stream_ts(r["created_at"]),
        last_edited_at=_stream_ts(r["last_edited_at"]),
        width=_int(r["width"]),
        height=_int(r["height"]),
        frames_per_second=r["frames_per_second"],
        duration=r["duration"],
        file_link=r["file_link"],
        file_size=_int(r["file_size"]),
        file_type=r["file_type"],
        storage_location=int(r["storage_location"]),
        backing_item_uuid=_canonical_uuid(backing) if backing else None,
        is_image_sequence=r.get("is_optimised_image_group"),
        client_metadata=r.get("client_metadata"),
    )


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _canonical_uuid(text: str) -> str:
    """``str(uuid.UUID(text))`` (what the SDK's DataRow does), without building a UUID when the wire
    text is already canonical, as Encord sends it (a third of the cost of a row)."""
    return text if _CANONICAL_UUID.fullmatch(text) else str(uuid.UUID(text))


def _storage_name(location: Any) -> str:
    """The storage API name (``encord``, ``s3``, ...) of a legacy ``storage_location`` (int or enum)."""
    number = _int(getattr(location, "value", location))
    return _STORAGE_NAMES.get(number if number is not None else -1, str(location))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _as_write_error(exc: errors.FsError) -> errors.BackendError:
    """A translated error, classified for the write queue: will resending the same change ever work?"""
    if isinstance(exc, (errors.TransientError, errors.PermanentError)):
        return exc
    if isinstance(exc, (errors.PermissionDenied, errors.NotFound)):
        return errors.PermanentError(exc.message)  # 403 / 404: not for this row, ever (400 is already permanent)
    if type(exc) is errors.BackendError:
        # An SDK error no table entry knows (a bug, ours or the SDK's): resending the same change gives
        # the same error, so the row is parked with the reason instead of retried forever.
        return errors.PermanentError(f"{exc.message} (unexpected; see the log)")
    # AuthError (401: the key, not the row), Unavailable: retry with backoff, park nothing.
    return errors.TransientError(exc.message)


@contextlib.contextmanager
def _sdk_write(what: str) -> Iterator[None]:
    try:
        with _sdk(what):
            yield
    except errors.FsError as exc:
        raise _as_write_error(exc) from None
