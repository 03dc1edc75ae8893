"""Contract tests of the Encord emulator, driven by the real ``encord`` SDK (no mocks).

One emulator subprocess (``harness.emulator.RunningEmulator``) serves the whole module, over
an import tree built here; every test starts from the startup state (``reset(data=True)``).
In-process ``Emulator`` instances cover what needs a hand-made ``DatasetSpec`` (DICOM) or an
injected clock (URL expiry), and a few subprocesses cover the CLI contract and restarts.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from encord import EncordUserClient
from encord.exceptions import (
    AuthorisationError,
    InvalidArgumentsError,
    PayloadTooLargeError,
    RateLimitExceededError,
    ResourceNotFoundError,
)
from encord.http.bundle import Bundle
from encord.http.constants import RequestsSettings
from encord.orm.dataset import DatasetAccessSettings, DataType, ImagesDataFetchOptions
from encord.orm.storage import StorageItemType
from PIL import Image

from encordfs.emulator.server import Emulator
from encordfs.emulator.spec import DatasetSpec, FileSpec, GroupSpec, MediaInfo
from harness.emulator import RunningEmulator, make_keypair

NOTES_BYTES = bytes((i * 7 + 13) % 251 for i in range(200_000)).replace(b"\x00", b"a")


def _png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    Image.new("RGB", size, color).save(path, format="PNG")


def _build_tree(root: Path) -> None:
    alpha = root / "alpha"
    (alpha / "burst").mkdir(parents=True)
    (alpha / "seq").mkdir()
    _png(alpha / "a.png", (8, 6), (255, 0, 0))
    (alpha / "a.png.metadata.json").write_text(json.dumps({"split": "train", "n": 1}))
    _png(alpha / "b.png", (16, 12), (0, 255, 0))
    (alpha / "notes.txt").write_bytes(NOTES_BYTES)
    for i, name in enumerate(["f10.png", "f1.png", "f2.png"]):
        _png(alpha / "burst" / name, (10, 10), (i * 40, 0, 0))
    (alpha / "burst.metadata.json").write_text(json.dumps({"kind": "group"}))
    (alpha / "seq" / ".image-sequence").write_text("")
    for i in range(3):
        _png(alpha / "seq" / f"{i:03d}.png", (12, 8), (0, 0, i * 50))
    (root / "beta").mkdir()
    _png(root / "beta" / "c.png", (4, 4), (9, 9, 9))
    (root / "gamma").mkdir()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    return {"main": make_keypair(d, "main_ed25519"), "second": make_keypair(d, "second_ed25519")}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    _build_tree(root)
    return root


@pytest.fixture(scope="module")
def running(tree: Path, keys: dict[str, Path]) -> Any:
    args = [
        "--import",
        str(tree),
        "--authorized-key",
        str(keys["main"]),
        "--authorized-key",
        f"{keys['second']}.pub",
        "--max-metadata-bytes",
        "2048",
    ]
    with RunningEmulator(args) as emu:
        yield emu


@pytest.fixture
def emu(running: RunningEmulator) -> RunningEmulator:
    running.reset(data=True)
    return running


@pytest.fixture
def client(emu: RunningEmulator, keys: dict[str, Path]) -> EncordUserClient:
    return emu.client(keys["main"])


def _alpha(client: EncordUserClient, metadata: bool = False) -> Any:
    (info,) = [d["dataset"] for d in client.get_datasets(title_eq="alpha")]
    settings = DatasetAccessSettings(fetch_client_metadata=metadata)
    return client.get_dataset(info.dataset_hash, dataset_access_settings=settings)


def _rows(dataset: Any) -> dict[str, Any]:
    return {r.title: r for r in dataset.data_rows}


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> httpx.Response:
    return httpx.request(method, url, headers=headers, trust_env=False, timeout=30)


# ---------------------------------------------------------------------------------- datasets


def test_get_datasets_lists_and_filters(client: EncordUserClient) -> None:
    all_ds = client.get_datasets()
    assert sorted(d["dataset"].title for d in all_ds) == ["alpha", "beta", "gamma"]
    for entry in all_ds:
        assert entry["dataset"].backing_folder_uuid is not None
        assert entry["user_role"] is not None
    assert [d["dataset"].title for d in client.get_datasets(title_like="%et%")] == ["beta"]
    assert [d["dataset"].title for d in client.get_datasets(title_eq="gamma", include_org_access=True)] == ["gamma"]
    assert client.get_datasets(desc_eq="nothing like this") == []
    past = datetime.now(UTC) - timedelta(days=1)
    assert len(client.get_datasets(created_after=past, edited_after=past)) == 3
    assert client.get_datasets(created_before=past) == []


def test_get_dataset_rows_shapes(client: EncordUserClient) -> None:
    ds = _alpha(client)
    assert ds.title == "alpha" and ds.storage_location == 0 and ds.backing_folder_uuid is not None
    rows = _rows(ds)
    assert list(rows) == ["a.png", "b.png", "burst", "notes.txt", "seq"]
    a = rows["a.png"]
    assert (a.data_type, a.width, a.height, a.file_type, a.client_metadata) == (DataType.IMAGE, 8, 6, "image/png", None)
    assert a.backing_item_uuid is not None and a.file_size > 0
    burst, seq = rows["burst"], rows["seq"]
    assert burst.data_type == DataType.IMG_GROUP and burst.is_image_sequence is False
    assert [i.title for i in burst.images_data] == ["f1.png", "f2.png", "f10.png"]
    assert burst.file_link is None and burst.width is None
    assert seq.data_type == DataType.IMG_GROUP and seq.is_image_sequence is True
    assert (seq.width, seq.height) == (12, 8)
    assert rows["notes.txt"].data_type == DataType.PLAIN_TEXT


def test_get_dataset_with_metadata_and_without_rows(client: EncordUserClient) -> None:
    rows = _rows(_alpha(client, metadata=True))
    assert rows["a.png"].client_metadata == {"split": "train", "n": 1}
    assert rows["burst"].client_metadata == {"kind": "group"}
    assert rows["b.png"].client_metadata == {}
    info = client.get_datasets(title_eq="gamma")[0]["dataset"]
    assert client.get_dataset(info.dataset_hash).data_rows == []
    light = client.get_dataset(info.dataset_hash, include_data_rows=False)
    assert light.title == "gamma"


def test_get_dataset_unknown_hash(client: EncordUserClient) -> None:
    with pytest.raises(ResourceNotFoundError):
        client.get_dataset("00000000-0000-4000-8000-000000000000")


def test_list_data_rows_filters(client: EncordUserClient) -> None:
    ds = _alpha(client)
    assert [r.title for r in ds.list_data_rows(title_eq="b.png")] == ["b.png"]
    assert [r.title for r in ds.list_data_rows(title_like="%.png")] == ["a.png", "b.png"]
    assert [r.title for r in ds.list_data_rows(data_types=[DataType.IMG_GROUP])] == ["burst", "seq"]
    a_hash = _rows(ds)["a.png"].uid
    assert [r.title for r in ds.list_data_rows(data_hashes=[a_hash])] == ["a.png"]
    past = datetime.now(UTC) - timedelta(days=1)
    assert len(ds.list_data_rows(created_after=past)) == 5
    assert ds.list_data_rows(created_before=past) == []


def test_refetch_signs_row_and_group_images(client: EncordUserClient, tree: Path) -> None:
    rows = _rows(_alpha(client))
    a = rows["a.png"]
    a.refetch_data(signed_url=True, client_metadata=True)
    assert a.client_metadata == {"split": "train", "n": 1}
    assert _get(a.signed_url).content == (tree / "alpha" / "a.png").read_bytes()
    burst = rows["burst"]
    burst.refetch_data(images_data_fetch_options=ImagesDataFetchOptions(fetch_signed_urls=True))
    for image, name in zip(burst.images_data, ["f1.png", "f2.png", "f10.png"]):
        assert _get(image.signed_url).content == (tree / "alpha" / "burst" / name).read_bytes()
    b = rows["b.png"]
    b.refetch_data()
    assert b.signed_url is None


# ---------------------------------------------------------------------------------- one copy of metadata


def test_datarow_save_is_visible_through_storage(client: EncordUserClient) -> None:
    row = _rows(_alpha(client, metadata=True))["a.png"]
    before = client.get_storage_item(row.backing_item_uuid).last_edited_at
    time.sleep(0.01)
    row.title = "renamed.png"
    row.client_metadata = {"split": "test", "tags": ["x"]}
    with pytest.warns(DeprecationWarning, match="save is deprecated"):
        row.save()
    assert row.title == "renamed.png"
    item = client.get_storage_item(row.backing_item_uuid)
    assert item.name == "renamed.png"
    assert item.client_metadata == {"split": "test", "tags": ["x"]}
    assert item.last_edited_at > before


def test_storage_update_is_visible_through_rows(client: EncordUserClient) -> None:
    row = _rows(_alpha(client))["b.png"]
    item = client.get_storage_item(row.backing_item_uuid)
    item.update(name="bee.png", client_metadata={"reviewed": True})
    again = _rows(_alpha(client, metadata=True))["bee.png"]
    assert again.client_metadata == {"reviewed": True}
    assert again.uid == row.uid


# ---------------------------------------------------------------------------------- storage items


def test_storage_item_signed_url_bytes(client: EncordUserClient, tree: Path) -> None:
    row = _rows(_alpha(client))["notes.txt"]
    item = client.get_storage_item(row.backing_item_uuid, sign_url=True)
    assert item.item_type == StorageItemType.PLAIN_TEXT
    assert item.file_size == len(NOTES_BYTES) and item.mime_type == "text/plain"
    url = item.get_signed_url()
    response = _get(url)
    assert response.status_code == 200 and response.content == NOTES_BYTES
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["accept-ranges"] == "bytes" and response.headers["etag"]
    plain = client.get_storage_item(row.backing_item_uuid)
    assert plain.get_signed_url() is not None  # fetched on demand (one more request)


def test_get_storage_items_bulk_order_and_errors(emu: RunningEmulator, client: EncordUserClient) -> None:
    rows = _rows(_alpha(client))
    uuids = [rows[t].backing_item_uuid for t in ("seq", "a.png", "notes.txt", "burst")]
    items = client.get_storage_items(uuids, sign_url=True)
    assert [i.uuid for i in items] == uuids
    assert [i.item_type for i in items] == [
        StorageItemType.IMAGE_SEQUENCE, StorageItemType.IMAGE, StorageItemType.PLAIN_TEXT, StorageItemType.IMAGE_GROUP,
    ]  # fmt: skip
    assert items[1]._orm_item.signed_url is not None and items[0]._orm_item.signed_url is None
    with pytest.raises(AuthorisationError):
        client.get_storage_items([uuids[0], "00000000-0000-4000-8000-000000000000"])
    with pytest.raises(InvalidArgumentsError):
        client.get_storage_items(uuids * 251)
    with pytest.raises(AuthorisationError):
        client.get_storage_item("00000000-0000-4000-8000-000000000000")


def test_backend_signing_reads_what_get_storage_items_parses(
    emu: RunningEmulator, client: EncordUserClient, keys: dict[str, Path]
) -> None:
    """``SdkBackend.sign`` sends ``get_storage_items(sign_url=True)``'s request and reads only the UUIDs
    and signed URLs of the answer: the same items, signed or not, as the SDK's own parse; errors the same."""
    from encordfs import errors
    from encordfs.backend.sdk import SdkBackend

    rows = _rows(_alpha(client))
    uuids = [str(rows[t].backing_item_uuid) for t in ("seq", "a.png", "notes.txt", "burst")]
    parsed = {str(i.uuid): i._orm_item.signed_url for i in client.get_storage_items(uuids, sign_url=True)}
    backend = SdkBackend(emu.domain, keys["main"].read_text())
    try:
        signed = backend.sign(uuids)
        assert list(signed) == list(parsed) == uuids
        for uid in uuids:
            ours, theirs = signed[uid], parsed[uid]
            assert (ours is None) == (theirs is None), uid
            if ours is not None and theirs is not None:
                assert ours.split("?")[0] == theirs.split("?")[0]
                assert _get(ours).content == _get(theirs).content
        with pytest.raises(errors.FsError):
            backend.sign([uuids[0], "00000000-0000-4000-8000-000000000000"])
    finally:
        backend.close()


def test_child_items_frame_order_and_ids(client: EncordUserClient, tree: Path) -> None:
    burst = _rows(_alpha(client))["burst"]
    group = client.get_storage_item(burst.backing_item_uuid)
    children = list(group.get_child_items(get_signed_urls=True))
    assert [c.name for c in children] == ["f1.png", "f2.png", "f10.png"]
    assert [str(c.uuid) for c in children] == [i.image_hash for i in burst.images_data]
    assert all(c.item_type == StorageItemType.IMAGE for c in children)
    assert _get(children[2].get_signed_url()).content == (tree / "alpha" / "burst" / "f10.png").read_bytes()
    seq = client.get_storage_item(_rows(_alpha(client))["seq"].backing_item_uuid)
    assert [c.name for c in seq.get_child_items()] == ["000.png", "001.png", "002.png"]


def test_bundle_update_uses_one_patch_bulk(emu: RunningEmulator, client: EncordUserClient) -> None:
    rows = _rows(_alpha(client))
    items = client.get_storage_items([r.backing_item_uuid for r in rows.values()])
    emu.reset()
    with Bundle() as bundle:
        for n, item in enumerate(items):
            item.update(client_metadata={"n": n}, bundle=bundle)
    stats = emu.stats()
    assert stats["v2.items.patch_bulk"] == 1 and stats["v2.items.patch"] == 0 and stats["api_calls"] == 1
    fresh = _rows(_alpha(client, metadata=True))
    assert sorted(r.client_metadata["n"] for r in fresh.values()) == list(range(5))


def test_folder_and_paged_listing(emu: RunningEmulator, client: EncordUserClient) -> None:
    ds = _alpha(client)
    folder = client.get_storage_folder(ds.backing_folder_uuid)
    assert folder.name == "alpha" and str(folder._orm_folder.synced_dataset_hash) == ds.dataset_hash
    emu.reset()
    items = list(folder.list_items(page_size=2, get_signed_urls=True))
    assert [i.name for i in items] == ["a.png", "b.png", "burst", "notes.txt", "seq"]
    assert emu.stats()["v2.folders.items"] == math.ceil(5 / 2)
    assert [i.name for i in folder.list_items(desc=True)][0] == "seq"
    assert [i.name for i in folder.list_items(item_types=[StorageItemType.IMAGE_GROUP])] == ["burst"]
    assert [i.name for i in folder.list_items(search="note")] == ["notes.txt"]
    folders = list(client.list_storage_folders(page_size=2))
    assert sorted(f.name for f in folders) == ["alpha", "beta", "gamma"]


def test_bearer_token_client(emu: RunningEmulator, client: EncordUserClient) -> None:
    token = client.get_bearer_token()
    bearer = EncordUserClient.create_with_bearer_token(token, domain=emu.domain)
    assert sorted(d["dataset"].title for d in bearer.get_datasets()) == ["alpha", "beta", "gamma"]
    row = _rows(_alpha(bearer))["a.png"]
    assert bearer.get_storage_item(row.backing_item_uuid).name == "a.png"


def test_second_key_from_public_key_file(emu: RunningEmulator, keys: dict[str, Path]) -> None:
    assert len(emu.client(keys["second"]).get_datasets()) == 3


def test_v2_booleans_case_insensitive(emu: RunningEmulator, client: EncordUserClient, keys: dict[str, Path]) -> None:
    from harness.emulator import load_private_key, sign_v2

    uuid = _rows(_alpha(client))["a.png"].backing_item_uuid
    key = load_private_key(keys["main"])
    for raw in ("true", "TRUE", "True"):
        target = f"/v2/public/storage/items/{uuid}?signUrl={raw}"
        r = httpx.get(emu.domain + target, headers=sign_v2("GET", target, b"", key), trust_env=False)
        assert r.status_code == 200 and r.json()["signedUrl"].startswith(emu.domain)


# ---------------------------------------------------------------------------------- blobs


def _notes_url(client: EncordUserClient) -> str:
    row = _rows(_alpha(client))["notes.txt"]
    return str(client.get_storage_item(row.backing_item_uuid, sign_url=True).get_signed_url())


def test_blob_ranges(client: EncordUserClient) -> None:
    url, size = _notes_url(client), len(NOTES_BYTES)
    r = _get(url, {"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == NOTES_BYTES[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{size}" and r.headers["content-length"] == "10"
    r = _get(url, {"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == NOTES_BYTES[-5:]
    r = _get(url, {"Range": f"bytes={size - 3}-"})
    assert r.status_code == 206 and r.content == NOTES_BYTES[-3:]
    r = _get(url, {"Range": f"bytes=100-{size + 50}"})
    assert r.status_code == 206 and r.content == NOTES_BYTES[100:]
    r = _get(url, {"Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    r = _get(url, method="HEAD")
    assert r.status_code == 200 and r.headers["content-length"] == str(size) and r.content == b""
    r = _get(url, {"Range": "bytes=0-0"}, method="HEAD")
    assert r.status_code == 206 and r.headers["content-length"] == "1"


def test_blob_keep_alive_many_requests(client: EncordUserClient) -> None:
    url = _notes_url(client)
    with httpx.Client(trust_env=False) as http:
        for i in range(50):
            assert http.get(url, headers={"Range": f"bytes={i}-{i}"}).content == NOTES_BYTES[i : i + 1]


def test_blob_tampered_urls_are_denied(client: EncordUserClient) -> None:
    url = _notes_url(client)
    base, query = url.split("?")
    expires = int(query.split("Expires=")[1].split("&")[0])
    signature = query.split("Signature=")[1]
    other_key = base[:-1] + ("0" if base[-1] != "0" else "1")
    for bad in (
        f"{other_key}?{query}",
        f"{base}?Expires={expires + 100}&Signature={signature}",
        f"{base}?Expires={expires}&Signature={'0' * 64}",
        base,
    ):
        r = _get(bad)
        assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content


def test_blob_stats_count_requests_and_bytes(emu: RunningEmulator, client: EncordUserClient) -> None:
    url = _notes_url(client)
    emu.reset()
    _get(url, {"Range": "bytes=0-99"})
    _get(url)
    stats = emu.stats()
    assert stats["blob.requests"] == 2 and stats["blob.bytes"] == 100 + len(NOTES_BYTES)
    assert stats["api_calls"] == 0


# ---------------------------------------------------------------------------------- limits and faults


def test_oversized_metadata_is_413_everywhere(client: EncordUserClient) -> None:
    rows = _rows(_alpha(client, metadata=True))
    big = {"blob": "x" * 3000}
    item = client.get_storage_item(rows["a.png"].backing_item_uuid)
    with pytest.raises(PayloadTooLargeError):
        item.update(client_metadata=big)
    other = client.get_storage_item(rows["b.png"].backing_item_uuid)
    with pytest.raises(PayloadTooLargeError):
        with Bundle() as bundle:
            other.update(client_metadata={"ok": 1}, bundle=bundle)
            item.update(client_metadata=big, bundle=bundle)
    assert client.get_storage_item(other.uuid).client_metadata == {}  # the whole bulk failed
    row = rows["a.png"]
    row.client_metadata = big
    with pytest.warns(DeprecationWarning), pytest.raises(PayloadTooLargeError):
        row.save()
    assert client.get_storage_item(row.backing_item_uuid).client_metadata == {"split": "train", "n": 1}


def test_fault_429_on_patch_is_rate_limit(emu: RunningEmulator, client: EncordUserClient) -> None:
    item = client.get_storage_item(_rows(_alpha(client))["a.png"].backing_item_uuid)
    emu.add_faults([{"endpoint": "v2.items.*", "status": 429, "retry_after": 1, "count": 1}])
    with pytest.raises(RateLimitExceededError) as info:
        item.update(client_metadata={"x": 1})
    assert info.value.retry_after == 1
    assert emu.stats()["v2.items.patch"] == 1  # PATCH is never retried by the SDK
    item.update(client_metadata={"x": 2})  # count exhausted
    assert client.get_storage_item(item.uuid).client_metadata == {"x": 2}


def test_fault_500_on_legacy_is_retried(emu: RunningEmulator, client: EncordUserClient) -> None:
    hash_ = client.get_datasets(title_eq="alpha")[0]["dataset"].dataset_hash
    emu.add_faults([{"endpoint": "legacy.dataset", "status": 500, "count": 1}])
    assert client.get_dataset(hash_).title == "alpha"
    assert emu.stats()["legacy.dataset"] == 2


def test_fault_legacy_429_and_latency(emu: RunningEmulator, keys: dict[str, Path]) -> None:
    strict = EncordUserClient.create_with_ssh_private_key(
        ssh_private_key_path=str(keys["main"]), domain=emu.domain, requests_settings=RequestsSettings(max_retries=0)
    )
    hash_ = strict.get_datasets(title_eq="beta")[0]["dataset"].dataset_hash
    rules = emu.add_faults(
        [
            {"endpoint": "legacy.*", "status": 429, "retry_after": 2, "count": 1},
            {"endpoint": "v2.datasets.list", "latency_ms": 300},
        ]
    )
    assert len(rules) == 2
    with pytest.raises(RateLimitExceededError) as info:
        strict.get_dataset(hash_)
    assert info.value.retry_after == 2
    start = time.monotonic()
    strict.get_datasets()
    assert time.monotonic() - start >= 0.3
    emu.reset()
    assert httpx.get(f"{emu.domain}/_emulator/faults", trust_env=False).json() == []


def test_raw_v2_limits_and_malformed_bodies(
    emu: RunningEmulator, client: EncordUserClient, keys: dict[str, Path]
) -> None:
    from harness.emulator import load_private_key, sign_v2

    key = load_private_key(keys["main"])
    row = _rows(_alpha(client))["a.png"]
    folder = _alpha(client).backing_folder_uuid

    def send(method: str, target: str, body: Any) -> httpx.Response:
        raw = json.dumps(body).encode()
        headers = {**sign_v2(method, target, raw, key), "Content-Type": "application/json"}
        return httpx.request(method, emu.domain + target, content=raw, headers=headers, trust_env=False)

    many = {f"00000000-0000-4000-8000-{n:012d}": {"clientMetadata": {}} for n in range(1001)}
    assert send("PATCH", "/v2/public/storage/items/patch-bulk", {"itemPatches": many}).status_code == 400
    target = f"/v2/public/storage/folders/{folder}/items/{row.backing_item_uuid}"
    for bad in ({"clientMetadata": [1, 2]}, {"name": 5}, [1]):
        r = send("PATCH", target, bad)
        assert r.status_code == 400 and r.json()["message"]
    assert send("PATCH", target, {"clientMetadata": {"ok": True}}).json()["clientMetadata"] == '{"ok":true}'
    assert send("GET", f"/v2/public/storage/folders/{folder}/items?pageSize=5000", None).status_code == 400


# ---------------------------------------------------------------------------------- admin


def test_admin_add_delete_and_reset_data(emu: RunningEmulator, client: EncordUserClient) -> None:
    data = b"hello, emulator\n"
    added = emu.add_row("beta", "hello.txt", data, {"via": "admin"})
    rows = _rows(client.get_dataset(client.get_datasets(title_eq="beta")[0]["dataset"].dataset_hash))
    assert set(rows) == {"c.png", "hello.txt"} and rows["hello.txt"].data_type == DataType.PLAIN_TEXT
    item = client.get_storage_item(added["backing_item_uuid"], sign_url=True)
    assert _get(item.get_signed_url()).content == data
    emu.delete_row(rows["c.png"].uid)
    beta_hash = client.get_datasets(title_eq="beta")[0]["dataset"].dataset_hash
    assert [r.title for r in client.get_dataset(beta_hash).data_rows] == ["hello.txt"]
    emu.reset(data=True)
    assert [r.title for r in client.get_dataset(beta_hash).data_rows] == ["c.png"]
    assert emu.stats()["api_calls"] == 1


# ---------------------------------------------------------------------------------- in-process API


def _dicom_spec(tmp: Path) -> DatasetSpec:
    slices = []
    for n in (1, 2):
        path = tmp / f"s{n}.dcm"
        path.write_bytes(b"\0" * 128 + b"DICM" + bytes([n]) * 50)
        media = MediaInfo(
            "DICOM",
            "application/dicom",
            width=4,
            height=4,
            dicom_study_uid="1.2",
            dicom_series_uid="1.2.3",
            dicom_instance_uid=f"1.2.3.{n}",
        )
        slices.append(FileSpec(f"s{n}.dcm", path, media))
    return DatasetSpec("med", [GroupSpec("ct", "dicom_series", slices, {"m": 1}), slices[0]])


def test_dicom_series_shapes_in_process(tmp_path: Path, keys: dict[str, Path]) -> None:
    pub = Path(f"{keys['main']}.pub").read_text().strip()
    emulator = Emulator(tmp_path / "data", authorized_keys=[pub])
    emulator.store.ingest(_dicom_spec(tmp_path))
    with emulator:
        client = EncordUserClient.create_with_ssh_private_key(
            ssh_private_key_path=str(keys["main"]), domain=emulator.domain
        )
        ds = client.get_dataset(client.get_datasets()[0]["dataset"].dataset_hash)
        series, lone = ds.data_rows
        assert series.data_type == DataType.DICOM and series.file_link is None and lone.data_type == DataType.DICOM
        item = client.get_storage_item(series.backing_item_uuid)
        assert item.item_type == StorageItemType.DICOM_SERIES
        children = list(item.get_child_items(get_signed_urls=True))
        assert [c.item_type for c in children] == [StorageItemType.DICOM_FILE] * 2
        assert [c._orm_item.dicom_instance_uid for c in children] == ["1.2.3.1", "1.2.3.2"]
        assert _get(children[1].get_signed_url()).content == (tmp_path / "s2.dcm").read_bytes()


def test_signed_url_expiry_with_injected_clock(tmp_path: Path) -> None:
    now = [1_000_000.0]
    src = tmp_path / "x.txt"
    src.write_bytes(b"abc")
    emulator = Emulator(tmp_path / "data", url_ttl_s=5, clock=lambda: now[0])
    emulator.store.ingest(DatasetSpec("d", [FileSpec("x.txt", src, MediaInfo("PLAIN_TEXT", "text/plain"))]))
    with emulator:
        (key,) = [p.name for p in (tmp_path / "data" / "blobs").iterdir()]
        url = emulator.sign_blob(key)
        assert _get(url).content == b"abc"
        now[0] += 6
        r = _get(url)
        assert r.status_code == 403 and b"expired" in r.content


def test_signed_url_expires_in_real_time(tmp_path: Path) -> None:
    src = tmp_path / "x.txt"
    src.write_bytes(b"abc")
    emulator = Emulator(tmp_path / "data", url_ttl_s=1)
    emulator.store.ingest(DatasetSpec("d", [FileSpec("x.txt", src, MediaInfo("PLAIN_TEXT", "text/plain"))]))
    with emulator:
        (key,) = [p.name for p in (tmp_path / "data" / "blobs").iterdir()]
        url = emulator.sign_blob(key)
        assert _get(url).status_code == 200
        time.sleep(2.1)
        assert _get(url).status_code == 403


# ---------------------------------------------------------------------------------- CLI and restarts


def test_restart_keeps_writes_and_does_not_reimport(tree: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    with RunningEmulator(["--import", str(tree)], data_dir=data_dir) as first:
        client = first.client()
        row = _rows(_alpha(client))["a.png"]
        client.get_storage_item(row.backing_item_uuid).update(client_metadata={"kept": True})
        key_file = first.key_file
    assert first.returncode == 0
    with RunningEmulator(["--import", str(tree), "--import", str(tree)], data_dir=data_dir) as second:
        assert second.key_file == key_file
        client = second.client()
        assert len(client.get_datasets()) == 3
        rows = _rows(_alpha(client, metadata=True))
        assert rows["a.png"].client_metadata == {"kept": True} and len(rows) == 5


def _run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "encordfs.emulator", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("case", ["missing-import", "bad-key", "port-in-use"])
def test_cli_bad_input_exits_2_without_traceback(case: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = {
            "missing-import": ["--import", str(tmp_path / "nope")],
            "bad-key": ["--authorized-key", str(tmp_path / "no-such-key")],
            "port-in-use": ["--port", str(busy.getsockname()[1])],
        }[case]
        result = _run_cli("--data-dir", str(tmp_path / "d"), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_cli_ready_lines_and_sigterm(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "encordfs.emulator", "--data-dir", str(tmp_path / "d")]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            first, second = proc.stdout.readline().strip(), proc.stdout.readline().strip()
            assert first == f"ssh_key_file={tmp_path / 'd' / 'demo_ed25519'}"
            assert second.startswith("domain=http://127.0.0.1:")
            assert (tmp_path / "d" / "demo_ed25519").stat().st_mode & 0o777 == 0o600
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert proc.stdout.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()
