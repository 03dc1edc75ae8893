"""``encord://`` with the loaders people already use: fsspec's ``glob``/``find``/``walk`` over views,
``pandas.read_csv`` of a text row, and Hugging Face ``datasets.load_dataset("imagefolder")`` over
``encord://DATASET/@label/**`` (the real packages: the extra ``encordfs[hf]``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from encordfs.fsspec_impl import EncordFileSystem
from harness.emulator import RunningEmulator, storage_options
from harness.trees import CSV_TEXT, LABELS, Labelled


@pytest.fixture(scope="module")
def options(labelled_emulator: RunningEmulator) -> Iterator[dict[str, Any]]:
    with storage_options(labelled_emulator, "hf-test-cache-") as found:
        yield found


def test_fsspec_walks_views(efs: EncordFileSystem, labelled_tree: Labelled) -> None:
    assert not [n for n in efs.ls("pets", detail=False) if "/@" in n]
    assert sorted(efs.ls("pets/@label", detail=False)) == [f"pets/@label/{label}" for label in LABELS]
    info = efs.info("pets/@label/cat")
    assert info["type"] == "directory" and info["name"] == "pets/@label/cat"
    images = sorted(efs.glob("pets/@label/*/*.png"))
    assert images == sorted(
        f"pets/@label/{label}/{name}" for name, label in labelled_tree.images.items() if "/" not in name
    )
    found = efs.find("pets/@label")
    assert sorted(found) == sorted(f"pets/@label/{label}/{name}" for name, label in labelled_tree.images.items())
    walked = {d: sorted(files) for d, _, files in efs.walk("pets/@label")}
    assert walked["pets/@label/cat/burst"] == ["frame1.png", "frame2.png", "frame3.png"]
    assert efs.cat_file("pets/@label/dog/dog_01.png") == efs.cat_file("pets/dog_01.png")
    assert efs.info("pets/@label/dog/dog_01.png")["client_metadata"]["label"] == "dog"
    assert efs.ls("pets/@nobody-has-it") == []
    assert not [p for p in efs.find("pets") if "@" in p]  # find of a dataset sees each row once


def test_pandas_reads_a_text_row(options: dict[str, Any]) -> None:
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv("encord://pets/table.txt", storage_options=options)
    assert list(frame.columns) == ["name", "label", "score"]
    assert frame["label"].tolist() == [line.split(",")[1] for line in CSV_TEXT.splitlines()[1:]]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_hugging_face_imagefolder_over_a_view(
    options: dict[str, Any], labelled_tree: Labelled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (not HF_HUB_OFFLINE: datasets then refuses every remote URL, encord:// included)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets")
    # datasets takes a remote folder as a pattern (its ``data_dir`` is a local path). Its labels are the
    # folders files are in, so the pattern keeps to the files directly in value folders (a group's
    # images, one folder deeper, would be labelled by the group's name).
    loaded = datasets.load_dataset(
        "imagefolder", data_files="encord://pets/@label/*/*", storage_options=options, cache_dir=str(tmp_path / "c")
    )
    train = loaded["train"]
    names = train.features["label"].names
    assert names == list(LABELS)
    expected = sorted((label, (24, 16)) for name, label in labelled_tree.images.items() if "/" not in name)
    assert sorted((names[row["label"]], row["image"].size) for row in train) == expected
