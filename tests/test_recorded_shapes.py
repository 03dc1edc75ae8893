"""``encordfs emulator --shape recorded``: the payload forms recorded from the real service
(docs/RECORDED-SHAPES.md), checked with the real SDK, and what a mount makes of them when things fail.

One emulator subprocess serves an import tree built here in the recorded shape; contract tests talk to
it with the unmodified SDK and raw HTTP, mount tests through a real mount. Fault rules with a ``uid``
refuse one row or item while its neighbours are served.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from encord import EncordUserClient
from encord.exceptions import AuthorisationError, SshKeyNotFound
from encord.orm.dataset import DatasetAccessSettings, ImagesDataFetchOptions
from encord.orm.storage import StorageItemType
from PIL import Image

from encordfs import errors
from encordfs.backend.sdk import SdkBackend, load_key
from encordfs.emulator import media
from encordfs.emulator.sample import write_dicom_slice
from harness.emulator import RunningEmulator, load_private_key, make_keypair, sign_legacy, sign_v2
from harness.mount import MountedFS, temporary_mount

LEGACY_FORM = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
HTTP_FORM = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d UTC")
NAIVE_ISO_FORM = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?")


def _image(path: Path, size: tuple[int, int], color: tuple[int, int, int], fmt: str = "PNG") -> None:
    img = Image.new("RGB", size, color)
    img.putpixel((1, 1), (255 - color[0], 7, 9))
    img.save(path, format=fmt)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recorded-tree")
    ds = root / "shots"  # rows in this order (rows.id 1..14): the 3rd, 6th, 9th, 12th lose their storage item
    ds.mkdir()
    _image(ds / "a.png", (8, 8), (1, 2, 3))
    for i in range(9):
        fmt, ext = ("JPEG", "jpg") if i % 2 == 0 else ("PNG", "png")
        _image(ds / f"p{i}.{ext}", (20 + i, 10 + i), (i * 20, 40, 90), fmt)
    for name in ("burst", "burst2"):
        (ds / name).mkdir()
        for i in range(3):
            _image(ds / name / f"f{i}.jpg", (16, 12), (10, i * 60, 30), "JPEG")
    (ds / "timelapse").mkdir()
    (ds / "timelapse" / ".image-sequence").write_text("")
    for i in range(4):
        _image(ds / "timelapse" / f"{i:03d}.png", (24, 18), (i * 50, 100, 0))
    (ds / "zct").mkdir()
    rng = np.random.default_rng(7)
    for i in range(3):
        write_dicom_slice(
            ds / "zct" / f"slice_{i}.dcm",
            rng.integers(0, 1000, size=(8, 8), dtype=np.uint16),
            study_uid="1.2.3",
            series_uid="1.2.3.4",
            sop_instance_uid=f"1.2.3.4.{i + 1}",
            instance_number=i + 1,
        )
    return root


@pytest.fixture(scope="module")
def emu(tree: Path) -> Iterator[RunningEmulator]:
    with RunningEmulator(["--import", str(tree), "--shape", "recorded"]) as running:
        yield running


@pytest.fixture
def client(emu: RunningEmulator) -> EncordUserClient:
    emu.reset(data=True)
    return emu.client()


def _dataset(client: EncordUserClient) -> Any:
    (entry,) = client.get_datasets()
    settings = DatasetAccessSettings(fetch_client_metadata=True)
    return client.get_dataset(entry["dataset"].dataset_hash, dataset_access_settings=settings)


def _rows(client: EncordUserClient) -> dict[str, Any]:
    return {r.title: r for r in _dataset(client).data_rows}


def _get(url: str) -> bytes:
    return httpx.get(url, trust_env=False, timeout=30).raise_for_status().content


def _raw_rows(emu: RunningEmulator, dataset_hash: str) -> list[dict[str, Any]]:
    """The get_dataset reply as the wire has it (the SDK reformats dates and keeps floats as they are)."""
    assert emu.key_file is not None

    body = json.dumps(
        {
            "query_type": "dataset",
            "query_method": "GET",
            "values": {"uid": None, "payload": {"dataset_access_settings": {"fetch_client_metadata": False}}},
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "ResourceType": "dataset",
        "ResourceID": dataset_hash,
        **sign_legacy(body, load_private_key(emu.key_file)),
    }
    reply = httpx.post(f"{emu.domain}/public", content=body, headers=headers, trust_env=False, timeout=30)
    rows: list[dict[str, Any]] = reply.json()["response"]["data_rows"]
    return rows


# ---------------------------------------------------------------------------------- contract, real SDK


def test_every_third_row_has_no_storage_item(client: EncordUserClient, emu: RunningEmulator, tree: Path) -> None:
    rows = _rows(client)
    legacy = {t: r for t, r in rows.items() if r.get("backing_item_uuid") is None}
    assert set(legacy) == {"burst2", "p2.jpg", "p5.png", "p8.jpg"}  # the 12th row is a sequence: it keeps its item
    for title, row in legacy.items():
        with pytest.raises(NotImplementedError, match="Storage API"):
            _ = row.backing_item_uuid  # the SDK's explicit branch for such rows
        if row.data_type.to_upper_case_string() == "IMG_GROUP":
            row.refetch_data(images_data_fetch_options=ImagesDataFetchOptions(fetch_signed_urls=True))
            assert row.is_image_sequence is None and row.file_size == float(row.images_data[0].file_size)
            for image in row.images_data:
                assert _get(image.signed_url) == (tree / "shots" / title / image.title).read_bytes()
                with pytest.raises(AuthorisationError):  # not a storage item either
                    client.get_storage_item(image.image_hash)
        else:
            row.refetch_data(signed_url=True)
            assert _get(row.signed_url) == (tree / "shots" / title).read_bytes()
    folder = client.get_storage_folder(_dataset(client).backing_folder_uuid)
    assert {i.name for i in folder.list_items()} == set(rows) - set(legacy)


def test_forms_sizes_mime_and_dates(client: EncordUserClient, emu: RunningEmulator) -> None:
    ds = _dataset(client)
    raw = {r["data_title"]: r for r in _raw_rows(emu, ds.dataset_hash)}
    forms = set()
    for title, row in raw.items():
        if row["file_size"] is not None:
            assert isinstance(row["file_size"], float) and row["file_size"].is_integer()
        if title.endswith(".jpg"):
            assert row["file_type"] == "image/jpg"
        for pattern in (LEGACY_FORM, HTTP_FORM, NAIVE_ISO_FORM):
            if pattern.fullmatch(row["created_at"]):
                forms.add(pattern.pattern)
    assert len(forms) == 3  # all three forms occur
    one = str(next(r for r in ds.data_rows if r.get("backing_item_uuid"))["backing_item_uuid"])
    target = f"/v2/public/storage/items/{one}"
    assert emu.key_file is not None
    headers = sign_v2("GET", target, b"", load_private_key(emu.key_file))
    item_json = httpx.get(emu.domain + target, headers=headers, trust_env=False).raise_for_status().json()
    assert NAIVE_ISO_FORM.fullmatch(item_json["createdAt"])  # v2: ISO 8601 without a zone
    by_title = {r.title: r for r in ds.data_rows}
    backed = {t: r for t, r in by_title.items() if r.get("backing_item_uuid")}
    items = {str(i.uuid): i for i in client.get_storage_items([str(r["backing_item_uuid"]) for r in backed.values()])}
    for title, row in backed.items():
        item = items[str(row["backing_item_uuid"])]
        assert row.created_at == item.created_at.replace(microsecond=0)  # one instant, whatever the form
        if title.endswith(".jpg"):
            assert item.mime_type == "image/jpg"


def test_image_sequence_is_one_mp4_with_frames_only_in_images_data(client: EncordUserClient, tree: Path) -> None:
    seq = _rows(client)["timelapse"]
    assert seq.is_image_sequence is True and (seq.width, seq.height) == (24, 18)
    item = client.get_storage_item(seq.backing_item_uuid, sign_url=True)
    assert item.item_type == StorageItemType.IMAGE_SEQUENCE and item.mime_type == "video/mp4"
    video = _get(item.get_signed_url())
    assert len(video) == item.file_size and video[4:8] == b"ftyp"
    probe = tree.parent / "probe.mp4"
    probe.write_bytes(video)
    info = media.probe(probe)
    assert info is not None and (info.width, info.height, info.frame_count) == (24, 18, 4)
    assert (item.width, item.height) == (24, 18) and item.fps == info.fps
    assert list(item.get_child_items(get_signed_urls=True)) == []
    seq.refetch_data(images_data_fetch_options=ImagesDataFetchOptions(fetch_signed_urls=True))
    assert [i.title for i in seq.images_data] == ["000.png", "001.png", "002.png", "003.png"]
    for image in seq.images_data:
        assert _get(image.signed_url) == (tree / "shots" / "timelapse" / image.title).read_bytes()
        assert HTTP_FORM.fullmatch(image.created_at.strftime("%a, %d %b %Y %H:%M:%S UTC"))
    with pytest.raises(AuthorisationError):
        client.get_storage_items([seq.images_data[0].image_hash])


def test_dicom_slices_are_titled_without_extension(client: EncordUserClient) -> None:
    ct = _rows(client)["zct"]
    slices = list(client.get_storage_item(ct.backing_item_uuid).get_child_items())
    assert [s.name for s in slices] == ["slice_0", "slice_1", "slice_2"]
    assert all(s.mime_type == "application/dicom" for s in slices)


def test_legacy_errors_are_http_400_envelopes(emu: RunningEmulator, tmp_path: Path) -> None:
    stranger = make_keypair(tmp_path)

    body = b'{"query_type": "dataset", "query_method": "GET", "values": {"uid": null, "payload": {}}}'
    reply = httpx.post(
        f"{emu.domain}/public",
        content=body,
        headers={"Content-Type": "application/json", **sign_legacy(body, load_private_key(stranger))},
        trust_env=False,
    )
    assert reply.status_code == 400
    envelope = reply.json()
    assert envelope["status"] == 400 and envelope["response"] == ["SSH_KEY_NOT_FOUND_ERROR"] and envelope["payload"]
    datasets = emu.client().get_datasets()
    stranger_client = EncordUserClient.create_with_ssh_private_key(
        ssh_private_key_path=str(stranger), domain=emu.domain
    )
    with pytest.raises(SshKeyNotFound):
        stranger_client.get_dataset(datasets[0]["dataset"].dataset_hash)
    # Through the backend: the same one-line message as every refused key, by exception type.
    backend = SdkBackend(emu.domain, load_key(stranger))
    with pytest.raises(errors.AuthError, match="refused the key"):
        list(backend.iter_rows(str(datasets[0]["dataset"].dataset_hash)))


def test_a_fault_can_refuse_one_row(client: EncordUserClient, emu: RunningEmulator) -> None:
    rows = [r for r in _rows(client).values() if r.get("backing_item_uuid") is None and r.file_type]
    refused, other = rows[0], rows[1]
    emu.add_faults([{"endpoint": "legacy.datarow.get", "uid": refused.uid, "status": 403}])
    with pytest.raises(AuthorisationError):
        refused.refetch_data(signed_url=True)
    other.refetch_data(signed_url=True)
    assert other.signed_url


# ---------------------------------------------------------------------------------- through a mount


@pytest.fixture
def mounted(emu: RunningEmulator) -> Iterator[MountedFS]:
    emu.reset(data=True)
    with temporary_mount(emu.domain, emu.key_file, "--read-only") as mnt:
        yield mnt


def _x(path: Path, name: str) -> str:
    return os.getxattr(path, "user.encord." + name).decode()


def test_legacy_rows_read_and_one_refusal_is_eio_for_that_file_only(
    emu: RunningEmulator, mounted: MountedFS, tree: Path
) -> None:
    folder = mounted.path / "shots"
    legacy = sorted(p for p in folder.iterdir() if p.is_file() and _x(p, "backing_item_uuid") == "null")
    assert len(legacy) >= 2
    refused, *others = legacy
    emu.add_faults([{"endpoint": "legacy.datarow.get", "uid": _x(refused, "uid"), "status": 403}])
    with pytest.raises(OSError) as err:
        refused.read_bytes()
    assert err.value.errno == errno.EIO
    for path in others:
        assert path.read_bytes() == (tree / "shots" / path.name).read_bytes()
    status = json.loads((mounted.path / ".encordfs" / "status.json").read_text())
    reasons = status["sign_refusals"]
    (handle,) = reasons
    assert _x(refused, "uid") in handle and "not authorised" in reasons[handle]
    assert "http" not in json.dumps(reasons) and "Signature" not in mounted.log()
    assert status["counters"]["urls.legacy_signs"] >= len(legacy)
    emu.clear_faults()
    assert refused.read_bytes() == (tree / "shots" / refused.name).read_bytes()  # not cached as failed
    assert json.loads((mounted.path / ".encordfs" / "status.json").read_text())["sign_refusals"] == {}


def test_group_members_and_sequence_video_through_the_mount(mounted: MountedFS, tree: Path) -> None:
    folder = mounted.path / "shots"
    for name in ("burst", "burst2"):
        assert sorted(os.listdir(folder / name)) == ["f0.jpg", "f1.jpg", "f2.jpg"]
        for member in (folder / name).iterdir():
            assert member.read_bytes() == (tree / "shots" / name / member.name).read_bytes()
    assert {_x(folder / n, "backing_item_uuid") == "null" for n in ("burst", "burst2")} == {True, False}
    seq = folder / "timelapse"
    assert sorted(os.listdir(seq)) == ["000.png", "001.png", "002.png", "003.png", "timelapse.mp4"]
    video = seq / "timelapse.mp4"
    assert video.read_bytes()[4:8] == b"ftyp" and video.stat().st_size == int(_x(video, "file_size"))
    assert (_x(video, "width"), _x(video, "height"), _x(video, "frames_per_second")) == ("24", "18", "25.0")
    assert sorted(os.listdir(folder / "zct")) == ["slice_0.dcm", "slice_1.dcm", "slice_2.dcm"]
    assert (folder / "zct" / "slice_1.dcm").read_bytes() == (tree / "shots" / "zct" / "slice_1.dcm").read_bytes()
    created = datetime.fromisoformat(_x(folder / "p1.png", "created_at"))
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_sequence_with_neither_video_nor_frames_is_an_empty_folder_with_the_reason(
    emu: RunningEmulator, mounted: MountedFS
) -> None:
    client = emu.client()
    seq = _rows(client)["timelapse"]
    emu.add_faults(
        [
            {"endpoint": "v2.items.get_bulk", "uid": str(seq.backing_item_uuid), "status": 403},
            {"endpoint": "legacy.datarow.get", "uid": seq.uid, "status": 403},
        ]
    )
    folder = mounted.path / "shots"
    assert os.listdir(folder / "timelapse") == []
    reason = _x(folder / "timelapse", "error")
    assert "not authorised" in reason
    assert "user.encord.error" in os.listxattr(folder / "timelapse")
    assert sorted(os.listdir(folder / "burst")) == ["f0.jpg", "f1.jpg", "f2.jpg"]  # its neighbours list
    with pytest.raises(OSError) as err:
        os.getxattr(folder / "burst", "user.encord.error")
    assert err.value.errno == errno.ENODATA


def test_metadata_of_a_row_without_storage_item_lands_through_datarow_save(emu: RunningEmulator) -> None:
    emu.reset(data=True)
    with temporary_mount(emu.domain, emu.key_file) as mnt:
        path = next(p for p in sorted((mnt.path / "shots").iterdir()) if _x(p, "backing_item_uuid") == "null")
        os.setxattr(path, "user.encord.meta.reviewed", b"true")
        done = subprocess.run(
            [sys.executable, "-m", "encordfs", "flush", str(mnt.path), "--timeout", "60"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        uid = _x(path, "uid")
    row = next(r for r in _dataset(emu.client()).data_rows if r.uid == uid)
    assert row.client_metadata == {"reviewed": True}
    assert emu.stats()["legacy.datarow.post"] >= 1
