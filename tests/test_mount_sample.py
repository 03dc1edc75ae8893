"""A real mount of the sample workspace, checked against the real SDK's view of the emulator, once
per shape (``shape_emulator``: the default shape and ``--shape recorded``).

Every file's sha256 is compared with the bytes the SDK signs for it, downloaded separately: a storage
item's signed URL, or for a row without one (recorded shape) ``DataRow.refetch_data(signed_url=True)``
and a group's ``images_data`` signed URLs. Every xattr is compared with the SDK's DataRow / ImageData;
sizes are integers whatever form the service sent them in.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import pytest
from encord.orm.dataset import DatasetAccessSettings, ImagesDataFetchOptions

from harness.emulator import RunningEmulator
from harness.mount import MountedFS

# Every mount here runs once per FUSE binding (kernel, mfusepy): see conftest ``binding``.
pytestmark = pytest.mark.usefixtures("binding")


def _x(path: Path, name: str) -> str:
    return os.getxattr(path, "user.encord." + name).decode()


def _iso(dt: Any) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat()


def _json_or_none(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_INT = re.compile(r"[0-9]+")


def _backing(row: Any) -> str | None:
    value = row.get("backing_item_uuid")  # the SDK property raises for rows without one
    return str(value) if value else None


@pytest.fixture(scope="module")
def sdk_view(shape_emulator: RunningEmulator) -> dict[str, Any]:
    client = shape_emulator.client()
    view: dict[str, Any] = {}
    for entry in client.get_datasets():
        ds = client.get_dataset(
            entry["dataset"].dataset_hash, dataset_access_settings=DatasetAccessSettings(fetch_client_metadata=True)
        )
        view[ds.title] = {"hash": ds.dataset_hash, "rows": {r.uid: r for r in ds.data_rows}, "dataset": ds}
    return view


def test_tree_matches_sdk(shape_mount: MountedFS, sdk_view: dict[str, Any]) -> None:
    mnt = shape_mount.path
    assert sorted(os.listdir(mnt)) == sorted(sdk_view)
    for title, ds in sdk_view.items():
        entries = list((mnt / title).iterdir())
        assert len(entries) == len(ds["rows"])
        uids = {_x(p, "uid") for p in entries}
        assert uids == set(ds["rows"])
        assert _x(mnt / title, "dataset_hash") == ds["hash"]


def _sdk_urls(client: Any, sdk_view: dict[str, Any]) -> dict[str, str]:
    """Signed URLs as a plain SDK user gets them, by data hash (single-file rows without a storage
    item), image hash / child item uuid (group members) and storage item uuid (items, a sequence's video)."""
    urls: dict[str, str] = {}
    backed: list[str] = []
    for ds in sdk_view.values():
        for row in ds["rows"].values():
            if (item := _backing(row)) is not None:
                backed.append(item)
            elif row.data_type.to_upper_case_string() != "IMG_GROUP":
                row.refetch_data(signed_url=True)
                urls[row.uid] = row.signed_url
    for item in client.get_storage_items(backed, sign_url=True):
        if item._orm_item.signed_url:
            urls[str(item.uuid)] = item._orm_item.signed_url
        for child in item.get_child_items(get_signed_urls=True):
            urls[str(child.uuid)] = child._orm_item.signed_url
    for ds in sdk_view.values():
        for row in ds["rows"].values():
            if row.data_type.to_upper_case_string() == "IMG_GROUP":
                row.refetch_data(images_data_fetch_options=ImagesDataFetchOptions(fetch_signed_urls=True))
                for image in row.images_data or []:
                    urls.setdefault(image.image_hash, image.signed_url)
    return urls


def _source_id(path: Path, mnt: Path) -> str:
    """The id ``_sdk_urls`` knows the file's bytes by, from its xattrs."""
    if path.parent.parent == mnt:  # a single-file row
        backing = _x(path, "backing_item_uuid")
        return _x(path, "uid") if backing == "null" else backing
    if _x(path, "item_type") == "imageSequence":  # a sequence's video
        return _x(path, "backing_item_uuid")
    return _x(path, "image_hash")


def test_every_file_matches_stored_bytes(
    shape_mount: MountedFS, shape_emulator: RunningEmulator, sdk_view: dict[str, Any]
) -> None:
    files = [p for p in shape_mount.path.rglob("*") if p.is_file()]
    assert len(files) >= 150
    urls = _sdk_urls(shape_emulator.client(), sdk_view)
    legacy = 0
    with httpx.Client() as http:
        for path in files:
            source = _source_id(path, shape_mount.path)
            expected = http.get(urls[source]).raise_for_status().content
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == hashlib.sha256(expected).hexdigest(), path
            assert path.stat().st_size == len(expected)
            assert _INT.fullmatch(_x(path, "file_size")), path
            legacy += path.parent.parent == shape_mount.path and _x(path, "backing_item_uuid") == "null"
    if shape_emulator.shape == "recorded":  # every third row: all of them read above
        assert legacy >= 30
        counters = json.loads((shape_mount.path / ".encordfs" / "status.json").read_text())["counters"]
        assert legacy <= counters["urls.legacy_signs"] <= legacy + 5  # one call per legacy row (+ group re-signs)
    else:
        assert legacy == 0


def test_row_xattrs_match_sdk(shape_mount: MountedFS, sdk_view: dict[str, Any]) -> None:
    mnt = shape_mount.path
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
            size = _x(path, "file_size")
            assert size == "null" if row.file_size is None else (_INT.fullmatch(size) and int(size) == row.file_size)
            assert _x(path, "file_type") == (row.file_type if row.file_type is not None else "null")
            assert _x(path, "file_link") == (row.file_link if row.file_link is not None else "null")
            assert _x(path, "frames_per_second") == _json_or_none(row.frames_per_second)
            assert _x(path, "duration") == _json_or_none(row.duration)
            assert _x(path, "backing_item_uuid") == (_backing(row) or "null")
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


def test_group_members_match_images_data(
    shape_mount: MountedFS, shape_emulator: RunningEmulator, sdk_view: dict[str, Any]
) -> None:
    groups = legacy = 0
    for title, ds in sdk_view.items():
        for row in ds["rows"].values():
            if row.data_type.to_upper_case_string() != "IMG_GROUP":
                continue
            row.refetch_data(images_data_fetch_options=ImagesDataFetchOptions(fetch_signed_urls=False))
            folder = next(p for p in (shape_mount.path / title).iterdir() if _x(p, "uid") == row.uid)
            members = sorted(
                (p for p in folder.iterdir() if _x(p, "item_type") != "imageSequence"),
                key=lambda p: int(_x(p, "index")),
            )
            assert row.images_data
            assert [_x(p, "image_hash") for p in members] == [str(i.image_hash) for i in row.images_data]
            for path, image in zip(members, row.images_data):
                assert _x(path, "title") == image.title
                assert _x(path, "file_type") == image.file_type
                assert _INT.fullmatch(_x(path, "file_size"))
                assert int(_x(path, "file_size")) == image.file_size == path.stat().st_size
                assert int(_x(path, "width")) == image.width
                assert int(_x(path, "height")) == image.height
            groups += 1
            legacy += _backing(row) is None
    assert groups >= 2
    assert legacy >= 2 if shape_emulator.shape == "recorded" else legacy == 0


def test_image_sequence_shows_frames_and_its_video(shape_mount: MountedFS, shape_emulator: RunningEmulator) -> None:
    """Frames from child items (default) or images_data (recorded); the MP4 beside them when the service has one."""
    folder = shape_mount.path / "street-scenes" / "traffic-timelapse"
    assert _x(folder, "is_image_sequence") == "true"
    entries = sorted(os.listdir(folder))
    frames = [e for e in entries if not e.endswith(".mp4")]
    assert len(frames) >= 3
    if shape_emulator.shape == "recorded":
        assert "traffic-timelapse.mp4" in entries
        video = folder / "traffic-timelapse.mp4"
        assert _x(video, "item_type") == "imageSequence" and _x(video, "file_type") == "video/mp4"
        assert (_x(video, "width"), _x(video, "height")) == (_x(folder, "width"), _x(folder, "height"))
        assert video.read_bytes()[4:8] == b"ftyp"
        with pytest.raises(OSError) as err:
            os.getxattr(folder, "user.encord.error")
        assert err.value.errno == errno.ENODATA
    else:
        assert not any(e.endswith(".mp4") for e in entries)


def test_dicom_series_is_a_folder_of_slices(shape_mount: MountedFS) -> None:
    series = [p for p in (shape_mount.path / "medical").iterdir() if p.is_dir()]
    assert series
    for folder in series:
        assert _x(folder, "data_type") == "DICOM"
        slices = list(folder.iterdir())
        assert slices and all(p.suffix == ".dcm" for p in slices)
        assert all(p.read_bytes()[128:132] == b"DICM" for p in slices)


def test_writes_are_refused(shape_mount: MountedFS) -> None:
    folder = shape_mount.path / "street-scenes"
    target = next(p for p in folder.iterdir() if p.is_file())
    before = target.read_bytes()
    for action in (
        lambda: open(target, "r+b"),
        lambda: open(folder / "new.jpg", "wb"),
        lambda: os.mkdir(folder / "newdir"),
        lambda: os.unlink(target),
        lambda: os.rmdir(shape_mount.path / "medical"),
        lambda: os.truncate(target, 0),
        lambda: os.chmod(target, 0o777),
    ):
        with pytest.raises(OSError) as err:
            action()
        assert err.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM), err.value
    assert target.read_bytes() == before


def test_unknown_xattr_and_foreign_namespaces(shape_mount: MountedFS) -> None:
    target = next(p for p in (shape_mount.path / "street-scenes").iterdir() if p.is_file())
    with pytest.raises(OSError) as err:
        os.getxattr(target, "user.encord.no_such_field")
    assert err.value.errno == errno.ENODATA
    with pytest.raises(OSError) as err:
        os.getxattr(target, "security.selinux")
    assert err.value.errno in (errno.ENOTSUP, errno.ENODATA)
