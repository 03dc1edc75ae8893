"""Endpoint logic of the emulator, independent of the HTTP server plumbing.

``ROUTES`` maps (method, path regex) to a stable endpoint name and a handler method of :class:`Api`.
Handlers take a parsed :class:`Request` (already authenticated: ``request.user_id`` is set) and
return a :class:`Response`; failures are raised as :class:`~encordfs.emulator.errors.ApiError` and
rendered by ``errors.render`` in the caller's family format. The legacy ``POST /public`` route is
one URL whose endpoint name depends on the body (:func:`legacy_endpoint`).

Admin endpoints (``/_emulator/*``, no auth) live in :class:`AdminApi`: ``GET stats`` (request counters
and fault firings), ``GET health``, ``POST reset`` (faults, settings and counters; ``{"data": true}``
restores the startup data too), ``GET/POST/DELETE faults`` (rules; see ``faults``), ``GET/POST
settings`` (``{"url_ttl_s": 2, "clock_skew_s": -30}``; ``null`` restores a default), ``POST rows``,
``DELETE rows/<data hash>``.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from typing import Any

from encordfs.emulator import shapes
from encordfs.emulator.blobs import UrlSigner
from encordfs.emulator.errors import ApiError, Family
from encordfs.emulator.faults import FaultRule, Faults, Stats
from encordfs.emulator.spec import MediaInfo
from encordfs.emulator.store import DatasetFilter, ItemPatch, PageParams, RowFilter, Store, compact_json

MAX_BULK_ITEMS = 1000
MAX_PAGE_SIZE = 1000
_STREAM_CHUNK_BYTES = 256 * 1024
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass
class Request:
    method: str
    target: str  # path + "?query" exactly as received (what v2 signatures cover)
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # path parameters
    user_id: int = 0

    def json(self) -> Any:
        if not self.body:
            raise ApiError(400, "request body must be JSON")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "request body is not valid JSON") from None

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def q_bool(self, name: str, default: bool | None = False) -> bool | None:
        return parse_bool(self.q(name), name, default)

    def q_int(self, name: str, default: int) -> int:
        raw = self.q(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ApiError(400, f"query parameter {name} must be an integer") from None


@dataclass
class Response:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj).encode())


def parse_bool(raw: Any, name: str, default: bool | None = False) -> bool | None:
    """Booleans from query strings (``True``/``False`` as requests renders them) or JSON."""
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{name} must be a boolean, got {raw!r}")


def parse_time(raw: Any, name: str) -> float | None:
    """ISO 8601 (``Z`` or offset; naive = UTC) or legacy ``YYYY-MM-DD HH:MM:SS`` → unix seconds."""
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name} is not an ISO 8601 datetime: {raw!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{key} must be a string")
    return value


def legacy_endpoint(body: bytes) -> str:
    """Stable endpoint name of a legacy RPC body (``legacy.other`` when unparseable)."""
    try:
        envelope = json.loads(body)
        query_type, method = envelope["query_type"], envelope["query_method"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "legacy.other"
    if query_type == "dataset" and method == "GET":
        return "legacy.dataset"
    if query_type == "datarows" and method == "GET":
        return "legacy.datarows"
    if query_type == "datarow" and method in ("GET", "POST"):
        return f"legacy.datarow.{method.lower()}"
    return "legacy.other"


def request_ids(family: Family, params: dict[str, str], body: bytes) -> frozenset[str]:
    """The ids a request names (lower case), for fault rules with a ``uid``: a legacy call's
    ``values.uid``; a v2 call's path uuids and a body's ``itemUuids``."""
    ids = set(params.values())
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict):
        if family == "legacy":
            values = parsed.get("values")
            uid = values.get("uid") if isinstance(values, dict) else None
            if isinstance(uid, str):
                ids.add(uid)
        else:
            uuids = parsed.get("itemUuids", parsed.get("item_uuids"))
            if isinstance(uuids, list):
                ids.update(u for u in uuids if isinstance(u, str))
    return frozenset(i.lower() for i in ids)


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    family: Family
    endpoint: str  # "" = decided per request (legacy)
    handler: Callable[[Api, Request], Response]


class Api:
    """Handlers of the legacy RPC and the v2 REST endpoints."""

    def __init__(self, store: Store, signer: Callable[[], UrlSigner], max_metadata_bytes: int) -> None:
        self._store = store
        self._shape = store.shape
        self._signer = signer
        self._max_metadata_bytes = max_metadata_bytes

    # ------------------------------------------------------------------ shared helpers

    def _sign(self, wanted: bool | None) -> shapes.Signer | None:
        return self._signer().sign if wanted else None

    def metadata_json(self, value: Any) -> str:
        """Validate a client-metadata object; return its compact JSON (400 malformed, 413 too big)."""
        if not isinstance(value, dict):
            raise ApiError(400, "client metadata must be a JSON object")
        text = compact_json(value)
        size = len(text.encode())
        if size > self._max_metadata_bytes:
            raise ApiError(413, f"client metadata is {size} bytes; the limit is {self._max_metadata_bytes} bytes")
        return text

    # ------------------------------------------------------------------ legacy RPC

    def legacy(self, req: Request) -> Response:
        envelope = req.json()
        if not isinstance(envelope, dict):
            raise ApiError(400, "legacy request must be a JSON object")
        values = envelope.get("values") or {}
        if not isinstance(values, dict):
            raise ApiError(400, "values must be an object")
        uid, payload = values.get("uid"), values.get("payload") or {}
        if not isinstance(payload, dict):
            raise ApiError(400, "payload must be an object")
        resource_id = req.headers.get("ResourceID") or ""
        name = legacy_endpoint(req.body)
        if name == "legacy.dataset":
            return self._legacy_dataset(req, resource_id or str(uid or ""), payload)
        if name == "legacy.datarows":
            return self._legacy_datarows(req, resource_id, payload)
        if name in ("legacy.datarow.get", "legacy.datarow.post"):
            if not isinstance(uid, str):
                raise ApiError(400, "uid (data hash) is required")
            self._store.check_row_access(req.user_id, uid, resource_id or None)
            if name == "legacy.datarow.get":
                return self._legacy_datarow_get(uid, payload)
            return self._legacy_datarow_post(uid, payload)
        raise ApiError(405, f"unsupported legacy query {envelope.get('query_type')!r}/{envelope.get('query_method')!r}")

    @staticmethod
    def _access(payload: dict[str, Any]) -> dict[str, Any]:
        settings = payload.get("dataset_access_settings") or {}
        return settings if isinstance(settings, dict) else {}

    def _legacy_dataset(self, req: Request, dataset_hash: str, payload: dict[str, Any]) -> Response:
        ds = self._store.dataset_for_user(req.user_id, dataset_hash)
        access = self._access(payload)
        head = json.dumps(
            {
                "dataset_hash": ds["hash"],
                "title": ds["title"],
                "description": ds["description"],
                "dataset_type": "CORD_STORAGE",
                "backing_folder_uuid": ds["folder_uuid"],
            }
        )
        if not parse_bool(access.get("fetch_rows"), "fetch_rows", True):
            return Response(body=f'{{"status": 200, "response": {head}}}'.encode())
        rows = self._store.stream_dataset_rows(
            ds["id"], None, bool(parse_bool(access.get("fetch_client_metadata"), "fetch_client_metadata"))
        )
        return Response(body=_stream_json(f'{{"status": 200, "response": {head[:-1]}, "data_rows": [', rows, "]}}"))

    def _legacy_datarows(self, req: Request, dataset_hash: str, payload: dict[str, Any]) -> Response:
        ds = self._store.dataset_for_user(req.user_id, dataset_hash)
        for key in ("data_types", "data_hashes"):
            if payload.get(key) is not None and not isinstance(payload.get(key), list):
                raise ApiError(400, f"{key} must be a list")
        flt = RowFilter(
            title_eq=_opt_str(payload, "title_eq"),
            title_like=_opt_str(payload, "title_like"),
            created_before=parse_time(payload.get("created_before"), "created_before"),
            created_after=parse_time(payload.get("created_after"), "created_after"),
            data_types=payload.get("data_types"),
            data_hashes=payload.get("data_hashes"),
        )
        with_metadata = bool(parse_bool(self._access(payload).get("fetch_client_metadata"), "fetch_client_metadata"))
        rows = self._store.stream_dataset_rows(ds["id"], flt, with_metadata)
        return Response(body=_stream_json('{"status": 200, "response": [', rows, "]}"))

    def _legacy_datarow_get(self, data_hash: str, payload: dict[str, Any]) -> Response:
        extra = payload.get("additional_data") or {}
        if not isinstance(extra, dict):
            raise ApiError(400, "additional_data must be an object")
        images = extra.get("images_data_fetch_options") or {}
        sign_images = isinstance(images, dict) and parse_bool(images.get("fetch_signed_urls"), "fetch_signed_urls")
        text = self._store.row_json(
            data_hash,
            with_metadata=bool(parse_bool(extra.get("client_metadata"), "client_metadata")),
            sign=self._sign(parse_bool(extra.get("signed_url"), "signed_url")),
            sign_images=self._sign(sign_images),
        )
        return Response(body=f'{{"status": 200, "response": {text}}}'.encode())

    def _legacy_datarow_post(self, data_hash: str, payload: dict[str, Any]) -> Response:
        unknown = set(payload) - {"client_metadata", "data_title"}
        if unknown:
            raise ApiError(400, f"cannot update {sorted(unknown)}")
        title = _opt_str(payload, "data_title")
        metadata = self.metadata_json(payload["client_metadata"]) if "client_metadata" in payload else None
        self._store.update_row(data_hash, title, metadata)
        row = self._store.row_json(data_hash, with_metadata=True, sign=None, sign_images=None)
        fields = json.dumps(list(payload))
        return Response(
            body=f'{{"status": 200, "response": {{"updated_fields": {fields}, "data_row": {row}}}}}'.encode()
        )

    # ------------------------------------------------------------------ v2: datasets, user

    def datasets_list(self, req: Request) -> Response:
        flt = DatasetFilter(
            title_eq=req.q("titleEq"),
            title_like=req.q("titleLike"),
            desc_eq=req.q("descriptionEq"),
            desc_like=req.q("descriptionLike"),
            created_before=parse_time(req.q("createdBefore"), "createdBefore"),
            created_after=parse_time(req.q("createdAfter"), "createdAfter"),
            edited_before=parse_time(req.q("editedBefore"), "editedBefore"),
            edited_after=parse_time(req.q("editedAfter"), "editedAfter"),
        )
        org = bool(req.q_bool("includeOrgAccess"))
        return json_response({"result": self._store.list_datasets(req.user_id, org, flt)})

    def bearer_token(self, req: Request) -> Response:
        return json_response({"token": self._store.mint_token(req.user_id)})

    # ------------------------------------------------------------------ v2: items

    def item_get(self, req: Request) -> Response:
        item = self._store.item(req.params["item"])
        return json_response(shapes.storage_item(item, self._sign(req.q_bool("signUrl")), shape=self._shape))

    def items_get_bulk(self, req: Request) -> Response:
        body = req.json()
        uuids = body.get("itemUuids", body.get("item_uuids")) if isinstance(body, dict) else None
        if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
            raise ApiError(400, "itemUuids must be a list of UUID strings")
        if len(uuids) > MAX_BULK_ITEMS:
            raise ApiError(400, f"at most {MAX_BULK_ITEMS} items per get-bulk request, got {len(uuids)}")
        sign = self._sign(parse_bool(body.get("signUrls", body.get("sign_urls")), "signUrls"))
        items = self._store.items_by_uuid([u.lower() for u in uuids])
        return json_response(
            {"results": [shapes.storage_item(i, sign, shape=self._shape) for i in items], "nextPageToken": None}
        )

    def item_children(self, req: Request) -> Response:
        item = self._store.item(req.params["item"], req.params["folder"])
        sign = self._sign(req.q_bool("signUrls"))
        children = self._store.child_items(item["id"])
        return json_response(
            {"results": [shapes.storage_item(c, sign, shape=self._shape) for c in children], "nextPageToken": None}
        )

    def _patch(self, raw: Any) -> ItemPatch:
        if not isinstance(raw, dict):
            raise ApiError(400, "an item patch must be a JSON object")
        metadata = raw.get("clientMetadata", raw.get("client_metadata"))
        return ItemPatch(
            name=_opt_str(raw, "name"),
            description=_opt_str(raw, "description"),
            client_metadata_json=None if metadata is None else self.metadata_json(metadata),
        )

    def item_patch(self, req: Request) -> Response:
        patch = self._patch(req.json())
        (item,) = self._store.patch_items([(req.params["item"], patch)], folder_uuid=req.params["folder"])
        return json_response(shapes.storage_item(item, None, shape=self._shape))

    def items_patch_bulk(self, req: Request) -> Response:
        body = req.json()
        patches = body.get("itemPatches", body.get("item_patches")) if isinstance(body, dict) else None
        if not isinstance(patches, dict):
            raise ApiError(400, "itemPatches must be an object mapping item UUIDs to patches")
        if len(patches) > MAX_BULK_ITEMS:
            raise ApiError(400, f"at most {MAX_BULK_ITEMS} items per patch-bulk request, got {len(patches)}")
        parsed = [(u.lower(), self._patch(p)) for u, p in patches.items()]  # all validated before any write
        items = self._store.patch_items(parsed)
        return json_response(
            {"results": [shapes.storage_item(i, None, shape=self._shape) for i in items], "nextPageToken": None}
        )

    # ------------------------------------------------------------------ v2: folders

    def _page_params(self, req: Request) -> PageParams:
        order = req.q("order") or "name"
        if order not in ("name", "createdAt"):
            raise ApiError(400, "order must be 'name' or 'createdAt'")
        page_size = req.q_int("pageSize", 100)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ApiError(400, f"pageSize must be within 1..{MAX_PAGE_SIZE}")
        return PageParams(
            order=order,
            desc=bool(req.q_bool("desc")),
            page_size=page_size,
            page_token=req.q("pageToken"),
            search=req.q("search"),
            item_types=req.query.get("itemTypes", []),
            is_in_dataset=req.q_bool("isInDataset", None),
            dataset_synced=req.q_bool("datasetSynced", None),
        )

    def folder_get(self, req: Request) -> Response:
        return json_response(shapes.storage_folder(self._store.folder(req.params["folder"]), self._shape))

    def folder_items(self, req: Request) -> Response:
        params = self._page_params(req)
        sign = self._sign(req.q_bool("signUrls"))
        with_metadata = bool(req.q_bool("includeClientMetadata", True))
        items, token = self._store.list_folder_items(req.params["folder"], params)
        results = [shapes.storage_item(i, sign, with_metadata=with_metadata, shape=self._shape) for i in items]
        return json_response({"results": results, "nextPageToken": token})

    def folders_list(self, req: Request) -> Response:
        req.q_bool("includeOrgAccess")  # accepted (validated); the single user sees every folder
        folders, token = self._store.list_root_folders(self._page_params(req))
        return json_response(
            {"results": [shapes.storage_folder(f, self._shape) for f in folders], "nextPageToken": token}
        )

    def folder_subfolders(self, req: Request) -> Response:
        self._store.folder(req.params["folder"])
        return json_response({"results": [], "nextPageToken": None})


def _stream_json(prefix: str, parts: Iterator[str], suffix: str) -> Iterator[bytes]:
    """``prefix + ", ".join(parts) + suffix`` as ~256 KiB byte chunks, without holding it all."""
    buf: list[str] = [prefix]
    size = len(prefix)
    first = True
    for part in parts:
        if not first:
            buf.append(", ")
        buf.append(part)
        first = False
        size += len(part) + 2
        if size >= _STREAM_CHUNK_BYTES:
            yield "".join(buf).encode()
            buf, size = [], 0
    buf.append(suffix)
    yield "".join(buf).encode()


_V2 = "/v2/public"
_SEG = r"(?P<{}>[^/]+)"


def _route(method: str, path: str, endpoint: str, handler: Callable[[Api, Request], Response]) -> Route:
    pattern = path.replace("{folder}", _SEG.format("folder")).replace("{item}", _SEG.format("item"))
    return Route(method, re.compile(pattern), "legacy" if endpoint == "" else "v2", endpoint, handler)


ROUTES: tuple[Route, ...] = (
    _route("POST", "/public", "", Api.legacy),
    _route("GET", f"{_V2}/datasets/list", "v2.datasets.list", Api.datasets_list),
    _route("GET", f"{_V2}/user/bearer-token", "v2.bearer_token", Api.bearer_token),
    _route("POST", f"{_V2}/storage/items/get-bulk", "v2.items.get_bulk", Api.items_get_bulk),
    _route("PATCH", f"{_V2}/storage/items/patch-bulk", "v2.items.patch_bulk", Api.items_patch_bulk),
    _route("GET", f"{_V2}/storage/items/{{item}}", "v2.items.get", Api.item_get),
    _route(
        "GET", f"{_V2}/storage/folders/{{folder}}/items/{{item}}/child-items", "v2.items.child_items", Api.item_children
    ),
    _route("PATCH", f"{_V2}/storage/folders/{{folder}}/items/{{item}}", "v2.items.patch", Api.item_patch),
    _route("GET", f"{_V2}/storage/folders/{{folder}}/items", "v2.folders.items", Api.folder_items),
    _route("GET", f"{_V2}/storage/folders/{{folder}}/folders", "v2.folders.subfolders", Api.folder_subfolders),
    _route("GET", f"{_V2}/storage/folders/{{folder}}", "v2.folders.get", Api.folder_get),
    _route("GET", f"{_V2}/storage/folders", "v2.folders.list", Api.folders_list),
)


def find_route(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """(route, path params, path exists with another method)."""
    other_method = False
    for route in ROUTES:
        match = route.pattern.fullmatch(path)
        if match is None:
            continue
        if route.method == method:
            return route, {k: v.lower() if _UUID_RE.match(v) else v for k, v in match.groupdict().items()}, False
        other_method = True
    return None, {}, other_method


# ---------------------------------------------------------------------- admin


class AdminApi:
    """``/_emulator/*``: test controls (no auth; the server binds 127.0.0.1 by default)."""

    def __init__(
        self, store: Store, stats: Stats, faults: Faults, api: Api, on_data_changed: Callable[[], None]
    ) -> None:
        self._store = store
        self._stats = stats
        self._faults = faults
        self._api = api
        self._on_data_changed = on_data_changed

    def handle(self, method: str, path: str, body: bytes) -> Response:
        sub = path[len("/_emulator/") :].rstrip("/")
        if sub == "stats" and method == "GET":
            return json_response({**self._stats.snapshot(), **self._faults.counts()})
        if sub == "health" and method == "GET":
            return json_response({"ok": True, **self._store.counts()})
        if sub == "reset" and method == "POST":
            return self._reset(body)
        if sub == "faults" and method == "GET":
            return json_response(self._faults.rules())
        if sub == "faults" and method == "POST":
            raw = _json_body(body)
            rules = raw if isinstance(raw, list) else [raw]
            self._faults.add([FaultRule.from_json(r) for r in rules])
            return json_response(self._faults.rules())
        if sub == "faults" and method == "DELETE":
            self._faults.clear()
            return json_response([])
        if sub == "settings" and method == "GET":
            return json_response(self._faults.settings())
        if sub == "settings" and method == "POST":
            return json_response(self._faults.update_settings(_json_body(body)))
        if sub == "rows" and method == "POST":
            return self._add_row(_json_body(body))
        if sub.startswith("rows/") and method == "DELETE":
            self._store.delete_row(sub[len("rows/") :])
            self._on_data_changed()
            return json_response({"deleted": sub[len("rows/") :]})
        raise ApiError(404, f"no admin endpoint {method} {path}")

    def _reset(self, body: bytes) -> Response:
        data = False
        if body.strip():
            raw = _json_body(body)
            data = bool(parse_bool(raw.get("data") if isinstance(raw, dict) else None, "data"))
        self._faults.clear()
        self._faults.reset_counts()
        self._stats.reset()
        if data:
            self._store.restore_startup_state()
            self._on_data_changed()
        return json_response({"reset": True, "data": data})

    def _add_row(self, raw: Any) -> Response:
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("dataset"), str)
            or not isinstance(raw.get("title"), str)
        ):
            raise ApiError(400, "body needs 'dataset' (title or hash), 'title' and 'bytes_b64'")
        try:
            data = base64.b64decode(raw.get("bytes_b64") or "", validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "bytes_b64 is not base64") from None
        metadata = raw.get("client_metadata")
        if metadata is not None:
            self._api.metadata_json(metadata)
        media = probe_media(raw["title"], data, raw.get("data_type"), raw.get("mime_type"))
        data_hash, item_uuid = self._store.add_row(raw["dataset"], raw["title"], data, media, metadata)
        return json_response({"data_hash": data_hash, "backing_item_uuid": item_uuid, "data_type": media.data_type})


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError:
        raise ApiError(400, "body is not valid JSON") from None


def probe_media(title: str, data: bytes, data_type: str | None, mime_type: str | None) -> MediaInfo:
    """Best-effort media info for an on-the-fly row: type from the name (or the caller), image size via PIL."""
    mime = mime_type or mimetypes.guess_type(title)[0]
    lower = title.lower()
    if lower.endswith((".nii", ".nii.gz")):
        mime, guessed = mime or "application/octet-stream", "NIFTI"
    elif mime is None:
        guessed = "PLAIN_TEXT"
    elif mime.startswith("image/"):
        guessed = "IMAGE"
    elif mime.startswith("video/"):
        guessed = "VIDEO"
    elif mime.startswith("audio/"):
        guessed = "AUDIO"
    elif mime == "application/pdf":
        guessed = "PDF"
    elif mime == "application/dicom":
        guessed = "DICOM"
    else:  # text/*, JSON, XML, and anything else unknown: served as plain text
        guessed = "PLAIN_TEXT"
    kind = (data_type or guessed).upper()
    if kind not in ("IMAGE", "VIDEO", "AUDIO", "PDF", "PLAIN_TEXT", "NIFTI", "DICOM"):
        raise ApiError(400, f"unsupported data_type {data_type!r}")
    width = height = None
    if kind == "IMAGE":
        width, height = _image_size(data)
    return MediaInfo(data_type=kind, mime_type=mime or "application/octet-stream", width=width, height=height)  # type: ignore[arg-type]


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except Exception:  # any undecodable image: unknown size, like the importer's null fields
        return None, None


__all__ = [
    "ROUTES",
    "AdminApi",
    "Api",
    "Request",
    "Response",
    "find_route",
    "legacy_endpoint",
    "probe_media",
    "request_ids",
]
