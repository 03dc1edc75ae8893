"""The kernel binding (``--binding kernel``) through a real mount, checked against the mfusepy one.

Both mounts serve the session's sample emulator; every path, mode, size, mtime, byte (sha256) and
xattr must be equal. Writes are round trips that leave the emulator as they found it. Skipped
when the kernel binding is not in this tree.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("encordfs.fuse.kernel")

from encordfs.cli import build_parser
from encordfs.control import mounted_at
from encordfs.settings import mount_argv, resolve
from harness.dirents import getdents_small
from harness.emulator import RunningEmulator
from harness.mount import MountedFS, temporary_mount

META = "user.encord.meta."


@pytest.fixture(scope="module")
def kernel_mount(sample_emulator: RunningEmulator) -> Iterator[MountedFS]:
    with temporary_mount(sample_emulator.domain, sample_emulator.key_file, "--binding", "kernel") as mounted:
        yield mounted


@pytest.fixture(scope="module")
def mfusepy_mount(sample_emulator: RunningEmulator) -> Iterator[MountedFS]:
    with temporary_mount(sample_emulator.domain, sample_emulator.key_file, "--binding", "mfusepy") as mounted:
        yield mounted


def _tree(root: Path) -> dict[str, Any]:
    """Every path under ``root`` → (stat fields but the inode, sha256 or None, xattrs)."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
        xattrs = {name: os.getxattr(path, name) for name in os.listxattr(path)}
        fields = (st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size, st.st_blocks, st.st_blksize)
        times = (st.st_mtime_ns, st.st_ctime_ns)  # atime: the kernel may move it on a read (relatime)
        out[str(path.relative_to(root))] = (fields, times, digest, xattrs)
    return out


def _errno(call: Callable[..., Any], *args: Any) -> int | None:
    """The errno of the ``OSError`` that ``call(*args)`` raises (it must raise one)."""
    with pytest.raises(OSError) as info:
        call(*args)
    return info.value.errno


def _first_file(folder: Path) -> Path:
    return next(p for p in sorted(folder.iterdir()) if p.is_file())


def test_tree_bytes_and_xattrs_equal_mfusepy(kernel_mount: MountedFS, mfusepy_mount: MountedFS) -> None:
    ours, theirs = _tree(kernel_mount.path), _tree(mfusepy_mount.path)
    assert len(ours) >= 150
    assert ours.keys() == theirs.keys()
    for path in ours:
        assert ours[path] == theirs[path], path


def test_both_bindings_serve_with_the_startup_heap_frozen(kernel_mount: MountedFS, mfusepy_mount: MountedFS) -> None:
    """``app.settle_heap`` ran before serving (``status.json``'s ``gc``): what the mount built before its
    first request is out of the collector's reach."""
    for mounted in (kernel_mount, mfusepy_mount):
        status = json.loads((mounted.path / ".encordfs" / "status.json").read_text())
        assert status["gc"]["frozen_objects"] > 10_000  # modules, the SDK, the root listing
        assert len(status["gc"]["collections"]) == len(status["gc"]["thresholds"]) == 3


def test_listing_carries_attributes_and_dot_entries(kernel_mount: MountedFS) -> None:
    folder = next(p for p in kernel_mount.path.iterdir() if p.is_dir())
    with os.scandir(folder) as it:
        entries = list(it)
    assert entries
    for e in entries:  # readdirplus: the type and inode come with the entry
        assert e.inode() == e.stat().st_ino
        assert e.is_dir() == stat.S_ISDIR(e.stat().st_mode)
    listed = subprocess.run(["ls", "-a", "-U", str(folder)], capture_output=True, text=True, check=True).stdout.split(
        "\n"
    )
    assert listed[:2] == [".", ".."]
    # a listing resumed mid-way (a tiny getdents buffer: the kernel asks again from each offset we
    # gave) neither skips nor repeats an entry
    assert sorted(getdents_small(folder)) == sorted([".", ".."] + [e.name for e in entries])


def test_missing_names_and_foreign_xattrs(kernel_mount: MountedFS) -> None:
    with pytest.raises(FileNotFoundError):
        (kernel_mount.path / "no such dataset").stat()
    with pytest.raises(FileNotFoundError):
        (kernel_mount.path / "no such dataset").stat()  # the negative entry, now from the kernel's cache
    some = _first_file(next(p for p in kernel_mount.path.iterdir() if p.is_dir()))
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        assert _errno(os.getxattr, some, name) == errno.ENOTSUP
    assert _errno(os.setxattr, some, "security.x", b"1") == errno.ENOTSUP
    assert _errno(os.getxattr, some, "user.encord.no_such_field") == errno.ENODATA
    assert (kernel_mount.path / ".encordfs" / "status.json").read_bytes().startswith(b"{")


def test_a_file_opened_again_reuses_its_backing_file(kernel_mount: MountedFS) -> None:
    """Once a file is complete in the disk cache its opens are passthrough; the first registers the
    cache file with the kernel, the next ones keep that registration without opening it again."""
    target = sorted(kernel_mount.path / "street-scenes" / p for p in os.listdir(kernel_mount.path / "street-scenes"))
    row = next(p for p in target if p.is_file() and p.stat().st_size > 0)
    want = row.read_bytes()

    def counters() -> dict[str, int]:
        status = json.loads((kernel_mount.path / ".encordfs" / "status.json").read_text())
        return {k: status["counters"].get(k, 0) for k in ("cache.backing_opens", "cache.backing_reuses")}

    deadline = time.monotonic() + 10
    while not counters()["cache.backing_opens"] or not counters()["cache.backing_reuses"]:
        assert time.monotonic() < deadline, counters()  # (the disk cache lands the file off the read path)
        assert row.read_bytes() == want
        time.sleep(0.05)
    before = counters()
    for _ in range(3):
        assert row.read_bytes() == want
    after = counters()
    assert after["cache.backing_reuses"] == before["cache.backing_reuses"] + 3
    assert after["cache.backing_opens"] == before["cache.backing_opens"]


def test_an_evicted_cache_file_is_not_held_by_its_backing_id(sample_emulator: RunningEmulator) -> None:
    """A file opened through passthrough keeps its backing id while idle (its next open registers
    nothing), but not once the disk cache evicts its file: the id would keep the evicted file's
    blocks allocated. With room for about two files, the ids held follow what the cache holds."""
    with temporary_mount(
        sample_emulator.domain, sample_emulator.key_file, "--binding", "kernel", "--cache-size", "1M"
    ) as mounted:
        folder = mounted.path / "street-scenes"
        files = [p for p in sorted(folder.iterdir()) if p.is_file() and 100_000 < p.stat().st_size < 450_000]
        assert len(files) >= 4, [p.stat().st_size for p in folder.iterdir()]

        def status() -> dict[str, Any]:
            return json.loads((mounted.path / ".encordfs" / "status.json").read_text())  # type: ignore[no-any-return]

        def held(limit: int) -> bool:
            deadline = time.monotonic() + 10
            while status()["passthrough"]["backing_ids"] > limit and time.monotonic() < deadline:
                time.sleep(0.05)
            return status()["passthrough"]["backing_ids"] <= limit  # type: ignore[no-any-return]

        wants: dict[Path, bytes] = {}
        for row in files:
            want = wants[row] = row.read_bytes()
            opens = status()["passthrough"]["opens"]
            deadline = time.monotonic() + 10
            while status()["passthrough"]["opens"] == opens:  # until an open of it was passthrough
                assert time.monotonic() < deadline, status()  # (the disk cache lands the file off the read path)
                assert row.read_bytes() == want
                time.sleep(0.05)
        cache = mounted.cache_dir / "files"
        on_disk = sum(1 for p in cache.rglob("*") if p.is_file() and len(p.name) == 64)
        assert on_disk < len(files)  # some were evicted
        assert held(on_disk), (status()["passthrough"], on_disk)
        assert status()["counters"].get("cache.evictions_disk", 0) >= len(files) - on_disk
        for row in files:  # a file whose id went is registered again at its next open, and reads the same
            assert row.read_bytes() == wants[row]


def test_files_read_past_the_page_cache_are_the_same(
    sample_emulator: RunningEmulator, mfusepy_mount: MountedFS
) -> None:
    """With ``--direct-io-min 1`` every file not yet whole in the disk cache is opened in direct-io
    mode: the same tree and bytes as mfusepy; once a file is whole on disk its opens are passthrough."""
    with temporary_mount(
        sample_emulator.domain, sample_emulator.key_file, "--binding", "kernel", "--direct-io-min", "1"
    ) as mounted:
        assert _tree(mounted.path) == _tree(mfusepy_mount.path)

        def status() -> dict[str, Any]:
            return json.loads((mounted.path / ".encordfs" / "status.json").read_text())  # type: ignore[no-any-return]

        assert status()["direct_io"]["opens"] > 0
        row = next(p for p in sorted((mounted.path / "street-scenes").iterdir()) if p.is_file() and p.stat().st_size)
        want = row.read_bytes()
        deadline = time.monotonic() + 10
        while not status()["passthrough"]["opens"]:
            assert time.monotonic() < deadline, status()  # (the disk cache lands the file off the read path)
            assert row.read_bytes() == want
            time.sleep(0.05)
        opens = status()["direct_io"]["opens"]
        assert row.read_bytes() == want
        assert status()["direct_io"]["opens"] == opens


def _status_lines(mounted: MountedFS) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "encordfs", "status", str(mounted.path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_status_says_whether_passthrough_is_on_and_counts_its_opens(
    sample_emulator: RunningEmulator, kernel_mount: MountedFS, mfusepy_mount: MountedFS
) -> None:
    """``encordfs status`` (text) and ``status.json`` name the binding, say whether passthrough is on (and
    if not, why) and count the opens the kernel served itself."""
    row = next(p for p in sorted((kernel_mount.path / "street-scenes").iterdir()) if p.is_file() and p.stat().st_size)
    want = row.read_bytes()

    def status() -> dict[str, Any]:
        return json.loads((kernel_mount.path / ".encordfs" / "status.json").read_text())  # type: ignore[no-any-return]

    deadline = time.monotonic() + 10
    while not status()["passthrough"]["opens"]:  # (the disk cache lands the file off the read path)
        assert time.monotonic() < deadline, status()
        assert row.read_bytes() == want
        time.sleep(0.05)
    shown = status()
    assert shown["binding"] == "kernel" and shown["passthrough"]["enabled"] is True
    line = next(line for line in _status_lines(kernel_mount) if line.startswith("passthrough:"))
    opens = int(line.split(": ", 2)[2].split(" ")[0])
    assert line.startswith("passthrough: on (kernel binding): ") and opens >= shown["passthrough"]["opens"] > 0

    shown = json.loads((mfusepy_mount.path / ".encordfs" / "status.json").read_text())
    assert shown["binding"] == "mfusepy" and shown["passthrough"]["enabled"] is False
    assert "passthrough: off (mfusepy binding): the mfusepy binding cannot use it" in "\n".join(
        _status_lines(mfusepy_mount)
    )

    with temporary_mount(
        sample_emulator.domain, sample_emulator.key_file, "--binding", "kernel", "--no-passthrough"
    ) as mounted:
        same = mounted.path / row.relative_to(kernel_mount.path)
        for _ in range(3):
            assert same.read_bytes() == want
        shown = json.loads((mounted.path / ".encordfs" / "status.json").read_text())
        assert shown["passthrough"] == {
            "enabled": False,
            "off": "turned off (--no-passthrough)",
            "opens": 0,
            "backing_ids": 0,
            "inodes": 0,
        }
        assert "passthrough: off (kernel binding): turned off (--no-passthrough)" in _status_lines(mounted)


def test_setfattr_round_trip(kernel_mount: MountedFS) -> None:
    row = _first_file(kernel_mount.path / "street-scenes")
    name = META + "kernel_probe"
    subprocess.run(["setfattr", "-n", name, "-v", '"\\"probe\\""', str(row)], check=True)
    assert os.getxattr(row, name) == b'"probe"'
    assert b'"kernel_probe":"probe"' in os.getxattr(row, "user.encord.client_metadata")
    assert _errno(os.setxattr, row, name, b"1", os.XATTR_CREATE) == errno.EEXIST
    os.removexattr(row, name)
    assert _errno(os.getxattr, row, name) == errno.ENODATA
    assert _errno(os.setxattr, row, "user.encord.uid", b"x") == errno.EPERM
    fd = os.open(row, os.O_RDONLY)
    try:
        os.fsync(fd)  # waits until both changes have landed
    finally:
        os.close(fd)


def test_rename_round_trip(kernel_mount: MountedFS) -> None:
    row = _first_file(kernel_mount.path / "street-scenes")
    moved = row.with_name("p3-renamed-" + row.name)
    os.rename(row, moved)
    try:
        assert moved.exists() and not row.exists()
        assert moved.name in os.listdir(row.parent)
    finally:
        os.rename(moved, row)
    assert row.exists()


def test_writes_are_refused(kernel_mount: MountedFS) -> None:
    folder = kernel_mount.path / "street-scenes"
    row = _first_file(folder)
    attempts = [
        lambda: os.open(folder / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda: os.open(row, os.O_WRONLY),
        lambda: os.truncate(row, 0),
        lambda: os.mkdir(folder / "sub"),
        lambda: os.unlink(row),
        lambda: os.rmdir(folder),
        lambda: os.utime(row, (0, 0)),
        lambda: os.chmod(row, 0o600),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno in (errno.EROFS, errno.EPERM), info.value


@pytest.mark.parametrize("how", ["fusermount3", "SIGTERM", "SIGINT"])
def test_clean_shutdown(sample_emulator: RunningEmulator, how: str) -> None:
    with temporary_mount(
        sample_emulator.domain, sample_emulator.key_file, "--binding", "kernel", prefix="encordfs-kernel-stop-"
    ) as mounted:
        assert mounted.proc is not None
        assert any(mounted.path.iterdir())
        if how == "fusermount3":
            subprocess.run(["fusermount3", "-u", str(mounted.path)], check=True)
        else:
            mounted.proc.send_signal(getattr(signal, how))
        assert mounted.proc.wait(30) == 0, mounted.log()
        assert not mounted_at(mounted.path)
        assert "every queued change has landed" in mounted.log()  # the core (and its queue) closed


def test_binding_option_reaches_the_mount_process() -> None:
    args = build_parser().parse_args(["mount", "/mnt/x", "--binding", "mfusepy", "--domain", "http://d"])
    assert args.binding == "mfusepy"
    argv = mount_argv(resolve({"binding": args.binding, "domain": args.domain}), Path("/mnt/x"))
    assert argv[argv.index("--binding") + 1] == "mfusepy"
    # written out even when it is the default: the child inherits ENCORDFS_BINDING, the command line won
    argv = mount_argv(resolve({"domain": "http://d", "binding": "kernel"}), Path("/mnt/x"))
    assert argv[argv.index("--binding") + 1] == "kernel"


# A mount process that starts the unmount watchdog as root too, where libfuse mounts with mount(2) and
# nothing else would take a killed mount away: what a normal user's mount relies on where fusermount3's
# own auto_unmount cannot tell a dead mount (3.14).
_MFUSEPY_WITH_WATCHDOG = """
import shutil, sys
from encordfs.cli import main
from encordfs.fuse import libfuse
from encordfs.fuse.watchdog import Watchdog
libfuse._watchdog = lambda mountpoint: Watchdog.start(mountpoint, shutil.which("fusermount3"))
sys.exit(main(sys.argv[1:]))
"""


class _MfusepyWithWatchdog(MountedFS):
    def argv(self) -> list[str]:
        return [sys.executable, "-c", _MFUSEPY_WITH_WATCHDOG, *super().argv()[3:]]  # after "python -m encordfs"


def test_a_killed_mfusepy_mount_leaves_no_dead_mount(sample_emulator: RunningEmulator, tmp_path: Path) -> None:
    with _MfusepyWithWatchdog(
        sample_emulator.domain, sample_emulator.key_file, tmp_path, "--binding", "mfusepy"
    ) as mounted:
        assert mounted.proc is not None
        assert any(mounted.path.iterdir())
        mounted.proc.kill()
        mounted.proc.wait(10)
        deadline = time.monotonic() + 10
        while mounted_at(mounted.path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not mounted_at(mounted.path), mounted.log()
        assert os.listdir(mounted.path) == []  # an empty directory again, not ENOTCONN


def test_a_normal_users_mfusepy_mount_asks_for_auto_unmount_and_a_watchdog(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from encordfs.fuse import MountFlags, Timeouts, libfuse

    seen: dict[str, Any] = {}

    def fake_fuse(ops: Any, mountpoint: str, **options: Any) -> None:
        seen.update(options)
        seen["watchdog alive"] = bool(watchdogs) and watchdogs[0].proc.poll() is None

    watchdogs: list[Any] = []
    start = libfuse.Watchdog.start_or_warn

    def started(mountpoint: str, tool: str) -> Any:
        watchdogs.append(start(mountpoint, tool))
        return watchdogs[-1]

    monkeypatch.setattr(libfuse.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(libfuse, "_FUSE", fake_fuse)
    monkeypatch.setattr(libfuse.Watchdog, "start_or_warn", started)
    fs: Any = type("FS", (), {})()
    libfuse.run(fs, str(tmp_path), timeouts=Timeouts(1, 1), flags=MountFlags())
    assert seen["auto_unmount"] is True and seen["watchdog alive"]
    assert watchdogs[0].proc.returncode == 0  # stopped with the mount, after unmounting
