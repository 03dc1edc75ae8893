"""A folder nobody on the team made, imported with --import, mounted: tree, bytes and metadata
match the folder, and a plain SDK client sees the same datasets and rows. Runs once per emulator shape
(default, and ``--shape recorded``: every third row without a storage item, float sizes, ``image/jpg``)."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from harness.emulator import RunningEmulator
from harness.mount import MountedFS, temporary_mount

# Every mount here runs once per FUSE binding (kernel, mfusepy): see conftest ``binding``.
pytestmark = pytest.mark.usefixtures("binding")


def _image(path: Path, rng: random.Random, fmt: str) -> None:
    w, h = rng.randint(8, 300), rng.randint(8, 200)
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(20):
        x, y = rng.randrange(w), rng.randrange(h)
        img.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
    img.save(path, fmt)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    rng = random.Random(20261128)
    root = Path(tempfile.mkdtemp(prefix="encordfs-import-"))
    try:
        holiday = root / "Holiday Photos 2025"
        holiday.mkdir()
        for i in range(12):
            fmt, ext = ("JPEG", "jpg") if i == 0 else rng.choice([("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
            _image(holiday / f"IMG_{1000 + i}.{ext}", rng, fmt)
        (holiday / "IMG_1000.jpg.metadata.json").write_text(json.dumps({"who": ["ana", "bo"], "stars": 5}))
        (holiday / "notes.txt").write_text("packing list\n")
        (holiday / "broken.jpg").write_bytes(b"this is not a jpeg at all")
        burst = holiday / "burst"
        burst.mkdir()
        for i in (1, 2, 10):
            _image(burst / f"b{i}.png", rng, "PNG")
        (holiday / "burst.metadata.json").write_text(json.dumps({"kind": "burst"}))
        other = root / "scans"
        other.mkdir()
        (other / "report.json").write_text(json.dumps({"ok": True}))
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=["default", "recorded"])
def mounted(folder: Path, request: pytest.FixtureRequest) -> Iterator[tuple[RunningEmulator, MountedFS]]:
    with RunningEmulator(["--import", str(folder), "--shape", request.param]) as emu:
        with temporary_mount(emu.domain, emu.key_file) as mnt:
            yield emu, mnt


def test_tree_bytes_and_metadata_match_the_folder(folder: Path, mounted: tuple[RunningEmulator, MountedFS]) -> None:
    emu, mnt = mounted
    assert sorted(os.listdir(mnt.path)) == sorted(p.name for p in folder.iterdir())
    for dataset in folder.iterdir():
        sources = sorted(p for p in dataset.iterdir() if not p.name.endswith(".metadata.json"))
        assert sorted(os.listdir(mnt.path / dataset.name)) == sorted(p.name for p in sources)
        for src in sources:
            shown = mnt.path / dataset.name / src.name
            if src.is_dir():
                assert [
                    p.name for p in sorted(shown.iterdir(), key=lambda p: int(os.getxattr(p, "user.encord.index")))
                ] == ["b1.png", "b2.png", "b10.png"]
                for member in src.iterdir():
                    assert (shown / member.name).read_bytes() == member.read_bytes()
                    assert (shown / member.name).stat().st_size == member.stat().st_size
                assert os.getxattr(shown, "user.encord.data_type") == b"IMG_GROUP"
            else:
                assert shown.read_bytes() == src.read_bytes()
                assert shown.stat().st_size == src.stat().st_size
                assert os.getxattr(shown, "user.encord.file_size") == str(src.stat().st_size).encode()
            sidecar = src.parent / (src.name + ".metadata.json")
            metadata = json.loads(sidecar.read_text()) if sidecar.exists() else {}
            assert json.loads(os.getxattr(shown, "user.encord.client_metadata")) == metadata
    img = mnt.path / "Holiday Photos 2025" / "IMG_1000.jpg"
    with Image.open(img) as shown_img, Image.open(folder / "Holiday Photos 2025" / "IMG_1000.jpg") as src_img:
        assert shown_img.size == src_img.size
        assert os.getxattr(img, "user.encord.width") == str(src_img.size[0]).encode()
    assert os.getxattr(mnt.path / "Holiday Photos 2025" / "broken.jpg", "user.encord.width") == b"null"
    backing = [os.getxattr(p, "user.encord.backing_item_uuid") for p in (mnt.path / "Holiday Photos 2025").iterdir()]
    assert (b"null" in backing) == (emu.shape == "recorded")  # rows without a storage item, read above


def test_sdk_sees_the_same_datasets_and_rows(folder: Path, mounted: tuple[RunningEmulator, MountedFS]) -> None:
    emu, mnt = mounted
    client = emu.client()
    datasets = {d["dataset"].title: d["dataset"].dataset_hash for d in client.get_datasets()}
    assert set(datasets) == {p.name for p in folder.iterdir()}
    for title, dataset_hash in datasets.items():
        rows = client.get_dataset(dataset_hash).data_rows
        assert sorted(r.title for r in rows) == sorted(os.listdir(mnt.path / title))
        assert {r.uid for r in rows} == {
            os.getxattr(p, "user.encord.uid").decode() for p in (mnt.path / title).iterdir()
        }
