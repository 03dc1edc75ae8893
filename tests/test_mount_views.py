"""Views by metadata key through a real mount: ``ls``, ``find``, ``setfattr`` and ``mv`` on
``DATASET/@KEY/VALUE`` (the core's own tests are ``tests/test_views.py``)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.emulator import RunningEmulator
from harness.mount import MountedFS, temporary_mount
from harness.trees import LABELS, Labelled


@pytest.fixture(scope="module")
def own_emulator(labelled_tree: Labelled) -> Iterator[RunningEmulator]:
    """This module changes metadata: its own emulator, not the session's shared one."""
    with RunningEmulator(["--import", str(labelled_tree.root)]) as emu:
        yield emu


@pytest.fixture(scope="module")
def mounted(own_emulator: RunningEmulator) -> Iterator[MountedFS]:
    with temporary_mount(own_emulator.domain, own_emulator.key_file) as m:
        yield m


def _run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)


def _pending_ops(m: MountedFS) -> int:
    return int(json.loads((m.path / ".encordfs" / "status.json").read_text())["writes"]["pending_ops"])


def _flush(m: MountedFS) -> None:
    done = _run(sys.executable, "-m", "encordfs", "flush", m.path, "--timeout", "30")
    assert done.returncode == 0, done.stderr


def test_views_are_folders_that_tools_do_not_walk_into(mounted: MountedFS, labelled_tree: Labelled) -> None:
    ds = mounted.path / "pets"
    assert not [n for n in os.listdir(ds) if n.startswith("@")]
    found = _run("find", ds).stdout.splitlines()
    assert found and not [p for p in found if "/@" in p]
    assert sorted(os.listdir(ds / "@label")) == list(LABELS)
    for label in LABELS:
        assert sorted(os.listdir(ds / "@label" / label)) == labelled_tree.rows_with("label", label)
    listed = _run("ls", "-l", ds / "@label" / "cat")
    assert listed.returncode == 0 and "cat_00.png" in listed.stdout and "burst" in listed.stdout
    assert sorted(os.listdir(ds / "@label" / "cat" / "burst")) == ["frame1.png", "frame2.png", "frame3.png"]
    assert sorted(os.listdir(ds / "@split")) == ["train", "val"]
    assert sorted(os.listdir(ds / "@camera.id")) == ["cam-0", "cam-1"]
    assert os.listdir(ds / "@no-such-key") == []
    assert "unlabelled_0.png" not in _run("find", ds / "@label").stdout
    # one row, two paths: the same inode, bytes and xattrs
    direct, viewed = ds / "dog_02.png", ds / "@label" / "dog" / "dog_02.png"
    assert os.stat(direct).st_ino == os.stat(viewed).st_ino
    assert direct.read_bytes() == viewed.read_bytes()
    assert sorted(os.listxattr(viewed)) == sorted(os.listxattr(direct))
    assert os.getxattr(viewed, "user.encord.meta.label") == b'"dog"'
    du_all = int(_run("du", "-s", "--apparent-size", "-B1", ds).stdout.split()[0])
    du_view = int(_run("du", "-s", "--apparent-size", "-B1", ds / "@label").stdout.split()[0])
    assert du_view < du_all  # the dataset's du counts each row once, views not included


def test_setfattr_moves_a_row_and_mv_sets_the_key(mounted: MountedFS, own_emulator: RunningEmulator) -> None:
    ds = mounted.path / "pets"
    row = ds / "cat_01.png"
    done = _run("setfattr", "-n", "user.encord.meta.label", "-v", '"\\"dog\\""', row)
    assert done.returncode == 0, done.stderr
    assert "cat_01.png" in os.listdir(ds / "@label" / "dog")
    assert "cat_01.png" not in os.listdir(ds / "@label" / "cat")
    assert (ds / "@label" / "dog" / "cat_01.png").exists()

    done = _run("mv", ds / "@label" / "dog" / "cat_01.png", ds / "@label" / "bird")
    assert done.returncode == 0, done.stderr
    assert os.getxattr(row, "user.encord.meta.label") == b'"bird"'
    assert "cat_01.png" in os.listdir(ds / "@label" / "bird")
    # a value nobody has yet, and a new name in the same move
    done = _run("mv", ds / "@label" / "bird" / "cat_01.png", ds / "@label" / "fox" / "fox_01.png")
    assert done.returncode == 0, done.stderr
    assert os.listdir(ds / "@label" / "fox") == ["fox_01.png"]
    assert os.getxattr(ds / "fox_01.png", "user.encord.meta.label") == b'"fox"'
    _flush(mounted)
    rows = {r.title: r for r in _dataset_rows(own_emulator, "pets")}
    assert rows["fox_01.png"].client_metadata["label"] == "fox"
    assert rows["fox_01.png"].client_metadata["camera"] == {"id": "cam-1"}  # other keys untouched


def test_refused_moves_say_why_and_queue_nothing(mounted: MountedFS) -> None:
    ds = mounted.path / "pets"
    _flush(mounted)
    assert _pending_ops(mounted) == 0
    with pytest.raises(OSError) as e:
        os.rename(ds / "@label" / "dog" / "dog_03.png", ds / "@label" / '{"not json' / "dog_03.png")
    assert e.value.errno == errno.EINVAL
    # (GNU mv reports EINVAL from rename(2) as "cannot move ... to a subdirectory of itself")
    done = _run("mv", ds / "@label" / "dog" / "dog_03.png", ds / "@label" / "[1,")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    done = _run("mv", ds / "@label" / "dog" / "dog_03.png", ds / "@split" / "val")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    done = _run("mv", ds / "@label" / "dog" / "dog_03.png", ds)
    assert done.returncode != 0
    time.sleep(0.3)
    assert _pending_ops(mounted) == 0
    assert os.getxattr(ds / "dog_03.png", "user.encord.meta.label") == b'"dog"'
    assert "dog_03.png" in os.listdir(ds / "@label" / "dog")


def _dataset_rows(emu: RunningEmulator, title: str) -> list:  # type: ignore[type-arg]
    from encord.orm.dataset import DatasetAccessSettings

    client = emu.client()
    uid = next(str(d["dataset"].dataset_hash) for d in client.get_datasets() if d["dataset"].title == title)
    settings = DatasetAccessSettings(fetch_client_metadata=True)
    return list(client.get_dataset(uid, dataset_access_settings=settings).data_rows)
