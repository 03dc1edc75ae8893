"""Metadata writes through a real mount, checked with a plain SDK client as the second party."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from encord.orm.dataset import DatasetAccessSettings

from harness.emulator import RunningEmulator
from harness.mount import MountedFS, encordfs_cli, temporary_mount

# Every mount here runs once per FUSE binding (kernel, mfusepy): see conftest ``binding``.
pytestmark = pytest.mark.usefixtures("binding")

META = "user.encord.meta."
WHOLE = "user.encord.client_metadata"


EMULATOR_ARGS = ["--sample"]  # for conftest's ``emulator``


@pytest.fixture()
def mnt(emulator: RunningEmulator) -> Iterator[MountedFS]:
    emulator.reset(data=True)
    with temporary_mount(emulator.domain, emulator.key_file, "--max-metadata-bytes", "1000000") as mounted:
        yield mounted


def _server_rows(emu: RunningEmulator, dataset_title: str) -> dict[str, Any]:
    client = emu.client()
    dataset_hash = next(d["dataset"].dataset_hash for d in client.get_datasets() if d["dataset"].title == dataset_title)
    ds = client.get_dataset(dataset_hash, dataset_access_settings=DatasetAccessSettings(fetch_client_metadata=True))
    return {r.uid: r for r in ds.data_rows}


def _uid(path: Path) -> str:
    return os.getxattr(path, "user.encord.uid").decode()


def _status(m: MountedFS) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((m.path / ".encordfs" / "status.json").read_text())
    return status


def _files(m: MountedFS, dataset: str = "street-scenes") -> list[Path]:
    return sorted(p for p in (m.path / dataset).iterdir() if p.is_file())


def test_setfattr_getfattr_remove_and_mv_round_trip(mnt: MountedFS, emulator: RunningEmulator) -> None:
    a, b, c = _files(mnt)[:3]
    os.setxattr(a, META + "split", b'"val"')
    os.setxattr(b, WHOLE, b'{"fresh": true, "n": 1}')
    before = json.loads(os.getxattr(c, WHOLE))
    removed_key = next(iter(before))
    os.removexattr(c, META + removed_key)
    # Read-your-writes: visible at once, before any push.
    assert os.getxattr(a, META + "split") == b'"val"'
    assert json.loads(os.getxattr(b, WHOLE)) == {"fresh": True, "n": 1}
    assert removed_key not in json.loads(os.getxattr(c, WHOLE))
    assert META + removed_key not in os.listxattr(c)
    uid_a = _uid(a)
    new_name = "renamed-" + a.name
    os.rename(a, a.parent / new_name)
    assert new_name in os.listdir(a.parent) and a.name not in os.listdir(a.parent)
    assert os.getxattr(a.parent / new_name, "user.encord.title") == new_name.encode()
    done = encordfs_cli("flush", str(mnt.path), "--timeout", "30")
    assert done.returncode == 0, done.stderr
    rows = _server_rows(emulator, "street-scenes")
    assert rows[uid_a].client_metadata["split"] == "val"
    assert rows[uid_a].title == new_name
    assert dict(rows[_uid(b)].client_metadata) == {"fresh": True, "n": 1}
    expected_c = {k: v for k, v in before.items() if k != removed_key}
    assert dict(rows[_uid(c)].client_metadata) == expected_c
    assert json.loads(os.getxattr(c, WHOLE)) == expected_c


def test_bad_values_are_refused_and_nothing_is_queued(mnt: MountedFS) -> None:
    f = _files(mnt)[0]
    cases = [
        (META + "k", b"not json", errno.EINVAL),
        (WHOLE, b"[1, 2]", errno.EINVAL),
        (WHOLE, b"{broken", errno.EINVAL),
        (META + "huge", json.dumps("x" * 1_100_000).encode(), errno.E2BIG),
        ("user.encord.title", b"x", errno.EPERM),
        ("user.encord.width", b"1", errno.EPERM),
        ("trusted.x", b"1", errno.ENOTSUP),
    ]
    for name, value, expected in cases:
        with pytest.raises(OSError) as err:
            os.setxattr(f, name, value)
        assert (
            err.value.errno in (expected, errno.EACCES) if expected == errno.EPERM else err.value.errno == expected
        ), (name, err.value)
    with pytest.raises(OSError) as err:
        os.setxattr(f, WHOLE, b"{}", os.XATTR_CREATE)
    assert err.value.errno == errno.EEXIST
    with pytest.raises(OSError) as err:
        os.setxattr(f, META + "never-there", b"1", os.XATTR_REPLACE)
    assert err.value.errno == errno.ENODATA
    with pytest.raises(OSError) as err:
        os.removexattr(f, META + "never-there")
    assert err.value.errno == errno.ENODATA
    with pytest.raises(OSError) as err:
        os.setxattr(mnt.path / "street-scenes", META + "k", b"1")  # a dataset folder is not a row
    assert err.value.errno in (errno.EPERM, errno.EACCES)
    assert _status(mnt)["writes"]["pending_ops"] == 0
    os.setxattr(f, META + "new-key", b"1", os.XATTR_CREATE)
    with pytest.raises(OSError) as err:
        os.setxattr(f, META + "new-key", b"2", os.XATTR_CREATE)
    assert err.value.errno == errno.EEXIST


def test_rename_rules(mnt: MountedFS, emulator: RunningEmulator) -> None:
    files = _files(mnt)
    with pytest.raises(OSError) as err:
        os.rename(files[0], files[1])  # onto another row
    assert err.value.errno == errno.EEXIST
    with pytest.raises(OSError) as err:
        os.rename(files[0], mnt.path / "medical" / files[0].name)
    assert err.value.errno in (errno.EXDEV, errno.EPERM)
    group = next(p for p in (mnt.path / "street-scenes").iterdir() if p.is_dir())
    uid = _uid(group)
    os.rename(group, group.parent / "renamed group")
    assert (group.parent / "renamed group").is_dir()
    assert encordfs_cli("flush", str(mnt.path), "--timeout", "30").returncode == 0
    assert _server_rows(emulator, "street-scenes")[uid].title == "renamed group"


def test_fsync_waits_until_the_row_lands(mnt: MountedFS, emulator: RunningEmulator) -> None:
    f = _files(mnt)[5]
    os.setxattr(f, META + "synced", b"true")
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert _server_rows(emulator, "street-scenes")[_uid(f)].client_metadata["synced"] is True


def test_transient_errors_are_retried_and_land(mnt: MountedFS, emulator: RunningEmulator) -> None:
    emulator.add_faults(
        [
            {"endpoint": "v2.items.patch_bulk", "status": 429, "count": 1, "retry_after": 1},
            {"endpoint": "v2.items.patch_bulk", "status": 500, "count": 1},
        ]
    )
    f = _files(mnt)[6]
    os.setxattr(f, META + "retried", b'"yes"')
    assert encordfs_cli("flush", str(mnt.path), "--timeout", "60").returncode == 0
    assert _server_rows(emulator, "street-scenes")[_uid(f)].client_metadata["retried"] == "yes"
    assert _status(mnt)["writes"]["failed_push_calls_total"] >= 2


def test_payload_too_large_is_parked_shown_and_not_retried(mnt: MountedFS, emulator: RunningEmulator) -> None:
    f = _files(mnt)[7]
    ok = _files(mnt)[8]
    for i in range(3):  # 90 KB in all: under this mount's limit, over the server's (64 KiB)
        os.setxattr(f, META + f"blob{i}", json.dumps("y" * 30_000).encode())
    os.setxattr(ok, META + "fine", b"1")
    done = encordfs_cli("flush", str(mnt.path), "--timeout", "30")
    assert done.returncode != 0 and "parked" in done.stderr
    status = _status(mnt)["writes"]
    assert [p["row"] for p in status["parked"]] == [_uid(f)]
    assert "413" in status["parked"][0]["reason"] or "too large" in status["parked"][0]["reason"]
    shown = encordfs_cli("status", str(mnt.path))
    assert "parked" in shown.stdout
    calls = emulator.stats()["v2.items.patch_bulk"]
    time.sleep(2)
    assert emulator.stats()["v2.items.patch_bulk"] == calls  # not retried
    assert _server_rows(emulator, "street-scenes")[_uid(ok)].client_metadata["fine"] == 1
    assert json.loads(os.getxattr(f, META + "blob2")) == "y" * 30_000  # still visible to the user


def test_kill_9_during_a_write_stream_loses_nothing(emulator: RunningEmulator) -> None:
    emulator.reset(data=True)
    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="encordfs-kill-"))
    acknowledged: dict[str, int] = {}
    try:
        assert emulator.key_file is not None
        for trial in range(20):
            with MountedFS(emulator.domain, emulator.key_file, work) as m:
                files = _files(m)[:10]
                uids = {f: _uid(f) for f in files}
                stop = threading.Event()

                def writer(
                    files: list[Path] = files,
                    uids: dict[Path, str] = uids,
                    stop: threading.Event = stop,
                    trial: int = trial,
                ) -> None:
                    i = 0
                    while not stop.is_set():
                        f = files[i % len(files)]
                        value = trial * 100_000 + i
                        try:
                            os.setxattr(f, META + "counter", str(value).encode())
                        except OSError:
                            return  # the mount died under us: this write was not acknowledged
                        acknowledged[uids[f]] = value
                        i += 1

                t = threading.Thread(target=writer)
                t.start()
                time.sleep(rng.uniform(0.05, 0.6))
                assert m.proc is not None
                os.kill(m.proc.pid, signal.SIGKILL)
                stop.set()
                t.join(10)
        with MountedFS(emulator.domain, emulator.key_file, work) as m:
            done = encordfs_cli("flush", str(m.path), "--timeout", "60")
            assert done.returncode == 0, done.stderr
        rows = _server_rows(emulator, "street-scenes")
        assert acknowledged
        for uid, value in acknowledged.items():
            got = rows[uid].client_metadata.get("counter")
            # Exactly the last acknowledged value, or a later one whose journal commit happened just
            # before the kill (durable but not yet acknowledged to the writer).
            assert got is not None and got >= value and got // 100_000 == value // 100_000, (uid, got, value)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_10000_setfattr_over_1000_rows_cost_at_most_12_api_calls() -> None:
    with RunningEmulator(["--generate", "bulk:1000:16"]) as emu:
        with temporary_mount(emu.domain, emu.key_file) as m:
            files = sorted((m.path / "bulk").iterdir())
            assert len(files) == 1000
            uids = [_uid(f) for f in files]
            before = emu.stats()["api_calls"]
            for i in range(10_000):
                os.setxattr(files[i % 1000], META + f"k{i % 3}", str(i).encode())
            done = encordfs_cli("flush", str(m.path), "--timeout", "120")
            assert done.returncode == 0, done.stderr
            calls = emu.stats()["api_calls"] - before
            assert calls <= 12, calls
        rows = _server_rows(emu, "bulk")
    for n, uid in enumerate(uids):
        expected = {f"k{(i % 3)}": i for i in range(n, 10_000, 1000)}  # the last write per key wins
        got = {k: v for k, v in rows[uid].client_metadata.items() if k.startswith("k")}
        assert got == expected, (uid, got, expected)
