"""The encordfs command on bad input: one line on stderr, non-zero exit, nothing mounted, no traceback."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from encordfs.control import mounted_at
from harness.emulator import RunningEmulator, make_keypair
from harness.mount import encordfs_cli

_encordfs = functools.partial(encordfs_cli, timeout=60)


def _mount(mountpoint: Path, domain: str, key_file: str | Path, cache_dir: Path, *extra: str) -> Any:
    """``encordfs mount`` of ``domain`` at ``mountpoint`` with that key and cache dir, then ``extra``."""
    return _encordfs(
        "mount", str(mountpoint), "--domain", domain, "--ssh-key-file", str(key_file), "--cache-dir", str(cache_dir),
        *extra,
    )  # fmt: skip


def _assert_clean_failure(done: subprocess.CompletedProcess[str], mountpoint: Path, *words: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("encordfs: error: "), done.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    assert not mounted_at(mountpoint)


@pytest.mark.parametrize("foreground", [False, True])
def test_unregistered_key(tmp_path: Path, shape_emulator: RunningEmulator, foreground: bool) -> None:
    """The same one line and exit 1 whatever form the refusal takes (recorded shape: HTTP 400 envelopes)."""
    stranger = make_keypair(tmp_path)
    (tmp_path / "mnt").mkdir()
    extra = ["--foreground"] if foreground else []
    done = _mount(tmp_path / "mnt", shape_emulator.domain, stranger, tmp_path / "c", *extra)
    _assert_clean_failure(done, tmp_path / "mnt", "refused the key")
    assert done.returncode == 1


def test_missing_key_file(tmp_path: Path, sample_emulator: RunningEmulator) -> None:
    (tmp_path / "mnt").mkdir()
    done = _mount(tmp_path / "mnt", sample_emulator.domain, tmp_path / "nope", tmp_path / "c", "-f")
    _assert_clean_failure(done, tmp_path / "mnt", "not found")


def test_unreachable_domain(tmp_path: Path, sample_emulator: RunningEmulator) -> None:
    (tmp_path / "mnt").mkdir()
    assert sample_emulator.key_file is not None
    done = _mount(tmp_path / "mnt", "http://127.0.0.1:9", sample_emulator.key_file, tmp_path / "c", "-f")
    _assert_clean_failure(done, tmp_path / "mnt", "reach")


def test_missing_and_nonempty_mountpoint(tmp_path: Path, sample_emulator: RunningEmulator) -> None:
    assert sample_emulator.key_file is not None
    done = _mount(tmp_path / "absent", sample_emulator.domain, sample_emulator.key_file, tmp_path / "c")
    _assert_clean_failure(done, tmp_path / "absent", "does not exist")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    done = _mount(busy, sample_emulator.domain, sample_emulator.key_file, tmp_path / "c")
    _assert_clean_failure(done, busy, "not empty")


def test_the_emulator_subcommand_takes_its_own_options(tmp_path: Path) -> None:
    """``encordfs emulator --sample`` (the README's line) starts the emulator; its ``--help`` is its own."""
    done = _encordfs("emulator", "--help")
    assert done.returncode == 0 and "--shape" in done.stdout and "--generate" in done.stdout, done.stderr
    done = _encordfs("emulator", "--no-such-option")
    assert done.returncode == 2 and "unrecognized arguments: --no-such-option" in done.stderr
    assert "Traceback" not in done.stderr
    argv = [sys.executable, "-m", "encordfs", "emulator", "--sample", "--port", "0", "--data-dir", str(tmp_path)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(2)]
            assert any(line.startswith("domain=http://127.0.0.1:") for line in lines), lines
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_unmount_not_mounted(tmp_path: Path) -> None:
    done = _encordfs("unmount", str(tmp_path))
    _assert_clean_failure(done, tmp_path, "not mounted")


def test_mount_and_unmount_in_background(tmp_path: Path, sample_emulator: RunningEmulator) -> None:
    assert sample_emulator.key_file is not None
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = _mount(mnt, sample_emulator.domain, sample_emulator.key_file, tmp_path / "c")
    try:
        assert done.returncode == 0, done.stderr
        assert mounted_at(mnt) == "fuse.encordfs"
        assert "street-scenes" in [p.name for p in mnt.iterdir()]
        done = _encordfs("unmount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert not mounted_at(mnt)
    finally:
        if mounted_at(mnt):  # only when an assertion above failed
            subprocess.run(["fusermount3", "-u", str(mnt)])
    done = _encordfs("unmount", str(mnt))
    assert done.returncode != 0  # already unmounted above
