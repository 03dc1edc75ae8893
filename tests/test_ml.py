"""PyTorch over the mount: a DataLoader with 4 workers reads every image of the sample, and each
sample equals a local decode of the same bytes fetched separately through ``encord://`` (fsspec),
with labels from client metadata equal to what fsspec's ``info`` reports; and torchvision's
``ImageFolder`` trains on Encord labels through a view (``DATASET/@label``), with no code of ours.

Needs torch and torchvision (the extra ``encordfs[ml]``: ``torch==2.14.1 torchvision==0.29.1``, which
``scripts/setup`` installs): skipped without them.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from encordfs.fsspec_impl import EncordFileSystem
from encordfs.ml import IMAGE_EXTENSIONS, EncordImages, ResizeToTensor, load_rgb
from harness.emulator import RunningEmulator
from harness.mount import MountedFS, temporary_mount
from harness.trees import LABELS, Labelled

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def efs(sample_emulator: RunningEmulator) -> Iterator[EncordFileSystem]:
    cache = Path(tempfile.mkdtemp(prefix="ml-test-cache-"))
    fs = EncordFileSystem(
        domain=sample_emulator.domain, ssh_key_file=str(sample_emulator.key_file), cache_dir=str(cache)
    )
    try:
        yield fs
    finally:
        fs.close()
        shutil.rmtree(cache, ignore_errors=True)


def _label_via_fsspec(efs: EncordFileSystem, name: str, key: str) -> Any:
    """The row's own client metadata, else its group's (members have none of their own)."""
    for candidate in (name, name.rsplit("/", 1)[0]):
        meta = efs.info(candidate).get("client_metadata") or {}
        if key in meta:
            return meta[key]
    return None


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 4 workers on a 2-CPU machine
def test_dataloader_over_the_mount_matches_local_decode(sample_mount: MountedFS, efs: EncordFileSystem) -> None:
    root = sample_mount.path
    transform = ResizeToTensor((48, 40))
    dataset = EncordImages(root, label_key="split", transform=transform)
    expected_names = sorted(n for n in efs.find("") if Path(n).suffix.lower() in IMAGE_EXTENSIONS)
    assert sorted(str(p.relative_to(root)) for p in dataset.paths) == expected_names
    assert len(dataset) >= 120 and dataset.classes == ["test", "train", "val"]

    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=4, shuffle=False)
    images, targets = [], []
    for batch_images, batch_targets in loader:
        assert batch_images.dtype == torch.uint8 and batch_images.shape[1:] == (3, 40, 48)
        images.extend(batch_images)
        targets.extend(batch_targets.tolist())
    assert len(images) == len(dataset)

    for i, path in enumerate(dataset.paths):
        name = str(path.relative_to(root))
        local = transform(load_rgb(io.BytesIO(efs.cat_file(name))))
        assert torch.equal(images[i], local), name
        label = _label_via_fsspec(efs, name, "split")
        assert targets[i] == (dataset.classes.index(label) if label is not None else -1), name
    assert targets.count(-1) < len(targets) // 2  # most sample images are labelled


def test_same_dataset_class_on_a_local_copy(sample_mount: MountedFS, tmp_path: Path) -> None:
    """The class is plain paths: on a local folder (no Encord xattrs) every target is -1."""
    src = sample_mount.path / "street-scenes"
    some = [p for p in sorted(src.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS][:5]
    for p in some:
        shutil.copyfile(p, tmp_path / p.name)
    local = EncordImages(tmp_path, transform=ResizeToTensor())
    mounted = EncordImages(sample_mount.path, transform=ResizeToTensor())
    assert local.targets == [-1] * 5 and local.classes == []
    by_name = {p.relative_to(sample_mount.path): i for i, p in enumerate(mounted.paths)}
    for i, p in enumerate(local.paths):
        assert torch.equal(local[i][0], mounted[by_name[Path("street-scenes") / p.name]][0])
    assert os.listdir(tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's optional image extensions; 2 CPUs
def test_torchvision_imagefolder_trains_on_encord_labels_through_a_view(
    labelled_emulator: RunningEmulator, labelled_tree: Labelled
) -> None:
    torchvision = pytest.importorskip("torchvision")
    with temporary_mount(labelled_emulator.domain, labelled_emulator.key_file) as m:
        root = m.path / "pets" / "@label"
        data = torchvision.datasets.ImageFolder(str(root), transform=torchvision.transforms.ToTensor())
        assert data.classes == list(LABELS)
        got = sorted((str(Path(p).relative_to(root)).split("/", 1)[1], data.classes[t]) for p, t in data.samples)
        assert got == sorted(labelled_tree.images.items())  # group members too, labelled by their group

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 24, len(LABELS)))
        optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
        loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, num_workers=2, persistent_workers=True)
        for _ in range(15):
            for images, targets in loader:
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(images), targets)
                loss.backward()
                optimiser.step()
        with torch.no_grad():
            images, targets = next(iter(torch.utils.data.DataLoader(data, batch_size=len(data))))
            accuracy = (model(images).argmax(1) == targets).float().mean().item()
    assert accuracy == 1.0  # colours per label: a linear model learns them from the mount's files


def _counters(m: MountedFS) -> dict[str, int]:
    import json

    return json.loads((m.path / ".encordfs" / "status.json").read_text())["counters"]  # type: ignore[no-any-return]


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_hinted_sampler_announces_each_epoch_order(sample_mount: MountedFS, tmp_path: Path) -> None:
    from encordfs.ml import HintedSampler, write_hints

    data = EncordImages(sample_mount.path / "street-scenes", transform=ResizeToTensor((16, 16)))
    sampler = data.hinted_sampler(seed=3)
    before = _counters(sample_mount)
    loader = torch.utils.data.DataLoader(data, sampler=sampler, batch_size=8, num_workers=2)
    orders = []
    for _ in range(2):
        seen = sum(len(t) for _, t in loader)
        assert seen == len(data) and sampler.hinted == len(data)
        orders.append(list(HintedSampler(data.paths, seed=3)))  # the same seed: the same orders
    after = _counters(sample_mount)
    assert after["hints.lists"] - before.get("hints.lists", 0) == 2 + 2  # two epochs, two replays
    assert after["hints.lines"] - before.get("hints.lines", 0) == 4 * len(data)
    assert after.get("hints.unknown_paths", 0) == before.get("hints.unknown_paths", 0)
    assert orders[0] != list(range(len(data)))  # shuffled
    # a local folder is not a mount: nothing to hint, nothing fails
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert write_hints([tmp_path / "a.jpg"]) == 0
    wrapped = HintedSampler(data.paths, sampler=range(len(data) - 1, -1, -1))
    assert list(wrapped) == list(range(len(data) - 1, -1, -1)) and len(wrapped) == len(data)
