"""A real mount of the sample workspace, checked against the real SDK's view of the emulator.

Every file's sha256 is compared with the bytes the emulator serves for its storage item (signed
through the SDK, downloaded separately), and every xattr with the SDK's DataRow / ImageData.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import pytest
from encord.orm.dataset import DatasetAccessSettings, ImagesDataFetchOptions

from harness.emulator import RunningEmulator
from harness.mount import MountedFS


def _x(path: Path, name: str) -> str:
    return os.getxattr(path, "user.encord." + name).decode()


def _iso(dt: Any) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat()


def _json_or_none(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.fixture(scope="module")
def sdk_view(sample_emulator: RunningEmulator) -> dict[str, Any]:
    client = sample_emulator.client()
    view: dict[str, Any] = {}
    for entry in client.get_datasets():
        ds = client.get_dataset(
            entry["dataset"].dataset_hash, dataset_access_settings=DatasetAccessSettings(fetch_client_metadata=True)
        )
        view[ds.title] = {"hash": ds.dataset_hash, "rows": {r.uid: r for r in ds.data_rows}, "dataset": ds}
    return view


def test_tree_matches_sdk(sample_mount: MountedFS, sdk_view: dict[str, Any]) -> None:
    mnt = sample_mount.path
    assert sorted(os.listdir(mnt)) == sorted(sdk_view)
    for title, ds in sdk_view.items():
        entries = list((mnt / title).iterdir())
        assert len(entries) == len(ds["rows"])
        uids = {_x(p, "uid") for p in entries}
        assert uids == set(ds["rows"])
        assert _x(mnt / title, "dataset_hash") == ds["hash"]


def test_every_file_matches_stored_bytes(sample_mount: MountedFS, sample_emulator: RunningEmulator) -> None:
    files = [p for p in sample_mount.path.rglob("*") if p.is_file()]
    assert len(files) >= 150
    item_of = {
        p: _x(p, "image_hash") if p.parent.parent != sample_mount.path else _x(p, "backing_item_uuid") for p in files
    }
    client = sample_emulator.client()
    items = client.get_storage_items(list(set(item_of.values())), sign_url=True)
    urls = {str(i.uuid): i._orm_item.signed_url for i in items}
    with httpx.Client() as http:
        for path, item in item_of.items():
            expected = http.get(urls[item]).raise_for_status().content
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == hashlib.sha256(expected).hexdigest(), path
            assert path.stat().st_size == len(expected)


def test_row_xattrs_match_sdk(sample_mount: MountedFS, sdk_view: dict[str, Any]) -> None:
    mnt = sample_mount.path
    checked = 0
    for title, ds in sdk_view.items():
        for path in (mnt / title).iterdir():
            row = ds["rows"][_x(path, "uid")]
            assert _x(path, "title") == row.title
            assert _x(path, "data_type") == row.data_type.to_upper_case_string()
            assert _x(path, "created_at") == _iso(row.created_at)
            assert _x(path, "last_edited_at") == _iso(row.last_edited_at)
            assert _x(path, "width") == _json_or_none(row.width)
            assert _x(path, "height") == _json_or_none(row.height)
            assert _x(path, "file_size") == _json_or_none(row.file_size)
            assert _x(path, "file_type") == (row.file_type if row.file_type is not None else "null")
            assert _x(path, "file_link") == (row.file_link if row.file_link is not None else "null")
            assert _x(path, "frames_per_second") == _json_or_none(row.frames_per_second)
            assert _x(path, "duration") == _json_or_none(row.duration)
            assert _x(path, "backing_item_uuid") == str(row.backing_item_uuid)
            assert _x(path, "is_image_sequence") == _json_or_none(row.is_image_sequence)
            assert _x(path, "storage_location") == row.storage_location.name
            metadata = dict(row.client_metadata or {})
            assert json.loads(_x(path, "client_metadata")) == metadata
            for key, value in metadata.items():
                assert json.loads(_x(path, "meta." + key)) == value
            names = os.listxattr(path)
            assert {"user.encord.uid", "user.encord.title", "user.encord.client_metadata"} <= set(names)
            if path.is_file():
                assert path.stat().st_size == row.file_size
            checked += 1
    assert checked >= 100


def test_group_members_match_images_data(sample_mount: MountedFS, sdk_view: dict[str, Any]) -> None:
    groups = 0
    for title, ds in sdk_view.items():
        for row in ds["rows"].values():
            if row.data_type.to_upper_case_string() != "IMG_GROUP":
                continue
            row.refetch_data(images_data_fetch_options=ImagesDataFetchOptions(fetch_signed_urls=False))
            folder = next(p for p in (sample_mount.path / title).iterdir() if _x(p, "uid") == row.uid)
            members = sorted(folder.iterdir(), key=lambda p: int(_x(p, "index")))
            assert [_x(p, "image_hash") for p in members] == [str(i.image_hash) for i in row.images_data]
            for path, image in zip(members, row.images_data):
                assert _x(path, "title") == image.title
                assert _x(path, "file_type") == image.file_type
                assert int(_x(path, "file_size")) == image.file_size == path.stat().st_size
                assert int(_x(path, "width")) == image.width
                assert int(_x(path, "height")) == image.height
            groups += 1
    assert groups >= 2


def test_dicom_series_is_a_folder_of_slices(sample_mount: MountedFS) -> None:
    series = [p for p in (sample_mount.path / "medical").iterdir() if p.is_dir()]
    assert series
    for folder in series:
        assert _x(folder, "data_type") == "DICOM"
        slices = list(folder.iterdir())
        assert slices and all(p.suffix == ".dcm" for p in slices)
        assert all(p.read_bytes()[128:132] == b"DICM" for p in slices)


def test_writes_are_refused(sample_mount: MountedFS) -> None:
    folder = sample_mount.path / "street-scenes"
    target = next(p for p in folder.iterdir() if p.is_file())
    before = target.read_bytes()
    for action in (
        lambda: open(target, "r+b"),
        lambda: open(folder / "new.jpg", "wb"),
        lambda: os.mkdir(folder / "newdir"),
        lambda: os.unlink(target),
        lambda: os.rmdir(sample_mount.path / "medical"),
        lambda: os.truncate(target, 0),
        lambda: os.chmod(target, 0o777),
    ):
        with pytest.raises(OSError) as err:
            action()
        assert err.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM), err.value
    assert target.read_bytes() == before


def test_unknown_xattr_and_foreign_namespaces(sample_mount: MountedFS) -> None:
    target = next(p for p in (sample_mount.path / "street-scenes").iterdir() if p.is_file())
    with pytest.raises(OSError) as err:
        os.getxattr(target, "user.encord.no_such_field")
    assert err.value.errno == errno.ENODATA
    with pytest.raises(OSError) as err:
        os.getxattr(target, "security.selinux")
    assert err.value.errno in (errno.ENOTSUP, errno.ENODATA)
