"""``encordfs cp``: rows as files without FUSE (``encordfs.copy``), as a user runs it (a subprocess).

A copy of the sample with sidecars imported into a fresh emulator gives the same tree and metadata;
xattrs are the mount's; a second run skips what is complete and repairs what is not; Ctrl-C exits 130
and a rerun finishes; a full or read-only destination is one line and exit 1 (a small tmpfs mounted by
the test, always unmounted); a file the server refuses is listed and the exit is 1.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from encordfs import copy
from encordfs.fsspec_impl import EncordFileSystem
from harness.emulator import RunningEmulator
from harness.trees import Labelled

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root)")


def _cp(emu: RunningEmulator, *args: str | Path, cache: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "encordfs", "cp", "--domain", emu.domain, "--ssh-key-file", str(emu.key_file),
            "--cache-dir", str(cache), *map(str, args)]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (size, sha256) of every file under ``root`` (sidecars and markers excluded)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(copy.SIDECAR_SUFFIX) and path.name != copy.SEQUENCE_MARKER:
            out[str(path.relative_to(root))] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _remote(efs: EncordFileSystem) -> tuple[dict[str, tuple[int, str]], dict[str, Any]]:
    """(files: path -> (size, sha256), rows: path -> client metadata) through ``encord://``."""
    files, rows = {}, {}
    for name in efs.find("", withdirs=True):
        info = efs.info(name)
        if "client_metadata" in info:
            rows[name] = info["client_metadata"]
        if info["type"] == "file":
            files[name] = (info["size"], hashlib.sha256(efs.cat_file(name)).hexdigest())
    return files, rows


@pytest.fixture()
def efs_of(tmp_path: Path) -> Iterator[Any]:
    made: list[EncordFileSystem] = []

    def make(emu: RunningEmulator) -> EncordFileSystem:
        fs = EncordFileSystem(domain=emu.domain, ssh_key_file=str(emu.key_file),
                              cache_dir=str(tmp_path / f"efs{len(made)}"), skip_instance_cache=True)  # fmt: skip
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.close()


def test_a_copy_with_sidecars_imports_back_as_the_same_tree(
    sample_emulator: RunningEmulator, tmp_path: Path, efs_of: Any
) -> None:
    dest = tmp_path / "copy"
    done = _cp(sample_emulator, "--metadata", "sidecar", "encord://", dest, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert "failed" in done.stderr and " 0 failed" in done.stderr
    files, rows = _remote(efs_of(sample_emulator))
    # the importer skips hidden names (a row titled ".hidden.png"): the one thing a copy cannot carry back
    hidden = {n for n in files if any(p.startswith(".") for p in n.split("/"))}
    assert hidden == {"media-misc/.hidden.png"}
    assert _tree(dest) == files  # the copy is byte for byte what encord:// serves
    with RunningEmulator(["--import", str(dest)]) as again:
        files2, rows2 = _remote(efs_of(again))
    assert files2 == {n: v for n, v in files.items() if n not in hidden}
    assert rows2 == {n: m for n, m in rows.items() if n not in hidden}


def test_xattrs_are_the_mounts_and_a_second_run_skips_complete_files(
    labelled_emulator: RunningEmulator, tmp_path: Path, efs_of: Any
) -> None:
    dest, cache = tmp_path / "copy", tmp_path / "cache"
    done = _cp(labelled_emulator, "--metadata", "none", "encord://pets", dest, cache=cache)
    assert done.returncode == 0, done.stderr
    assert not [p for p in dest.rglob("*") if os.listxattr(p)]  # none: bytes only (the default)
    done = _cp(labelled_emulator, "--metadata", "xattr", "encord://pets", dest, cache=cache)
    assert done.returncode == 0 and "18 already complete" in done.stderr, done.stderr  # only the metadata
    efs = efs_of(labelled_emulator)
    for name in ("pets/cat_00.png", "pets/burst/frame2.png", "pets/burst", "pets"):
        copied = dest / name
        assert sorted(os.listxattr(copied)) == sorted(efs.listxattr(name)), name
        for xname in efs.listxattr(name):
            assert os.getxattr(copied, xname) == efs.getxattr(name, xname), (name, xname)
    assert not list(dest.rglob("*" + copy.PART_SUFFIX))

    # damage: a partial part file (resumed), a wrong-size file (copied again), a same-size file with
    # another time (copied again), a missing file
    good = {p: p.read_bytes() for p in dest.rglob("*.png")}
    part = copy.part_path(dest / "pets" / "cat_01.png")
    os.replace(dest / "pets" / "cat_01.png", part)
    os.truncate(part, 40)
    with open(part, "r+b") as f:
        f.write(b"garbage")  # another time than the row's (this write's): not ours, started over
    part2 = copy.part_path(dest / "pets" / "cat_02.png")
    os.replace(dest / "pets" / "cat_02.png", part2)
    os.truncate(part2, 30)
    mtime = efs.info("pets/cat_02.png")["mtime"]
    os.utime(part2, (mtime, mtime))  # the row's time: ours, resumed from byte 30
    (dest / "pets" / "dog_00.png").write_bytes(b"short")
    same_size = dest / "pets" / "dog_01.png"
    same_size.write_bytes(b"\0" * same_size.stat().st_size)
    (dest / "pets" / "bird_00.png").unlink()
    done = _cp(labelled_emulator, "--metadata", "xattr", "encord://pets", dest, cache=cache)
    assert done.returncode == 0, done.stderr
    assert "5 copied" in done.stderr and "13 already complete" in done.stderr, done.stderr
    assert {p: p.read_bytes() for p in dest.rglob("*.png")} == good
    assert not list(dest.rglob("*" + copy.PART_SUFFIX))


def test_views_files_and_bad_input(labelled_emulator: RunningEmulator, labelled_tree: Labelled, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = _cp(labelled_emulator, "encord://pets/@label/cat", "pets/table.txt", tmp_path / "out", cache=cache)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "cat").iterdir()) == labelled_tree.rows_with("label", "cat")
    assert (tmp_path / "out" / "table.txt").read_text().startswith("name,label,score")
    for args, message in [
        (["encord://pets/no-such.png", tmp_path / "x"], "no such dataset, folder or file"),
        (["encord://nope", tmp_path / "x"], "no such dataset"),
        (["-j", "0", "encord://pets", tmp_path / "x"], "--jobs must be at least 1"),
        (["encord://pets", tmp_path / "out" / "table.txt"], "exists and is not a folder"),
    ]:
        done = _cp(labelled_emulator, *args, cache=cache)
        assert done.returncode == 1 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = _cp(labelled_emulator, "--metadata", "json", "encord://pets", tmp_path / "x", cache=cache)
    assert done.returncode == 2 and "invalid choice" in done.stderr
    done = _cp(labelled_emulator, "--processes", "0", "encord://pets", tmp_path / "x", cache=cache)
    assert done.returncode == 1 and "--processes must be at least 1" in done.stderr


def test_a_refused_file_is_listed_and_the_exit_is_1(labelled_emulator: RunningEmulator, tmp_path: Path) -> None:
    labelled_emulator.add_faults([{"endpoint": "blob.get", "status": 404, "count": 1}])
    try:
        # two processes: whichever meets the refusal, the parent's summary lists it
        done = _cp(labelled_emulator, "-j", "2", "--processes", "2", "encord://pets", tmp_path / "out",
                   cache=tmp_path / "cache")  # fmt: skip
    finally:
        labelled_emulator.clear_faults()
    assert done.returncode == 1, done.stderr
    assert "1 failed" in done.stderr and "cp: failed: encord://pets/" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "?" not in done.stderr.split("failed:")[-1]  # no signed URL
    done = _cp(labelled_emulator, "encord://pets", tmp_path / "out", cache=tmp_path / "cache")
    assert done.returncode == 0 and "1 copied" in done.stderr, done.stderr


def test_ctrl_c_exits_130_and_a_rerun_finishes(labelled_emulator: RunningEmulator, tmp_path: Path) -> None:
    dest, cache = tmp_path / "out", tmp_path / "cache"
    argv = [sys.executable, "-m", "encordfs", "cp", "--domain", labelled_emulator.domain, "--ssh-key-file",
            str(labelled_emulator.key_file), "--cache-dir", str(cache), "-j", "2", "encord://pets", str(dest)]  # fmt: skip
    labelled_emulator.add_faults([{"endpoint": "blob.get", "latency_ms": 400}])
    try:
        # SIGINT as a terminal sends it, even if this test runs where it is ignored (a background job)
        restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(dest.rglob("*.png")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        stopped_s = time.monotonic() - t0
    finally:
        labelled_emulator.clear_faults()
    assert proc.returncode == 130, err
    assert stopped_s < 5 and "interrupted" in err and "rerun the same command" in err and "Traceback" not in err
    complete = [p for p in dest.rglob("*") if p.is_file() and not p.name.endswith(copy.PART_SUFFIX)]
    assert 0 < len(complete) < 18
    done = _cp(labelled_emulator, "encord://pets", dest, cache=cache)
    assert done.returncode == 0 and f"{len(complete)} already complete" in done.stderr, done.stderr


def test_a_slow_link_gets_more_files_in_flight_unless_j_is_given(tmp_path: Path) -> None:
    """Without -j, a copy behind 40 ms of first-byte latency runs more than its 8 threads (the
    emulator counts the blob requests it serves at once); -j 8 is 8, and every byte is right."""
    with RunningEmulator(["--generate", "slow:240:4096"]) as emu:
        peaks = {}
        for label, extra in (("default", []), ("j8", ["-j", "8"])):
            emu.reset()
            emu.add_faults([{"endpoint": "blob.get", "latency_ms": 40}])
            dest = tmp_path / label
            done = _cp(emu, "-q", *extra, "encord://slow", dest, cache=tmp_path / f"cache-{label}")
            assert done.returncode == 0, done.stderr
            copied = sorted((dest / "slow").iterdir())
            assert len(copied) == 240 and {p.stat().st_size for p in copied} == {4096}
            peaks[label] = emu.stats()["blob.in_flight_peak"]
        efs = EncordFileSystem(domain=emu.domain, ssh_key_file=str(emu.key_file), cache_dir=str(tmp_path / "efs"),
                               skip_instance_cache=True)  # fmt: skip
        try:
            for path in copied[::40]:
                assert path.read_bytes() == efs.cat_file(f"slow/{path.name}")
        finally:
            efs.close()
    assert peaks["j8"] <= 8, peaks
    assert peaks["default"] > 16, peaks


@pytest.fixture()
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@needs_root
def test_a_full_disk_is_one_line_and_a_rerun_with_room_finishes(
    sample_emulator: RunningEmulator, small_tmpfs: Path, tmp_path: Path
) -> None:
    dest = small_tmpfs / "copy"
    done = _cp(sample_emulator, "encord://street-scenes", dest, cache=tmp_path / "cache")
    assert done.returncode == 1, done.stderr
    assert "No space left on device" in done.stderr and "Traceback" not in done.stderr
    assert "rerun the same command to resume" in done.stderr
    for path in dest.rglob("*"):  # nothing that looks complete but is not
        if path.is_file() and not path.name.endswith(copy.PART_SUFFIX):
            assert path.stat().st_size > 0
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    done = _cp(sample_emulator, "encord://street-scenes", dest, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    efs = EncordFileSystem(domain=sample_emulator.domain, ssh_key_file=str(sample_emulator.key_file),
                           cache_dir=str(tmp_path / "efs"), skip_instance_cache=True)  # fmt: skip
    try:
        for name in efs.find("street-scenes")[::7]:
            assert (small_tmpfs / "copy" / name).read_bytes() == efs.cat_file(name), name
    finally:
        efs.close()


@needs_root
def test_a_read_only_destination_is_one_line(labelled_emulator: RunningEmulator, tmp_path: Path) -> None:
    where = tmp_path / "ro"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], check=True)
    try:
        done = _cp(labelled_emulator, "encord://pets", where / "copy", cache=tmp_path / "cache")
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
    assert done.returncode == 1 and "Read-only file system" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_progress_on_a_terminal_and_in_a_log() -> None:
    plan = copy.Plan(files=[copy.FileJob("encord://d/f", 5, 1000, 0.0, Path("f")) for _ in range(4)], total_bytes=4000)
    now = [0.0]
    outcome = copy.Outcome(copied=2, bytes_done=2000)
    tty = io.StringIO()
    progress = copy.Progress(plan, tty, tty=True, clock=lambda: now[0])
    now[0] = 2.0
    progress.tick(outcome)
    assert tty.getvalue().startswith("\r\x1b[K") and "2/4 files" in tty.getvalue() and "ETA 2 s" in tty.getvalue()
    plain = io.StringIO()
    progress = copy.Progress(plan, plain, tty=False, clock=lambda: now[0])
    now[0] = 2.0 + copy.PLAIN_EVERY_S
    progress.tick(outcome)
    now[0] += 1
    progress.tick(outcome)  # within PLAIN_EVERY_S of the last line: nothing more
    assert plain.getvalue().count("\n") == 1 and "\r" not in plain.getvalue() and "MB/s" in plain.getvalue()
